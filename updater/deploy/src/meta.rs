//! Metadata objects (dirtree, dirmeta) by checksum, each read from disk and
//! verified at most once per apply, within a memory budget: the seed, reconciliation, verification
//! and the metadata output all walk mostly the same dirtrees and a handful
//! of dirmetas, and reading one back costs an open, a read and a SHA-256.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use atomup_ostree::object::{DirTree, ObjectType};
use atomup_ostree::ObjectId;

use atomup_ostree::MAX_METADATA_SIZE;

use crate::error::{fmt, DeployError, Result};
use crate::limits::{
    MAX_DEPTH, MAX_METADATA_HELD, MAX_TREE_DIRS, MAX_TREE_ENTRIES, OBJECT_OVERHEAD,
};
use crate::nofollow::read_capped;

/// Verified metadata objects: the delta's own and those read so far. Every
/// object in it hashed to its key when it was added, so a lookup needs no
/// second check. Shared by the threads of an apply. Bounded: adding beyond
/// [`MAX_METADATA_HELD`] fails.
pub(crate) struct MetaStore<'a> {
    /// Object stores read from, in order (`--from-meta`, the fallback repo).
    dirs: Vec<&'a Path>,
    known: Mutex<Known>,
}

#[derive(Default)]
struct Known {
    objects: HashMap<ObjectId, Arc<[u8]>>,
    /// Bytes charged so far (see [`MAX_METADATA_HELD`]).
    held: u64,
}

impl Known {
    fn add(&mut self, id: ObjectId, bytes: Arc<[u8]>) -> Result<()> {
        if self.objects.contains_key(&id) {
            return Ok(());
        }
        let cost = bytes.len() as u64 + OBJECT_OVERHEAD;
        // Rule: memory stays bounded whatever a delta says.
        if self.held + cost > MAX_METADATA_HELD {
            return Err(DeployError::TooLarge {
                what: "metadata held in memory (dirtrees and dirmetas of the delta and both trees)",
                limit: MAX_METADATA_HELD,
            });
        }
        self.held += cost;
        self.objects.insert(id, bytes);
        Ok(())
    }
}

impl<'a> MetaStore<'a> {
    pub fn new(dirs: Vec<&'a Path>) -> Self {
        MetaStore {
            dirs,
            known: Mutex::new(Known::default()),
        }
    }

    /// Adds an object the delta delivered (the executor verified its checksum).
    pub fn insert(&self, id: ObjectId, bytes: &[u8]) -> Result<()> {
        self.lock().add(id, bytes.into())
    }

    /// Object `id`: known already, else read from the first store holding it
    /// and re-hashed before use.
    pub fn get(&self, id: &ObjectId, ty: ObjectType) -> Result<Arc<[u8]>> {
        if let Some(b) = self.lock().objects.get(id) {
            return Ok(b.clone());
        }
        // Read without the lock held: another thread may read the same object
        // meanwhile, which only costs a second read.
        let bytes: Arc<[u8]> = read_meta(&self.dirs, id, ty)?.into();
        self.lock().add(*id, bytes.clone())?;
        Ok(bytes)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Known> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }
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

/// What a dirtree expands to below it: entries and directories, a shared
/// subtree counted at each place it appears, and its height.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Expansion {
    pub entries: u64,
    pub dirs: u64,
    pub height: usize,
}

impl MetaStore<'_> {
    /// Checks that the tree of dirtree `root` stays within [`MAX_TREE_ENTRIES`],
    /// [`MAX_TREE_DIRS`] and [`MAX_DEPTH`] once expanded, without expanding
    /// it: each distinct dirtree is read and parsed once (identical subtrees
    /// are legitimately shared, empty directories above all, so sharing
    /// itself is allowed; only what it adds up to is bounded). `which` names
    /// the commit in the error.
    pub fn check_expansion(&self, root: ObjectId, which: &'static str) -> Result<Expansion> {
        let mut memo = HashMap::new();
        let e = self.expand(root, 0, which, &mut memo)?;
        if e.height > MAX_DEPTH {
            return Err(DeployError::TooDeep { limit: MAX_DEPTH });
        }
        Ok(e)
    }

    fn expand(
        &self,
        id: ObjectId,
        depth: usize,
        which: &'static str,
        memo: &mut HashMap<ObjectId, Expansion>,
    ) -> Result<Expansion> {
        if let Some(e) = memo.get(&id) {
            return Ok(*e);
        }
        if depth > MAX_DEPTH {
            return Err(DeployError::TooDeep { limit: MAX_DEPTH });
        }
        let bytes = self.get(&id, ObjectType::DirTree)?;
        let tree = DirTree::parse(&bytes).map_err(fmt("dirtree"))?;
        let mut e = Expansion {
            entries: (tree.files.len() + tree.dirs.len()) as u64,
            dirs: tree.dirs.len() as u64,
            height: 0,
        };
        for d in &tree.dirs {
            let sub = self.expand(d.tree, depth + 1, which, memo)?;
            e.entries = e.entries.saturating_add(sub.entries);
            e.dirs = e.dirs.saturating_add(sub.dirs);
            e.height = e.height.max(sub.height + 1);
            // Rule: memory and slot space stay bounded whatever a tree says.
            if e.entries > MAX_TREE_ENTRIES {
                return Err(DeployError::TreeTooLarge {
                    which,
                    what: "entries",
                    limit: MAX_TREE_ENTRIES,
                });
            }
            if e.dirs > MAX_TREE_DIRS {
                return Err(DeployError::TreeTooLarge {
                    which,
                    what: "directories",
                    limit: MAX_TREE_DIRS,
                });
            }
        }
        memo.insert(id, e);
        Ok(e)
    }
}
