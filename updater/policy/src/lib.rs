//! Pure policy: what the device should do, as functions of their inputs
//! (time is a parameter). Nothing here reads or writes a disk.

pub mod slot;
pub mod update;

pub use slot::{BootChoice, BootOutcome, BootState, Slot, StateError};
