//! The daemon's service integration shipped in `updater/agent/dist/`: the
//! systemd unit passes `systemd-analyze verify` and keeps what the agent
//! needs under its hardening; the busybox/sysvinit script runs the real
//! `atomup daemon` against nginx: it installs, reloads on `reload`, stops
//! with exit 0 on `stop`, restarts a daemon that died, and refuses to start
//! on a boot the health check has not confirmed.

use atomup_tests::device::{provision, run_bounded, text, Device};
use atomup_tests::ostree_fixture::ScratchDir;
use atomup_tests::service::{agent_args, env_line, reboots, serve, shared_big_world, Conf};
use atomup_tests::{require_tool, workspace_bin, workspace_root};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const INSTALLED: &str = "ATOMUP_ORDER=B A;ATOMUP_TRIAL=B;ATOMUP_LEFT=3";

fn dist() -> PathBuf {
    workspace_root().join("updater/agent/dist")
}

/// The unit verifies (with the agent's path made real), restarts on
/// failure, reloads with SIGHUP, and its hardening leaves the agent what it
/// needs: mount (@mount, CAP_SYS_ADMIN), owners, setuid modes and file
/// capabilities (CAP_CHOWN, CAP_FSETID, CAP_SETFCAP), the env and slot
/// devices (no device rule), a writable ESP for the GRUB env; and no option
/// that would take one of those away.
#[test]
fn systemd_unit_verifies_and_its_hardening_keeps_what_the_agent_needs() {
    require_tool("systemd-analyze");
    let dir = ScratchDir::new("daemon-unit");
    let unit = fs::read_to_string(dist().join("systemd/atomup.service")).unwrap();
    fs::write(
        dir.join("atomup.service"),
        unit.replace(
            "/usr/bin/atomup",
            &workspace_bin("atomup").display().to_string(),
        ),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(dir.join("atomup.service"))
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        text(&out)
    );
    let lines: Vec<&str> = unit.lines().collect();
    for line in [
        "ExecStart=/usr/bin/atomup daemon",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "ProtectSystem=full",
        "ReadWritePaths=-/boot -/efi",
        "SystemCallFilter=@system-service @mount",
        "WantedBy=multi-user.target",
    ] {
        assert!(lines.contains(&line), "no `{line}`");
    }
    let caps = lines
        .iter()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("a capability bounding set");
    for cap in [
        "CAP_SYS_ADMIN",
        "CAP_CHOWN",
        "CAP_FOWNER",
        "CAP_FSETID",
        "CAP_SETFCAP",
        "CAP_MKNOD",
    ] {
        assert!(caps.split(' ').any(|c| c == cap), "{cap} missing: {caps}");
    }
    for forbidden in [
        "RestrictSUIDSGID=",
        "PrivateDevices=",
        "ProtectClock=",
        "DeviceAllow=",
        "DevicePolicy=",
        "UMask=",
        "PrivateMounts=",
    ] {
        assert!(
            !lines.iter().any(|l| l.starts_with(forbidden)),
            "{forbidden} would break the agent"
        );
    }
    // Every hardening option says why: a comment above each group.
    let hardening = unit.split("# --- Hardening").nth(1).unwrap();
    let mut commented = true;
    for l in hardening
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with("[Install]"))
    {
        if l.starts_with('#') {
            commented = true;
        } else if l.is_empty() {
            commented = false;
        } else {
            assert!(commented, "`{l}` has no comment");
        }
    }
}

/// A device set up for the script: the configuration, the defaults file
/// (the agent and its device flags, the log, the run dir).
struct Rc {
    d: Device,
    defaults: PathBuf,
    run_dir: PathBuf,
    log: PathBuf,
    _nginx: atomup_tests::nginx::Nginx,
}

fn rc_device(name: &str, confirmed: bool, respawn: u32) -> Rc {
    let (w, _) = shared_big_world();
    let d = provision(w, name);
    let nginx = serve(w, &d.root);
    let conf = Conf::new(w, &d, &nginx.url()).write();
    let args = agent_args(&d, "daemon", "A", &[]);
    let device_flags: Vec<String> = args[3..]
        .iter()
        .map(|a| a.to_str().unwrap().to_owned())
        .collect();
    let run_dir = d.root.join("run/atomup");
    fs::create_dir_all(&run_dir).unwrap();
    if confirmed {
        fs::write(run_dir.join("boot-complete"), "").unwrap();
    }
    let log = d.root.join("atomup.log");
    let defaults = d.root.join("atomup.defaults");
    fs::write(
        &defaults,
        format!(
            "ATOMUP=\"{} --config-dir {}\"\nDAEMON_ARGS=\"{}\"\nLOG={}\nRUN_DIR={}\nRESPAWN_DELAY={respawn}\nSTOP_TIMEOUT=30\n",
            workspace_bin("atomup").display(),
            conf.display(),
            device_flags.join(" "),
            log.display(),
            run_dir.display()
        ),
    )
    .unwrap();
    Rc {
        d,
        defaults,
        run_dir,
        log,
        _nginx: nginx,
    }
}

/// A failed test stops its daemon too (nothing left running).
impl Drop for Rc {
    fn drop(&mut self) {
        let _ = Command::new("/bin/sh")
            .arg(dist().join("sysvinit/S99zz-atomup"))
            .arg("stop")
            .env("ATOMUP_DEFAULTS", &self.defaults)
            .output();
    }
}

fn rc(s: &Rc, action: &str) -> Output {
    run_bounded(
        Command::new("/bin/sh")
            .arg(dist().join("sysvinit/S99zz-atomup"))
            .arg(action)
            .env("ATOMUP_DEFAULTS", &s.defaults),
        Duration::from_secs(60),
    )
}

fn log_of(s: &Rc) -> String {
    fs::read_to_string(&s.log).unwrap_or_default()
}

fn wait_log(s: &Rc, needle: &str) {
    let start = Instant::now();
    while !log_of(s).contains(needle) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no `{needle}` in the log:\n{}",
            log_of(s)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The daemons (`atomup ... daemon`) of this device's configuration now running.
fn daemons(root: &Path) -> Vec<u32> {
    let conf = root.join("config.d").display().to_string();
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmd = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
            args.contains(&conf.as_bytes()) && args.contains(&&b"daemon"[..])
        })
        .collect()
}

/// start runs the daemon, which installs v2 and runs the reboot command;
/// reload makes it reread its configuration; stop ends it with exit 0 (the
/// daemon says it stopped by signal) and nothing is left running.
#[test]
fn sysvinit_script_starts_reloads_and_stops_the_daemon() {
    let s = rc_device("rc-daemon", true, 30);
    let out = rc(&s, "start");
    assert!(out.status.success(), "{}", text(&out));
    assert!(rc(&s, "status").status.success());
    wait_log(&s, "rebooting into slot B (version 2)");
    let start = Instant::now();
    while reboots(&s.d) == 0 {
        assert!(start.elapsed() < Duration::from_secs(30), "{}", log_of(&s));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(env_line(&s.d), INSTALLED);
    assert!(rc(&s, "reload").status.success());
    wait_log(&s, "configuration reloaded");
    let out = rc(&s, "stop");
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("daemon stopped"), "{}", text(&out));
    assert!(log_of(&s).contains("stopped by signal"), "{}", log_of(&s));
    assert_eq!(rc(&s, "status").status.code(), Some(3));
    assert!(!s.run_dir.join("atomup-daemon.pid").exists());
    assert_eq!(daemons(&s.d.root), Vec::<u32>::new());
}

/// A daemon that dies (kill -9) is started again by the script's
/// supervisor; a stop still ends everything with exit 0.
#[test]
fn sysvinit_script_restarts_a_daemon_that_died() {
    let s = rc_device("rc-respawn", true, 1);
    assert!(rc(&s, "start").status.success());
    // Past the reboot command: while it is spawned, its forked child still
    // shows the daemon's command line.
    wait_log(&s, "next poll in");
    let first = daemons(&s.d.root);
    assert_eq!(first.len(), 1, "{first:?}");
    let ok = Command::new("kill")
        .args(["-KILL", &first[0].to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    wait_log(
        &s,
        "the daemon exited with status 137; starting it again in 1 s",
    );
    let start = Instant::now();
    loop {
        let now = daemons(&s.d.root);
        if now.len() == 1 && now != first {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{}", log_of(&s));
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = rc(&s, "stop");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(daemons(&s.d.root), Vec::<u32>::new());
}

/// Without the health check's boot-complete marker the script refuses to
/// start the daemon (a slot on trial never installs), and says why.
#[test]
fn sysvinit_script_refuses_to_start_on_an_unconfirmed_boot() {
    let s = rc_device("rc-unconfirmed", false, 30);
    let out = rc(&s, "start");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("this boot is not confirmed"),
        "{}",
        text(&out)
    );
    assert_eq!(daemons(&s.d.root), Vec::<u32>::new());
    assert_eq!(rc(&s, "status").status.code(), Some(3));
}
