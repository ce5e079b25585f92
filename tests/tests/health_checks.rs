//! `atomup health` on the host, the CLI end to end: required vs wanted
//! checks decide the trial (confirmed, or marked bad with the reason and
//! exit status 2), per-check time limits, the output captured into the state
//! dir and shown by `status`, the built-ins switched by the configuration,
//! the watchdog and the LED taken from the board profile, the early-boot
//! arming, and health failing closed (issue 11.5) on anything in the checks
//! directories that is not a runnable check.

use atomup_tests::device::{atomup_bounded, env_args, env_show, mkfifo, run_bounded, text, Device};
use atomup_tests::ostree_fixture::ScratchDir;
use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

const CONFIRMED: &str = "ATOMUP_ORDER=B A\nATOMUP_TRIAL=\nATOMUP_LEFT=0\n";
const REJECTED: &str = "ATOMUP_ORDER=A\nATOMUP_TRIAL=\nATOMUP_LEFT=0\n";

/// A device booted into slot B (version 3) on trial, 2 attempts left, A
/// confirmed; its checks roots, configuration and board profile live in the
/// scratch dir.
struct Trial {
    d: Device,
    site: PathBuf,
    vendor: PathBuf,
    config: PathBuf,
    board: Option<PathBuf>,
}

fn on_trial(dir: &ScratchDir) -> Trial {
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
    fs::create_dir_all(d.state.join("slots")).unwrap();
    fs::write(
        d.state.join("slots/B"),
        format!("format=2\ncommit={}\nversion=3\n", "ab".repeat(32)),
    )
    .unwrap();
    let t = Trial {
        site: dir.join("etc/atomup/health.d"),
        vendor: dir.join("usr/lib/atomup/health.d"),
        config: dir.join("etc/atomup/config.d"),
        board: None,
        d,
    };
    for root in [&t.site, &t.vendor] {
        fs::create_dir_all(root.join("required.d")).unwrap();
        fs::create_dir_all(root.join("wanted.d")).unwrap();
    }
    // The host's root is read-write and its /tmp no data partition: those
    // built-ins are for devices (proven in QEMU, tests/tests/boot_qemu.rs).
    config(
        &t,
        "[health]\nread_only_root = false\ndata_partition = false\nmin_free = 0\n",
    );
    t
}

fn config(t: &Trial, toml: &str) {
    fs::create_dir_all(&t.config).unwrap();
    fs::write(t.config.join("50-test.toml"), toml).unwrap();
}

fn script(path: &Path, body: &str, mode: u32) {
    fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn args(t: &Trial, cmd: &[&str]) -> Vec<OsString> {
    let mut a = env_args(&t.d, cmd);
    if let Some(b) = &t.board {
        a.extend(["--board-conf".into(), b.into()]);
    }
    a
}

fn health(t: &Trial, extra: &[&str]) -> std::process::Output {
    let mut a = args(t, &["health", "--no-reboot", "--booted-slot", "B"]);
    a.extend(extra.iter().map(OsString::from));
    for (opt, p) in [
        ("--checks", &t.site),
        ("--vendor-checks", &t.vendor),
        ("--config-dir", &t.config),
    ] {
        a.extend([opt.into(), p.into()]);
    }
    atomup_bounded(a)
}

fn status(t: &Trial, booted: &str) -> String {
    let out = atomup_bounded(args(t, &["status", "--booted-slot", booted]));
    assert!(out.status.success(), "{}", text(&out));
    text(&out)
}

fn status_json(t: &Trial) -> serde_json::Value {
    let out = atomup_bounded(args(t, &["status", "--json", "--booted-slot", "B"]));
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Only a wanted check fails: the trial is confirmed (exit 0, one env write),
/// and the failure is recorded: `status` shows it with its output, the JSON
/// form carries it for reports.
#[test]
fn a_failing_wanted_check_is_reported_and_the_slot_confirmed() {
    let dir = ScratchDir::new("health-wanted");
    let t = on_trial(&dir);
    script(&t.vendor.join("required.d/10-app"), "echo app ok", 0o755);
    script(
        &t.site.join("wanted.d/20-uplink"),
        "echo no route to the cloud >&2; exit 4",
        0o755,
    );
    let out = health(&t, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("wanted check(s) failed, recorded and reported: 20-uplink"),
        "{}",
        text(&out)
    );
    assert_eq!(env_show(&t.d), CONFIRMED);
    let s = status(&t, "B");
    assert!(s.contains("Health: slot B version 3"), "{s}");
    assert!(s.contains(": passed (1 wanted check(s) failed)"), "{s}");
    assert!(s.contains("| no route to the cloud"), "{s}");
    let j = status_json(&t);
    let h = &j["health"];
    assert_eq!(h["verdict"], "passed");
    assert_eq!(h["slot"], "B");
    assert_eq!(h["version"], 3);
    let c = &h["checks"][1];
    assert_eq!(
        (&c["kind"], &c["name"], &c["outcome"], &c["detail"]),
        (
            &"wanted".into(),
            &"20-uplink".into(),
            &"failed".into(),
            &"exit status 4".into()
        )
    );
    assert_eq!(c["output"], "no route to the cloud\n");
    assert_eq!(h["checks"][0]["output"], "app ok\n");
}

/// A required check fails: the slot is marked bad (exit 2, B leaves the
/// order), the rollback is recorded with the check's name and exit status,
/// and `status` says "rolled back from version 3 (reason)".
#[test]
fn a_failing_required_check_rejects_the_slot_with_its_reason() {
    let dir = ScratchDir::new("health-required");
    let t = on_trial(&dir);
    script(&t.vendor.join("required.d/10-ok"), "exit 0", 0o755);
    script(
        &t.vendor.join("required.d/20-app"),
        "echo app crashed; exit 1",
        0o755,
    );
    script(&t.site.join("wanted.d/30-never"), "exit 0", 0o755);
    let out = health(&t, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("health: slot B FAILED: required check 20-app failed: exit status 1"),
        "{}",
        text(&out)
    );
    assert_eq!(env_show(&t.d), REJECTED);
    let s = status(&t, "A");
    assert!(
        s.contains(
            "Rollback: rolled back from version 3 (required check 20-app failed: exit status 1); slot B"
        ),
        "{s}"
    );
    assert!(s.contains("skipped"), "{s}");
    let j = status_json(&t);
    assert_eq!(j["rollbacks"][0]["version"], 3);
    assert_eq!(
        j["rollbacks"][0]["reason"],
        "required check 20-app failed: exit status 1"
    );
    assert_eq!(j["health"]["verdict"], "failed");
}

/// A check's own `# atomup-timeout:` limit: past it the check is killed and
/// the trial fails with the limit in the reason; `--timeout` sets the default.
#[test]
fn a_check_past_its_limit_fails_the_trial() {
    let dir = ScratchDir::new("health-timeout");
    let t = on_trial(&dir);
    script(
        &t.vendor.join("required.d/10-hangs"),
        "# atomup-timeout: 1s\nsleep 60",
        0o755,
    );
    let out = health(&t, &["--timeout", "30"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("required check 10-hangs did not finish within 1s (killed)"),
        "{}",
        text(&out)
    );
    assert_eq!(env_show(&t.d), REJECTED);
}

/// The built-in service check from the configuration: a pidfile whose
/// process is gone fails the trial; a configuration that does not load
/// fails it too (nothing runs on a half-valid configuration).
#[test]
fn configured_builtins_and_a_broken_configuration_decide_the_trial() {
    let dir = ScratchDir::new("health-builtins");
    let t = on_trial(&dir);
    let pid = dir.join("app.pid");
    fs::write(&pid, "999999999\n").unwrap();
    config(
        &t,
        &format!(
            "[health]\nread_only_root = false\ndata_partition = false\nmin_free = 0\nservices = [\"{}\"]\n",
            pid.display()
        ),
    );
    let out = health(&t, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("required check atomup:services failed")
            && text(&out).contains("process 999999999 is not running"),
        "{}",
        text(&out)
    );

    // A systemd unit that is not active (the real systemctl answers; on a
    // machine without a running systemd it answers "not active" too).
    let dir = ScratchDir::new("health-unit");
    let t = on_trial(&dir);
    config(
        &t,
        "[health]\nread_only_root = false\ndata_partition = false\nmin_free = 0\n\
         services = [\"atomup-test-no-such-unit.service\"]\n",
    );
    let out = health(&t, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out)
            .contains("required check atomup:services failed: atomup-test-no-such-unit.service"),
        "{}",
        text(&out)
    );

    let dir = ScratchDir::new("health-badconfig");
    let t = on_trial(&dir);
    config(&t, "[health]\ntimeout = \"forever\"\n");
    let out = health(&t, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("the checks cannot run: configuration:"),
        "{}",
        text(&out)
    );
    assert_eq!(env_show(&t.d), REJECTED);
}

/// The watchdog and the LED come from the board profile: health arms the
/// watchdog, feeds it while the checks run and disarms it (magic 'V') once
/// the slot is confirmed; the LED is left on (confirmed). `--no-watchdog`
/// leaves it alone; a rejected slot leaves the watchdog armed (no 'V') and
/// the LED off (rolled back).
#[test]
fn watchdog_and_led_come_from_the_board_profile() {
    let dir = ScratchDir::new("health-board");
    let mut t = on_trial(&dir);
    let wdt = dir.join("watchdog");
    fs::write(&wdt, b"").unwrap();
    let led = dir.join("leds/status");
    fs::create_dir_all(&led).unwrap();
    fs::write(led.join("brightness"), "0\n").unwrap();
    let board = dir.join("board.conf");
    fs::write(
        &board,
        format!(
            "board = qemu-virt\nbootloader = uboot\nslot.A = /dev/vda2\nslot.B = /dev/vda3\n\
             watchdog = {}\nled = {}\n",
            wdt.display(),
            led.display()
        ),
    )
    .unwrap();
    t.board = Some(board);
    script(&t.vendor.join("required.d/10-slow"), "sleep 1", 0o755);
    let out = health(&t, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "health: watchdog {} armed for slot B",
            wdt.display()
        )),
        "{}",
        text(&out)
    );
    let fed = fs::read(&wdt).unwrap();
    assert!(fed.len() >= 3 && fed.ends_with(b"V"), "{fed:?}");
    assert!(fed[..fed.len() - 1].iter().all(|&b| b == 0), "{fed:?}");
    assert_eq!(fs::read_to_string(led.join("brightness")).unwrap(), "1\n");

    // Rejected: armed and fed, never disarmed; the LED rests off.
    let dir2 = ScratchDir::new("health-board-bad");
    let mut t2 = on_trial(&dir2);
    fs::write(&wdt, b"").unwrap();
    t2.board = t.board.clone();
    script(&t2.vendor.join("required.d/10-bad"), "exit 1", 0o755);
    let out = health(&t2, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let fed = fs::read(&wdt).unwrap();
    assert!(!fed.is_empty() && !fed.contains(&b'V'), "{fed:?}");
    assert_eq!(fs::read_to_string(led.join("brightness")).unwrap(), "0\n");

    // --no-watchdog: the profile's watchdog is not touched.
    let dir3 = ScratchDir::new("health-board-nowdt");
    let mut t3 = on_trial(&dir3);
    fs::write(&wdt, b"").unwrap();
    t3.board = t.board.clone();
    let out = health(&t3, &["--no-watchdog"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(fs::read(&wdt).unwrap(), b"");
}

/// `--arm-watchdog` (early boot) arms the watchdog only on a trial boot
/// (atomup.trial=1 on the kernel command line) and leaves it running: fed,
/// no magic 'V'.
#[test]
fn early_boot_arms_the_watchdog_only_on_a_trial_boot() {
    let dir = ScratchDir::new("health-arm");
    let wdt = dir.join("watchdog");
    fs::write(&wdt, b"").unwrap();
    let cmdline = dir.join("cmdline");
    let arm = |line: &str| {
        fs::write(&cmdline, line).unwrap();
        let a: Vec<OsString> = vec![
            "health".into(),
            "--arm-watchdog".into(),
            "--watchdog".into(),
            wdt.clone().into(),
            "--cmdline".into(),
            cmdline.clone().into(),
        ];
        atomup_bounded(a)
    };
    let out = arm("console=ttyAMA0 atomup.slot=B\n");
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("not a trial boot"), "{}", text(&out));
    assert_eq!(fs::read(&wdt).unwrap(), b"");
    let out = arm("console=ttyAMA0 atomup.slot=B atomup.trial=1\n");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "health: watchdog {} armed for slot B's trial",
            wdt.display()
        )),
        "{}",
        text(&out)
    );
    assert_eq!(fs::read(&wdt).unwrap(), b"\0");
}

/// After the bootloader fell back (B's trial ran out of attempts, A booted),
/// health on A records the rollback with why, from B's last health record:
/// the board reset while a required check ran (the watchdog).
#[test]
fn a_fallback_records_the_check_the_trial_hung_in() {
    let dir = ScratchDir::new("health-fallback");
    let t = on_trial(&dir);
    let ok = |a: &[&str]| {
        let out = atomup_bounded(env_args(&t.d, a));
        assert!(out.status.success(), "{}", text(&out));
    };
    ok(&["env", "set", "--left", "0"]);
    fs::create_dir_all(t.d.state.join("health")).unwrap();
    fs::write(
        t.d.state.join("health/last"),
        "format=1\nslot=B\nversion=3\nstarted=1767225600\nverdict=running\n\
         check=required passed 3 atomup:read-only-root / is mounted read-only\n\
         check=required running 0 50-hang\n",
    )
    .unwrap();
    let mut a = args(&t, &["health", "--no-reboot", "--booted-slot", "A"]);
    a.extend(["--config-dir".into(), t.config.clone().into()]);
    let out = atomup_bounded(a);
    assert!(out.status.success(), "{}", text(&out));
    let want = "rolled back from version 3 (ran out of boot attempts: its last health run \
                (2026-01-01T00:00:00Z) never finished, the board reset during required check \
                50-hang (watchdog))";
    assert!(text(&out).contains(want), "{}", text(&out));
    assert_eq!(env_show(&t.d), REJECTED);
    assert!(status(&t, "A").contains(want));
    // Without any health record of B: it never got to its checks.
    let dir = ScratchDir::new("health-fallback-none");
    let t = on_trial(&dir);
    let out = atomup_bounded(env_args(&t.d, &["env", "set", "--left", "0"]));
    assert!(out.status.success());
    let out = atomup_bounded(args(&t, &["mark-good", "--booted-slot", "A"]));
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("ran out of boot attempts: no health run of it was recorded"),
        "{}",
        text(&out)
    );
}

/// `mark-bad --reason` records the operator's reason.
#[test]
fn mark_bad_records_the_given_reason() {
    let dir = ScratchDir::new("health-markbad");
    let t = on_trial(&dir);
    let out = atomup_bounded(args(
        &t,
        &[
            "mark-bad",
            "--booted-slot",
            "B",
            "--reason",
            "field test: display dead",
        ],
    ));
    assert!(out.status.success(), "{}", text(&out));
    assert!(status(&t, "A").contains("rolled back from version 3 (field test: display dead)"));
}

/// Health fails closed: each kind of entry that is not a runnable check
/// fails the trial naming it, and B leaves the boot order.
#[test]
fn anything_in_the_checks_dir_that_is_not_a_runnable_check_fails_the_trial() {
    type Plant = fn(&Path);
    let cases: [(&str, Plant, &str); 4] = [
        (
            "20-lost-x-bit",
            |p| script(p, "exit 0", 0o644),
            "not executable",
        ),
        (
            "20-dangling",
            |p| std::os::unix::fs::symlink("/nonexistent/check", p).unwrap(),
            "not a runnable check",
        ),
        (
            "20-a-dir",
            |p| fs::create_dir(p).unwrap(),
            "a directory, not a runnable check",
        ),
        ("20-fifo", |p| mkfifo(p), "a FIFO, not a runnable check"),
    ];
    for (name, plant, why) in cases {
        let dir = ScratchDir::new("health");
        let t = on_trial(&dir);
        script(&t.site.join("required.d/10-ok"), "exit 0", 0o755);
        plant(&t.site.join("required.d").join(name));
        let out = health(&t, &[]);
        assert_eq!(out.status.code(), Some(2), "{name}: {}", text(&out));
        assert!(
            text(&out).contains(why) && text(&out).contains(name),
            "{name}: {}",
            text(&out)
        );
        assert_eq!(env_show(&t.d), REJECTED, "{name}: slot B not marked bad");
    }
    // A check dropped straight into health.d/ (the layout before required.d).
    let dir = ScratchDir::new("health-flat");
    let t = on_trial(&dir);
    script(&t.site.join("10-flat"), "exit 0", 0o755);
    let out = health(&t, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("checks go in"), "{}", text(&out));
}

/// `README` and `*.md` files are documentation and skipped; the checks run.
#[test]
fn documentation_in_the_checks_dir_is_skipped() {
    let dir = ScratchDir::new("health-doc");
    let t = on_trial(&dir);
    script(&t.site.join("required.d/10-ok"), "exit 0", 0o755);
    fs::write(t.site.join("README"), "what the checks do\n").unwrap();
    fs::write(t.site.join("required.d/README"), "what the checks do\n").unwrap();
    fs::write(t.vendor.join("wanted.d/notes.md"), "# notes\n").unwrap();
    let out = health(&t, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("health: 1 check(s) passed on slot B"),
        "{}",
        text(&out)
    );
    assert_eq!(env_show(&t.d), CONFIRMED);
}

/// The queued report of each verdict (`server.report_url` configured; the
/// queue is in the state dir `--state-dir` names): a confirmed trial's
/// carries the wanted checks that failed, a rejected trial's carries the
/// rollback with the check's reason (regression: reports said only "slot B
/// was rolled back", and went to the configuration's state dir).
#[test]
fn reports_carry_failed_wanted_checks_and_the_rollback_reason() {
    let reports = |t: &Trial| -> Vec<serde_json::Value> {
        let mut names: Vec<PathBuf> = fs::read_dir(t.d.state.join("reports"))
            .map(|rd| rd.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default();
        names.sort();
        names
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .map(|p| serde_json::from_slice(&fs::read(p).unwrap()).unwrap())
            .collect()
    };
    let with_reports = |t: &Trial| {
        config(
            t,
            "[health]\nread_only_root = false\ndata_partition = false\nmin_free = 0\n\
             server_reachable = false\n\
             [server]\nurl = \"http://127.0.0.1:9/repo\"\nchannel = \"stable\"\n\
             report_url = \"http://127.0.0.1:9/report\"\n",
        )
    };

    // The configuration the reports are made from is the agent's
    // (`atomup --config-dir DIR health`), as for every command.
    let health = |t: &Trial| {
        let mut a: Vec<OsString> = vec!["--config-dir".into(), t.config.clone().into()];
        a.extend(
            args(t, &["health", "--no-reboot", "--booted-slot", "B"])
                .into_iter()
                .chain(["--checks".into(), t.site.clone().into()])
                .chain(["--vendor-checks".into(), t.vendor.clone().into()])
                .chain(["--config-dir".into(), t.config.clone().into()]),
        );
        atomup_bounded(a)
    };

    let dir = ScratchDir::new("health-report-wanted");
    let t = on_trial(&dir);
    with_reports(&t);
    script(&t.site.join("wanted.d/20-uplink"), "exit 4", 0o755);
    let out = health(&t);
    assert!(out.status.success(), "{}", text(&out));
    let r = reports(&t);
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0]["event"], "confirmed");
    let h = &r[0]["health"];
    assert_eq!((&h["slot"], &h["version"]), (&"B".into(), &3.into()));
    assert_eq!(h["verdict"], "passed");
    assert_eq!(
        h["failed"],
        serde_json::json!([{"kind": "wanted", "name": "20-uplink",
            "outcome": "failed", "detail": "exit status 4"}])
    );

    let dir = ScratchDir::new("health-report-required");
    let t = on_trial(&dir);
    with_reports(&t);
    script(&t.vendor.join("required.d/20-app"), "exit 1", 0o755);
    let out = health(&t);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let r = reports(&t);
    assert_eq!(r.len(), 1, "{r:?}");
    let reason = "required check 20-app failed: exit status 1";
    assert_eq!(r[0]["event"], "rolled-back");
    assert_eq!(r[0]["rollbacks"][0]["reason"], reason);
    assert_eq!(r[0]["rollbacks"][0]["version"], 3);
    assert_eq!(
        r[0]["last_error"],
        format!("slot B failed on its trial boot: {reason}")
    );
    assert_eq!(r[0]["health"]["verdict"], "failed");
}

/// `atomup --config-dir DIR health` (the option every command takes) sets
/// the configuration of the checks too, as it does the reports' (regression:
/// health read its checks' configuration from the default directories, so
/// the host's read-write root failed the built-in read-only-root check).
#[test]
fn the_global_config_dir_configures_the_checks() {
    let dir = ScratchDir::new("health-global-config");
    let t = on_trial(&dir);
    script(&t.vendor.join("required.d/10-app"), "exit 0", 0o755);
    let mut a: Vec<OsString> = vec!["--config-dir".into(), t.config.clone().into()];
    a.extend(args(&t, &["health", "--no-reboot", "--booted-slot", "B"]));
    a.extend([
        "--checks".into(),
        t.site.clone().into(),
        "--vendor-checks".into(),
        t.vendor.clone().into(),
    ]);
    let out = atomup_bounded(a);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        !text(&out).contains("atomup:read-only-root"),
        "{}",
        text(&out)
    );
    assert_eq!(env_show(&t.d), CONFIRMED);
}

/// Regression (found by the fresh-machine check, whose jobs run in a
/// chroot-like namespace): there `systemctl is-active` says "Running in
/// chroot, ignoring command" on stderr and exits 0 for any unit, and a
/// unit that does not exist passed the trial. Only `active` on its stdout
/// counts; this systemctl behaves as systemd's does in a chroot.
#[test]
fn a_systemctl_that_exits_0_without_a_state_fails_the_services_check() {
    let dir = ScratchDir::new("health-chroot-systemctl");
    let t = on_trial(&dir);
    let bin = dir.join("bin");
    fs::create_dir_all(&bin).unwrap();
    script(
        &bin.join("systemctl"),
        "echo \"Running in chroot, ignoring command '$1'\" >&2\nexit 0",
        0o755,
    );
    config(
        &t,
        "[health]\nread_only_root = false\ndata_partition = false\nmin_free = 0\n\
         services = [\"atomup-test-no-such-unit.service\"]\n",
    );
    let mut a = args(&t, &["health", "--no-reboot", "--booted-slot", "B"]);
    for (opt, p) in [
        ("--checks", &t.site),
        ("--vendor-checks", &t.vendor),
        ("--config-dir", &t.config),
    ] {
        a.extend([opt.into(), p.into()]);
    }
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = run_bounded(
        std::process::Command::new(atomup_tests::workspace_bin("atomup"))
            .args(&a)
            .env("PATH", path),
        std::time::Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains(
            "required check atomup:services failed: atomup-test-no-such-unit.service: systemctl gave no state"
        ),
        "{}",
        text(&out)
    );
    assert_eq!(env_show(&t.d), REJECTED);
}
