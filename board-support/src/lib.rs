//! Board profiles: where a board keeps its slots and its boot environment,
//! and which bootloader reads it, so the agent carries no board knowledge.
//! A profile is a small `key = value` file (`/etc/atomup/board.conf`) shipped in
//! the root image; parsing is pure. The board's status LED and hardware
//! watchdog are reached through small I/O adapters (`led`, `watchdog`).

pub mod led;
pub mod watchdog;

use atomup_policy::Slot;
use std::path::PathBuf;

/// Where the device reads its profile unless told otherwise.
pub const DEFAULT_PATH: &str = "/etc/atomup/board.conf";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bootloader {
    /// U-Boot env described by an `fw_env.config`-format file.
    UBoot { env_config: PathBuf },
    /// GRUB env block pair (`PATH`, `PATH` + "2") on the ESP.
    Grub { grubenv: PathBuf },
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
    /// Hardware watchdog armed while a trial boot's health check runs.
    pub watchdog: Option<PathBuf>,
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
}

impl Board {
    /// The QEMU `virt` machine of `qemu/`: GPT with boot, root A, root B, data
    /// on the first virtio disk; U-Boot's A/B env raw on that disk.
    pub fn qemu_virt_uboot() -> Board {
        Board {
            name: "qemu-virt".into(),
            bootloader: Bootloader::UBoot {
                env_config: "/etc/fw_env.config".into(),
            },
            slot_a: "/dev/vda2".into(),
            slot_b: "/dev/vda3".into(),
            data: Some("/dev/vda4".into()),
            watchdog: Some("/dev/watchdog".into()),
        }
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
    pub fn parse(text: &str) -> Result<Board, BoardError> {
        let mut fields: [Option<&str>; 7] = [None; 7];
        const KEYS: [&str; 7] = [
            "board",
            "bootloader",
            "env",
            "slot.A",
            "slot.B",
            "data",
            "watchdog",
        ];
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
        let [name, bootloader, env, slot_a, slot_b, data, watchdog] = fields;
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
        Ok(Board {
            name: name.ok_or(BoardError::Missing("board"))?.into(),
            bootloader,
            slot_a: path(slot_a, "slot.A")?.ok_or(BoardError::Missing("slot.A"))?,
            slot_b: path(slot_b, "slot.B")?.ok_or(BoardError::Missing("slot.B"))?,
            data: path(data, "data")?,
            watchdog: path(watchdog, "watchdog")?,
        })
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

    /// The shipped QEMU profile parses to the built-in one.
    #[test]
    fn qemu_profile_parses_to_the_builtin() {
        assert_eq!(Board::parse(QEMU).unwrap(), Board::qemu_virt_uboot());
        assert_eq!(
            Board::qemu_virt_uboot().slot_device(Slot::B),
            std::path::Path::new("/dev/vda3")
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
