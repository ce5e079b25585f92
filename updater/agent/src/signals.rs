//! The daemon's signals: SIGTERM and SIGINT ask it to stop at the next safe
//! point, SIGHUP to reload its configuration. The handlers only set flags
//! (the one async-signal-safe thing to do); the daemon's loop, the downloads
//! (`atomup_fetch::Options::cancel`) and the apply wait look at them. They
//! are installed without `SA_RESTART`, so a sleep ends at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Set by SIGTERM or SIGINT.
pub static STOP: AtomicBool = AtomicBool::new(false);
/// Set by SIGHUP; cleared by whoever reloads.
pub static RELOAD: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(sig: libc::c_int) {
    if sig == libc::SIGHUP {
        RELOAD.store(true, Ordering::SeqCst);
    } else {
        STOP.store(true, Ordering::SeqCst);
    }
}

/// Installs the handlers for SIGTERM, SIGINT and SIGHUP.
pub fn install() -> std::io::Result<()> {
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction is valid (empty mask, no flags); the
        // handler only stores to atomics, which is async-signal-safe.
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Takes a pending reload request.
pub fn take_reload() -> bool {
    RELOAD.swap(false, Ordering::SeqCst)
}

/// Why a [`sleep`] ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Wake {
    Elapsed,
    Stop,
    Reload,
}

/// Sleeps up to `d`, ending early on SIGTERM/SIGINT or SIGHUP (the signal
/// interrupts the sleep). Each sleep is at most a second, so a signal that
/// lands between the look at the flags and the sleep is seen within a
/// second (an idle daemon wakes once a second, for microseconds of CPU).
pub fn sleep(d: Duration) -> Wake {
    let end = Instant::now() + d;
    loop {
        if stop_requested() {
            return Wake::Stop;
        }
        if RELOAD.load(Ordering::SeqCst) {
            return Wake::Reload;
        }
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Wake::Elapsed;
        }
        // Not std's sleep, which resumes after EINTR: nanosleep ends as
        // soon as a handler ran.
        let slice = left.min(Duration::from_secs(1));
        let _ = rustix::thread::nanosleep(&rustix::thread::Timespec {
            tv_sec: slice.as_secs() as _,
            tv_nsec: slice.subsec_nanos() as _,
        });
    }
}
