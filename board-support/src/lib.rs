//! Board profiles: where a board keeps its slots and its boot environment,
//! and which bootloader reads it, so the agent carries no board knowledge.
//! A profile is a small `key = value` file (`/etc/atomup/board.conf`) shipped in
//! the root image; parsing is pure. The shipped profiles are data
//! (`profiles/<name>/board.conf` next to their bootloader script, see
//! [`PROFILES`]). The board's status LED and hardware watchdog are reached
//! through small I/O adapters (`led`, `gpio`, `watchdog`); `status` holds the
//! LED's pattern per agent state, as pure data.

pub mod gpio;
pub mod led;
pub mod status;
pub mod watchdog;

use atomup_policy::Slot;
use std::path::PathBuf;

/// Where the device reads its profile unless told otherwise.
pub const DEFAULT_PATH: &str = "/etc/atomup/board.conf";

/// The profiles shipped with atomup (`profiles/<name>/board.conf`), by name.
pub const PROFILES: &[(&str, &str)] = &[
    (
        "qemu-virt-uboot",
        include_str!("../profiles/qemu-virt-uboot/board.conf"),
    ),
    (
        "qemu-virt-grub-efi",
        include_str!("../profiles/qemu-virt-grub-efi/board.conf"),
    ),
    (
        "rpi4-uboot",
        include_str!("../profiles/rpi4-uboot/board.conf"),
    ),
];

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bootloader {
    /// U-Boot env described by an `fw_env.config`-format file.
    UBoot { env_config: PathBuf },
    /// GRUB env block pair (`PATH`, `PATH` + "2") on the ESP.
    Grub { grubenv: PathBuf },
}

/// The board's status LED.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Led {
    /// A Linux LED class device (`/sys/class/leds/<name>`).
    Sysfs(PathBuf),
    /// One line of a GPIO character device (`/dev/gpiochipN`), driven as an
    /// output; `active_low` when the LED lights with the line low.
    Gpio {
        chip: PathBuf,
        line: u32,
        active_low: bool,
    },
}

/// One board: its name in release metadata, its bootloader and its partitions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Board {
    /// The `board` a release must name to be installed here.
    pub name: String,
    pub bootloader: Bootloader,
    /// Block devices of root slots A and B.
    pub slot_a: PathBuf,
    pub slot_b: PathBuf,
    /// The persistent data partition (`/var`).
    pub data: Option<PathBuf>,
    /// Hardware watchdog armed for a trial boot, from early boot to the
    /// health verdict.
    pub watchdog: Option<PathBuf>,
    /// The watchdog timeout set when it is armed for a trial (seconds);
    /// `None` keeps the driver's.
    pub watchdog_timeout: Option<u32>,
    /// The status LED.
    pub led: Option<Led>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BoardError {
    #[error("line {0}: expected `key = value`")]
    Syntax(usize),
    #[error("line {line}: unknown key `{key}`")]
    UnknownKey { line: usize, key: String },
    #[error("line {0}: key given twice")]
    Duplicate(usize),
    #[error("missing `{0}`")]
    Missing(&'static str),
    #[error("bootloader must be `uboot` or `grub`, got `{0}`")]
    Bootloader(String),
    #[error("`{0}` must be an absolute path")]
    NotAbsolute(&'static str),
    #[error("`{key}`: {why}")]
    Value { key: &'static str, why: String },
}

/// Largest watchdog timeout a profile may ask for: one hour (drivers cap far
/// lower; bcm2835-wdt at 15 s).
pub const MAX_WATCHDOG_TIMEOUT: u32 = 3600;

const KEYS: [&str; 10] = [
    "board",
    "bootloader",
    "env",
    "slot.A",
    "slot.B",
    "data",
    "watchdog",
    "watchdog.timeout",
    "led",
    "led.active_low",
];

impl Board {
    /// The QEMU `virt` machine of `qemu/` with U-Boot: the shipped
    /// `qemu-virt-uboot` profile.
    pub fn qemu_virt_uboot() -> Board {
        Board::shipped("qemu-virt-uboot").expect("the shipped qemu-virt-uboot profile parses")
    }

    /// A shipped profile by name ([`PROFILES`]).
    pub fn shipped(name: &str) -> Option<Board> {
        let (_, text) = PROFILES.iter().find(|(n, _)| *n == name)?;
        Board::parse(text).ok()
    }

    /// Block device of `slot`.
    pub fn slot_device(&self, slot: Slot) -> &std::path::Path {
        match slot {
            Slot::A => &self.slot_a,
            Slot::B => &self.slot_b,
        }
    }

    /// Parses a profile: `key = value` lines, `#` comments, every key once.
    ///
    /// | key | value |
    /// |---|---|
    /// | `board` | name releases must name |
    /// | `bootloader` | `uboot` or `grub` |
    /// | `env` | uboot: fw_env.config path (default /etc/fw_env.config); grub: grubenv path (required) |
    /// | `slot.A`, `slot.B` | block devices of the root slots |
    /// | `data` | data partition (optional) |
    /// | `watchdog` | watchdog device (optional) |
    /// | `watchdog.timeout` | seconds, 1..=3600, set when armed for a trial (optional) |
    /// | `led` | `/sys/class/leds/NAME` or `/dev/gpiochipN:LINE` (optional) |
    /// | `led.active_low` | `true` or `false` (GPIO LED only; default false) |
    pub fn parse(text: &str) -> Result<Board, BoardError> {
        let mut fields: [Option<&str>; KEYS.len()] = [None; KEYS.len()];
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = line.split_once('=').ok_or(BoardError::Syntax(i + 1))?;
            let (key, value) = (key.trim(), value.trim());
            if value.is_empty() {
                return Err(BoardError::Syntax(i + 1));
            }
            let k = KEYS
                .iter()
                .position(|k| *k == key)
                .ok_or_else(|| BoardError::UnknownKey {
                    line: i + 1,
                    key: key.into(),
                })?;
            if fields[k].replace(value).is_some() {
                return Err(BoardError::Duplicate(i + 1));
            }
        }
        let [name, bootloader, env, slot_a, slot_b, data, watchdog, watchdog_timeout, led, active_low] =
            fields;
        let path = |v: Option<&str>, what: &'static str| -> Result<Option<PathBuf>, BoardError> {
            match v {
                Some(p) if p.starts_with('/') => Ok(Some(p.into())),
                Some(_) => Err(BoardError::NotAbsolute(what)),
                None => Ok(None),
            }
        };
        let env = path(env, "env")?;
        let bootloader = match bootloader.ok_or(BoardError::Missing("bootloader"))? {
            "uboot" => Bootloader::UBoot {
                env_config: env.unwrap_or_else(|| "/etc/fw_env.config".into()),
            },
            "grub" => Bootloader::Grub {
                grubenv: env.ok_or(BoardError::Missing("env"))?,
            },
            other => return Err(BoardError::Bootloader(other.into())),
        };
        let watchdog = path(watchdog, "watchdog")?;
        let watchdog_timeout = match watchdog_timeout {
            None => None,
            Some(_) if watchdog.is_none() => {
                return Err(BoardError::Value {
                    key: "watchdog.timeout",
                    why: "given without `watchdog`".into(),
                })
            }
            Some(t) => Some(
                t.parse::<u32>()
                    .ok()
                    .filter(|t| (1..=MAX_WATCHDOG_TIMEOUT).contains(t))
                    .ok_or_else(|| BoardError::Value {
                        key: "watchdog.timeout",
                        why: format!(
                            "`{t}` is not a number of seconds from 1 to {MAX_WATCHDOG_TIMEOUT}"
                        ),
                    })?,
            ),
        };
        let active_low = match active_low {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                return Err(BoardError::Value {
                    key: "led.active_low",
                    why: format!("`{other}` is not `true` or `false`"),
                })
            }
        };
        let led = match led {
            None if active_low => {
                return Err(BoardError::Value {
                    key: "led.active_low",
                    why: "given without `led`".into(),
                })
            }
            None => None,
            Some(v) => Some(parse_led(v, active_low)?),
        };
        Ok(Board {
            name: name.ok_or(BoardError::Missing("board"))?.into(),
            bootloader,
            slot_a: path(slot_a, "slot.A")?.ok_or(BoardError::Missing("slot.A"))?,
            slot_b: path(slot_b, "slot.B")?.ok_or(BoardError::Missing("slot.B"))?,
            data: path(data, "data")?,
            watchdog,
            watchdog_timeout,
            led,
        })
    }
}

/// Fuzz entry point (`fuzz/fuzz_targets/board_profile.rs`, replayed by
/// `tests/fuzz_corpus.rs`): a profile of any bytes parses or is refused,
/// never panics; what parses names absolute paths only.
pub fn fuzz_profile(data: &[u8]) {
    if let Ok(Ok(b)) = std::str::from_utf8(data).map(Board::parse) {
        assert!(b.slot_a.is_absolute() && b.slot_b.is_absolute());
        assert!(b.data.as_ref().is_none_or(|d| d.is_absolute()));
    }
}

/// `led = /sys/class/leds/NAME` (a sysfs LED) or `/dev/gpiochipN:LINE` (a
/// GPIO line: the chip's path, a colon, the line's offset on that chip).
fn parse_led(v: &str, active_low: bool) -> Result<Led, BoardError> {
    if !v.starts_with('/') {
        return Err(BoardError::NotAbsolute("led"));
    }
    let gpio = v
        .rsplit_once(':')
        .filter(|(_, line)| !line.is_empty() && line.bytes().all(|b| b.is_ascii_digit()));
    match gpio {
        Some((chip, line)) => Ok(Led::Gpio {
            chip: chip.into(),
            line: line.parse().map_err(|_| BoardError::Value {
                key: "led",
                why: format!("line `{line}` is out of range"),
            })?,
            active_low,
        }),
        None if active_low => Err(BoardError::Value {
            key: "led.active_low",
            why: "only a GPIO LED has a polarity here (a sysfs LED's is set in its device tree)"
                .into(),
        }),
        None => Ok(Led::Sysfs(v.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QEMU: &str = "\
# QEMU virt, U-Boot
board = qemu-virt
bootloader = uboot
slot.A = /dev/vda2
slot.B = /dev/vda3
data = /dev/vda4
watchdog = /dev/watchdog
";

    /// Every shipped profile parses; the QEMU U-Boot one names the machine
    /// `qemu/` builds (slots, data, watchdog, the PL061 GPIO line as LED).
    #[test]
    fn shipped_profiles_parse() {
        for (name, text) in PROFILES {
            Board::parse(text).unwrap_or_else(|e| panic!("profile {name}: {e}"));
        }
        let q = Board::qemu_virt_uboot();
        assert_eq!(q.name, "qemu-virt");
        assert_eq!(q.slot_device(Slot::B), std::path::Path::new("/dev/vda3"));
        assert_eq!(q.data.as_deref(), Some(std::path::Path::new("/dev/vda4")));
        assert_eq!(
            q.led,
            Some(Led::Gpio {
                chip: "/dev/gpiochip0".into(),
                line: 0,
                active_low: false
            })
        );
        let g = Board::shipped("qemu-virt-grub-efi").unwrap();
        assert!(matches!(g.bootloader, Bootloader::Grub { .. }));
        let pi = Board::shipped("rpi4-uboot").unwrap();
        assert_eq!(pi.watchdog_timeout, Some(15));
        assert_eq!(pi.led, Some(Led::Sysfs("/sys/class/leds/ACT".into())));
    }

    /// A profile without the optional keys parses with them unset.
    #[test]
    fn optional_keys_default_to_unset() {
        let b = Board::parse(QEMU).unwrap();
        assert_eq!(b.watchdog_timeout, None);
        assert_eq!(b.led, None);
        assert_eq!(
            b.watchdog.as_deref(),
            Some(std::path::Path::new("/dev/watchdog"))
        );
    }

    /// A GRUB board names its grubenv; without it the profile is refused.
    #[test]
    fn grub_needs_its_env_path() {
        let grub = QEMU.replace("bootloader = uboot", "bootloader = grub");
        assert_eq!(Board::parse(&grub), Err(BoardError::Missing("env")));
        let grub = format!("{grub}env = /boot/efi/grub/grubenv\n");
        assert_eq!(
            Board::parse(&grub).unwrap().bootloader,
            Bootloader::Grub {
                grubenv: "/boot/efi/grub/grubenv".into()
            }
        );
    }

    /// `led` is a sysfs LED directory or `chip:line`; the polarity applies
    /// to GPIO lines only.
    #[test]
    fn led_values_parse_by_kind() {
        let with = |extra: &str| Board::parse(&format!("{QEMU}{extra}"));
        assert_eq!(
            with("led = /sys/class/leds/status\n").unwrap().led,
            Some(Led::Sysfs("/sys/class/leds/status".into()))
        );
        assert_eq!(
            with("led = /dev/gpiochip1:17\nled.active_low = true\n")
                .unwrap()
                .led,
            Some(Led::Gpio {
                chip: "/dev/gpiochip1".into(),
                line: 17,
                active_low: true
            })
        );
        assert_eq!(
            with("led = gpiochip0:3\n"),
            Err(BoardError::NotAbsolute("led"))
        );
        assert!(matches!(
            with("led = /sys/class/leds/x\nled.active_low = true\n"),
            Err(BoardError::Value {
                key: "led.active_low",
                ..
            })
        ));
        assert!(matches!(
            with("led.active_low = true\n"),
            Err(BoardError::Value {
                key: "led.active_low",
                ..
            })
        ));
        assert!(matches!(
            with("led = /dev/gpiochip0:1\nled.active_low = yes\n"),
            Err(BoardError::Value {
                key: "led.active_low",
                ..
            })
        ));
        assert!(matches!(
            with("led = /dev/gpiochip0:99999999999\n"),
            Err(BoardError::Value { key: "led", .. })
        ));
    }

    /// The trial watchdog timeout is whole seconds within range, and only
    /// with a watchdog.
    #[test]
    fn watchdog_timeout_is_checked() {
        assert_eq!(
            Board::parse(&format!("{QEMU}watchdog.timeout = 20\n"))
                .unwrap()
                .watchdog_timeout,
            Some(20)
        );
        for bad in ["0", "3601", "-1", "10s", "1.5"] {
            assert!(
                matches!(
                    Board::parse(&format!("{QEMU}watchdog.timeout = {bad}\n")),
                    Err(BoardError::Value {
                        key: "watchdog.timeout",
                        ..
                    })
                ),
                "{bad}"
            );
        }
        let no_wdt = QEMU.replace("watchdog = /dev/watchdog\n", "watchdog.timeout = 5\n");
        assert!(matches!(
            Board::parse(&no_wdt),
            Err(BoardError::Value {
                key: "watchdog.timeout",
                ..
            })
        ));
    }

    /// Typos, duplicates, relative paths and missing slots are refused, not guessed.
    #[test]
    fn malformed_profiles_are_refused() {
        assert_eq!(
            Board::parse(&QEMU.replace("slot.B", "slot.C")),
            Err(BoardError::UnknownKey {
                line: 5,
                key: "slot.C".into()
            })
        );
        assert_eq!(
            Board::parse(&format!("{QEMU}data = /dev/vda5\n")),
            Err(BoardError::Duplicate(8))
        );
        assert_eq!(
            Board::parse(&QEMU.replace("/dev/vda3", "vda3")),
            Err(BoardError::NotAbsolute("slot.B"))
        );
        assert_eq!(
            Board::parse(&QEMU.replace("slot.A = /dev/vda2\n", "")),
            Err(BoardError::Missing("slot.A"))
        );
        assert_eq!(Board::parse("board qemu\n"), Err(BoardError::Syntax(1)));
        assert_eq!(
            Board::parse(&QEMU.replace("uboot", "barebox")),
            Err(BoardError::Bootloader("barebox".into()))
        );
    }
}
