//! `atomup update` never writes the running root or the data partition
//! (issue 11.1): every alias of them as a target — the same directory, a
//! symlink to it, a bind mount of it, a parent, a directory inside it, its
//! block device, a board profile or a wrong `atomup.slot=` naming the running
//! device, a device mounted elsewhere — is refused before the first write,
//! and each test proves that nothing was written: env bytes, records, both
//! slots and the root's files are unchanged. Mounts happen in a private mount
//! namespace (`unshare`), file systems are real ext4 on loop devices.

use atomup_tests::device::{
    atomup_bounded, in_mount_ns, provision, require_root, text, update_base_args, world, Device,
    LoopFs, Untouched, World,
};
use std::ffi::OsString;
use std::fs;
use std::path::Path;
use std::process::Output;

fn args(
    w: &World,
    d: &Device,
    booted: &str,
    extra: &[&dyn AsRef<std::ffi::OsStr>],
) -> Vec<OsString> {
    let mut a = update_base_args(w, d, &w.nginx.url(), booted);
    a.extend(extra.iter().map(|e| e.as_ref().to_owned()));
    a
}

/// Runs atomup after `setup` (mounts) in a private mount namespace.
fn atomup_in_ns(setup: &str, args: Vec<OsString>) -> Output {
    let mut all: Vec<OsString> = vec![atomup_tests::workspace_bin("atomup").into()];
    all.extend(args);
    in_mount_ns(&format!("{setup}\nexec \"$@\""), &all)
}

fn assert_refused(out: &Output, why: &[&str]) {
    let t = text(out);
    assert!(!out.status.success(), "update was not refused: {t}");
    for w in why {
        assert!(t.contains(w), "expected `{w}` in: {t}");
    }
}

fn board_conf(d: &Device, slot_a: &Path, slot_b: &Path, data: Option<&Path>) -> std::path::PathBuf {
    let p = d.root.join("board.conf");
    let mut text = format!(
        "board = qemu-virt\nbootloader = uboot\nslot.A = {}\nslot.B = {}\n",
        slot_a.display(),
        slot_b.display()
    );
    if let Some(data) = data {
        text.push_str(&format!("data = {}\n", data.display()));
    }
    fs::write(&p, text).unwrap();
    p
}

/// `--target-dir` equal to `--from-root`.
#[test]
fn target_dir_that_is_the_running_root_is_refused() {
    let w = world(&[]);
    let d = provision(&w, "same");
    let before = Untouched::snap(&d);
    let out = atomup_bounded(args(
        &w,
        &d,
        "A",
        &[&"--from-root", &d.slot_a, &"--target-dir", &d.slot_a],
    ));
    assert_refused(
        &out,
        &["it is the running root", &d.slot_a.display().to_string()],
    );
    before.assert_nothing_written(&d);
}

/// A symlink to the running root, and a path through `..` to it.
#[test]
fn target_dir_symlink_or_dotdot_to_the_running_root_is_refused() {
    let w = world(&[]);
    let d = provision(&w, "symlink");
    std::os::unix::fs::symlink(&d.slot_a, d.root.join("alias")).unwrap();
    let before = Untouched::snap(&d);
    for target in [d.root.join("alias"), d.slot_b.join("../slot-a")] {
        let out = atomup_bounded(args(
            &w,
            &d,
            "A",
            &[&"--from-root", &d.slot_a, &"--target-dir", &target],
        ));
        assert_refused(&out, &["it is the running root"]);
    }
    before.assert_nothing_written(&d);
}

/// A bind mount of the running root, and a bind mount of a directory inside it.
#[test]
fn target_dir_bind_mount_of_the_running_root_is_refused() {
    if !require_root() {
        return;
    }
    let w = world(&[]);
    let d = provision(&w, "bind");
    let (whole, part) = (d.root.join("bind-whole"), d.root.join("bind-part"));
    fs::create_dir_all(&whole).unwrap();
    fs::create_dir_all(&part).unwrap();
    let setup = format!(
        "mount --bind {} {}\nmount --bind {}/usr {}",
        d.slot_a.display(),
        whole.display(),
        d.slot_a.display(),
        part.display()
    );
    let before = Untouched::snap(&d);
    let out = atomup_in_ns(
        &setup,
        args(
            &w,
            &d,
            "A",
            &[&"--from-root", &d.slot_a, &"--target-dir", &whole],
        ),
    );
    assert_refused(&out, &["it is the running root"]);
    let out = atomup_in_ns(
        &setup,
        args(
            &w,
            &d,
            "A",
            &[&"--from-root", &d.slot_a, &"--target-dir", &part],
        ),
    );
    assert_refused(&out, &["it is inside the running root"]);
    before.assert_nothing_written(&d);
}

/// A parent of the running root (emptying it would delete the root too).
#[test]
fn target_dir_that_contains_the_running_root_is_refused() {
    let w = world(&[]);
    let d = provision(&w, "parent");
    let before = Untouched::snap(&d);
    let out = atomup_bounded(args(
        &w,
        &d,
        "A",
        &[&"--from-root", &d.slot_a, &"--target-dir", &d.root],
    ));
    assert_refused(&out, &["it contains the running root"]);
    before.assert_nothing_written(&d);
}

/// A directory inside the running root.
#[test]
fn target_dir_inside_the_running_root_is_refused() {
    let w = world(&[]);
    let d = provision(&w, "inside");
    let before = Untouched::snap(&d);
    let out = atomup_bounded(args(
        &w,
        &d,
        "A",
        &[
            &"--from-root",
            &d.slot_a,
            &"--target-dir",
            &d.slot_a.join("usr"),
        ],
    ));
    assert_refused(&out, &["it is inside the running root"]);
    before.assert_nothing_written(&d);
}

/// The state directory, a directory containing it and one inside it.
#[test]
fn target_dir_that_is_contains_or_lies_inside_the_state_dir_is_refused() {
    let w = world(&[]);
    let d = provision(&w, "state");
    fs::create_dir_all(d.state.join("spare")).unwrap();
    let before = Untouched::snap(&d);
    for (target, why) in [
        (d.state.clone(), "it is the state directory"),
        (d.root.join("var"), "it contains the state directory"),
        (d.state.join("spare"), "it is inside the state directory"),
    ] {
        let out = atomup_bounded(args(
            &w,
            &d,
            "A",
            &[&"--from-root", &d.slot_a, &"--target-dir", &target],
        ));
        assert_refused(&out, &[why]);
    }
    before.assert_nothing_written(&d);
}

/// The block device the running root is mounted from.
#[test]
fn target_device_of_the_running_root_is_refused() {
    if !require_root() {
        return;
    }
    let w = world(&[]);
    let d = provision(&w, "rootdev");
    let fs_a = LoopFs::from_dir(&d.root.join("a.img"), &d.slot_a);
    let live = d.root.join("live");
    fs::create_dir_all(&live).unwrap();
    let setup = format!("mount {} {}", fs_a.dev.display(), live.display());
    let (before, root_files) = (Untouched::snap(&d), fs_a.digest());
    let out = atomup_in_ns(
        &setup,
        args(
            &w,
            &d,
            "A",
            &[&"--from-root", &live, &"--target-device", &fs_a.dev],
        ),
    );
    assert_refused(
        &out,
        &[
            "it is the device of the running root",
            &live.display().to_string(),
        ],
    );
    before.assert_nothing_written(&d);
    assert_eq!(
        fs_a.digest(),
        root_files,
        "the running root's files changed"
    );
}

/// A board profile whose other slot is the running device.
#[test]
fn board_profile_naming_the_running_device_is_refused() {
    if !require_root() {
        return;
    }
    let w = world(&[]);
    let d = provision(&w, "board");
    let fs_a = LoopFs::from_dir(&d.root.join("a.img"), &d.slot_a);
    let live = d.root.join("live");
    fs::create_dir_all(&live).unwrap();
    let conf = board_conf(&d, Path::new("/dev/null"), &fs_a.dev, None);
    let setup = format!("mount {} {}", fs_a.dev.display(), live.display());
    let (before, root_files) = (Untouched::snap(&d), fs_a.digest());
    let out = atomup_in_ns(
        &setup,
        args(
            &w,
            &d,
            "A",
            &[&"--from-root", &live, &"--board-conf", &conf],
        ),
    );
    assert_refused(&out, &["it is the device of the running root"]);
    before.assert_nothing_written(&d);
    assert_eq!(
        fs_a.digest(),
        root_files,
        "the running root's files changed"
    );
}

/// `atomup.slot=B` (here `--booted-slot B`) while A is what runs (picked by
/// hand at the bootloader's console, say, so the env's order "B A" agrees
/// with the wrong command line): the target becomes A, the device mounted as
/// the running root.
#[test]
fn wrong_cmdline_slot_naming_the_running_device_is_refused() {
    if !require_root() {
        return;
    }
    let w = world(&[]);
    let d = provision(&w, "cmdline");
    let set = atomup_tests::ostree_fixture::atomup(atomup_tests::device::env_args(
        &d,
        &["env", "set", "--order", "B A"],
    ));
    assert!(set.status.success(), "{}", text(&set));
    let fs_a = LoopFs::from_dir(&d.root.join("a.img"), &d.slot_a);
    let fs_b = LoopFs::from_dir(&d.root.join("b.img"), &d.slot_b);
    let live = d.root.join("live");
    fs::create_dir_all(&live).unwrap();
    let conf = board_conf(&d, &fs_a.dev, &fs_b.dev, None);
    let setup = format!("mount {} {}", fs_a.dev.display(), live.display());
    let (before, root_files) = (Untouched::snap(&d), fs_a.digest());
    let out = atomup_in_ns(
        &setup,
        args(
            &w,
            &d,
            "B",
            &[&"--from-root", &live, &"--board-conf", &conf],
        ),
    );
    assert_refused(
        &out,
        &["refusing target device", &fs_a.dev.display().to_string()],
    );
    before.assert_nothing_written(&d);
    assert_eq!(
        fs_a.digest(),
        root_files,
        "the running root's files changed"
    );
}

/// The env makes A the confirmed slot that boots next, the command line
/// claims B booted: the target A is what the env calls the running system.
#[test]
fn target_slot_that_the_env_makes_the_confirmed_primary_is_refused() {
    let w = world(&[]);
    let d = provision(&w, "envprimary");
    let before = Untouched::snap(&d);
    let out = atomup_bounded(args(
        &w,
        &d,
        "B",
        &[&"--from-root", &d.slot_b, &"--target-dir", &d.slot_a],
    ));
    assert_refused(
        &out,
        &["the env makes slot A the confirmed slot that boots next"],
    );
    before.assert_nothing_written(&d);
}

/// The data partition: its device, a directory on it, the board profile's
/// `data` device, and a device mounted anywhere else.
#[test]
fn data_partition_and_mounted_devices_are_refused() {
    if !require_root() {
        return;
    }
    let w = world(&[]);
    let d = provision(&w, "data");
    let var = d.root.join("var");
    fs::create_dir_all(var.join("spare")).unwrap();
    let fs_var = LoopFs::from_dir(&d.root.join("var.img"), &var);
    let fs_other = LoopFs::from_dir(&d.root.join("other.img"), &d.slot_b);
    let elsewhere = d.root.join("elsewhere");
    fs::create_dir_all(&elsewhere).unwrap();
    let setup = format!(
        "mount {} {}\nmount {} {}",
        fs_var.dev.display(),
        var.display(),
        fs_other.dev.display(),
        elsewhere.display()
    );
    let (before, data_files) = (Untouched::snap(&d), fs_var.digest());
    let run = |extra: &[&dyn AsRef<std::ffi::OsStr>]| {
        let mut a = args(&w, &d, "A", &[&"--from-root", &d.slot_a]);
        a.extend(extra.iter().map(|e| e.as_ref().to_owned()));
        atomup_in_ns(&setup, a)
    };
    assert_refused(
        &run(&[&"--target-device", &fs_var.dev]),
        &["it is the device of the state directory"],
    );
    assert_refused(
        &run(&[&"--target-dir", &var.join("spare")]),
        &["it is on the data partition mounted at"],
    );
    assert_refused(
        &run(&[&"--target-device", &fs_other.dev]),
        &["it is mounted at", &elsewhere.display().to_string()],
    );
    let conf = board_conf(&d, &d.slot_a, &fs_other.dev, Some(&fs_other.dev));
    let out = atomup_bounded(args(
        &w,
        &d,
        "A",
        &[&"--from-root", &d.slot_a, &"--board-conf", &conf],
    ));
    assert_refused(&out, &["it is the board's data partition"]);
    before.assert_nothing_written(&d);
    assert_eq!(
        fs_var.digest(),
        data_files,
        "the data partition's files changed"
    );
}

/// A real, unmounted slot device passes the check and is written.
#[test]
fn an_unmounted_slot_device_is_installed_into() {
    if !require_root() {
        return;
    }
    let w = world(&[]);
    let d = provision(&w, "ok");
    let fs_b = LoopFs::from_dir(&d.root.join("b.img"), &d.slot_b);
    let out = atomup_in_ns(
        "true",
        args(
            &w,
            &d,
            "A",
            &[&"--from-root", &d.slot_a, &"--target-device", &fs_b.dev],
        ),
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("installed version 2"), "{}", text(&out));
}
