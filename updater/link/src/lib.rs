//! Decisions a device on a slow, flaky, metered link makes about its
//! transfers, kept pure so each rule has a unit test and none reads a clock:
//! time comes in as a parameter (milliseconds of a monotonic clock, or unix
//! seconds where a calendar matters) and so does randomness (a `u64` drawn by
//! the caller). The fetcher and the daemon do the I/O and call these.
//!
//! | module | decides |
//! |---|---|
//! | [`rate`] | how long to wait before the next bytes so a bandwidth cap holds |
//! | [`budget`] | whether a download fits the per-update and monthly data budgets |
//! | [`backoff`] | how long to wait before retry n, and when the next poll is |
//! | [`speed`] | whether a transfer is too slow to keep (low-speed abort) |

pub mod backoff;
pub mod budget;
pub mod rate;
pub mod speed;
