//! Power cuts at every write point of every slot transition (before the
//! CRC, inside it, right after the flags byte, mid-data, at the last byte,
//! between the two copies of an init; every GRUB block byte class): the env
//! read afterwards is the state before or after the transition, it boots a
//! good slot, and the real fw_printenv agrees with our reading.

use atomup_bootctl::{read, write_state, BootctlError, Bootloader, GrubEnv, UbootEnv};
use atomup_policy::{BootState, Slot};
use atomup_scratch::ScratchDir;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The crash point is process-wide: tests that arm it take turns.
static FAILPOINT: Mutex<()> = Mutex::new(());

fn scratch(name: &str) -> ScratchDir {
    ScratchDir::new(&format!("env-faults-{name}"))
}

fn st(order: &[Slot], trial: Option<Slot>, left: u8) -> BootState {
    BootState {
        order: order.to_vec(),
        trial,
        left,
    }
}

/// A device life: each step is the state the agent (or bootloader) writes,
/// plus the slot that must NOT be booted if the write is torn (the one
/// being installed), if any.
fn life() -> Vec<(BootState, Option<Slot>)> {
    use Slot::{A, B};
    vec![
        (st(&[A], None, 0), Some(B)),    // install start into B
        (st(&[B, A], Some(B), 3), None), // install done
        (st(&[B, A], Some(B), 2), None), // bootloader: trial boot
        (st(&[B, A], None, 0), None),    // health passed on B
        (st(&[B], None, 0), Some(A)),    // install start into A
        (st(&[A, B], Some(A), 1), None), // install done, 1 attempt
        (st(&[A, B], Some(A), 0), None), // bootloader: last attempt
        (st(&[B], None, 0), None),       // fallback recorded
        (st(&[B, A], None, 0), None),    // (re-install elided) order back
        (st(&[A, B], None, 0), None),    // rollback to A
    ]
}

fn snapshot(files: &[PathBuf]) -> Vec<Vec<u8>> {
    files.iter().map(|f| std::fs::read(f).unwrap()).collect()
}

fn restore(files: &[PathBuf], data: &[Vec<u8>]) {
    for (f, d) in files.iter().zip(data) {
        std::fs::write(f, d).unwrap();
    }
}

/// Runs the life with a torn write at each offset of `offsets` for every
/// step; `check` gets the state read back after each fault. Returns the
/// number of injected faults.
fn torture(
    bl: &mut dyn Bootloader,
    files: &[PathBuf],
    offsets: &[usize],
    mut check: impl FnMut(&mut dyn Bootloader, &BootState),
) -> usize {
    let mut injected = 0;
    for (next, installing) in life() {
        let before = read(bl).unwrap().state().unwrap();
        let saved = snapshot(files);
        for &n in offsets {
            restore(files, &saved);
            atomup_faults::set(Some(&format!("env.write:{n}")));
            let err = write_state(bl, &next).unwrap_err();
            assert!(matches!(err, BootctlError::Injected { .. }), "{err}");
            injected += 1;
            let got = read(bl).unwrap().state().unwrap();
            assert!(
                got == before || got == next,
                "cut at {n} writing {next}: read {got}, before {before}"
            );
            let choice = got.boot();
            assert!(
                !choice.fallback,
                "cut at {n} writing {next}: no bootable slot in {got}"
            );
            assert_ne!(
                Some(choice.slot),
                installing,
                "cut at {n}: would boot the slot being written"
            );
            check(bl, &got);
        }
        atomup_faults::set(None);
        restore(files, &saved);
        write_state(bl, &next).unwrap();
        assert_eq!(read(bl).unwrap().state().unwrap(), next);
    }
    injected
}

fn printenv_state(cfg: &Path) -> BootState {
    let mut vars = atomup_bootenv::Vars::default();
    for (k, v) in atomup_tests::uboot::fw_printenv(cfg) {
        vars.set(&k, &v).unwrap();
    }
    BootState::from_vars(&vars).unwrap()
}

#[test]
fn uboot_redundant_env_survives_a_cut_at_every_write_point() {
    if !atomup_tests::require_tool("fw_printenv") {
        return;
    }
    let _g = FAILPOINT.lock().unwrap_or_else(|e| e.into_inner());
    let d = scratch("uboot");
    let (img, cfg) = atomup_tests::uboot::redundant_image(&d);
    let mut env = UbootEnv::from_config_file(&cfg, Path::new("/")).unwrap();

    // Cut between the two copies of a provisioning write, and inside each.
    let mut injected = 0;
    for (n, after) in [
        (0usize, 1usize),
        (3, 1),
        (0x2000, 1),
        (0, 0),
        (5, 0),
        (0x3fff, 0),
    ] {
        std::fs::write(&img, vec![0u8; 0x88000]).unwrap();
        atomup_faults::set(Some(&format!("env.write@{after}:{n}")));
        let r = atomup_bootctl::init_state(&mut env, &st(&[Slot::A], None, 0));
        assert!(matches!(r, Err(BootctlError::Injected { .. })));
        injected += 1;
        let got = read(&mut env).unwrap();
        if after == 1 {
            // Copy 2 completed before the cut: valid and bootable.
            assert_eq!(got.state().unwrap(), st(&[Slot::A], None, 0));
        } else if got.vars.is_some() {
            // Cut only in the zero padding, which was already zero on disk:
            // the copy is complete.
            assert_eq!(got.state().unwrap(), st(&[Slot::A], None, 0));
            assert!(n > 0x100, "cut at {n} left a valid copy");
        } else {
            // Nothing complete yet: the blank env is "no env", the
            // bootloader's last resort is slot A.
            assert!(got.state().unwrap().boot().fallback);
        }
    }
    atomup_faults::set(None);
    atomup_bootctl::init_state(&mut env, &st(&[Slot::A, Slot::B], None, 0)).unwrap();
    // Byte classes of one 0x4000 copy: CRC (0..4), flags (4), first data
    // bytes, mid-data, the last byte, and complete-but-unacknowledged.
    let mut offsets: Vec<usize> = (0..=12).collect();
    offsets.extend([31, 64, 200, 0x1000, 0x2000, 0x3ffe, 0x3fff, 0x4000]);
    let mut peer_checks = 0;
    injected += torture(&mut env, std::slice::from_ref(&img), &offsets, |_, got| {
        assert_eq!(&printenv_state(&cfg), got, "fw_printenv disagrees");
        peer_checks += 1;
    });
    eprintln!("uboot redundant: {injected} injected power cuts, {peer_checks} cross-checked with fw_printenv");
    assert!(injected >= 200);
}

#[test]
fn grub_sealed_pair_survives_a_cut_at_every_byte_class() {
    let _g = FAILPOINT.lock().unwrap_or_else(|e| e.into_inner());
    let d = scratch("grub");
    let mut env = GrubEnv::new(&d.join("grubenv"));
    atomup_bootctl::init_state(&mut env, &st(&[Slot::A, Slot::B], None, 0)).unwrap();
    let files = env.files().to_vec();
    // Every byte of the header and first line, then every 7th byte of the
    // variable lines, the padding in steps, the last byte, and complete
    // (every single byte is covered by the pure test in atomup-bootenv).
    let mut offsets: Vec<usize> = (0..=40).collect();
    offsets.extend((41..=240).step_by(7));
    offsets.extend((256..1024).step_by(64));
    offsets.extend([1023, 1024]);
    let injected = torture(&mut env, &files, &offsets, |_, _| {});
    eprintln!("grub sealed pair: {injected} injected power cuts");
    assert!(injected >= 700);
}

#[test]
fn single_copy_env_loses_the_state_on_a_torn_write_as_documented() {
    let _g = FAILPOINT.lock().unwrap_or_else(|e| e.into_inner());
    let d = scratch("single");
    let img = d.join("env.bin");
    std::fs::write(&img, vec![0u8; 0x1000]).unwrap();
    let cfg = d.join("fw_env.config");
    std::fs::write(&cfg, format!("{} 0x0 0x1000\n", img.display())).unwrap();
    let mut env = UbootEnv::from_config_file(&cfg, Path::new("/")).unwrap();
    atomup_bootctl::init_state(&mut env, &st(&[Slot::A, Slot::B], None, 0)).unwrap();
    atomup_faults::set(Some("env.write:20"));
    assert!(write_state(&mut env, &st(&[Slot::A], None, 0)).is_err());
    atomup_faults::set(None);
    // No valid copy: the bootloader falls back to slot A (never bricks, but
    // the A/B state is gone). Only redundant envs are crash-safe.
    let got = read(&mut env).unwrap();
    assert!(got.vars.is_none());
    assert!(got.state().unwrap().boot().fallback);
}
