//! U-Boot env storage described by an `/etc/fw_env.config` (devices or plain
//! files, e.g. a disk image). Redundant envs are written the libubootenv way:
//! the whole NON-current copy with flags+1, then fsync, so the current copy is
//! untouched until the new one is complete and a power cut at any byte leaves
//! one valid copy. A single-copy env is rewritten in place: a cut mid-write
//! leaves a CRC-invalid copy, U-Boot then uses its built-in default env and
//! the A/B variables are gone (the boot script falls back to slot A); single
//! copy cannot be made crash-safe and is supported for existing boards only.

use crate::io::{read_at, write_at};
use crate::{lock, BootctlError, Bootloader, Next, Snapshot};
use atomup_bootenv::uboot::{self, FlagScheme, Layout, Redundant};
use atomup_bootenv::{EnvDevice, FwEnvConfig, Vars};
use std::path::{Path, PathBuf};

/// Largest fw_env.config read (a few lines in practice).
pub const MAX_CONFIG: u64 = 64 * 1024;
/// Largest env copy accepted (U-Boot's own are 8 KiB to 256 KiB). Reading an
/// env of this size holds at most one copy plus 4 bytes per variable while
/// it is parsed, then only its variables (see `read_current`).
pub const MAX_ENV_SIZE: usize = 1 << 20;
/// Piece size for streaming a copy through its CRC check.
const CHUNK: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub struct UbootEnv {
    devices: Vec<EnvDevice>,
    base: PathBuf,
}

impl UbootEnv {
    /// Reads an fw_env.config; relative device paths resolve against `base`.
    pub fn from_config_file(path: &Path, base: &Path) -> Result<UbootEnv, BootctlError> {
        let text = atomup_fsio::read_capped(path, MAX_CONFIG)
            .map_err(crate::io::io_err("reading fw_env.config", path))?;
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
                .is_ok_and(|s| (uboot::MIN_COPY_SIZE..=MAX_ENV_SIZE).contains(&s))
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

    /// The CRC and flags of one copy, streamed in pieces (never held whole).
    fn check_copy(
        &self,
        d: &EnvDevice,
        layout: Layout,
    ) -> Result<Result<Option<u8>, uboot::UbootError>, BootctlError> {
        use std::io::{Read, Seek, SeekFrom};
        let path = self.path(d);
        let mut f = atomup_fsio::open(&path, atomup_fsio::Want::Storage)
            .map_err(crate::io::io_err("opening env storage for reading", &path))?;
        f.seek(SeekFrom::Start(d.offset))
            .map_err(crate::io::io_err("seeking to the env copy", &path))?;
        let mut check = uboot::CopyCheck::new(layout);
        let mut buf = vec![0u8; CHUNK.min(Self::size(d))];
        let mut left = Self::size(d);
        while left > 0 {
            let n = left.min(buf.len());
            f.read_exact(&mut buf[..n])
                .map_err(crate::io::io_err("reading the env copy", &path))?;
            check.update(&buf[..n]);
            left -= n;
        }
        Ok(check.finish())
    }

    /// The current copy: its index, variables and flags, or `None` when no
    /// copy is valid. Bounded memory: each copy's CRC is checked streamed,
    /// then only the copy that wins is read whole and parsed in place, so an
    /// env of size S costs S (plus 4 bytes per variable while it is parsed)
    /// instead of both copies and their parses. Same choice as
    /// [`Redundant::parse`]: a copy whose data does not parse loses too.
    pub fn read_current(&self) -> Result<Option<(usize, Vars, Option<u8>)>, BootctlError> {
        let layout = self.layout();
        let mut flags: Vec<Option<u8>> = Vec::with_capacity(2);
        for d in &self.devices {
            flags.push(self.check_copy(d, layout)?.ok().map(|f| f.unwrap_or(0)));
        }
        loop {
            let current = match flags.as_slice() {
                [only] => only.map(|_| 0),
                [a, b] => uboot::current_index(*a, *b, FlagScheme::Incremental),
                _ => None,
            };
            let Some(i) = current else { return Ok(None) };
            match uboot::parse_copy_owned(self.read_raw(&self.devices[i])?, layout) {
                Ok(c) => return Ok(Some((i, c.vars, c.flags))),
                Err(_) => flags[i] = None,
            }
        }
    }

    /// Both copies parsed (redundant envs only; tests and diagnostics: this
    /// holds both copies, `read_current` is the bounded read).
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

/// libubootenv's lock file: a snapshot holds it from load to store, so a
/// concurrent `fw_setenv` cannot pick the same target copy.
const LOCK_FILE: &str = "/var/lock/fw_printenv.lock";

impl Bootloader for UbootEnv {
    /// Reads the current copy once ([`UbootEnv::read_current`]) under the
    /// lock; the next store goes to the other copy with flags + 1 (single
    /// copy: in place).
    fn load(&mut self) -> Result<Snapshot, BootctlError> {
        let lock = lock::lock_file(Path::new(LOCK_FILE))?;
        let current = self.read_current()?;
        let (index, flags) = match self.devices.len() {
            1 => (0, 0),
            _ => uboot::next_write(
                current.as_ref().map(|(i, _, f)| (*i, f.unwrap_or(0))),
                FlagScheme::Incremental,
            ),
        };
        Ok(Snapshot {
            vars: current.map(|(_, vars, _)| vars),
            next: Next::UbootCopy { index, flags },
            _lock: lock,
        })
    }

    fn store(&mut self, snap: &mut Snapshot, vars: Vars) -> Result<(), BootctlError> {
        let Next::UbootCopy { index, flags } = snap.next else {
            return Err(Snapshot::wrong_backend());
        };
        self.write_copy(index, &vars, flags)?;
        // The copy just written is current now; the next store goes to the other.
        if self.devices.len() == 2 {
            let (index, flags) = uboot::next_write(Some((index, flags)), FlagScheme::Incremental);
            snap.next = Next::UbootCopy { index, flags };
        }
        snap.vars = Some(vars);
        Ok(())
    }

    fn init(&mut self, vars: &Vars) -> Result<(), BootctlError> {
        let _lock = lock::lock_file(Path::new(LOCK_FILE))?;
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
