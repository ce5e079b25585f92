//! The status LED as an `embedded-hal` output pin, so health and update code
//! can drive it the same way on any board: a sysfs LED
//! (`/sys/class/leds/<name>/brightness`) here, a GPIO line in `gpio`.

use std::io::Write;
use std::path::{Path, PathBuf};

/// A Linux LED class device.
pub struct SysfsLed {
    brightness: PathBuf,
}

impl SysfsLed {
    pub fn new(led_dir: &Path) -> SysfsLed {
        SysfsLed {
            brightness: led_dir.join("brightness"),
        }
    }

    /// The `brightness` attribute this LED writes.
    pub fn brightness(&self) -> &Path {
        &self.brightness
    }

    /// Opened per write, without blocking and only as a regular file (sysfs
    /// attributes are): a FIFO planted there cannot hang the agent.
    fn set(&mut self, on: bool) -> std::io::Result<()> {
        let mut f = atomup_fsio::open_rw(&self.brightness, false)?;
        f.write_all(if on { b"1\n" } else { b"0\n" })
    }
}

#[derive(Debug)]
pub struct LedError(pub std::io::Error);

impl embedded_hal::digital::Error for LedError {
    fn kind(&self) -> embedded_hal::digital::ErrorKind {
        embedded_hal::digital::ErrorKind::Other
    }
}

impl embedded_hal::digital::ErrorType for SysfsLed {
    type Error = LedError;
}

impl embedded_hal::digital::OutputPin for SysfsLed {
    fn set_low(&mut self) -> Result<(), LedError> {
        self.set(false).map_err(LedError)
    }

    fn set_high(&mut self) -> Result<(), LedError> {
        self.set(true).map_err(LedError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_hal::digital::OutputPin;

    /// Driving the pin writes the sysfs brightness values the LED class expects.
    #[test]
    fn pin_writes_sysfs_brightness() {
        let dir = std::env::temp_dir().join(format!("atomup-led-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("brightness"), "0\n").unwrap();
        let mut led = SysfsLed::new(&dir);
        led.set_high().unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("brightness")).unwrap(),
            "1\n"
        );
        led.set_low().unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("brightness")).unwrap(),
            "0\n"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
