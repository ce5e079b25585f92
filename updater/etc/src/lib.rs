//! `/etc` carried across updates. The root is immutable and replaced whole,
//! yet the device's own configuration must survive: at install time the
//! device's changes are merged three ways onto the new defaults ([`merge`],
//! pure) and laid down as the new slot's overlay upper layer on the data
//! partition ([`layer`]), which is mounted on `/etc` at boot ([`mount`]).
//! The README gives the design and its crash argument.

// Fault points cut the layer's writes like a power cut: they must never
// reach an optimized binary, whatever feature unification does.
#[cfg(all(feature = "failpoints", not(debug_assertions)))]
compile_error!(
    "atomup-etc feature `failpoints` (fault injection) in a build without debug assertions: \
     it is for tests only and must never reach a release binary"
);

pub mod carry;
pub mod error;
pub mod failpoint;
mod fsutil;
pub mod layer;
pub mod merge;
pub mod mount;
pub mod owned;
pub mod record;
pub mod tree;
pub mod walk;

pub use carry::{carry, config_diff, read_owned, Carried, Carry, ConfigDiff};
pub use error::{EtcError, Result};
pub use merge::{diff, merge, upper, Change, Entry, Kind, Merged, Report, Tree, Upper};

/// Fuzz/corpus entry points: each takes arbitrary bytes and must never panic.
pub mod fuzz {
    use crate::owned::Owned;
    use crate::record::MergeRecord;

    /// The vendor-owned list and the merge record over the same bytes; a
    /// record that parses must round-trip.
    pub fn lists(data: &[u8]) {
        if let Ok(o) = Owned::parse(data) {
            let _ = o.owns("a/b");
        }
        if let Ok(r) = MergeRecord::parse(data) {
            let again = MergeRecord::parse(r.serialize().as_bytes());
            assert_eq!(again.as_ref(), Ok(&r), "record round trip");
        }
    }
}
