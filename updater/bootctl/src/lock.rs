//! The env lock a [`crate::Snapshot`] holds from load to store, so no other
//! writer picks the same target copy in between: libubootenv's
//! `/var/lock/fw_printenv.lock` for U-Boot envs (shared with `fw_setenv`),
//! an `flock` on the grubenv's directory for GRUB (atomup against atomup;
//! `grub-editenv` takes no lock). Taking it never hangs: a lock still held
//! after [`WAIT`] is an error naming it.

use crate::io::io_err;
use crate::BootctlError;
use std::fs::File;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long a lock held by someone else is waited for.
pub const WAIT: Duration = Duration::from_secs(60);

/// Held while alive; dropped = unlocked.
#[derive(Debug)]
pub(crate) struct EnvLock(#[allow(dead_code)] File);

fn flock(f: File, path: &Path) -> Result<EnvLock, BootctlError> {
    use rustix::fs::FlockOperation::NonBlockingLockExclusive;
    let start = Instant::now();
    loop {
        match rustix::fs::flock(&f, NonBlockingLockExclusive) {
            Ok(()) => return Ok(EnvLock(f)),
            Err(rustix::io::Errno::WOULDBLOCK) if start.elapsed() < WAIT => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(rustix::io::Errno::WOULDBLOCK) => {
                return Err(BootctlError::Locked {
                    path: path.to_path_buf(),
                })
            }
            Err(e) => return Err(io_err("locking the env", path)(e.into())),
        }
    }
}

/// libubootenv's lock file; `None` where its directory does not exist
/// (initramfs, minimal rootfs: nobody to race).
pub(crate) fn lock_file(path: &Path) -> Result<Option<EnvLock>, BootctlError> {
    if !path.parent().is_some_and(Path::exists) {
        return Ok(None);
    }
    let f = atomup_fsio::open_rw(path, true).map_err(io_err("opening the env lock file", path))?;
    flock(f, path).map(Some)
}

/// A lock on a directory (the grubenv's), `None` if it does not exist.
pub(crate) fn lock_dir(dir: &Path) -> Result<Option<EnvLock>, BootctlError> {
    match atomup_fsio::open(dir, atomup_fsio::Want::Directory) {
        Ok(f) => flock(f, dir).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("opening the env directory", dir)(e)),
    }
}
