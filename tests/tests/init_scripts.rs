//! The boot integration shipped in `updater/agent/dist/`: the systemd units
//! pass `systemd-analyze verify` and carry the ordering the contract needs
//! (health after the services, before boot-complete.target; the watchdog
//! armed early on trial boots only); the busybox/sysvinit scripts run the
//! real agent: a passed trial is confirmed once and leaves the
//! boot-complete marker, a rejected slot runs the reboot, the early script
//! arms the watchdog.

use atomup_tests::device::{atomup_bounded, env_args, env_show, run_bounded, text, Device};
use atomup_tests::ostree_fixture::ScratchDir;
use atomup_tests::{require_tool, workspace_bin, workspace_root};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn dist() -> PathBuf {
    workspace_root().join("updater/agent/dist")
}

/// Both units verify cleanly (with the agent's path made real) and state the
/// ordering: health after multi-user.target, before and required by
/// boot-complete.target, rebooting on exit status 2; the watchdog unit only
/// on trial boots, before sysinit.target.
#[test]
fn systemd_units_verify_and_order_health_before_boot_complete() {
    require_tool("systemd-analyze");
    let dir = ScratchDir::new("units");
    let bin = workspace_bin("atomup");
    for name in ["atomup-health.service", "atomup-watchdog.service"] {
        let text_in = fs::read_to_string(dist().join("systemd").join(name)).unwrap();
        fs::write(
            dir.join(name),
            text_in.replace("/usr/bin/atomup", &bin.display().to_string()),
        )
        .unwrap();
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(dir.join("atomup-health.service"))
        .arg(dir.join("atomup-watchdog.service"))
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        text(&out)
    );
    let health = fs::read_to_string(dist().join("systemd/atomup-health.service")).unwrap();
    for line in [
        "After=local-fs.target multi-user.target atomup-watchdog.service",
        "Before=boot-complete.target shutdown.target",
        "RequiredBy=boot-complete.target",
        "RemainAfterExit=yes",
        "ExecStart=/usr/bin/atomup health --no-reboot",
    ] {
        assert!(health.lines().any(|l| l == line), "no `{line}`");
    }
    assert!(
        health.contains(r#"if [ "$EXIT_STATUS" = 2 ]; then exec systemctl --no-block reboot; fi"#)
    );
    let wdt = fs::read_to_string(dist().join("systemd/atomup-watchdog.service")).unwrap();
    for line in [
        "ConditionKernelCommandLine=atomup.trial=1",
        "Before=sysinit.target shutdown.target",
        "ExecStart=/usr/bin/atomup health --arm-watchdog",
    ] {
        assert!(wdt.lines().any(|l| l == line), "no `{line}`");
    }
}

struct Sys {
    d: Device,
    defaults: PathBuf,
    run_dir: PathBuf,
    rebooted: PathBuf,
    checks: PathBuf,
}

/// A trial boot of slot B and the defaults file the scripts read.
fn trial(dir: &ScratchDir) -> Sys {
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
    for a in [
        &["env", "init", "--order", "B A"][..],
        &["env", "set", "--trial", "B", "--left", "2"],
    ] {
        assert!(atomup_bounded(env_args(&d, a)).status.success());
    }
    let checks = dir.join("health.d");
    fs::create_dir_all(checks.join("required.d")).unwrap();
    let config = dir.join("config.d");
    fs::create_dir_all(&config).unwrap();
    fs::write(
        config.join("test.toml"),
        "[health]\nread_only_root = false\ndata_partition = false\nmin_free = 0\n",
    )
    .unwrap();
    let s = Sys {
        defaults: dir.join("atomup-health.defaults"),
        run_dir: dir.join("run/atomup"),
        rebooted: dir.join("rebooted"),
        checks: checks.clone(),
        d,
    };
    fs::write(
        &s.defaults,
        format!(
            "HEALTH_ARGS=\"--env-image {} --state-dir {} --booted-slot B --checks {} \
             --vendor-checks {} --config-dir {}\"\nREBOOT=\"touch {}\"\nRUN_DIR={}\n",
            s.d.env.display(),
            s.d.state.display(),
            checks.display(),
            dir.join("no-vendor").display(),
            config.display(),
            s.rebooted.display(),
            s.run_dir.display()
        ),
    )
    .unwrap();
    s
}

fn script(path: &Path, body: &str) {
    fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

fn rc_script(s: &Sys, name: &str) -> std::process::Output {
    run_bounded(
        Command::new("/bin/sh")
            .arg(dist().join("sysvinit").join(name))
            .arg("start")
            .env("ATOMUP", workspace_bin("atomup"))
            .env("ATOMUP_DEFAULTS", &s.defaults),
        Duration::from_secs(30),
    )
}

/// S99atomup-health on a passed trial: the slot is confirmed and the
/// boot-complete marker written; run again (a second start), nothing more
/// is written: mark-good happens once.
#[test]
fn sysvinit_health_confirms_once_and_marks_boot_complete() {
    let dir = ScratchDir::new("rc-pass");
    let s = trial(&dir);
    script(&s.checks.join("required.d/10-ok"), "exit 0");
    let out = rc_script(&s, "S99atomup-health");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        env_show(&s.d),
        "ATOMUP_ORDER=B A\nATOMUP_TRIAL=\nATOMUP_LEFT=0\n"
    );
    assert!(s.run_dir.join("boot-complete").exists());
    assert!(!s.rebooted.exists());
    let before = fs::read(&s.d.env).unwrap();
    let out = rc_script(&s, "S99atomup-health");
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("nothing to write"), "{}", text(&out));
    assert!(
        fs::read(&s.d.env).unwrap() == before,
        "a confirmed boot wrote the env"
    );
}

/// S99atomup-health on a failed trial: the slot is marked bad, the reboot
/// command runs, the exit status is 2 and there is no boot-complete marker.
#[test]
fn sysvinit_health_reboots_a_rejected_slot() {
    let dir = ScratchDir::new("rc-fail");
    let s = trial(&dir);
    script(&s.checks.join("required.d/10-bad"), "exit 1");
    let out = rc_script(&s, "S99atomup-health");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(s.rebooted.exists(), "no reboot: {}", text(&out));
    assert!(!s.run_dir.join("boot-complete").exists());
    assert_eq!(
        env_show(&s.d),
        "ATOMUP_ORDER=A\nATOMUP_TRIAL=\nATOMUP_LEFT=0\n"
    );
}

/// S01atomup-watchdog arms the watchdog on a trial boot and leaves it
/// running (no magic close).
#[test]
fn sysvinit_early_script_arms_the_watchdog_on_a_trial_boot() {
    let dir = ScratchDir::new("rc-wdt");
    let s = trial(&dir);
    let wdt = dir.join("watchdog");
    fs::write(&wdt, b"").unwrap();
    let cmdline = dir.join("cmdline");
    fs::write(&cmdline, "root=/dev/vda3 atomup.slot=B atomup.trial=1\n").unwrap();
    fs::write(
        &s.defaults,
        format!(
            "WATCHDOG_ARGS=\"--watchdog {} --cmdline {}\"\n",
            wdt.display(),
            cmdline.display()
        ),
    )
    .unwrap();
    let out = rc_script(&s, "S01atomup-watchdog");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("armed for slot B's trial"),
        "{}",
        text(&out)
    );
    assert_eq!(fs::read(&wdt).unwrap(), b"\0");
}
