//! What an apply reports: counts of what it wrote and reused, and where the
//! time went. Each phase adds to it.

use std::time::Duration;

use atomup_ostree::ObjectId;

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
    /// From-commit, fallbacks, target (nothing written yet; the delta itself
    /// was verified before `apply`).
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
