//! Applying a static delta into a target directory (the inactive slot).
//!
//! Order, and why: (1) everything that can be checked without writing is
//! checked first — superblock signature, commit signature, from-commit, every
//! part's size and sha256 — so a bad delta leaves the target untouched;
//! (2) parts are decompressed one at a time into an unlinked scratch file in a
//! staging directory inside the target and their ops executed, each new object
//! verified by checksum as it is written, while a second thread seeds the
//! target with the from-commit's tree copied from the active root (see
//! `seed`); (3) the commit's tree is reconciled: seeded entries the commit
//! keeps stay, staged objects are hard-linked into place, anything else is
//! copied (and re-hashed) from the active root, stale entries removed; (4) the
//! written tree is hashed back from disk and must equal the commit; (5) the
//! commit's metadata objects are persisted for the next update.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use atomup_ostree::delta::{compression, PayloadLayout, Superblock, SuperblockFile};
use atomup_ostree::execute::{execute_part, ObjectSink, CHUNK};
use atomup_ostree::object::{
    finish_id, Commit, DirMeta, DirTree, FileHeader, FilezHeader, ObjectType, Xattrs, S_IFLNK,
    S_IFMT, S_IFREG,
};
use atomup_ostree::sign::{signatures, Trust};
use atomup_ostree::{ObjectId, MAX_METADATA_SIZE};
use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;
use sha2::{Digest, Sha256};

use crate::error::{fmt, io, DeployError, Result};
use crate::fsx;
use crate::meta::MetaStore;
use crate::seed::{HashCache, SeededDir, Seeder};

/// Largest superblock file accepted (inline parts live inside it).
pub const MAX_SUPERBLOCK: u64 = 64 << 20;
/// Largest single part file accepted.
pub const MAX_PART: u64 = 4 << 30;
/// Largest op stream held in memory per part (about 10 bytes per object:
/// room for 1.6 million objects in one part).
pub const MAX_OPS: u64 = 16 << 20;
/// Largest mode table held per part (12 bytes per distinct uid/gid/mode).
pub const MAX_MODE_TABLE: u64 = 1 << 20;
/// Largest xattr table held per part (one entry per distinct xattr set).
pub const MAX_XATTR_TABLE: u64 = 4 << 20;
/// Deepest directory nesting accepted.
pub const MAX_DEPTH: usize = 256;
/// Most entries (files, symlinks and directories) a commit's tree may expand
/// to, counting a shared subtree once per place it appears. A full Debian
/// desktop root has about 200k entries, embedded roots 5-50k.
pub const MAX_TREE_ENTRIES: u64 = 1 << 18;
/// Most directories a commit's tree may expand to (same counting; a full
/// Debian desktop root has about 20k).
pub const MAX_TREE_DIRS: u64 = 1 << 16;
/// Staging directory created (and removed) inside the target.
pub const STAGING: &str = ".atomup-staging";

/// What to apply, from where, to where, trusting whom.
#[derive(Clone, Copy, Debug)]
pub struct Options<'a> {
    pub delta: &'a Path,
    pub target: &'a Path,
    pub from_root: Option<&'a Path>,
    pub from_meta: Option<&'a Path>,
    pub fallback_repo: Option<&'a Path>,
    pub meta_out: Option<&'a Path>,
    /// `None` = signatures not checked (`--no-verify`); checksums always are.
    pub trust: Option<&'a Trust>,
}

/// What an apply did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub from: Option<ObjectId>,
    pub to: ObjectId,
    pub parts: usize,
    /// Content objects built from parts and fallbacks.
    pub objects_written: u64,
    pub bytes_written: u64,
    pub meta_objects: u64,
    /// Files and symlinks copied from the active root (each read back and
    /// checksummed).
    pub objects_reused: u64,
    pub bytes_reused: u64,
    /// Files and symlinks placed in the target.
    pub entries: u64,
    /// Where the time went.
    pub timings: Timings,
}

/// Wall time of each phase of an apply. `parts` and `seed` run in parallel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Timings {
    /// Signatures, from-commit, part sizes and digests (nothing written yet).
    pub checks: Duration,
    /// Decompressing parts and running their ops (plus fallback objects).
    pub parts: Duration,
    /// Copying the from-commit's tree from the active root (second thread).
    pub seed: Duration,
    /// Making the target exactly the commit's tree.
    pub reconcile: Duration,
    /// Waiting for the target's `syncfs` (started when the parts are done,
    /// finished after verify: only the part not hidden behind them).
    pub sync: Duration,
    /// Hashing the written tree back and comparing it with the commit.
    pub verify: Duration,
}

/// Reads a regular file of at most `limit` bytes. Opened so that it cannot
/// block (a FIFO, device or socket is refused by type, see `atomup-fsio`).
pub(crate) fn read_capped(path: &Path, limit: u64, what: &'static str) -> Result<Vec<u8>> {
    let f = atomup_fsio::open(path, atomup_fsio::Want::Regular).map_err(io("open", path))?;
    let len = f.metadata().map_err(io("stat", path))?.len();
    if len > limit {
        return Err(DeployError::TooLarge { what, limit });
    }
    let mut buf = Vec::with_capacity(len as usize);
    f.take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(io("read", path))?;
    if buf.len() as u64 > limit {
        return Err(DeployError::TooLarge { what, limit });
    }
    Ok(buf)
}

/// A parsed delta directory: what `delta show` prints.
pub struct DeltaInfo {
    pub signed: bool,
    pub from: Option<ObjectId>,
    pub to: ObjectId,
    pub timestamp: u64,
    pub big_endian: bool,
    /// (inline, size, usize, objects)
    pub parts: Vec<(bool, u64, u64, usize)>,
    pub fallbacks: Vec<(ObjectId, u64, u64)>,
    pub commit_signed: bool,
}

pub fn show(delta: &Path) -> Result<DeltaInfo> {
    let path = delta.join("superblock");
    let bytes = read_capped(&path, MAX_SUPERBLOCK, "superblock")?;
    let file = SuperblockFile::parse(&bytes).map_err(fmt("superblock"))?;
    let sb = Superblock::parse(file.unsigned).map_err(fmt("superblock"))?;
    let mut parts = Vec::new();
    for (i, p) in sb.parts.iter().enumerate() {
        parts.push((
            sb.inline_part(i).map_err(fmt("superblock"))?.is_some(),
            p.size,
            p.usize,
            p.object_count(),
        ));
    }
    let commit_signed = match sb.commitmeta().map_err(fmt("superblock"))? {
        Some(cm) => !signatures(cm).map_err(fmt("commitmeta"))?.is_empty(),
        None => false,
    };
    Ok(DeltaInfo {
        signed: file.signatures.is_some(),
        from: sb.from,
        to: sb.to,
        timestamp: sb.timestamp,
        big_endian: sb.endian == atomup_ostree::gvariant::Endian::Big,
        parts,
        fallbacks: sb
            .fallbacks
            .iter()
            .map(|f| (f.id, f.size, f.usize))
            .collect(),
        commit_signed,
    })
}

struct FromCtx {
    root: PathBuf,
    root_fd: OwnedFd,
    commit: Vec<u8>,
}

struct State<'a> {
    opts: &'a Options<'a>,
    staging: OwnedFd,
    staging_path: PathBuf,
    staged: HashSet<ObjectId>,
    /// Metadata objects: the delta's, and those read from disk so far.
    meta: &'a MetaStore<'a>,
    from: Option<FromCtx>,
    old_map: Option<HashMap<ObjectId, String>>,
    /// Files read back by the seed, for the verification.
    hashed: HashCache,
    /// Write-back of the bulk of the tree, started once the parts are done,
    /// so that it overlaps the rest of the seed, reconciliation and
    /// verification.
    early_sync: Option<std::thread::JoinHandle<rustix::io::Result<()>>>,
    stats: Stats,
}

/// Applies the delta in `opts.delta` to produce the to-commit's tree in
/// `opts.target`. See the module docs for the order of checks and writes.
pub fn apply(opts: &Options<'_>) -> Result<Stats> {
    let started = Instant::now();
    let sb_path = opts.delta.join("superblock");
    let sb_bytes = read_capped(&sb_path, MAX_SUPERBLOCK, "superblock")?;
    let file = SuperblockFile::parse(&sb_bytes).map_err(fmt("superblock"))?;
    if let Some(trust) = opts.trust {
        // Rule (DESIGN "Trust"): with keys configured, an unsigned or wrongly
        // signed delta is refused before anything is written.
        let sigs = match file.signatures {
            Some(d) => signatures(d).map_err(fmt("superblock signatures"))?,
            None => Vec::new(),
        };
        trust
            .verify(file.unsigned, sigs)
            .map_err(|source| DeployError::Signature {
                what: "delta superblock",
                source,
            })?;
    }
    let sb = Superblock::parse(file.unsigned).map_err(fmt("superblock"))?;
    let commitmeta = sb.commitmeta().map_err(fmt("superblock"))?;
    if let (Some(trust), Some(cm)) = (opts.trust, commitmeta) {
        // The superblock signature already covers the embedded commit; a
        // commit signature carried along must verify too, never be ignored.
        let sigs = signatures(cm).map_err(fmt("commitmeta"))?;
        if !sigs.is_empty() {
            trust
                .verify(sb.commit_bytes, sigs)
                .map_err(|source| DeployError::Signature {
                    what: "to-commit",
                    source,
                })?;
        }
    }

    let from = match sb.from {
        None => None,
        Some(from) => {
            let (Some(root), Some(meta)) = (opts.from_root, opts.from_meta) else {
                return Err(DeployError::NeedFrom { from });
            };
            // Rule: the delta applies only on top of exactly its from-commit.
            let path = meta.join(from.object_path(ObjectType::Commit));
            let commit = match read_capped(&path, MAX_METADATA_SIZE, "from-commit") {
                Ok(c) => c,
                Err(DeployError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    return Err(DeployError::FromMismatch { expected: from })
                }
                Err(e) => return Err(e),
            };
            if ObjectId::of(&commit) != from {
                return Err(DeployError::FromMismatch { expected: from });
            }
            Commit::parse(&commit).map_err(fmt("from-commit"))?;
            Some(FromCtx {
                root: root.to_owned(),
                root_fd: fsx::open_root(root)?,
                commit,
            })
        }
    };

    // Rule: every download has a size and a digest check before it is used.
    for (i, p) in sb.parts.iter().enumerate() {
        if p.size > MAX_PART {
            return Err(DeployError::Part {
                index: i,
                why: "declared size exceeds the part size limit",
            });
        }
        let (len, sum) = match sb.inline_part(i).map_err(fmt("superblock"))? {
            Some(bytes) => (bytes.len() as u64, ObjectId::of(bytes)),
            None => hash_part(&opts.delta.join(i.to_string()), i, p.size)?,
        };
        if len != p.size {
            return Err(DeployError::Part {
                index: i,
                why: "size differs from the superblock",
            });
        }
        if sum != p.checksum {
            return Err(DeployError::Part {
                index: i,
                why: "sha256 differs from the superblock",
            });
        }
    }
    // Fallback objects: everything short of inflating them is checked now.
    for fb in &sb.fallbacks {
        let repo = opts
            .fallback_repo
            .ok_or(DeployError::NeedFallbackRepo { id: fb.id })?;
        check_fallback(repo, fb)?;
    }

    let target_fd = fsx::open_root(opts.target)?;
    if let Some(f) = &from {
        let (a, b) = (rustix::fs::fstat(&target_fd), rustix::fs::fstat(&f.root_fd));
        if let (Ok(a), Ok(b)) = (a, b) {
            if a.st_dev == b.st_dev && a.st_ino == b.st_ino {
                return Err(DeployError::TargetIsSource);
            }
        }
    }

    // --- Writing starts here, confined to the target. ---
    let staging_path = opts.target.join(STAGING);
    let staging_c = fsx::cname(STAGING);
    fsx::remove_entry(&target_fd, &staging_c, &staging_path)?;
    rustix::fs::mkdirat(&target_fd, STAGING, Mode::from_raw_mode(0o700))
        .map_err(|e| io("create", &staging_path)(e.into()))?;
    let staging = fsx::open_dir_at(&target_fd, STAGING).map_err(io("open", &staging_path))?;
    let meta = MetaStore::new(
        [opts.from_meta, opts.fallback_repo]
            .into_iter()
            .flatten()
            .collect(),
    );
    let mut st = State {
        opts,
        staging,
        staging_path: staging_path.clone(),
        staged: HashSet::new(),
        meta: &meta,
        from,
        old_map: None,
        hashed: HashCache::new(),
        early_sync: None,
        stats: Stats {
            from: sb.from,
            to: sb.to,
            parts: sb.parts.len(),
            ..Default::default()
        },
    };
    st.stats.timings.checks = started.elapsed();
    let built = st.build(&sb, &target_fd);
    let cleanup = fsx::remove_entry(&target_fd, &staging_c, &staging_path);
    built?;
    cleanup?;

    // Rule: the written tree read back from disk must hash to the signed
    // commit. Files the seed already read back and that have not changed
    // since (same inode, ctime and size) are not read a second time. (The
    // bulk of the data is meanwhile being written back, see `build`.)
    let t = Instant::now();
    let load = |id: &ObjectId| meta.get(id, ObjectType::DirTree).ok();
    let (tree, meta) = crate::verify::hash_tree(
        &target_fd,
        opts.target,
        &st.hashed,
        Some((sb.commit.root_tree, sb.commit.root_meta)),
        &load,
    )?;
    if tree != sb.commit.root_tree {
        return Err(DeployError::VerifyMismatch {
            what: "root dirtree",
            expected: sb.commit.root_tree,
            actual: tree,
        });
    }
    if meta != sb.commit.root_meta {
        return Err(DeployError::VerifyMismatch {
            what: "root dirmeta",
            expected: sb.commit.root_meta,
            actual: meta,
        });
    }
    st.stats.timings.verify = t.elapsed();

    // Everything written must be on disk before anyone switches slots to it.
    let t = Instant::now();
    let sync_err = |e: Errno| io("sync", opts.target)(e.into());
    if let Some(early) = st.early_sync.take() {
        early.join().unwrap_or(Ok(())).map_err(sync_err)?;
    }
    rustix::fs::syncfs(&target_fd).map_err(sync_err)?;
    st.stats.timings.sync = t.elapsed();
    if let Some(out) = opts.meta_out {
        st.persist_meta(out, &sb, commitmeta)?;
    }
    Ok(st.stats)
}

/// Reads metadata object `id` from the first object store in `dirs` that
/// holds it, re-hashed before use.
pub(crate) fn read_meta(dirs: &[&Path], id: &ObjectId, ty: ObjectType) -> Result<Vec<u8>> {
    let rel = id.object_path(ty);
    for dir in dirs {
        let path = dir.join(&rel);
        match read_capped(&path, MAX_METADATA_SIZE, "metadata object") {
            Ok(b) => {
                // Rule: every object is re-hashed before use.
                let actual = ObjectId::of(&b);
                if actual != *id {
                    return Err(DeployError::Corrupt {
                        what: "metadata object",
                        id: *id,
                        path,
                        actual,
                    });
                }
                return Ok(b);
            }
            Err(DeployError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                continue
            }
            Err(e) => return Err(e),
        }
    }
    Err(DeployError::MissingMeta {
        id: *id,
        kind: ty.extension(),
    })
}

/// Size and sha256 of a separate part file, which must be a regular file of
/// exactly `declared` bytes: a longer one is refused at its declared size
/// (never hashed to its end, however large or sparse its tail).
fn hash_part(path: &Path, index: usize, declared: u64) -> Result<(u64, ObjectId)> {
    let f = open_part(path, index, declared)?;
    let mut r = f.take(declared + 1);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf).map_err(io("read", path))?;
        if n == 0 {
            break;
        }
        total += n as u64;
        h.update(&buf[..n]);
    }
    if total > declared {
        // It grew while being read.
        return Err(part_too_long(index));
    }
    Ok((total, ObjectId(h.finalize().into())))
}

/// Opens part file `index` without blocking (a FIFO, device or socket is
/// refused by type) and checks its size on disk against the declared one
/// before a byte is read.
fn open_part(path: &Path, index: usize, declared: u64) -> Result<File> {
    let f = atomup_fsio::open(path, atomup_fsio::Want::Regular).map_err(io("open", path))?;
    let len = f.metadata().map_err(io("stat", path))?.len();
    if len > declared {
        return Err(part_too_long(index));
    }
    if len < declared {
        return Err(DeployError::Part {
            index,
            why: "size differs from the superblock",
        });
    }
    Ok(f)
}

fn part_too_long(index: usize) -> DeployError {
    DeployError::Part {
        index,
        why: "file is longer than the size the superblock declares (refused at that size)",
    }
}

/// A reader that hashes what passes through it (re-checks a part's digest
/// while it is decompressed, so a file swapped after the first check is caught).
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    total: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.total += n as u64;
        Ok(n)
    }
}

impl State<'_> {
    /// Parts and fallbacks on this thread, the seed on a second one; then
    /// reconciliation.
    fn build(&mut self, sb: &Superblock<'_>, target: &OwnedFd) -> Result<()> {
        let stop = AtomicBool::new(false);
        // The seed gets its own handles; this thread keeps `self`.
        let seed_from = match (&self.from, self.opts.from_meta) {
            (Some(f), Some(_)) => {
                let fd = rustix::io::dup(&f.root_fd).map_err(|e| io("open", &f.root)(e.into()))?;
                let tree = Commit::parse(&f.commit)
                    .map_err(fmt("from-commit"))?
                    .root_tree;
                Some((fd, f.root.clone(), tree))
            }
            _ => None,
        };
        let meta = self.meta;
        let seeder = seed_from.as_ref().map(|(fd, root, tree)| {
            Seeder::new((fd, root), (target, self.opts.target), meta, *tree, &stop)
        });
        let (parts, seed_time) = std::thread::scope(|s| {
            let worker = seeder.as_ref().map(|seeder| {
                s.spawn(move || {
                    let t = Instant::now();
                    seeder.work();
                    t.elapsed()
                })
            });
            let t = Instant::now();
            let parts = self.run_parts(sb).map(|()| t.elapsed());
            if parts.is_err() {
                stop.store(true, Ordering::Relaxed);
            } else {
                // Parts done: start writing back what is written so far
                // (`apply` waits for it, and syncs again, after verifying;
                // best effort: without a thread the final syncfs does it
                // all), then help with the seed's remaining directories.
                self.early_sync = rustix::io::dup(target).ok().and_then(|fd| {
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
        self.stats.timings.parts = parts?;
        self.stats.timings.seed = seed_time;
        let t = Instant::now();
        let commit = &sb.commit;
        // The new tree is complete now: what it expands to is bounded before
        // a directory of it is made (a few kilobytes of dirtrees sharing
        // subtrees could name 2^40 directories).
        self.meta.check_expansion(commit.root_tree, "to-commit")?;
        self.reconcile(
            target,
            self.opts.target.to_owned(),
            "",
            (commit.root_tree, commit.root_meta),
            0,
            &seeded.dirs,
        )?;
        self.hashed = seeded.hashed;
        self.stats.timings.reconcile = t.elapsed();
        Ok(())
    }

    fn run_parts(&mut self, sb: &Superblock<'_>) -> Result<()> {
        for i in 0..sb.parts.len() {
            self.run_part(sb, i)?;
        }
        for fb in &sb.fallbacks {
            self.import_fallback(fb.objtype, fb.id, Some(fb.usize))?;
        }
        Ok(())
    }

    fn run_part(&mut self, sb: &Superblock<'_>, index: usize) -> Result<()> {
        let p = &sb.parts[index];
        let path = self.staging_path.join("payload");
        let fd = rustix::fs::openat(
            &self.staging,
            "payload",
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| io("create", &path)(e.into()))?;
        // Unlinked at once: the payload never outlives this process.
        rustix::fs::unlinkat(&self.staging, "payload", AtFlags::empty())
            .map_err(|e| io("unlink", &path)(e.into()))?;
        let mut payload = File::from(fd);
        let limit = atomup_ostree::xz::payload_limit(p.usize, p.size);
        let part_err = |_e| DeployError::Part {
            index,
            why: "cannot be decompressed",
        };
        let total = match sb.inline_part(index).map_err(fmt("superblock"))? {
            Some(bytes) => {
                let (c, data) =
                    atomup_ostree::delta::part_header(bytes).map_err(fmt("part header"))?;
                atomup_ostree::xz::decompress(c, data, &mut payload, limit)
                    .map_err(|e| decompress_err(index, e, part_err))?
            }
            None => {
                let ppath = self.opts.delta.join(index.to_string());
                // Never more than the declared size is read, whatever the
                // file has become since it was checked.
                let f = open_part(&ppath, index, p.size)?.take(p.size);
                let mut r = HashingReader {
                    inner: f,
                    hasher: Sha256::new(),
                    total: 0,
                };
                let mut first = [0u8; 1];
                r.read_exact(&mut first).map_err(io("read", &ppath))?;
                let c = compression(first[0]).map_err(fmt("part header"))?;
                let mut br = BufReader::with_capacity(CHUNK, r);
                let n = atomup_ostree::xz::decompress(c, &mut br, &mut payload, limit)
                    .map_err(|e| decompress_err(index, e, part_err))?;
                // Drain whatever the decoder did not consume, then re-check the digest.
                std::io::copy(&mut br, &mut std::io::sink()).map_err(io("read", &ppath))?;
                let r = br.into_inner();
                if r.total != p.size || ObjectId(r.hasher.finalize().into()) != p.checksum {
                    return Err(DeployError::Part {
                        index,
                        why: "changed on disk while being applied",
                    });
                }
                n
            }
        };
        let tail_len = PayloadLayout::tail_len(total);
        if tail_len > total {
            return Err(DeployError::Part {
                index,
                why: "payload too short",
            });
        }
        let mut tail = vec![0u8; tail_len as usize];
        payload
            .read_exact_at(&mut tail, total - tail_len)
            .map_err(io("read", &path))?;
        let layout = PayloadLayout::from_tail(total, &tail).map_err(fmt("part payload"))?;
        // Rule: memory stays bounded whatever a delta says: the tables and
        // the op stream are held in memory, each up to its own limit,
        // checked before anything is read.
        for (what, (a, b), limit) in [
            ("part mode table", layout.modes, MAX_MODE_TABLE),
            ("part xattr table", layout.xattrs, MAX_XATTR_TABLE),
            ("part op stream", layout.ops, MAX_OPS),
        ] {
            if b - a > limit {
                return Err(DeployError::TooLarge { what, limit });
            }
        }
        let read_range = |(a, b): (u64, u64)| -> Result<Vec<u8>> {
            let mut v = vec![0u8; (b - a) as usize];
            payload
                .read_exact_at(&mut v, a)
                .map_err(io("read", &path))?;
            Ok(v)
        };
        let modes = read_range(layout.modes)?;
        let xattrs = read_range(layout.xattrs)?;
        let ops = read_range(layout.ops)?;
        let mut sink = FileSink {
            st: self,
            payload: &payload,
            blob_start: layout.blob.0,
            source: None,
            current: None,
        };
        let stats = execute_part(
            &mut sink,
            p.objects,
            &modes,
            &xattrs,
            layout.blob.1 - layout.blob.0,
            &ops,
        )
        .map_err(|e| match e {
            atomup_ostree::Error::Io { source, .. }
                if source.get_ref().is_some_and(|s| s.is::<SinkError>()) =>
            {
                match source
                    .into_inner()
                    .and_then(|b| b.downcast::<SinkError>().ok())
                {
                    Some(b) => b.0,
                    None => DeployError::Part {
                        index,
                        why: "sink failed",
                    },
                }
            }
            other => DeployError::Format {
                what: "delta part",
                source: other,
            },
        })?;
        self.stats.objects_written += stats.content_objects;
        self.stats.bytes_written += stats.content_bytes;
        self.stats.meta_objects += stats.meta_objects;
        Ok(())
    }

    /// Metadata object `id`: from the delta's parts if they carried it, else
    /// from `--from-meta` or the fallback repo.
    fn load_meta(&self, id: &ObjectId, ty: ObjectType) -> Result<std::sync::Arc<[u8]>> {
        self.meta.get(id, ty)
    }

    /// csum → path of every content object in the from-commit, built from its
    /// dirtree objects (not by hashing the active root).
    fn old_map(&mut self) -> Result<&HashMap<ObjectId, String>> {
        if self.old_map.is_none() {
            let mut map = HashMap::new();
            if let Some(from) = &self.from {
                let c = Commit::parse(&from.commit).map_err(fmt("from-commit"))?;
                let mut stack = vec![(c.root_tree, String::new(), 0usize)];
                let (mut entries, mut dirs) = (0u64, 0u64);
                while let Some((tree_id, prefix, depth)) = stack.pop() {
                    if depth > MAX_DEPTH {
                        return Err(DeployError::TooDeep { limit: MAX_DEPTH });
                    }
                    let bytes = self.load_meta(&tree_id, ObjectType::DirTree)?;
                    let tree = DirTree::parse(&bytes).map_err(fmt("from dirtree"))?;
                    entries += (tree.files.len() + tree.dirs.len()) as u64;
                    dirs += tree.dirs.len() as u64;
                    if entries > MAX_TREE_ENTRIES || dirs > MAX_TREE_DIRS {
                        return Err(DeployError::TreeTooLarge {
                            which: "from-commit",
                            what: if dirs > MAX_TREE_DIRS {
                                "directories"
                            } else {
                                "entries"
                            },
                            limit: if dirs > MAX_TREE_DIRS {
                                MAX_TREE_DIRS
                            } else {
                                MAX_TREE_ENTRIES
                            },
                        });
                    }
                    for f in &tree.files {
                        map.entry(f.id)
                            .or_insert_with(|| format!("{prefix}{}", f.name));
                    }
                    for d in &tree.dirs {
                        stack.push((d.tree, format!("{prefix}{}/", d.name), depth + 1));
                    }
                }
            }
            self.old_map = Some(map);
        }
        Ok(self.old_map.as_ref().unwrap_or_else(|| unreachable!()))
    }

    /// Where old object `id` is in the active root: its directory, name and
    /// full path (found through the from-commit's dirtrees).
    fn old_entry(&mut self, id: &ObjectId) -> Result<(OwnedFd, String, PathBuf)> {
        let rel = self
            .old_map()?
            .get(id)
            .cloned()
            .ok_or(DeployError::MissingContent { id: *id })?;
        let from = self
            .from
            .as_ref()
            .ok_or(DeployError::MissingContent { id: *id })?;
        let path = from.root.join(&rel);
        let (dir, name) = fsx::walk_parent(&from.root_fd, &rel).map_err(io("open", &path))?;
        Ok((dir, name.to_owned(), path))
    }

    /// Opens an old object by checksum in the active root, verifying it.
    fn open_old_regular(&mut self, id: &ObjectId) -> Result<(File, u64, PathBuf)> {
        let (dir, name, path) = self.old_entry(id)?;
        // A FIFO or device where the from-commit has a file is refused by
        // type, never opened for reading as content.
        let file = fsx::open_regular_at(&dir, &name).map_err(io("open", &path))?;
        let (actual, size, _) = fsx::hash_regular(&file, &path, Some(id))?;
        // Rule: an old object is re-hashed before use; a modified active root is an error.
        if actual != *id {
            return Err(DeployError::Corrupt {
                what: "old object",
                id: *id,
                path,
                actual,
            });
        }
        Ok((file, size, path))
    }

    /// Makes sure content object `id` is in staging: from the delta already, or
    /// copied from the active root with its checksum re-verified.
    fn ensure_staged(&mut self, id: &ObjectId) -> Result<()> {
        if self.staged.contains(id) {
            return Ok(());
        }
        match self.copy_from_active(id) {
            Ok(()) => Ok(()),
            // An unchanged object missing or modified in the active root (say,
            // an /etc file edited at run time) can still come whole from the
            // fallback repo, if one was given and holds it; otherwise the
            // original error stands.
            Err(
                e @ (DeployError::Corrupt { .. }
                | DeployError::MissingContent { .. }
                | DeployError::Io { .. }),
            ) => {
                let has = self.opts.fallback_repo.is_some_and(|r| {
                    r.join(format!("{}z", id.object_path(ObjectType::File)))
                        .is_file()
                });
                if !has {
                    return Err(e);
                }
                log::warn!("object {id}: {e}; taking it from the fallback repo");
                self.import_fallback(ObjectType::File, *id, None)
            }
            Err(e) => Err(e),
        }
    }

    /// Copies content object `id` from the active root into staging,
    /// re-verifying its checksum while copying.
    fn copy_from_active(&mut self, id: &ObjectId) -> Result<()> {
        let (dir, name, path) = self.old_entry(id)?;
        let name = name.as_str();
        let cname = fsx::cname(name);
        let stt = rustix::fs::statat(&dir, cname.as_c_str(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| io("stat", &path)(e.into()))?;
        let hex = id.to_hex();
        let staged_path = self.staging_path.join(&hex);
        if stt.st_mode & S_IFMT == S_IFLNK {
            let (actual, target, x) = fsx::hash_symlink(&dir, &cname, &path, Some(id))?;
            if actual != *id {
                return Err(DeployError::Corrupt {
                    what: "old object",
                    id: *id,
                    path,
                    actual,
                });
            }
            let header = FileHeader {
                uid: stt.st_uid,
                gid: stt.st_gid,
                mode: stt.st_mode,
                symlink: &target,
                xattrs: Xattrs::parse(&x).map_err(fmt("xattrs"))?,
            };
            self.stage_symlink(&hex, &header)?;
        } else {
            // Not a symlink: it must be a regular file, refused by type
            // (a FIFO, a device) without blocking otherwise.
            let mut src = fsx::open_regular_at(&dir, name).map_err(io("open", &path))?;
            let s = rustix::fs::fstat(&src).map_err(|e| io("stat", &path)(e.into()))?;
            if s.st_mode & S_IFMT != S_IFREG {
                return Err(DeployError::BadFileType { path });
            }
            let cands = fsx::xattr_candidates(
                fsx::fd_xattr_list(&src).map_err(io("read xattrs of", &path))?,
            );
            let mut hashers = Vec::new();
            for x in &cands {
                let header = FileHeader {
                    uid: s.st_uid,
                    gid: s.st_gid,
                    mode: s.st_mode,
                    symlink: "",
                    xattrs: Xattrs::parse(x).map_err(fmt("xattrs"))?,
                };
                hashers.push(header.content_hasher());
            }
            let tmp = format!("{hex}.tmp");
            let mut out = self.create_staged(&tmp)?;
            let mut buf = vec![0u8; CHUNK];
            let mut total = 0u64;
            loop {
                let n = src.read(&mut buf).map_err(io("read", &path))?;
                if n == 0 {
                    break;
                }
                for h in &mut hashers {
                    h.update(&buf[..n]);
                }
                out.write_all(&buf[..n])
                    .map_err(io("write", &staged_path))?;
                total += n as u64;
            }
            let ids = hashers.into_iter().map(finish_id).zip(cands).collect();
            let (actual, x) = fsx::pick(ids, Some(id)).unwrap_or_default();
            if actual != *id {
                let _ = rustix::fs::unlinkat(&self.staging, tmp.as_str(), AtFlags::empty());
                return Err(DeployError::Corrupt {
                    what: "old object",
                    id: *id,
                    path,
                    actual,
                });
            }
            let header = FileHeader {
                uid: s.st_uid,
                gid: s.st_gid,
                mode: s.st_mode,
                symlink: "",
                xattrs: Xattrs::parse(&x).map_err(fmt("xattrs"))?,
            };
            self.finish_staged(out, &tmp, &hex, &header)?;
            self.stats.bytes_reused += total;
        }
        self.stats.objects_reused += 1;
        self.staged.insert(*id);
        Ok(())
    }

    fn create_staged(&self, name: &str) -> Result<File> {
        let path = self.staging_path.join(name);
        let fd = rustix::fs::openat(
            &self.staging,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| io("create", &path)(e.into()))?;
        Ok(File::from(fd))
    }

    fn finish_staged(
        &self,
        file: File,
        tmp: &str,
        hex: &str,
        header: &FileHeader<'_>,
    ) -> Result<()> {
        let path = self.staging_path.join(hex);
        fsx::set_owner_mode(&file, header.uid, header.gid, header.mode, &path)?;
        if !header.xattrs.is_empty() {
            fsx::set_fd_xattrs(&file, &header.xattrs, &path)?;
        }
        drop(file);
        rustix::fs::renameat(&self.staging, tmp, &self.staging, hex)
            .map_err(|e| io("rename into", &path)(e.into()))?;
        Ok(())
    }

    fn stage_symlink(&self, hex: &str, header: &FileHeader<'_>) -> Result<()> {
        let path = self.staging_path.join(hex);
        let _ = rustix::fs::unlinkat(&self.staging, hex, AtFlags::empty());
        rustix::fs::symlinkat(header.symlink, &self.staging, hex)
            .map_err(|e| io("create symlink", &path)(e.into()))?;
        let (u, g) = fsx::owner(header.uid, header.gid)?;
        rustix::fs::chownat(
            &self.staging,
            hex,
            Some(u),
            Some(g),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| io("chown", &path)(e.into()))?;
        if !header.xattrs.is_empty() {
            fsx::set_link_xattrs(&path, &header.xattrs)?;
        }
        Ok(())
    }

    /// Imports a fallback object from an archive repo's `.filez`.
    /// `declared` is the superblock's uncompressed size for this object, if it
    /// came from the fallback list: the `.filez` must agree before anything is
    /// inflated (a lying file cannot fill the target).
    fn import_fallback(
        &mut self,
        ty: ObjectType,
        id: ObjectId,
        declared: Option<u64>,
    ) -> Result<()> {
        let repo = self
            .opts
            .fallback_repo
            .ok_or(DeployError::NeedFallbackRepo { id })?;
        if ty.is_meta() {
            self.load_meta(&id, ty)?;
            return Ok(());
        }
        let (path, mut f, head) = open_filez(repo, &id)?;
        let fh = FilezHeader::parse(&head).map_err(fmt("filez header"))?;
        check_filez_size(&fh, declared, &id, &path)?;
        let header = fh.header;
        let hex = id.to_hex();
        if header.is_symlink() {
            let actual = finish_id(header.content_hasher());
            if actual != id {
                return Err(DeployError::Corrupt {
                    what: "fallback object",
                    id,
                    path,
                    actual,
                });
            }
            self.stage_symlink(&hex, &header)?;
        } else {
            let tmp = format!("{hex}.tmp");
            let mut out = self.create_staged(&tmp)?;
            let mut h = header.content_hasher();
            let total = inflate_raw(&mut f, fh.size, |chunk| {
                h.update(chunk);
                out.write_all(chunk)
            })
            .map_err(io("decompress", &path))?;
            let actual = finish_id(h);
            if actual != id || total != fh.size {
                let _ = rustix::fs::unlinkat(&self.staging, tmp.as_str(), AtFlags::empty());
                return Err(DeployError::Corrupt {
                    what: "fallback object",
                    id,
                    path,
                    actual,
                });
            }
            self.finish_staged(out, &tmp, &hex, &header)?;
            self.stats.bytes_written += total;
        }
        self.stats.objects_written += 1;
        self.staged.insert(id);
        Ok(())
    }

    /// Makes `dir` exactly the dirtree `ids.0` with dirmeta `ids.1`. `seeded`
    /// says what the seed already wrote and verified (by relative path).
    fn reconcile(
        &mut self,
        dir: &OwnedFd,
        path: PathBuf,
        rel: &str,
        (tree_id, meta_id): (ObjectId, ObjectId),
        depth: usize,
        seeded: &HashMap<String, SeededDir>,
    ) -> Result<()> {
        if depth > MAX_DEPTH {
            return Err(DeployError::TooDeep { limit: MAX_DEPTH });
        }
        let root = depth == 0;
        let tree_bytes = self.load_meta(&tree_id, ObjectType::DirTree)?;
        let tree = DirTree::parse(&tree_bytes).map_err(fmt("dirtree"))?;
        let meta_bytes = self.load_meta(&meta_id, ObjectType::DirMeta)?;
        let meta = DirMeta::parse(&meta_bytes).map_err(fmt("dirmeta"))?;
        let staging = STAGING.as_bytes();
        if root && (tree.file(staging).is_some() || tree.dir(staging).is_some()) {
            // The staging directory's name is reserved at the top of the target.
            return Err(DeployError::ReservedName { name: STAGING });
        }
        // What the directory holds now: the seed's record where the seed made
        // the directory, else a listing.
        let sd = seeded.get(rel);
        let exact = sd.filter(|sd| sd.exact);
        let present = match exact {
            Some(sd) => sd
                .files
                .iter()
                .map(|f| fsx::cname(&f.0))
                .chain(sd.dirs.iter().map(|d| fsx::cname(d)))
                .collect(),
            None => fsx::dir_names(dir, &path)?,
        };
        // Stale entries: anything not in the commit goes (the staging dir stays
        // until the tree is complete).
        for name in present {
            let b = name.to_bytes();
            if root && b == STAGING.as_bytes() {
                continue;
            }
            let keep = tree.file(b).is_some() || tree.dir(b).is_some();
            if !keep {
                fsx::remove_entry(dir, &name, &path.join(name.to_string_lossy().as_ref()))?;
            }
        }
        for f in &tree.files {
            let n = f.name.as_str();
            if let Some((_, _, size)) = sd.and_then(|sd| sd.file(n)).filter(|e| e.1 == f.id) {
                // Seeded with the same checksum: already in place and read back.
                self.stats.objects_reused += 1;
                self.stats.bytes_reused += size;
                self.stats.entries += 1;
                continue;
            }
            self.ensure_staged(&f.id)?;
            let name = fsx::cname(n);
            let p = path.join(n);
            let absent = exact.is_some_and(|sd| sd.file(n).is_none() && !sd.has_dir(n));
            if !absent {
                fsx::remove_entry(dir, &name, &p)?;
            }
            rustix::fs::linkat(
                &self.staging,
                f.id.to_hex().as_str(),
                dir,
                name.as_c_str(),
                AtFlags::empty(),
            )
            .map_err(|e| io("link", &p)(e.into()))?;
            self.stats.entries += 1;
        }
        for d in &tree.dirs {
            let n = d.name.as_str();
            let name = fsx::cname(n);
            let p = path.join(n);
            if !exact.is_some_and(|sd| sd.has_dir(n)) {
                fsx::make_dir(dir, &name, &p)?;
            }
            let sub = fsx::open_dir_at(dir, n).map_err(io("open directory", &p))?;
            let child = fsx::child_rel(rel, n);
            self.reconcile(&sub, p, &child, (d.tree, d.meta), depth + 1, seeded)?;
        }
        // Directory metadata last, so read-only directories can still be filled.
        fsx::set_owner_mode(dir, meta.uid, meta.gid, meta.mode, &path)?;
        fsx::set_fd_xattrs(dir, &meta.xattrs, &path)?;
        Ok(())
    }

    /// Writes the to-commit's `.commit`, `.commitmeta` and every reachable
    /// `.dirtree`/`.dirmeta` into `out` (OSTree's object layout), for the next
    /// update's `--from-meta`.
    ///
    /// Durability (the env names the slot only after this returns, and the
    /// next update cannot start from a damaged store): each missing object is
    /// written to `<name>.tmp`; one `syncfs` of `out`'s file system makes all
    /// of that data durable; then each is renamed into place and a second
    /// `syncfs` makes the names durable. So a final name only ever holds
    /// complete content, whenever the power goes; a cut leaves at most stray
    /// `.tmp` files, truncated by the next run. (`atomup_fsio::replace` per
    /// object would give the same guarantee with two fsyncs per object.) An
    /// object already there is kept only if it hashes to its name: one torn
    /// by a crash of an older version, or damaged since, is rewritten.
    fn persist_meta(
        &self,
        out: &Path,
        sb: &Superblock<'_>,
        commitmeta: Option<&[u8]>,
    ) -> Result<()> {
        let mut objects: Vec<(ObjectId, ObjectType, std::sync::Arc<[u8]>)> =
            vec![(sb.to, ObjectType::Commit, sb.commit_bytes.into())];
        if let Some(cm) = commitmeta {
            objects.push((sb.to, ObjectType::CommitMeta, cm.into()));
        }
        let mut seen = HashSet::new();
        let mut stack = vec![(sb.commit.root_tree, sb.commit.root_meta)];
        while let Some((t, m)) = stack.pop() {
            if seen.insert(m) {
                objects.push((
                    m,
                    ObjectType::DirMeta,
                    self.load_meta(&m, ObjectType::DirMeta)?,
                ));
            }
            if !seen.insert(t) {
                continue;
            }
            let bytes = self.load_meta(&t, ObjectType::DirTree)?;
            let tree = DirTree::parse(&bytes).map_err(fmt("dirtree"))?;
            stack.extend(tree.dirs.iter().map(|d| (d.tree, d.meta)));
            objects.push((t, ObjectType::DirTree, bytes));
        }
        let mut pending = Vec::new();
        for (id, ty, bytes) in &objects {
            let path = out.join(id.object_path(*ty));
            // CommitMeta is not keyed by its own checksum but by the commit's.
            let intact = match read_capped(&path, MAX_METADATA_SIZE, "metadata object") {
                Ok(b) if *ty == ObjectType::CommitMeta => b[..] == bytes[..],
                Ok(b) => ObjectId::of(&b) == *id,
                Err(_) => false,
            };
            if intact {
                continue;
            }
            let parent = path.parent().unwrap_or(out);
            std::fs::create_dir_all(parent).map_err(io("create", parent))?;
            let tmp = atomup_fsio::temp_path(&path);
            std::fs::write(&tmp, bytes).map_err(io("write", &tmp))?;
            pending.push((tmp, path));
        }
        if pending.is_empty() {
            return Ok(());
        }
        let out_fd = fsx::open_root(out)?;
        let sync = |fd: &OwnedFd| rustix::fs::syncfs(fd).map_err(|e| io("sync", out)(e.into()));
        sync(&out_fd)?;
        for (tmp, path) in &pending {
            std::fs::rename(tmp, path).map_err(io("rename into", path))?;
        }
        sync(&out_fd)
    }
}

/// Opens fallback object `id`'s `.filez` in `repo` (a regular file, opened
/// so that it cannot block) and reads its header: [u32 BE length][4 zero
/// bytes][header]. Returns the path, the file positioned at the deflate
/// data, and the header bytes.
fn open_filez(repo: &Path, id: &ObjectId) -> Result<(PathBuf, File, Vec<u8>)> {
    let path = repo.join(format!("{}z", id.object_path(ObjectType::File)));
    let mut f = atomup_fsio::open(&path, atomup_fsio::Want::Regular).map_err(io("open", &path))?;
    let mut head = vec![0u8; 8];
    f.read_exact(&mut head).map_err(io("read", &path))?;
    let hlen = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as u64;
    if hlen > MAX_METADATA_SIZE {
        return Err(DeployError::TooLarge {
            what: "filez header",
            limit: MAX_METADATA_SIZE,
        });
    }
    head.resize(8 + hlen as usize, 0);
    f.read_exact(&mut head[8..]).map_err(io("read", &path))?;
    Ok((path, f, head))
}

/// A regular fallback object's `.filez` must declare the size the
/// superblock does, before anything is inflated (a lying file cannot fill
/// the target).
fn check_filez_size(
    fh: &FilezHeader<'_>,
    declared: Option<u64>,
    id: &ObjectId,
    path: &Path,
) -> Result<()> {
    if declared.is_some_and(|d| !fh.header.is_symlink() && d != fh.size) {
        return Err(DeployError::Corrupt {
            what: "fallback object (size differs from the superblock)",
            id: *id,
            path: path.to_owned(),
            actual: ObjectId::default(),
        });
    }
    Ok(())
}

/// What can be known of a fallback object without writing: it is in the
/// fallback repo, a regular file whose header parses and declares the
/// superblock's size (a symlink's header is its whole object: its checksum
/// is checked too); a metadata fallback is read and re-hashed.
fn check_fallback(repo: &Path, fb: &atomup_ostree::delta::Fallback) -> Result<()> {
    if fb.objtype.is_meta() {
        read_meta(&[repo], &fb.id, fb.objtype)?;
        return Ok(());
    }
    let (path, _, head) = open_filez(repo, &fb.id)?;
    let fh = FilezHeader::parse(&head).map_err(fmt("filez header"))?;
    check_filez_size(&fh, Some(fb.usize), &fb.id, &path)?;
    if fh.header.is_symlink() {
        let actual = finish_id(fh.header.content_hasher());
        if actual != fb.id {
            return Err(DeployError::Corrupt {
                what: "fallback object",
                id: fb.id,
                path,
                actual,
            });
        }
    }
    Ok(())
}

fn decompress_err(
    index: usize,
    e: atomup_ostree::Error,
    other: impl FnOnce(atomup_ostree::Error) -> DeployError,
) -> DeployError {
    match e {
        atomup_ostree::Error::TooLarge { limit, .. } => DeployError::TooLarge {
            what: "decompressed part (declared sizes lie)",
            limit,
        },
        e @ atomup_ostree::Error::Malformed { .. } => DeployError::Format {
            what: if index == 0 { "part 0" } else { "delta part" },
            source: e,
        },
        e => other(e),
    }
}

/// Streams raw deflate (archive `.filez` data) into `out`, refusing more than `limit` bytes.
fn inflate_raw(
    input: &mut File,
    limit: u64,
    mut out: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> std::io::Result<u64> {
    use miniz_oxide::inflate::stream::{inflate, InflateState};
    use miniz_oxide::{DataFormat, MZError, MZFlush, MZStatus};
    let bad = |m: &'static str| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
    let mut state = InflateState::new_boxed(DataFormat::Raw);
    let mut inbuf = vec![0u8; CHUNK];
    let mut outbuf = vec![0u8; CHUNK];
    let (mut start, mut end, mut eof) = (0usize, 0usize, false);
    let mut total = 0u64;
    loop {
        if start == end && !eof {
            end = input.read(&mut inbuf)?;
            start = 0;
            eof = end == 0;
        }
        let flush = if eof { MZFlush::Finish } else { MZFlush::None };
        let res = inflate(&mut state, &inbuf[start..end], &mut outbuf, flush);
        start += res.bytes_consumed;
        total += res.bytes_written as u64;
        if total > limit {
            return Err(bad("inflates past its declared size"));
        }
        out(&outbuf[..res.bytes_written])?;
        match res.status {
            Ok(MZStatus::StreamEnd) => return Ok(total),
            Ok(_) => {}
            Err(MZError::Buf) if !eof || res.bytes_written > 0 => {}
            Err(_) => return Err(bad("corrupt deflate stream")),
        }
        if eof && res.bytes_written == 0 && res.bytes_consumed == 0 {
            return Err(bad("truncated deflate stream"));
        }
    }
}

/// Carries a deploy error through the pure executor's io::Error channel.
#[derive(Debug)]
struct SinkError(DeployError);

impl std::fmt::Display for SinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SinkError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

fn sink_err(e: DeployError) -> std::io::Error {
    std::io::Error::other(SinkError(e))
}

struct Current {
    hex: String,
    file: Option<File>,
    uid: u32,
    gid: u32,
    mode: u32,
    xattrs: Vec<u8>,
}

struct FileSink<'s, 'o> {
    st: &'s mut State<'o>,
    payload: &'s File,
    blob_start: u64,
    source: Option<File>,
    current: Option<Current>,
}

impl ObjectSink for FileSink<'_, '_> {
    fn read_blob(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.payload.read_exact_at(buf, self.blob_start + offset)
    }

    fn open_source(&mut self, id: &ObjectId) -> std::io::Result<u64> {
        self.source = None;
        let (file, size, _) = self.st.open_old_regular(id).map_err(sink_err)?;
        self.source = Some(file);
        Ok(size)
    }

    fn read_source(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        match &self.source {
            Some(f) => f.read_exact_at(buf, offset),
            None => Err(std::io::ErrorKind::NotFound.into()),
        }
    }

    fn write_meta(&mut self, ty: ObjectType, id: &ObjectId, data: &[u8]) -> std::io::Result<()> {
        match ty {
            // The apply reads trees only; the commit and its signatures come
            // from the superblock. Anything else a part carries was checked
            // by its checksum and is not held.
            ObjectType::DirTree | ObjectType::DirMeta => {
                self.st.meta.insert(*id, data).map_err(sink_err)
            }
            _ => Ok(()),
        }
    }

    fn begin_content(
        &mut self,
        id: &ObjectId,
        header: &FileHeader<'_>,
        _size: u64,
    ) -> std::io::Result<()> {
        let hex = id.to_hex();
        if header.is_symlink() {
            self.st.stage_symlink(&hex, header).map_err(sink_err)?;
            self.current = Some(Current {
                hex,
                file: None,
                uid: 0,
                gid: 0,
                mode: 0,
                xattrs: Vec::new(),
            });
            return Ok(());
        }
        let file = self
            .st
            .create_staged(&format!("{hex}.tmp"))
            .map_err(sink_err)?;
        self.current = Some(Current {
            hex,
            file: Some(file),
            uid: header.uid,
            gid: header.gid,
            mode: header.mode,
            xattrs: header.xattrs.bytes().to_vec(),
        });
        Ok(())
    }

    fn write_content(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self.current.as_mut().and_then(|c| c.file.as_mut()) {
            Some(f) => f.write_all(data),
            None => Err(std::io::ErrorKind::NotFound.into()),
        }
    }

    fn finish_content(&mut self, keep: bool) -> std::io::Result<()> {
        self.source = None;
        let Some(cur) = self.current.take() else {
            return Ok(());
        };
        let id = ObjectId::from_hex(&cur.hex)
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidData))?;
        let Some(file) = cur.file else {
            if keep {
                self.st.staged.insert(id);
            }
            return Ok(());
        };
        let tmp = format!("{}.tmp", cur.hex);
        if !keep {
            drop(file);
            let _ = rustix::fs::unlinkat(&self.st.staging, tmp.as_str(), AtFlags::empty());
            return Ok(());
        }
        let xattrs = Xattrs::parse(&cur.xattrs)
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidData))?;
        let header = FileHeader {
            uid: cur.uid,
            gid: cur.gid,
            mode: cur.mode,
            symlink: "",
            xattrs,
        };
        self.st
            .finish_staged(file, &tmp, &cur.hex, &header)
            .map_err(sink_err)?;
        self.st.staged.insert(id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seed::Hashed;
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
        let fd = fsx::open_root(&dir).unwrap();
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
