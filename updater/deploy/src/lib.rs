//! Device-side update I/O: turns a verified static delta plus the active root
//! into the inactive slot's tree, and proves the result equals the commit.

mod apply;
mod error;
mod fsx;
mod meta;
mod seed;
mod verify;

pub use apply::{
    apply, show, DeltaInfo, Options, Stats, Timings, MAX_DEPTH, MAX_SUPERBLOCK, STAGING,
};
pub use error::{DeployError, Result};

/// Hashes the tree under `root` into its (dirtree, dirmeta) checksums, the way
/// OSTree would commit it. Used to compare a written tree with a commit.
pub fn tree_checksum(
    root: &std::path::Path,
) -> Result<(atomup_ostree::ObjectId, atomup_ostree::ObjectId)> {
    let fd = fsx::open_root(root)?;
    verify::hash_tree(&fd, root, &seed::HashCache::new(), None, &|_| None)
}
