//! One install at a time on a device, whoever runs it: `execute` (the slot
//! written, the env flipped) holds an exclusive `flock` on
//! `STATE_DIR/install.lock` from its first record to its last env write. The
//! daemon's network poll, its bundle watch, `atomup update` and the udev
//! stick's `atomup install` are separate processes at times; a second one
//! waits here (said once), then finds the env changed by the first and is
//! refused by `execute`'s own check before it writes anything.
//!
//! The file's content is nothing; the lock dies with the process (a kill -9,
//! a power cut), so it never needs cleaning. Downloads and extractions take
//! no lock: a slow one never holds up another device update.

use crate::error::Result;
use crate::progress::Reporter;
use rustix::fs::{flock, FlockOperation};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The lock's name in the state directory.
pub const NAME: &str = "install.lock";

/// Held while it lives.
pub struct Held(#[allow(dead_code)] std::fs::File);

/// Takes the lock, waiting for another install to end; `cancel` (the
/// daemon's stop flag) ends the wait with an error, nothing written.
pub fn take(
    state_dir: &Path,
    cancel: Option<&'static AtomicBool>,
    rep: &mut Reporter,
) -> Result<Held> {
    let path = state_dir.join(NAME);
    let file = atomup_fsio::open_rw(&path, true)
        .map_err(|e| format!("opening the install lock {}: {e}", path.display()))?;
    let mut said = false;
    loop {
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(Held(file)),
            Err(rustix::io::Errno::WOULDBLOCK) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(format!("locking {}: {e}", path.display()).into()),
        }
        if !said {
            rep.say(&format!(
                "waiting for another atomup install to finish ({} is locked)",
                path.display()
            ));
            said = true;
        }
        if cancel.is_some_and(|c| c.load(Ordering::SeqCst)) {
            return Err("stopped while waiting for another install: nothing was written".into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
