//! Checksums read back from files the engine wrote into the target: the seed
//! records them, the verification trusts them only while the file is
//! unchanged since (same inode, ctime and size: any write, chmod or chown
//! moves the ctime).

use std::collections::HashMap;

use atomup_ostree::ObjectId;

/// A content checksum read back from a file in the target.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Hashed {
    pub id: ObjectId,
    pub ctime: (i64, u64),
    pub size: u64,
}

/// Checksums of regular files already read back, by (device, inode).
pub(crate) type HashCache = HashMap<(u64, u64), Hashed>;

/// (ctime seconds, nanoseconds) of a stat result, whatever the platform's field types.
#[allow(clippy::unnecessary_cast)]
pub(crate) fn ctime(s: &rustix::fs::Stat) -> (i64, u64) {
    (s.st_ctime as i64, s.st_ctime_nsec as u64)
}
