//! Applying a verified delta into a target directory (the inactive slot):
//! the pipeline, top-down. Each stage is a module of its own.
//!
//! 0. Before `apply`: the delta is verified once ([`VerifiedDelta`], module
//!    `delta`): superblock signature and commit signatures against the
//!    trust, to-commit, limits, every part's size and sha256.
//! 1. What else needs no writing is checked: the from-commit is in
//!    `--from-meta` and hashes to the delta's (`oldroot`), every fallback
//!    object is where it must be (`fallback`), the target is not the
//!    from-root. **A refused delta leaves the target untouched.**
//! 2. Staging is created in the target: the first write (`staging`).
//! 3. The parts are decompressed and their ops run, each new object
//!    verified as it is written into staging (`parts`), while a second
//!    thread seeds the target with the from-commit's tree copied from the
//!    running root (`seed`).
//! 4. What the new tree expands to is bounded (`meta`), then the target is
//!    made exactly the commit's tree (`reconcile`, objects from `objects`).
//! 5. Staging is removed; the written tree is hashed back from disk and must
//!    equal the commit (`verify`); everything is synced.
//! 6. The commit's metadata is persisted for the next update (`persist`).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use atomup_ostree::object::ObjectType;
use atomup_ostree::ObjectId;
use rustix::io::Errno;

use crate::delta::VerifiedDelta;
use crate::error::{io, DeployError, Result};
use crate::meta::MetaStore;
use crate::nofollow;
use crate::objects::Objects;
use crate::oldroot::OldRoot;
use crate::readback::HashCache;
use crate::reconcile::Reconciler;
use crate::seed::Seeder;
use crate::staging::Staging;
use crate::stats::Stats;

/// Where to apply a delta, and from where.
#[derive(Clone, Copy, Debug)]
pub struct Options<'a> {
    /// Target root; ends up exactly the commit's tree.
    pub target: &'a Path,
    /// The running root, read only (deltas with a from-commit).
    pub from_root: Option<&'a Path>,
    /// Object store holding the from-commit's metadata.
    pub from_meta: Option<&'a Path>,
    /// Archive repo for fallback objects (feature `archive-fallback`).
    pub fallback_repo: Option<&'a Path>,
    /// Receives the to-commit's metadata for the next update.
    pub meta_out: Option<&'a Path>,
}

/// A write-back of the target started on a helper thread.
type EarlySync = std::thread::JoinHandle<rustix::io::Result<()>>;

/// Applies `delta` to produce its to-commit's tree in `opts.target`. See the
/// module docs for the order of checks and writes.
pub fn apply(delta: &VerifiedDelta, opts: &Options<'_>) -> Result<Stats> {
    let started = Instant::now();
    let sb = delta.superblock();

    // 1. Checks that need no writing.
    let old = match sb.from() {
        None => None,
        Some(from) => {
            let (Some(root), Some(meta)) = (opts.from_root, opts.from_meta) else {
                return Err(DeployError::NeedFrom { from });
            };
            Some(OldRoot::open(from, root, meta)?)
        }
    };
    check_fallbacks(delta, opts.fallback_repo)?;
    let target_fd = nofollow::open_root(opts.target)?;
    if let Some(old) = &old {
        let (a, b) = (rustix::fs::fstat(&target_fd), rustix::fs::fstat(&old.fd));
        if let (Ok(a), Ok(b)) = (a, b) {
            if a.st_dev == b.st_dev && a.st_ino == b.st_ino {
                return Err(DeployError::TargetIsSource);
            }
        }
    }

    // 2. --- Writing starts here, confined to the target. ---
    let meta = MetaStore::new(
        [opts.from_meta, opts.fallback_repo]
            .into_iter()
            .flatten()
            .collect(),
    );
    let mut objects = Objects {
        staging: Staging::create(&target_fd, opts.target)?,
        old,
        meta: &meta,
        fallback_repo: opts.fallback_repo,
    };
    let mut stats = Stats {
        from: sb.from(),
        to: sb.to(),
        parts: sb.parts().len(),
        ..Default::default()
    };
    stats.timings.checks = started.elapsed();
    // 3-4.
    let built = build(delta, &mut objects, (&target_fd, opts.target), &mut stats);
    drop(objects);
    let cleanup = Staging::remove(&target_fd, opts.target);
    let (hashed, early_sync) = built?;
    cleanup?;

    // 5. Rule: the written tree read back from disk must hash to the signed
    // commit. Files the seed already read back and that have not changed
    // since (same inode, ctime and size) are not read a second time. (The
    // bulk of the data is meanwhile being written back, see `build`.)
    let t = Instant::now();
    let (root_tree, root_meta) = sb.root();
    let load = |id: &ObjectId| meta.get(id, ObjectType::DirTree).ok();
    let (tree, dirmeta) = crate::verify::hash_tree(
        &target_fd,
        opts.target,
        &hashed,
        Some((root_tree, root_meta)),
        &load,
    )?;
    if tree != root_tree {
        return Err(DeployError::VerifyMismatch {
            what: "root dirtree",
            expected: root_tree,
            actual: tree,
        });
    }
    if dirmeta != root_meta {
        return Err(DeployError::VerifyMismatch {
            what: "root dirmeta",
            expected: root_meta,
            actual: dirmeta,
        });
    }
    stats.timings.verify = t.elapsed();
    // Crash point `apply.verified`: the tree verified, not yet synced.
    atomup_faults::point("apply.verified");

    // Everything written must be on disk before anyone switches slots to it.
    let t = Instant::now();
    let sync_err = |e: Errno| io("sync", opts.target)(e.into());
    if let Some(early) = early_sync {
        early.join().unwrap_or(Ok(())).map_err(sync_err)?;
    }
    rustix::fs::syncfs(&target_fd).map_err(sync_err)?;
    stats.timings.sync = t.elapsed();
    // Crash point `apply.synced`: the target durable, its metadata not yet.
    atomup_faults::point("apply.synced");

    // 6.
    if let Some(out) = opts.meta_out {
        crate::persist::persist(out, sb, &meta)?;
    }
    Ok(stats)
}

/// Every fallback object is checked short of inflating it (needs the
/// feature `archive-fallback`; without it a delta with fallbacks, or a
/// fallback repo, is refused).
fn check_fallbacks(delta: &VerifiedDelta, repo: Option<&Path>) -> Result<()> {
    let fallbacks = delta.superblock().fallbacks();
    #[cfg(feature = "archive-fallback")]
    for fb in fallbacks {
        let repo = repo.ok_or(DeployError::NeedFallbackRepo { id: fb.id })?;
        crate::fallback::check(repo, fb)?;
    }
    #[cfg(not(feature = "archive-fallback"))]
    if !fallbacks.is_empty() || repo.is_some() {
        return Err(DeployError::NoFallbackSupport);
    }
    Ok(())
}

/// Parts and fallbacks on this thread, the seed on a second one; then the
/// new tree's expansion bound and reconciliation. Returns the checksums
/// the seed read back and the write-back started when the parts were done.
fn build(
    delta: &VerifiedDelta,
    objects: &mut Objects<'_>,
    (target_fd, target): (&std::os::fd::OwnedFd, &Path),
    stats: &mut Stats,
) -> Result<(HashCache, Option<EarlySync>)> {
    let stop = AtomicBool::new(false);
    // The seed gets its own handle on the running root; this thread keeps
    // `objects`.
    let seed_from = match &objects.old {
        Some(old) => Some((
            rustix::io::dup(&old.fd).map_err(|e| io("open", &old.root)(e.into()))?,
            old.root.clone(),
            old.root_tree,
        )),
        None => None,
    };
    let meta = objects.meta;
    let seeder = seed_from
        .as_ref()
        .map(|(fd, root, tree)| Seeder::new((fd, root), (target_fd, target), meta, *tree, &stop));
    let mut early_sync = None;
    let (parts, seed_time) = std::thread::scope(|s| {
        let worker = seeder.as_ref().map(|seeder| {
            s.spawn(move || {
                let t = Instant::now();
                seeder.work();
                t.elapsed()
            })
        });
        let t = Instant::now();
        let parts = crate::parts::run_parts(delta, objects, stats).map(|()| t.elapsed());
        if parts.is_err() {
            stop.store(true, Ordering::Relaxed);
        } else {
            // Parts done: start writing back what is written so far
            // (`apply` waits for it, and syncs again, after verifying;
            // best effort: without a thread the final syncfs does it all),
            // then help with the seed's remaining directories.
            early_sync = rustix::io::dup(target_fd).ok().and_then(|fd| {
                std::thread::Builder::new()
                    .spawn(move || rustix::fs::syncfs(&fd))
                    .ok()
            });
            if let Some(seeder) = &seeder {
                seeder.work();
            }
        }
        let seed_time = worker
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        (parts, seed_time)
    });
    let seeded = seeder.map(Seeder::finish).unwrap_or_default();
    stats.timings.parts = parts?;
    stats.timings.seed = seed_time;
    let t = Instant::now();
    let root = delta.superblock().root();
    // The new tree is complete now: what it expands to is bounded before a
    // directory of it is made (a few kilobytes of dirtrees sharing subtrees
    // could name 2^40 directories).
    meta.check_expansion(root.0, "to-commit")?;
    Reconciler {
        objects,
        stats,
        seeded: &seeded.dirs,
    }
    .dir(target_fd, target.to_owned(), "", root, 0)?;
    stats.timings.reconcile = t.elapsed();
    Ok((seeded.hashed, early_sync))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::readback::Hashed;
    use std::os::unix::fs::MetadataExt;

    /// The verification trusts a checksum read back earlier only while the
    /// file's inode, ctime and size are unchanged: a file rewritten after it
    /// was read back (even to the same size) is read again.
    #[test]
    fn verification_rereads_a_file_changed_after_it_was_read_back() {
        let dir = std::env::temp_dir().join(format!("atomup-verify-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("f");
        std::fs::write(&file, b"abc").unwrap();
        let fd = nofollow::open_root(&dir).unwrap();
        let hash = |cache: &HashCache| crate::verify::hash_tree(&fd, &dir, cache, None, &|_| None);
        let honest = hash(&HashCache::new()).unwrap();

        let m = std::fs::metadata(&file).unwrap();
        let lie = Hashed {
            id: ObjectId([7; 32]),
            ctime: (m.ctime(), m.ctime_nsec() as u64),
            size: 3,
        };
        let cache = HashCache::from([((m.dev(), m.ino()), lie)]);
        let cached = hash(&cache).unwrap();
        assert_ne!(
            cached, honest,
            "an unchanged file's read-back checksum is reused"
        );

        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&file, b"xyz").unwrap();
        let changed = hash(&HashCache::new()).unwrap();
        assert_eq!(hash(&cache).unwrap(), changed);
        assert_ne!(changed, honest);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
