//! A FIFO where the agent expects a file is refused at once with a clear
//! error, never waited on (issue 11.2): fw_env.config and the env devices it
//! names, grubenv, the board profile, the trusted and revoked key files, the
//! slot and rollback records, trusted-time, machine-id, the kernel command
//! line and the watchdog. Every run has a deadline, so a regression fails the
//! test instead of hanging CI; `update` must fail before it writes anything.

use atomup_tests::device::{
    atomup_bounded, env_args, mkfifo, provision, text, update_args, world, Untouched,
};
use atomup_tests::ostree_fixture::ScratchDir;
use std::ffi::OsString;
use std::fs;
use std::path::Path;
use std::process::Output;

fn assert_fifo_refused(out: &Output, path: &Path) {
    let t = text(out);
    assert!(!out.status.success(), "not refused: {t}");
    assert!(t.contains("a FIFO, not"), "no type in the error: {t}");
    assert!(
        t.contains(&path.display().to_string()),
        "the error does not name {}: {t}",
        path.display()
    );
}

/// The env location: the config file itself, a device it names, a grubenv.
#[test]
fn fifos_as_env_config_env_device_or_grubenv_are_refused() {
    let dir = ScratchDir::new("fifo-env");
    let fifo = dir.join("fifo");
    mkfifo(&fifo);
    let state = dir.join("state");
    fs::create_dir_all(&state).unwrap();
    let cfg = dir.join("fw_env.config");
    fs::write(
        &cfg,
        format!("{0} 0x0 0x4000\n{0} 0x4000 0x4000\n", fifo.display()),
    )
    .unwrap();
    for (args, named) in [
        (
            vec!["--env-config".into(), fifo.clone().into_os_string()],
            &fifo,
        ),
        (
            vec!["--env-config".into(), cfg.clone().into_os_string()],
            &fifo,
        ),
        (
            vec!["--grubenv".into(), fifo.clone().into_os_string()],
            &fifo,
        ),
    ] {
        for cmd in [&["status"][..], &["mark-good"], &["env", "show"]] {
            let mut a: Vec<OsString> = cmd.iter().map(Into::into).collect();
            a.extend(args.clone());
            a.extend([
                "--booted-slot".into(),
                "A".into(),
                "--state-dir".into(),
                state.clone().into(),
            ]);
            assert_fifo_refused(&atomup_bounded(&a), named);
        }
    }
}

/// The slot records read by every boot-state command.
#[test]
fn fifos_as_slot_or_rollback_records_are_refused() {
    let dir = ScratchDir::new("fifo-records");
    let img = dir.join("disk.img");
    fs::File::create(&img).unwrap().set_len(1 << 20).unwrap();
    let state = dir.join("state");
    fs::create_dir_all(state.join("slots")).unwrap();
    let env = |cmd: &[&str]| {
        let mut a: Vec<OsString> = cmd.iter().map(Into::into).collect();
        a.extend([
            "--env-image".into(),
            img.clone().into(),
            "--state-dir".into(),
            state.clone().into(),
        ]);
        a.extend(["--booted-slot".into(), "A".into()]);
        a
    };
    assert!(atomup_bounded(env(&["env", "init", "--order", "A B"]))
        .status
        .success());
    for rel in ["slots/A", "rollbacks"] {
        let fifo = state.join(rel);
        mkfifo(&fifo);
        assert_fifo_refused(&atomup_bounded(env(&["status"])), &fifo);
        fs::remove_file(&fifo).unwrap();
    }
    // mark-bad records the rollback of a trial slot before the env changes.
    assert!(
        atomup_bounded(env(&["env", "set", "--trial", "A", "--left", "2"]))
            .status
            .success()
    );
    let fifo = state.join("rollbacks");
    mkfifo(&fifo);
    let before = fs::read(&img).unwrap();
    assert_fifo_refused(&atomup_bounded(env(&["mark-bad"])), &fifo);
    assert!(
        fs::read(&img).unwrap() == before,
        "env written although the record could not be"
    );
}

/// `update`: every file it reads before writing, each replaced by a FIFO in
/// turn; each run fails fast with the FIFO named and writes nothing.
#[test]
fn update_refuses_a_fifo_in_every_input_before_writing() {
    let w = world(&[]);
    let d = provision(&w, "fifo");
    let keys = w.dir.join("fifo-keys");
    let revoked = w.dir.join("fifo-revoked");
    let board = w.dir.join("fifo-board");
    let cmdline = w.dir.join("fifo-cmdline");
    for p in [&keys, &revoked, &board, &cmdline] {
        mkfifo(p);
    }
    let base = update_args(&w, &d, &w.nginx.url(), "A", &[]);
    let with = |extra: &[&dyn AsRef<std::ffi::OsStr>]| {
        let mut a = base.clone();
        a.extend(extra.iter().map(|e| e.as_ref().to_owned()));
        a
    };
    let before = Untouched::snap(&d);
    assert_fifo_refused(&atomup_bounded(with(&[&"--trusted-keys", &keys])), &keys);
    assert_fifo_refused(
        &atomup_bounded(with(&[&"--revoked-keys", &revoked])),
        &revoked,
    );
    assert_fifo_refused(&atomup_bounded(with(&[&"--board-conf", &board])), &board);
    // The command line is read only when no --booted-slot is given.
    let mut no_slot = base.clone();
    let i = no_slot.iter().position(|a| a == "--booted-slot").unwrap();
    no_slot.drain(i..i + 2);
    no_slot.extend(["--cmdline".into(), cmdline.clone().into()]);
    assert_fifo_refused(&atomup_bounded(no_slot), &cmdline);
    before.assert_nothing_written(&d);
    // State files inside the state dir: swapped for a FIFO one at a time.
    for rel in ["slots/A", "rollbacks", "trusted-time"] {
        let p = d.state.join(rel);
        let saved = fs::read(&p).ok();
        mkfifo(&p);
        let snap = Untouched::snap(&d);
        assert_fifo_refused(&atomup_bounded(&base), &p);
        snap.assert_nothing_written(&d);
        fs::remove_file(&p).unwrap();
        if let Some(b) = saved {
            fs::write(&p, b).unwrap();
        }
    }
    mkfifo(&d.machine_id);
    let snap = Untouched::snap(&d);
    assert_fifo_refused(&atomup_bounded(&base), &d.machine_id);
    snap.assert_nothing_written(&d);
}

/// The watchdog `health` arms for a trial's checks.
#[test]
fn fifo_as_the_watchdog_is_refused() {
    let dir = ScratchDir::new("fifo-watchdog");
    let img = dir.join("disk.img");
    fs::File::create(&img).unwrap().set_len(1 << 20).unwrap();
    let fifo = dir.join("watchdog");
    mkfifo(&fifo);
    let d = atomup_tests::device::Device {
        root: dir.path().to_owned(),
        state: dir.join("state"),
        env: img.clone(),
        slot_a: dir.join("a"),
        slot_b: dir.join("b"),
        machine_id: dir.join("id"),
    };
    fs::create_dir_all(&d.state).unwrap();
    assert!(
        atomup_bounded(env_args(&d, &["env", "init", "--order", "B A"]))
            .status
            .success()
    );
    assert!(
        atomup_bounded(env_args(&d, &["env", "set", "--trial", "B", "--left", "2"]))
            .status
            .success()
    );
    let mut a = env_args(&d, &["health", "--no-reboot", "--booted-slot", "B"]);
    a.extend(["--watchdog".into(), fifo.clone().into()]);
    a.extend(["--checks".into(), dir.join("no-checks").into()]);
    assert_fifo_refused(&atomup_bounded(a), &fifo);
}
