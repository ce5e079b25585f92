//! The Linux hardware watchdog (`/dev/watchdog`): armed by opening it, fed by
//! writing, disarmed only by the magic close ('V' then close). A trial boot
//! runs under it from early boot to the health verdict, so a hang resets the
//! board and the bootloader counts the attempt — nobody has to be there.
//!
//! Closed without the magic byte (a [`Watchdog`] dropped, or the process
//! gone), the timer keeps running: that is how early boot hands the armed
//! watchdog on to `atomup health`, which opens it again, feeds it while the
//! checks run and disarms it at the verdict.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

/// Dropped without `disarm` (an error path), the device is closed without the
/// magic byte: the timer keeps running and the board resets.
pub struct Watchdog {
    file: Option<File>,
}

impl Watchdog {
    /// Arms the watchdog: from now on the board resets unless fed. The open
    /// cannot block (a FIFO in its place would hang the health check it is
    /// meant to guard) and refuses anything but a character device (or a
    /// regular file, for tests).
    pub fn arm(device: &Path) -> std::io::Result<Watchdog> {
        let file = atomup_fsio::open_storage_rw(device)?;
        if file.metadata()?.file_type().is_block_device() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a block device, not a watchdog",
            ));
        }
        Ok(Watchdog { file: Some(file) })
    }

    /// Sets the timer's timeout (`WDIOC_SETTIMEOUT`) and returns the one the
    /// driver chose (it may round, or cap at its hardware limit).
    pub fn set_timeout(&mut self, seconds: u32) -> std::io::Result<u32> {
        use rustix::ioctl::{ioctl, opcode, Updater};
        const WDIOC_SETTIMEOUT: rustix::ioctl::Opcode =
            opcode::read_write::<std::ffi::c_int>(b'W', 6);
        let Some(f) = &self.file else {
            return Ok(seconds);
        };
        let mut t = std::ffi::c_int::try_from(seconds)
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        // SAFETY: WDIOC_SETTIMEOUT reads and writes back one `int`.
        unsafe { ioctl(f, Updater::<WDIOC_SETTIMEOUT, std::ffi::c_int>::new(&mut t)) }?;
        Ok(u32::try_from(t).unwrap_or(seconds))
    }

    pub fn feed(&mut self) -> std::io::Result<()> {
        match &mut self.file {
            Some(f) => f.write_all(b"\0"),
            None => Ok(()),
        }
    }

    /// Magic close: the driver stops the timer (unless built with nowayout).
    pub fn disarm(mut self) -> std::io::Result<()> {
        match self.file.take() {
            Some(mut f) => f.write_all(b"V"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeding writes keepalives and disarming ends with the magic 'V'.
    #[test]
    fn feed_then_magic_close() {
        let path = std::env::temp_dir().join(format!("atomup-wdt-{}", std::process::id()));
        std::fs::write(&path, b"").unwrap();
        let mut w = Watchdog::arm(&path).unwrap();
        w.feed().unwrap();
        w.feed().unwrap();
        // A regular file has no timer to set: the ioctl fails, nothing is written.
        assert!(w.set_timeout(10).is_err());
        w.disarm().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"\0\0V");
        std::fs::remove_file(&path).unwrap();
    }
}
