//! Metadata objects (dirtree, dirmeta) by checksum, each read from disk and
//! verified at most once per apply: the seed, reconciliation, verification
//! and the metadata output all walk mostly the same dirtrees and a handful
//! of dirmetas, and reading one back costs an open, a read and a SHA-256.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use atomup_ostree::object::ObjectType;
use atomup_ostree::ObjectId;

use crate::apply::read_meta;
use crate::error::Result;

/// Verified metadata objects: the delta's own and those read so far. Every
/// object in it hashed to its key when it was added, so a lookup needs no
/// second check. Shared by the threads of an apply.
pub(crate) struct MetaStore<'a> {
    /// Object stores read from, in order (`--from-meta`, the fallback repo).
    dirs: Vec<&'a Path>,
    known: Mutex<HashMap<ObjectId, Arc<[u8]>>>,
}

impl<'a> MetaStore<'a> {
    pub fn new(dirs: Vec<&'a Path>) -> Self {
        MetaStore {
            dirs,
            known: Mutex::new(HashMap::new()),
        }
    }

    /// Adds an object the delta delivered (the executor verified its checksum).
    pub fn insert(&self, id: ObjectId, bytes: &[u8]) {
        self.lock().insert(id, bytes.into());
    }

    /// Object `id`: known already, else read from the first store holding it
    /// and re-hashed before use.
    pub fn get(&self, id: &ObjectId, ty: ObjectType) -> Result<Arc<[u8]>> {
        if let Some(b) = self.lock().get(id) {
            return Ok(b.clone());
        }
        // Read without the lock held: another thread may read the same object
        // meanwhile, which only costs a second read.
        let bytes: Arc<[u8]> = read_meta(&self.dirs, id, ty)?.into();
        self.lock().insert(*id, bytes.clone());
        Ok(bytes)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectId, Arc<[u8]>>> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }
}
