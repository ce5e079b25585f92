//! Reconciliation: the target made exactly the to-commit's tree. Walks the
//! commit's dirtrees; in each directory removes entries the commit does not
//! have (and anything whose type changed), keeps entries the seed wrote and
//! verified whose name and checksum the commit has, hard-links staged objects
//! into place (staging any other unchanged object first, see `objects`),
//! creates directories, and sets each directory's owner, mode and xattrs
//! last, so read-only directories can still be filled.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use atomup_ostree::object::{DirMeta, DirTree, ObjectType};
use atomup_ostree::ObjectId;

use crate::error::{fmt, io, DeployError, Result};
use crate::limits::MAX_DEPTH;
use crate::nofollow;
use crate::objects::Objects;
use crate::seed::SeededDir;
use crate::staging::STAGING;
use crate::stats::Stats;

pub(crate) struct Reconciler<'r, 'o> {
    pub objects: &'r mut Objects<'o>,
    pub stats: &'r mut Stats,
    /// What the seed wrote and verified, by relative path.
    pub seeded: &'r HashMap<String, SeededDir>,
}

impl Reconciler<'_, '_> {
    /// Makes `dir` (at `path`, relative path `rel`, `depth` levels down)
    /// exactly the dirtree `ids.0` with dirmeta `ids.1`.
    pub fn dir(
        &mut self,
        dir: &OwnedFd,
        path: PathBuf,
        rel: &str,
        (tree_id, meta_id): (ObjectId, ObjectId),
        depth: usize,
    ) -> Result<()> {
        if depth > MAX_DEPTH {
            return Err(DeployError::TooDeep { limit: MAX_DEPTH });
        }
        let root = depth == 0;
        let meta = self.objects.meta;
        let tree_bytes = meta.get(&tree_id, ObjectType::DirTree)?;
        let tree = DirTree::parse(&tree_bytes).map_err(fmt("dirtree"))?;
        let meta_bytes = meta.get(&meta_id, ObjectType::DirMeta)?;
        let dmeta = DirMeta::parse(&meta_bytes).map_err(fmt("dirmeta"))?;
        let staging = STAGING.as_bytes();
        if root && (tree.file(staging).is_some() || tree.dir(staging).is_some()) {
            // The staging directory's name is reserved at the top of the target.
            return Err(DeployError::ReservedName { name: STAGING });
        }
        // What the directory holds now: the seed's record where the seed made
        // the directory, else a listing.
        let sd = self.seeded.get(rel);
        let exact = sd.filter(|sd| sd.exact);
        let present = match exact {
            Some(sd) => sd
                .files
                .iter()
                .map(|f| nofollow::cname(&f.0))
                .chain(sd.dirs.iter().map(|d| nofollow::cname(d)))
                .collect(),
            None => nofollow::dir_names(dir, &path)?,
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
                nofollow::remove_entry(dir, &name, &path.join(name.to_string_lossy().as_ref()))?;
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
            self.objects.ensure_staged(&f.id, self.stats)?;
            let name = nofollow::cname(n);
            let p = path.join(n);
            let absent = exact.is_some_and(|sd| sd.file(n).is_none() && !sd.has_dir(n));
            if !absent {
                nofollow::remove_entry(dir, &name, &p)?;
            }
            self.objects
                .staging
                .link_into(&f.id, dir, name.as_c_str(), &p)?;
            // Crash point `apply.reconcile`: the N-th object put in place.
            atomup_faults::point("apply.reconcile");
            self.stats.entries += 1;
        }
        for d in &tree.dirs {
            let n = d.name.as_str();
            let name = nofollow::cname(n);
            let p = path.join(n);
            if !exact.is_some_and(|sd| sd.has_dir(n)) {
                nofollow::make_dir(dir, &name, &p)?;
            }
            let sub = nofollow::open_dir_at(dir, n).map_err(io("open directory", &p))?;
            let child = nofollow::child_rel(rel, n);
            self.dir(&sub, p, &child, (d.tree, d.meta), depth + 1)?;
        }
        // Directory metadata last, so read-only directories can still be filled.
        nofollow::set_owner_mode(dir, dmeta.uid, dmeta.gid, dmeta.mode, &path)?;
        nofollow::set_fd_xattrs(dir, &dmeta.xattrs, &path)?;
        Ok(())
    }
}
