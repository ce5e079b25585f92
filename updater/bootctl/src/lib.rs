//! Device-side boot-state I/O: reads and writes the bootloader environment in
//! one atomic write per transition, and tells which slot booted. The policy
//! (what to write) lives in `atomup-policy`; this crate only makes the write
//! durable and crash-safe for each bootloader.

// Fault points cut env writes like a power cut: they must never reach an
// optimized binary, whatever feature unification does (tests build with
// debug assertions; release and the device profile do not).
#[cfg(all(feature = "failpoints", not(debug_assertions)))]
compile_error!(
    "atomup-bootctl feature `failpoints` (env fault injection) in a build without debug assertions: \
     it is for tests only and must never reach a release binary"
);

pub mod cmdline;
pub mod failpoint;
pub mod grub;
mod io;
pub mod mem;
pub mod statedir;
pub mod uboot;

use atomup_bootenv::Vars;
use atomup_policy::{BootState, StateError};
use std::path::PathBuf;

pub use grub::GrubEnv;
pub use mem::MemBootloader;
pub use uboot::UbootEnv;

#[derive(Debug, thiserror::Error)]
pub enum BootctlError {
    #[error("{what} ({path})")]
    Io {
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("invalid env config {path}")]
    Config {
        path: PathBuf,
        source: atomup_bootenv::ConfigError,
    },
    #[error("{what}")]
    Format {
        what: &'static str,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("invalid agent record {path}")]
    Record {
        path: PathBuf,
        source: statedir::RecordError,
    },
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("injected power cut after {written} bytes of a write to {path}")]
    Injected { path: PathBuf, written: usize },
    #[error("the env holds an invalid A/B state")]
    State(#[source] StateError),
}

/// The small contract every bootloader backend implements (RAUC's
/// bootchooser shape): read the current env, replace it in ONE atomic write.
pub trait Bootloader {
    /// The current valid env, or `None` when no copy/block is valid (the
    /// bootloader then does its last-resort boot of slot A).
    fn read(&mut self) -> Result<Option<Vars>, BootctlError>;
    /// Makes `vars` the current env in one write that a power cut cannot
    /// tear into a state the bootloader would misread.
    fn write(&mut self, vars: &Vars) -> Result<(), BootctlError>;
    /// Provisioning: writes `vars` into every copy (not a transition).
    fn init(&mut self, vars: &Vars) -> Result<(), BootctlError>;
    fn describe(&self) -> String;
}

/// The env as read: raw variables and the A/B state they hold.
#[derive(Debug, Clone)]
pub struct EnvRead {
    /// `None`: no valid env at all.
    pub vars: Option<Vars>,
}

impl EnvRead {
    /// The A/B state; a missing env reads as the empty state (what the
    /// bootloader sees: no order, last-resort boot).
    pub fn state(&self) -> Result<BootState, BootctlError> {
        match &self.vars {
            Some(v) => BootState::from_vars(v).map_err(BootctlError::State),
            None => Ok(BootState::default()),
        }
    }
}

pub fn read(bl: &mut dyn Bootloader) -> Result<EnvRead, BootctlError> {
    Ok(EnvRead { vars: bl.read()? })
}

/// Writes a new A/B state, keeping every other variable of the current env.
pub fn write_state(bl: &mut dyn Bootloader, state: &BootState) -> Result<(), BootctlError> {
    let mut vars = bl.read()?.unwrap_or_default();
    state
        .apply_to(&mut vars)
        .map_err(|source| BootctlError::Format {
            what: "setting the A/B variables",
            source: source.into(),
        })?;
    bl.write(&vars)
}

/// Provisioning: a fresh env holding only `state`.
pub fn init_state(bl: &mut dyn Bootloader, state: &BootState) -> Result<(), BootctlError> {
    let mut vars = Vars::default();
    state
        .apply_to(&mut vars)
        .map_err(|source| BootctlError::Format {
            what: "setting the A/B variables",
            source: source.into(),
        })?;
    bl.init(&vars)
}

#[cfg(test)]
mod tests {
    use super::*;
    use atomup_policy::Slot;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("atomup-bootctl-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn st(order: &[Slot], trial: Option<Slot>, left: u8) -> BootState {
        BootState {
            order: order.to_vec(),
            trial,
            left,
        }
    }

    /// One env write per transition, none for confirmed boots, counted on
    /// the in-memory backend.
    #[test]
    fn each_transition_is_one_write_and_confirmed_boots_write_nothing() {
        let mut mem = MemBootloader::default();
        init_state(&mut mem, &st(&[Slot::A], None, 0)).unwrap();
        let w0 = mem.writes;
        let s = read(&mut mem).unwrap().state().unwrap();
        write_state(&mut mem, &s.install_start(Slot::B)).unwrap();
        let s = read(&mut mem).unwrap().state().unwrap();
        write_state(&mut mem, &s.install_done(Slot::B, 3).unwrap()).unwrap();
        assert_eq!(mem.writes - w0, 2);
        let s = read(&mut mem).unwrap().state().unwrap();
        let boot = s.boot();
        write_state(&mut mem, &boot.write.unwrap()).unwrap();
        let s = read(&mut mem).unwrap().state().unwrap();
        write_state(&mut mem, &s.health_passed(Slot::B).unwrap()).unwrap();
        assert_eq!(mem.writes - w0, 4);
        for _ in 0..5 {
            let s = read(&mut mem).unwrap().state().unwrap();
            let boot = s.boot();
            assert_eq!((boot.slot, boot.write), (Slot::B, None));
            assert_eq!(s.after_boot(Slot::B), atomup_policy::BootOutcome::Normal);
            assert_eq!(s.health_passed(Slot::B), None);
        }
        assert_eq!(mem.writes - w0, 4);
    }

    #[test]
    fn uboot_image_writes_alternate_copies_and_keep_other_vars() {
        let d = tmpdir("uboot");
        let img = d.join("disk.img");
        std::fs::write(&img, vec![0u8; 0x90000]).unwrap();
        let mut env = UbootEnv::qemu_image(&img);
        assert!(read(&mut env).unwrap().vars.is_none());
        init_state(&mut env, &st(&[Slot::A], None, 0)).unwrap();
        let r = env.read_redundant().unwrap();
        assert_eq!(r.current, Some(0));
        let mut vars = env.read().unwrap().unwrap();
        vars.set("bootdelay", "0").unwrap();
        env.write(&vars).unwrap();
        write_state(&mut env, &st(&[Slot::B, Slot::A], Some(Slot::B), 3)).unwrap();
        let r = env.read_redundant().unwrap();
        assert_eq!(r.current, Some(0));
        assert_eq!(r.copies[0].as_ref().unwrap().flags, Some(3));
        let v = r.vars().unwrap();
        assert_eq!(v.get("bootdelay"), Some("0"));
        assert_eq!(
            read(&mut env).unwrap().state().unwrap(),
            st(&[Slot::B, Slot::A], Some(Slot::B), 3)
        );
    }

    #[test]
    fn grub_pair_writes_the_non_current_block() {
        let d = tmpdir("grub");
        let mut env = GrubEnv::new(&d.join("grubenv"));
        init_state(&mut env, &st(&[Slot::A, Slot::B], None, 0)).unwrap();
        assert_eq!(std::fs::read(&env.files()[1]).unwrap().len(), 1024);
        assert_eq!(env.read_pair().unwrap().current, Some(0));
        write_state(&mut env, &st(&[Slot::A], None, 0)).unwrap();
        let p = env.read_pair().unwrap();
        assert_eq!((p.current, p.current().unwrap().seq), (Some(1), 2));
        assert_eq!(
            read(&mut env).unwrap().state().unwrap(),
            st(&[Slot::A], None, 0)
        );
    }

    #[test]
    fn config_with_relative_paths_resolves_against_the_base() {
        let d = tmpdir("cfg");
        std::fs::write(d.join("env.bin"), vec![0u8; 0x2000]).unwrap();
        std::fs::write(
            d.join("fw_env.config"),
            "env.bin 0x0 0x1000\nenv.bin 0x1000 0x1000\n",
        )
        .unwrap();
        let mut env = UbootEnv::from_config_file(&d.join("fw_env.config"), &d).unwrap();
        init_state(&mut env, &st(&[Slot::A], None, 0)).unwrap();
        assert_eq!(
            read(&mut env).unwrap().state().unwrap(),
            st(&[Slot::A], None, 0)
        );
    }
}
