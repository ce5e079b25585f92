//! Device-side boot-state I/O: reads and writes the bootloader environment in
//! one atomic write per transition, and tells which slot booted. The policy
//! (what to write) lives in `atomup-policy`; this crate only makes the write
//! durable and crash-safe for each bootloader.

pub mod cmdline;
pub mod grub;
mod io;
mod lock;
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
    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
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
    #[error("the env is locked by another process ({}) for over a minute", path.display())]
    Locked { path: PathBuf },
}

/// The small contract every bootloader backend implements (RAUC's
/// bootchooser shape, Bottlerocket signpost's load / change in memory /
/// write): load the env once for a transition, store the new one in ONE
/// atomic write.
pub trait Bootloader {
    /// Loads the env for one transition: its variables, where the next store
    /// goes, and the env lock, held by the snapshot until it is dropped.
    fn load(&mut self) -> Result<Snapshot, BootctlError>;
    /// Makes `vars` the current env in one write that a power cut cannot tear
    /// into a state the bootloader would misread, to where `snap` says; then
    /// `snap` describes the env after the write (a second store goes to the
    /// other copy).
    fn store(&mut self, snap: &mut Snapshot, vars: Vars) -> Result<(), BootctlError>;
    /// Provisioning: writes `vars` into every copy (not a transition).
    fn init(&mut self, vars: &Vars) -> Result<(), BootctlError>;
    fn describe(&self) -> String;

    /// The current variables (one load; tests and tools).
    fn read(&mut self) -> Result<Option<Vars>, BootctlError> {
        Ok(self.load()?.vars)
    }

    /// One whole transition writing `vars` (load, store).
    fn write(&mut self, vars: &Vars) -> Result<(), BootctlError> {
        let mut snap = self.load()?;
        self.store(&mut snap, vars.clone())
    }
}

/// The env as loaded for one transition.
#[derive(Debug)]
pub struct Snapshot {
    /// The current env; `None`: no valid copy or block at all (the
    /// bootloader then does its last-resort boot of slot A).
    pub vars: Option<Vars>,
    /// Where the next store goes.
    pub(crate) next: Next,
    pub(crate) _lock: Option<lock::EnvLock>,
}

/// Where a backend's next store goes: the copy that is not current and the
/// flags or sequence number that make it current.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    UbootCopy { index: usize, flags: u8 },
    GrubBlock { index: usize, seq: u64 },
    Memory,
}

impl Snapshot {
    /// The A/B state; a missing env reads as the empty state (what the
    /// bootloader sees: no order, last-resort boot).
    pub fn state(&self) -> Result<BootState, BootctlError> {
        match &self.vars {
            Some(v) => BootState::from_vars(v).map_err(BootctlError::State),
            None => Ok(BootState::default()),
        }
    }

    fn wrong_backend() -> BootctlError {
        BootctlError::Unsupported("a snapshot stored by another backend than loaded it".into())
    }
}

/// Loads the env for one transition (see [`Bootloader::load`]).
pub fn load(bl: &mut dyn Bootloader) -> Result<Snapshot, BootctlError> {
    bl.load()
}

/// [`load`], for reading only (the lock is released when the snapshot is
/// dropped).
pub fn read(bl: &mut dyn Bootloader) -> Result<Snapshot, BootctlError> {
    bl.load()
}

/// Sets the A/B state in the snapshot's variables, keeping every other
/// variable, and stores it in ONE write.
pub fn store_state(
    bl: &mut dyn Bootloader,
    snap: &mut Snapshot,
    state: &BootState,
) -> Result<(), BootctlError> {
    let mut vars = snap.vars.take().unwrap_or_default();
    state
        .apply_to(&mut vars)
        .map_err(|source| BootctlError::Format {
            what: "setting the A/B variables",
            source: source.into(),
        })?;
    bl.store(snap, vars)
}

/// One whole transition: load, set the state, store.
pub fn write_state(bl: &mut dyn Bootloader, state: &BootState) -> Result<(), BootctlError> {
    let mut snap = bl.load()?;
    store_state(bl, &mut snap, state)
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

    fn tmpdir(name: &str) -> atomup_scratch::ScratchDir {
        atomup_scratch::ScratchDir::new(&format!("bootctl-{name}"))
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

    /// One load, two stores (update's install start and done): the stores go
    /// to alternating copies / blocks without reading the env again, and the
    /// env reads back as the last store.
    #[test]
    fn one_snapshot_stores_twice_into_alternating_copies() {
        let d = tmpdir("snapshot");
        let img = d.join("disk.img");
        std::fs::write(&img, vec![0u8; 0x90000]).unwrap();
        let mut uboot = UbootEnv::qemu_image(&img);
        let mut grub = GrubEnv::new(&d.join("grubenv"));
        for bl in [&mut uboot as &mut dyn Bootloader, &mut grub] {
            init_state(bl, &st(&[Slot::A], None, 0)).unwrap();
            let mut snap = load(bl).unwrap();
            let start = snap.state().unwrap().install_start(Slot::B);
            let done = start.install_done(Slot::B, 3).unwrap();
            store_state(bl, &mut snap, &start).unwrap();
            assert_eq!(snap.state().unwrap(), start);
            store_state(bl, &mut snap, &done).unwrap();
            drop(snap);
            assert_eq!(read(bl).unwrap().state().unwrap(), done);
        }
        let r = uboot.read_redundant().unwrap();
        let flags: Vec<_> = r.copies.iter().map(|c| c.as_ref().unwrap().flags).collect();
        // init: copy 2 = 0, copy 1 = 1; stores: copy 2 = 2, then copy 1 = 3.
        assert_eq!((flags, r.current), (vec![Some(3), Some(2)], Some(0)));
        let p = grub.read_pair().unwrap();
        assert_eq!((p.current, p.current().unwrap().seq), (Some(0), 3));
    }

    /// A snapshot holds the env lock from load to drop: a second load (a
    /// concurrent transition) waits until the first is done, so both cannot
    /// pick the same target copy.
    #[test]
    fn a_second_load_waits_for_the_snapshot_holding_the_lock() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let d = tmpdir("lock");
        let path = d.join("grubenv");
        let mut env = GrubEnv::new(&path);
        init_state(&mut env, &st(&[Slot::A], None, 0)).unwrap();
        let mut snap = load(&mut env).unwrap();
        let got = Arc::new(AtomicBool::new(false));
        let other = {
            let (got, path) = (got.clone(), path.clone());
            std::thread::spawn(move || {
                let mut env = GrubEnv::new(&path);
                let snap = load(&mut env).unwrap();
                got.store(true, Ordering::SeqCst);
                snap.state().unwrap()
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(!got.load(Ordering::SeqCst), "the second load did not wait");
        store_state(&mut env, &mut snap, &st(&[Slot::A, Slot::B], None, 0)).unwrap();
        drop(snap);
        // It sees the state stored under the first snapshot's lock.
        assert_eq!(other.join().unwrap(), st(&[Slot::A, Slot::B], None, 0));
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
