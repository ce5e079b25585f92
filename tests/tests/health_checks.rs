//! `atomup health` fails closed (issue 11.5): on a trial boot, anything in
//! the checks directory that is not a runnable check (a check that lost its
//! executable bit, a dangling symlink, a directory, a FIFO) fails the trial
//! with its name and the slot is marked bad, where it used to be skipped and
//! the trial confirmed with "0 check(s) passed". Documentation (`README`,
//! `*.md`) is the written exception.

use atomup_tests::device::{atomup_bounded, env_args, env_show, mkfifo, text, Device};
use atomup_tests::ostree_fixture::ScratchDir;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// A device booted into slot B on trial (2 attempts left), A confirmed.
fn on_trial(dir: &ScratchDir) -> Device {
    let d = Device {
        root: dir.path().to_owned(),
        state: dir.join("state"),
        env: dir.join("disk.img"),
        slot_a: dir.join("a"),
        slot_b: dir.join("b"),
        machine_id: dir.join("id"),
    };
    fs::File::create(&d.env).unwrap().set_len(1 << 20).unwrap();
    fs::create_dir_all(&d.state).unwrap();
    let ok = |a: &[&str]| {
        let out = atomup_bounded(env_args(&d, a));
        assert!(out.status.success(), "{}", text(&out));
    };
    ok(&["env", "init", "--order", "B A"]);
    ok(&["env", "set", "--trial", "B", "--left", "2"]);
    d
}

fn script(path: &Path, exit: u8, mode: u32) {
    fs::write(path, format!("#!/bin/sh\nexit {exit}\n")).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn health(d: &Device, checks: &Path) -> std::process::Output {
    let mut a = env_args(d, &["health", "--no-reboot", "--booted-slot", "B"]);
    a.extend(["--checks".into(), checks.into()]);
    atomup_bounded(a)
}

/// Each kind of entry that is not a runnable check fails the trial: B leaves
/// the boot order, and the message names the entry.
#[test]
fn anything_in_the_checks_dir_that_is_not_a_runnable_check_fails_the_trial() {
    type Plant = fn(&Path);
    let cases: [(&str, Plant, &str); 4] = [
        (
            "20-lost-x-bit",
            |p| script(p, 0, 0o644),
            "is not executable",
        ),
        (
            "20-dangling",
            |p| std::os::unix::fs::symlink("/nonexistent/check", p).unwrap(),
            "not a runnable check",
        ),
        (
            "20-a-dir",
            |p| fs::create_dir(p).unwrap(),
            "is a directory, not a runnable check",
        ),
        ("20-fifo", |p| mkfifo(p), "is a FIFO, not a runnable check"),
    ];
    for (name, plant, why) in cases {
        let dir = ScratchDir::new("health");
        let d = on_trial(&dir);
        let checks = dir.join("health.d");
        fs::create_dir_all(&checks).unwrap();
        script(&checks.join("10-ok"), 0, 0o755);
        plant(&checks.join(name));
        let out = health(&d, &checks);
        assert!(
            !out.status.success(),
            "{name}: trial confirmed: {}",
            text(&out)
        );
        assert!(
            text(&out).contains(why) && text(&out).contains(name),
            "{name}: {}",
            text(&out)
        );
        assert_eq!(
            env_show(&d),
            "ATOMUP_ORDER=A\nATOMUP_TRIAL=\nATOMUP_LEFT=0\n",
            "{name}: slot B not marked bad"
        );
    }
}

/// `README` and `*.md` files are documentation and skipped; the checks run.
#[test]
fn documentation_in_the_checks_dir_is_skipped() {
    let dir = ScratchDir::new("health-doc");
    let d = on_trial(&dir);
    let checks = dir.join("health.d");
    fs::create_dir_all(&checks).unwrap();
    script(&checks.join("10-ok"), 0, 0o755);
    fs::write(checks.join("README"), "what the checks do\n").unwrap();
    fs::write(checks.join("notes.md"), "# notes\n").unwrap();
    let out = health(&d, &checks);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("health: 1 check(s) passed on slot B"),
        "{}",
        text(&out)
    );
    assert_eq!(
        env_show(&d),
        "ATOMUP_ORDER=B A\nATOMUP_TRIAL=\nATOMUP_LEFT=0\n"
    );
    // A failing check still fails the trial.
    script(&checks.join("30-fails"), 1, 0o755);
    let dir2 = ScratchDir::new("health-fail");
    let d2 = on_trial(&dir2);
    let out = health(&d2, &checks);
    assert!(
        !out.status.success() && text(&out).contains("30-fails failed"),
        "{}",
        text(&out)
    );
}
