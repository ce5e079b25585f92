//! U-Boot env storage described by an `/etc/fw_env.config` (devices or plain
//! files, e.g. a disk image). Redundant envs are written the libubootenv way:
//! the whole NON-current copy with flags+1, then fsync, so the current copy is
//! untouched until the new one is complete and a power cut at any byte leaves
//! one valid copy. A single-copy env is rewritten in place: a cut mid-write
//! leaves a CRC-invalid copy, U-Boot then uses its built-in default env and
//! the A/B variables are gone (the boot script falls back to slot A); single
//! copy cannot be made crash-safe and is supported for existing boards only.

use crate::io::{read_at, write_at};
use crate::{BootctlError, Bootloader};
use atomup_bootenv::uboot::{self, FlagScheme, Layout, Redundant};
use atomup_bootenv::{EnvDevice, FwEnvConfig, Vars};
use std::path::{Path, PathBuf};

/// Largest fw_env.config read (a few lines in practice).
pub const MAX_CONFIG: u64 = 64 * 1024;

#[derive(Debug, Clone)]
pub struct UbootEnv {
    devices: Vec<EnvDevice>,
    base: PathBuf,
}

impl UbootEnv {
    /// Reads an fw_env.config; relative device paths resolve against `base`.
    pub fn from_config_file(path: &Path, base: &Path) -> Result<UbootEnv, BootctlError> {
        let text = atomup_fsio::read_capped(path, MAX_CONFIG)
            .map_err(crate::io::io_err(path, "reading fw_env.config"))?;
        let cfg = FwEnvConfig::parse(&text).map_err(|source| BootctlError::Config {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_config(cfg, base)
    }

    pub fn from_config(cfg: FwEnvConfig, base: &Path) -> Result<UbootEnv, BootctlError> {
        for d in &cfg.devices {
            // MTD flash needs erase-before-write and the boolean flag scheme,
            // which this backend does not drive.
            if d.path.starts_with("/dev/mtd") || d.path.starts_with("/dev/ubi") {
                return Err(BootctlError::Unsupported(format!(
                    "MTD/UBI env device {}",
                    d.path
                )));
            }
            if !usize::try_from(d.size)
                .is_ok_and(|s| (uboot::MIN_COPY_SIZE..=16 << 20).contains(&s))
            {
                return Err(BootctlError::Unsupported(format!("env size {:#x}", d.size)));
            }
        }
        Ok(UbootEnv {
            devices: cfg.devices,
            base: base.to_path_buf(),
        })
    }

    /// The QEMU layout: both copies in one image at 0x80000 and 0x84000.
    pub fn qemu_image(image: &Path) -> UbootEnv {
        let dev = |offset| EnvDevice {
            path: image.to_string_lossy().into_owned(),
            offset,
            size: 0x4000,
            erase_size: None,
            sectors: None,
        };
        UbootEnv {
            devices: vec![dev(0x80000), dev(0x84000)],
            base: PathBuf::from("."),
        }
    }

    fn path(&self, d: &EnvDevice) -> PathBuf {
        self.base.join(&d.path)
    }

    fn size(d: &EnvDevice) -> usize {
        // Checked at construction to fit.
        usize::try_from(d.size).unwrap_or(0)
    }

    fn read_raw(&self, d: &EnvDevice) -> Result<Vec<u8>, BootctlError> {
        read_at(&self.path(d), d.offset, Self::size(d))
    }

    fn layout(&self) -> Layout {
        if self.devices.len() == 2 {
            Layout::Redundant
        } else {
            Layout::Single
        }
    }

    /// Both copies parsed (redundant envs only).
    pub fn read_redundant(&self) -> Result<Redundant, BootctlError> {
        match self.devices.as_slice() {
            [a, b] => Ok(Redundant::parse(
                &self.read_raw(a)?,
                &self.read_raw(b)?,
                FlagScheme::Incremental,
            )),
            _ => Err(BootctlError::Unsupported(
                "single-copy env has no second copy".into(),
            )),
        }
    }

    fn write_copy(&self, index: usize, vars: &Vars, flags: u8) -> Result<(), BootctlError> {
        let d = self
            .devices
            .get(index)
            .ok_or_else(|| BootctlError::Unsupported("missing env copy".into()))?;
        let bytes =
            uboot::serialize_copy(vars, self.layout(), Self::size(d), flags).map_err(|source| {
                BootctlError::Format {
                    what: "serializing the U-Boot env",
                    source: source.into(),
                }
            })?;
        write_at(&self.path(d), d.offset, &bytes)
    }
}

/// libubootenv's lock file: holding it while we read-modify-write keeps a
/// concurrent `fw_setenv` from picking the same target copy.
const LOCK_FILE: &str = "/var/lock/fw_printenv.lock";

/// Held for the duration of one env write; dropped = unlocked.
struct EnvLock(#[allow(dead_code)] Option<std::fs::File>);

fn lock() -> Result<EnvLock, BootctlError> {
    let path = Path::new(LOCK_FILE);
    if !path.parent().is_some_and(Path::exists) {
        return Ok(EnvLock(None)); // no /var/lock (initramfs, minimal rootfs): nobody to race
    }
    let f = atomup_fsio::open_rw(path, true)
        .map_err(crate::io::io_err(path, "opening the env lock file"))?;
    rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| crate::io::io_err(path, "locking the env")(e.into()))?;
    Ok(EnvLock(Some(f)))
}

impl Bootloader for UbootEnv {
    fn read(&mut self) -> Result<Option<Vars>, BootctlError> {
        match self.devices.as_slice() {
            [single] => Ok(uboot::parse_copy(&self.read_raw(single)?, Layout::Single)
                .ok()
                .map(|c| c.vars)),
            _ => Ok(self.read_redundant()?.vars().cloned()),
        }
    }

    fn write(&mut self, vars: &Vars) -> Result<(), BootctlError> {
        let _lock = lock()?;
        match self.devices.len() {
            1 => self.write_copy(0, vars, 0),
            _ => {
                let r = self.read_redundant()?;
                let (index, flags) = r.next_write(FlagScheme::Incremental);
                self.write_copy(index, vars, flags)
            }
        }
    }

    fn init(&mut self, vars: &Vars) -> Result<(), BootctlError> {
        let _lock = lock()?;
        if self.devices.len() == 2 {
            // Older copy first: a cut between the two leaves copy 2 valid.
            self.write_copy(1, vars, 0)?;
        }
        self.write_copy(0, vars, 1)
    }

    fn describe(&self) -> String {
        let copies: Vec<String> = self
            .devices
            .iter()
            .map(|d| format!("{}@{:#x}+{:#x}", self.path(d).display(), d.offset, d.size))
            .collect();
        format!("U-Boot env {}", copies.join(", "))
    }
}
