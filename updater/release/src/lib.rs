//! Signed release metadata: what a vendor promises a device about a release
//! (version, commit, expiry, deltas, rollout), in a canonical text form that is
//! small to fetch, trivial to sign byte-for-byte, and easy to check on a device.
//!
//! Everything here is pure: bytes and `now` in, typed values or a typed error out.

pub mod check;
pub mod format;
pub mod rollout;

pub use check::{check_release, DeviceFacts, Offer, ReleaseError};
pub use format::{Delta, DeltaSource, FormatError, Release, Wave};
pub use rollout::{bucket_of, eligible_at, is_eligible, RolloutSeed};
