//! Signed release metadata: what a vendor promises a device about a release
//! (version, commit, expiry, deltas, rollout), in a canonical text form that is
//! small to fetch, trivial to sign byte-for-byte, and easy to check on a device.
//!
//! Everything here is pure: bytes and `now` in, typed values or a typed error out.

pub mod check;
pub mod format;
pub mod rollout;

pub use check::{check_release, DeviceFacts, Offer, ReleaseError};
pub use format::{release_path, Delta, DeltaSource, FormatError, Release, Wave};
pub use rollout::{bucket_of, eligible_at, is_eligible, RolloutSeed};

/// Entry points shared by the cargo-fuzz targets and the corpus replay test.
pub mod fuzz {
    /// Parse arbitrary bytes as a release body: never panics, and whatever
    /// parses re-serializes to the same bytes (the canonical-form promise).
    pub fn release_body(data: &[u8]) {
        if let Ok(r) = crate::Release::parse(data) {
            assert_eq!(r.to_canonical().as_bytes(), data);
        }
    }

    /// Verify arbitrary bytes as a signed release file: never panics.
    pub fn signed_release(data: &[u8]) {
        // Any valid key: the point is that no input panics the verifier.
        let public = "IVL40Zt5HSRFMkLhXy6rbLfP+ntqXtMAl5YOBpiB2xI=";
        let trust = atomup_ostree::sign::Trust::from_key_files(public, None)
            .expect("a well-formed public key");
        let _ = crate::check::verify_signed(data, &trust);
    }
}
