//! `/etc` carried across updates. The root is immutable and replaced whole,
//! yet the device's own configuration must survive: at install time the
//! device's changes are merged three ways onto the new defaults ([`merge`],
//! pure) and laid down as the new slot's overlay upper layer on the data
//! partition. The README gives the design and its crash argument.

pub mod merge;

pub use merge::{diff, merge, upper, Change, Entry, Kind, Merged, Report, Tree, Upper};
