//! Device-side update I/O: turns a verified static delta plus the active root
//! into the inactive slot's tree, and proves the result equals the commit.
//!
//! The pipeline, each stage a module (`apply` runs them in this order):
//! `delta` (verify the superblock and parts once) → `oldroot` / `fallback`
//! checks → `staging` → `parts` (ops into staging) ∥ `seed` (old tree into
//! the target) → `meta` (expansion bound) → `reconcile` (with `objects`) →
//! `verify` → `persist`. Below them: `identity` (public: on-disk checksums
//! for other crates), `nofollow` (the no-follow file layer),
//! `readback`, `limits`, `stats`, `error`; nothing below imports above.

mod apply;
mod delta;
mod error;
#[cfg(feature = "archive-fallback")]
mod fallback;
pub mod gzip_helper;
pub mod identity;
pub mod limits;
mod meta;
mod nofollow;
mod objects;
mod oldroot;
mod parts;
mod persist;
mod readback;
mod reconcile;
mod seed;
mod staging;
mod stats;
mod verify;

pub use apply::{apply, Options};
pub use delta::{show, DeltaInfo, PartSpec, PartSummary, VerifiedDelta, VerifiedSuperblock};
pub use error::{DeployError, Result};
pub use staging::STAGING;
pub use stats::{Stats, Timings};

/// Hashes the tree under `root` into its (dirtree, dirmeta) checksums, the way
/// OSTree would commit it. Used to compare a written tree with a commit.
pub fn tree_checksum(
    root: &std::path::Path,
) -> Result<(atomup_ostree::ObjectId, atomup_ostree::ObjectId)> {
    let fd = nofollow::open_root(root)?;
    verify::hash_tree(&fd, root, &readback::HashCache::new(), None, &|_| None)
}

/// Metadata object `id` of type `ty` from the first object store in `dirs`
/// (OSTree layout `objects/xx/rest.<ext>`: a `--meta-out` or an archive
/// repo) that holds it: capped at OSTree's metadata size limit, opened so
/// that it cannot block, and re-hashed before it is returned.
pub fn read_metadata_object(
    dirs: &[&std::path::Path],
    id: &atomup_ostree::ObjectId,
    ty: atomup_ostree::ObjectType,
) -> Result<Vec<u8>> {
    meta::read_meta(dirs, id, ty)
}
