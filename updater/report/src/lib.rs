//! What the agent tells people and programs while it works and after:
//!
//! - [`progress`]: the state of an update in progress, rendered as a live
//!   line on a terminal, as rate-limited plain log lines otherwise, and as
//!   one JSON event per line for other programs (`--json`);
//! - [`document`]: the status report POSTed to the vendor after a poll that
//!   did something, a confirmation or a rollback;
//! - [`queue`]: reports waiting in the state directory while the link is
//!   down, bounded, delivered later in order;
//! - [`json`]: the small JSON writer all three use (the agent writes JSON, it
//!   never parses it, so no JSON library is in the device binary).

pub mod document;
pub mod json;
pub mod progress;
pub mod queue;
