//! The metadata output (`--meta-out`): the to-commit's `.commit`,
//! `.commitmeta` (if carried) and every reachable `.dirtree`/`.dirmeta`,
//! in OSTree's object layout, for the next update's `--from-meta`.
//!
//! Durability (the env names the slot only after the apply returns, and the
//! next update cannot start from a damaged store): each missing object is
//! written to `<name>.tmp`; one `syncfs` of the output's file system makes
//! all of that data durable; then each is renamed into place and a second
//! `syncfs` makes the names durable. So a final name only ever holds
//! complete content, whenever the power goes; a cut leaves at most stray
//! `.tmp` files, truncated by the next run. (`atomup_fsio::replace` per
//! object would give the same guarantee with two fsyncs per object.) An
//! object already there is kept only if it is intact: one torn by a crash of
//! an older version, or damaged since, is rewritten.

use std::collections::HashSet;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;

use atomup_ostree::object::{DirTree, ObjectType};
use atomup_ostree::{ObjectId, MAX_METADATA_SIZE};

use crate::delta::VerifiedSuperblock;
use crate::error::{fmt, io, Result};
use crate::meta::MetaStore;
use crate::nofollow;

pub(crate) fn persist(out: &Path, sb: &VerifiedSuperblock, meta: &MetaStore<'_>) -> Result<()> {
    let mut objects: Vec<(ObjectId, ObjectType, Arc<[u8]>)> =
        vec![(sb.to(), ObjectType::Commit, sb.commit_bytes().into())];
    if let Some(cm) = sb.commitmeta() {
        objects.push((sb.to(), ObjectType::CommitMeta, cm.into()));
    }
    let mut seen = HashSet::new();
    let mut stack = vec![sb.root()];
    while let Some((t, m)) = stack.pop() {
        if seen.insert(m) {
            objects.push((m, ObjectType::DirMeta, meta.get(&m, ObjectType::DirMeta)?));
        }
        if !seen.insert(t) {
            continue;
        }
        let bytes = meta.get(&t, ObjectType::DirTree)?;
        let tree = DirTree::parse(&bytes).map_err(fmt("dirtree"))?;
        stack.extend(tree.dirs.iter().map(|d| (d.tree, d.meta)));
        objects.push((t, ObjectType::DirTree, bytes));
    }
    let mut pending = Vec::new();
    for (id, ty, bytes) in &objects {
        let path = out.join(id.object_path(*ty));
        // A commitmeta is named after its commit, not its own checksum.
        let intact = match nofollow::read_capped(&path, MAX_METADATA_SIZE, "metadata object") {
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
        // Crash point `persist.write`: a cut inside an object's temp file.
        std::fs::File::create(&tmp)
            .and_then(|mut f| atomup_faults::write_all("persist.write", &tmp, &mut f, bytes))
            .map_err(io("write", &tmp))?;
        pending.push((tmp, path));
    }
    if pending.is_empty() {
        return Ok(());
    }
    let out_fd = nofollow::open_root(out)?;
    let sync = |fd: &OwnedFd| rustix::fs::syncfs(fd).map_err(|e| io("sync", out)(e.into()));
    sync(&out_fd)?;
    for (tmp, path) in &pending {
        std::fs::rename(tmp, path).map_err(io("rename into", path))?;
        // Crash point `persist.rename`: the N-th object in place.
        atomup_faults::point("persist.rename");
    }
    sync(&out_fd)
}
