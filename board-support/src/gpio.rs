//! One GPIO line of a Linux GPIO character device (`/dev/gpiochipN`) as an
//! `embedded_hal::digital::OutputPin`: the status LED of boards that wire it
//! to a GPIO instead of declaring it as an LED class device.
//!
//! A thin backend of the kernel's GPIO v2 uAPI (`linux/gpio.h`, Linux 5.10+):
//! `GPIO_V2_GET_LINE_IOCTL` on the chip requests the line as an output and
//! returns a line descriptor, `GPIO_V2_LINE_SET_VALUES_IOCTL` on that sets it.
//! The line is released when the pin is dropped. linux-embedded-hal would bring
//! the same through `gpio-cdev`, `nix` and the sysfs, serial, SPI and I2C
//! backends, far more than two ioctls (see the README for the size).
//!
//! The structures are the kernel's, `#[repr(C)]` with the same field types, so
//! their sizes and alignments are those of the C structs on every 64-bit and
//! 32-bit Linux ABI (the kernel pads them to be); the sizes are asserted in
//! the tests and encoded in the ioctl numbers.

use std::fs::File;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;

use rustix::ioctl::{ioctl, opcode, Getter, Updater};

const GPIO_MAX_NAME_SIZE: usize = 32;
const GPIO_V2_LINES_MAX: usize = 64;
const GPIO_V2_LINE_NUM_ATTRS_MAX: usize = 10;

const GPIO_V2_LINE_FLAG_USED: u64 = 1 << 0;
const GPIO_V2_LINE_FLAG_ACTIVE_LOW: u64 = 1 << 1;
const GPIO_V2_LINE_FLAG_OUTPUT: u64 = 1 << 3;
const GPIO_V2_LINE_ATTR_ID_OUTPUT_VALUES: u32 = 2;

/// `struct gpiochip_info`.
#[repr(C)]
#[derive(Clone, Copy)]
struct ChipInfo {
    name: [u8; GPIO_MAX_NAME_SIZE],
    label: [u8; GPIO_MAX_NAME_SIZE],
    lines: u32,
}

/// `struct gpio_v2_line_attribute` (the union as its 64-bit member).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct LineAttribute {
    id: u32,
    padding: u32,
    value: u64,
}

/// `struct gpio_v2_line_config_attribute`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct LineConfigAttribute {
    attr: LineAttribute,
    mask: u64,
}

/// `struct gpio_v2_line_config`.
#[repr(C)]
#[derive(Clone, Copy)]
struct LineConfig {
    flags: u64,
    num_attrs: u32,
    padding: [u32; 5],
    attrs: [LineConfigAttribute; GPIO_V2_LINE_NUM_ATTRS_MAX],
}

/// `struct gpio_v2_line_request`.
#[repr(C)]
#[derive(Clone, Copy)]
struct LineRequest {
    offsets: [u32; GPIO_V2_LINES_MAX],
    consumer: [u8; GPIO_MAX_NAME_SIZE],
    config: LineConfig,
    num_lines: u32,
    event_buffer_size: u32,
    padding: [u32; 5],
    fd: i32,
}

/// `struct gpio_v2_line_info`.
#[repr(C)]
#[derive(Clone, Copy)]
struct LineInfo {
    name: [u8; GPIO_MAX_NAME_SIZE],
    consumer: [u8; GPIO_MAX_NAME_SIZE],
    offset: u32,
    num_attrs: u32,
    flags: u64,
    attrs: [LineAttribute; GPIO_V2_LINE_NUM_ATTRS_MAX],
    padding: [u32; 4],
}

/// `struct gpio_v2_line_values`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct LineValues {
    bits: u64,
    mask: u64,
}

const GET_CHIPINFO: rustix::ioctl::Opcode = opcode::read::<ChipInfo>(0xB4, 0x01);
const GET_LINEINFO: rustix::ioctl::Opcode = opcode::read_write::<LineInfo>(0xB4, 0x05);
const GET_LINE: rustix::ioctl::Opcode = opcode::read_write::<LineRequest>(0xB4, 0x07);
const SET_VALUES: rustix::ioctl::Opcode = opcode::read_write::<LineValues>(0xB4, 0x0F);

/// What the chip says about one of its lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineState {
    /// The chip's line count.
    pub lines: u32,
    /// Who holds the line, if anyone (`None`: free).
    pub consumer: Option<String>,
}

fn cstr(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

fn open_chip(chip: &Path) -> io::Result<File> {
    let f = atomup_fsio::open_storage_rw(chip)?;
    let t = f.metadata()?.file_type();
    if !std::os::unix::fs::FileTypeExt::is_char_device(&t) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a character device (a GPIO chip is /dev/gpiochipN)",
        ));
    }
    Ok(f)
}

/// Reads the chip's line count and whether `line` is in use, without
/// requesting it (what `atomup board check` asks).
pub fn probe(chip: &Path, line: u32) -> io::Result<LineState> {
    let f = open_chip(chip)?;
    // SAFETY: GPIO_GET_CHIPINFO_IOCTL fills a `struct gpiochip_info`, which
    // `ChipInfo` is field for field.
    let info: ChipInfo = unsafe { ioctl(&f, Getter::<GET_CHIPINFO, ChipInfo>::new()) }?;
    if line >= info.lines {
        return Ok(LineState {
            lines: info.lines,
            consumer: Some(format!(
                "(no such line: {} has {} lines)",
                cstr(&info.name),
                info.lines
            )),
        });
    }
    let mut li = LineInfo {
        name: [0; GPIO_MAX_NAME_SIZE],
        consumer: [0; GPIO_MAX_NAME_SIZE],
        offset: line,
        num_attrs: 0,
        flags: 0,
        attrs: [LineAttribute::default(); GPIO_V2_LINE_NUM_ATTRS_MAX],
        padding: [0; 4],
    };
    // SAFETY: GPIO_V2_GET_LINEINFO_IOCTL reads `offset` and fills the rest of
    // a `struct gpio_v2_line_info` (padding zeroed, as the kernel requires).
    unsafe { ioctl(&f, Updater::<GET_LINEINFO, LineInfo>::new(&mut li)) }?;
    Ok(LineState {
        lines: info.lines,
        consumer: (li.flags & GPIO_V2_LINE_FLAG_USED != 0).then(|| {
            let c = cstr(&li.consumer);
            if c.is_empty() {
                "(used by the kernel)".into()
            } else {
                c
            }
        }),
    })
}

/// A requested output line; released when dropped.
pub struct GpioLine {
    line: File,
}

impl GpioLine {
    /// Requests `line` of `chip` as an output, initially inactive (LED off),
    /// as `consumer` (shown by `gpioinfo`). `active_low`: the LED lights
    /// when the line is low; `set_high` then drives it low.
    pub fn request(
        chip: &Path,
        line: u32,
        active_low: bool,
        consumer: &str,
    ) -> io::Result<GpioLine> {
        let f = open_chip(chip)?;
        let mut req = LineRequest {
            offsets: [0; GPIO_V2_LINES_MAX],
            consumer: [0; GPIO_MAX_NAME_SIZE],
            config: LineConfig {
                flags: GPIO_V2_LINE_FLAG_OUTPUT
                    | if active_low {
                        GPIO_V2_LINE_FLAG_ACTIVE_LOW
                    } else {
                        0
                    },
                num_attrs: 1,
                padding: [0; 5],
                attrs: [LineConfigAttribute::default(); GPIO_V2_LINE_NUM_ATTRS_MAX],
            },
            num_lines: 1,
            event_buffer_size: 0,
            padding: [0; 5],
            fd: -1,
        };
        req.offsets[0] = line;
        let name = consumer.as_bytes();
        let n = name.len().min(GPIO_MAX_NAME_SIZE - 1);
        req.consumer[..n].copy_from_slice(&name[..n]);
        // Initial value: inactive, for the one requested line (mask bit 0).
        req.config.attrs[0] = LineConfigAttribute {
            attr: LineAttribute {
                id: GPIO_V2_LINE_ATTR_ID_OUTPUT_VALUES,
                padding: 0,
                value: 0,
            },
            mask: 1,
        };
        // SAFETY: GPIO_V2_GET_LINE_IOCTL reads a `struct gpio_v2_line_request`
        // (which `LineRequest` is, zeroed padding included) and writes the
        // new line descriptor into its `fd`.
        unsafe { ioctl(&f, Updater::<GET_LINE, LineRequest>::new(&mut req)) }?;
        if req.fd < 0 {
            return Err(io::Error::other(
                "the GPIO chip returned no line descriptor",
            ));
        }
        // SAFETY: on success the kernel installed `req.fd`, a new descriptor
        // owned by nobody else in this process.
        let line = File::from(unsafe { OwnedFd::from_raw_fd(req.fd) });
        Ok(GpioLine { line })
    }

    /// Drives the line active (`true`) or inactive.
    pub fn set(&mut self, active: bool) -> io::Result<()> {
        let mut v = LineValues {
            bits: u64::from(active),
            mask: 1,
        };
        // SAFETY: GPIO_V2_LINE_SET_VALUES_IOCTL reads a `struct
        // gpio_v2_line_values` on a line descriptor from GET_LINE.
        unsafe { ioctl(&self.line, Updater::<SET_VALUES, LineValues>::new(&mut v)) }?;
        Ok(())
    }
}

impl embedded_hal::digital::ErrorType for GpioLine {
    type Error = crate::led::LedError;
}

impl embedded_hal::digital::OutputPin for GpioLine {
    fn set_low(&mut self) -> Result<(), Self::Error> {
        self.set(false).map_err(crate::led::LedError)
    }

    fn set_high(&mut self) -> Result<(), Self::Error> {
        self.set(true).map_err(crate::led::LedError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The structures have the kernel's sizes (encoded in the ioctl numbers:
    /// a wrong one is refused by the kernel with ENOTTY, never misread).
    #[test]
    fn structures_have_the_kernel_sizes() {
        assert_eq!(std::mem::size_of::<ChipInfo>(), 68);
        assert_eq!(std::mem::size_of::<LineAttribute>(), 16);
        assert_eq!(std::mem::size_of::<LineConfigAttribute>(), 24);
        assert_eq!(std::mem::size_of::<LineConfig>(), 272);
        assert_eq!(std::mem::size_of::<LineRequest>(), 592);
        assert_eq!(std::mem::size_of::<LineInfo>(), 256);
        assert_eq!(std::mem::size_of::<LineValues>(), 16);
        // _IOWR(0xB4, 0x07, struct gpio_v2_line_request) from linux/gpio.h.
        assert_eq!(GET_LINE as u64, 0xC250_B407);
        assert_eq!(SET_VALUES as u64, 0xC010_B40F);
        assert_eq!(GET_CHIPINFO as u64, 0x8044_B401);
    }

    /// Anything but a character device is refused before any ioctl; a
    /// character device that is not a GPIO chip fails the ioctl cleanly.
    #[test]
    fn a_file_that_is_not_a_gpio_chip_is_refused() {
        let path = std::env::temp_dir().join(format!("atomup-gpio-{}", std::process::id()));
        std::fs::write(&path, b"").unwrap();
        let e = GpioLine::request(&path, 0, false, "test").err().unwrap();
        assert!(e.to_string().contains("not a character device"), "{e}");
        std::fs::remove_file(&path).unwrap();
        let e = GpioLine::request(Path::new("/dev/null"), 0, false, "test")
            .err()
            .unwrap();
        assert_eq!(
            e.raw_os_error(),
            Some(rustix::io::Errno::NOTTY.raw_os_error()),
            "{e}"
        );
        assert!(probe(Path::new("/dev/null"), 0).is_err());
    }
}
