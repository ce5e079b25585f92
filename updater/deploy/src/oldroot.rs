//! The running (active) root as the source of old objects: unchanged files
//! and `r`/`B` sources are found by checksum through the from-commit's
//! dirtrees (a checksum → path map, not a hash of the whole root), opened
//! with the no-follow walk, and re-hashed before use. Read only: nothing
//! here writes.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use atomup_ostree::object::{Commit, DirTree, ObjectType};
use atomup_ostree::{ObjectId, MAX_METADATA_SIZE};

use crate::error::{fmt, io, DeployError, Result};
use crate::limits::{MAX_DEPTH, MAX_TREE_DIRS, MAX_TREE_ENTRIES};
use crate::meta::MetaStore;
use crate::nofollow;

pub(crate) struct OldRoot {
    pub root: PathBuf,
    pub fd: OwnedFd,
    /// The from-commit's root dirtree.
    pub root_tree: ObjectId,
    /// csum → path of every content object, built on first use.
    map: Option<HashMap<ObjectId, String>>,
}

impl OldRoot {
    /// The running root at `root`, for a delta from commit `from`, whose
    /// commit object must be in `meta_dir` and hash to `from`.
    pub fn open(from: ObjectId, root: &Path, meta_dir: &Path) -> Result<Self> {
        // Rule: the delta applies only on top of exactly its from-commit.
        let path = meta_dir.join(from.object_path(ObjectType::Commit));
        let commit = match nofollow::read_capped(&path, MAX_METADATA_SIZE, "from-commit") {
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
        let root_tree = Commit::parse(&commit)
            .map_err(fmt("from-commit"))?
            .root_tree;
        Ok(OldRoot {
            root: root.to_owned(),
            fd: nofollow::open_root(root)?,
            root_tree,
            map: None,
        })
    }

    /// csum → path of every content object in the from-commit, built from
    /// its dirtrees, within the tree limits.
    fn map(&mut self, meta: &MetaStore<'_>) -> Result<&HashMap<ObjectId, String>> {
        if self.map.is_none() {
            let mut map = HashMap::new();
            let mut stack = vec![(self.root_tree, String::new(), 0usize)];
            let (mut entries, mut dirs) = (0u64, 0u64);
            while let Some((tree_id, prefix, depth)) = stack.pop() {
                if depth > MAX_DEPTH {
                    return Err(DeployError::TooDeep { limit: MAX_DEPTH });
                }
                let bytes = meta.get(&tree_id, ObjectType::DirTree)?;
                let tree = DirTree::parse(&bytes).map_err(fmt("from dirtree"))?;
                entries += (tree.files.len() + tree.dirs.len()) as u64;
                dirs += tree.dirs.len() as u64;
                // Rule: what a tree expands to is bounded (shared subtrees
                // counted at each place).
                for (n, limit, what) in [
                    (dirs, MAX_TREE_DIRS, "directories"),
                    (entries, MAX_TREE_ENTRIES, "entries"),
                ] {
                    if n > limit {
                        return Err(DeployError::TreeTooLarge {
                            which: "from-commit",
                            what,
                            limit,
                        });
                    }
                }
                for f in &tree.files {
                    map.entry(f.id)
                        .or_insert_with(|| format!("{prefix}{}", f.name));
                }
                for d in &tree.dirs {
                    stack.push((d.tree, format!("{prefix}{}/", d.name), depth + 1));
                }
            }
            self.map = Some(map);
        }
        Ok(self.map.get_or_insert_with(HashMap::new))
    }

    /// Where old object `id` is: its directory (opened without following a
    /// symlink), its name and its full path.
    pub fn entry(
        &mut self,
        meta: &MetaStore<'_>,
        id: &ObjectId,
    ) -> Result<(OwnedFd, String, PathBuf)> {
        let rel = self
            .map(meta)?
            .get(id)
            .cloned()
            .ok_or(DeployError::MissingContent { id: *id })?;
        let path = self.root.join(&rel);
        let (dir, name) = nofollow::walk_parent(&self.fd, &rel).map_err(io("open", &path))?;
        Ok((dir, name.to_owned(), path))
    }

    /// Opens old regular-file object `id` and verifies it; returns it, its
    /// data size and its path.
    pub fn open_regular(
        &mut self,
        meta: &MetaStore<'_>,
        id: &ObjectId,
    ) -> Result<(File, u64, PathBuf)> {
        let (dir, name, path) = self.entry(meta, id)?;
        // A FIFO or device where the from-commit has a file is refused by
        // type, never opened for reading as content.
        let file = nofollow::open_regular_at(&dir, &name).map_err(io("open", &path))?;
        let (actual, size, _) = nofollow::hash_regular(&file, &path, Some(id))?;
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
}
