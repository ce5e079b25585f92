//! Health runs on the host with real check scripts in real directories:
//! required vs wanted, order, per-check time limits, output capture, the
//! record written while the run goes, masks and overrides, and failing
//! closed on what cannot run.

use atomup_health::builtin::Builtin;
use atomup_health::record::{Kind, Outcome, Verdict};
use atomup_health::{plan_for, run_all, Store, Summary};
use atomup_policy::Slot;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

struct Dirs {
    root: PathBuf,
    vendor: PathBuf,
    site: PathBuf,
    state: PathBuf,
}

impl Drop for Dirs {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

fn dirs(name: &str) -> Dirs {
    let root = std::env::temp_dir().join(format!("atomup-health-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    let d = Dirs {
        vendor: root.join("usr/lib/atomup/health.d"),
        site: root.join("etc/atomup/health.d"),
        state: root.join("var/lib/atomup"),
        root,
    };
    for sub in ["required.d", "wanted.d"] {
        fs::create_dir_all(d.vendor.join(sub)).unwrap();
        fs::create_dir_all(d.site.join(sub)).unwrap();
    }
    fs::create_dir_all(&d.state).unwrap();
    d
}

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    p
}

fn run(d: &Dirs, builtins: &[Builtin], default: Duration) -> Summary {
    let plan = plan_for(&d.vendor, &d.site, builtins, default);
    run_all(
        plan,
        Slot::B,
        Some(7),
        &Store::new(&d.state),
        &mut || {},
        &mut |_| {},
    )
}

fn outcomes(s: &Summary) -> Vec<(Kind, String, Outcome)> {
    s.record
        .checks
        .iter()
        .map(|c| (c.kind, c.name.clone(), c.outcome))
        .collect()
}

/// A failing wanted check is recorded as failed but the trial passes; a
/// failing required check fails it with its name and exit status, and the
/// checks after it are skipped.
#[test]
fn required_fails_the_trial_wanted_does_not() {
    let d = dirs("semantics");
    script(&d.vendor.join("required.d"), "10-ok", "exit 0");
    script(
        &d.vendor.join("wanted.d"),
        "10-flaky",
        "echo no link; exit 3",
    );
    let s = run(&d, &[], Duration::from_secs(10));
    assert_eq!(s.verdict, Verdict::Passed);
    assert_eq!(s.reason, None);
    let w: Vec<_> = s.record.failed_wanted().collect();
    assert_eq!(w.len(), 1);
    assert_eq!(
        (w[0].name.as_str(), w[0].detail.as_str()),
        ("10-flaky", "exit status 3")
    );

    script(
        &d.site.join("required.d"),
        "20-app",
        "echo app down >&2; exit 1",
    );
    script(&d.vendor.join("required.d"), "30-late", "exit 0");
    let s = run(&d, &[], Duration::from_secs(10));
    assert_eq!(s.verdict, Verdict::Failed);
    assert_eq!(
        s.reason.as_deref(),
        Some("required check 20-app failed: exit status 1")
    );
    assert_eq!(
        outcomes(&s),
        [
            (Kind::Required, "10-ok".into(), Outcome::Passed),
            (Kind::Required, "20-app".into(), Outcome::Failed),
            (Kind::Required, "30-late".into(), Outcome::Skipped),
            (Kind::Wanted, "10-flaky".into(), Outcome::Skipped),
        ]
    );
}

/// Order: built-in required, required by name (vendor and site merged),
/// built-in wanted, wanted by name.
#[test]
fn checks_run_in_the_defined_order() {
    let d = dirs("order");
    let log = d.root.join("order.log");
    let rec = |name: &str| format!("echo {name} >> {}", log.display());
    script(&d.vendor.join("wanted.d"), "05-w", &rec("05-w"));
    script(&d.site.join("required.d"), "20-site", &rec("20-site"));
    script(&d.vendor.join("required.d"), "10-vendor", &rec("10-vendor"));
    script(&d.vendor.join("required.d"), "30-vendor", &rec("30-vendor"));
    fs::write(d.vendor.join("required.d/README"), "docs\n").unwrap();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://127.0.0.1:{}/repo", l.local_addr().unwrap().port());
    let s = run(
        &d,
        &[
            Builtin::ServerReachable { url },
            Builtin::FreeSpace {
                state_dir: d.state.clone(),
                min: 1,
            },
        ],
        Duration::from_secs(10),
    );
    assert_eq!(s.verdict, Verdict::Passed, "{:?}", s.record);
    let names: Vec<String> = s.record.checks.iter().map(|c| c.name.clone()).collect();
    assert_eq!(
        names,
        [
            "atomup:free-space",
            "10-vendor",
            "20-site",
            "30-vendor",
            "atomup:server-reachable",
            "05-w"
        ]
    );
    assert_eq!(
        fs::read_to_string(&log).unwrap(),
        "10-vendor\n20-site\n30-vendor\n05-w\n"
    );
}

/// The site replaces a vendor check of the same name and masks one with a
/// symlink to /dev/null.
#[test]
fn site_overrides_and_masks_vendor_checks() {
    let d = dirs("override");
    script(&d.vendor.join("required.d"), "10-strict", "exit 1");
    script(&d.vendor.join("required.d"), "20-noisy", "exit 1");
    script(&d.site.join("required.d"), "10-strict", "exit 0");
    std::os::unix::fs::symlink("/dev/null", d.site.join("required.d/20-noisy")).unwrap();
    let s = run(&d, &[], Duration::from_secs(10));
    assert_eq!(s.verdict, Verdict::Passed, "{:?}", s.record);
    assert_eq!(
        outcomes(&s),
        [(Kind::Required, "10-strict".into(), Outcome::Passed)]
    );
}

/// A check past its limit is killed with its children and fails the trial
/// with the limit in the reason; a check's own `# atomup-timeout:` beats the
/// default in both directions.
#[test]
fn per_check_timeouts_kill_and_fail() {
    let d = dirs("timeout");
    // Its own 1 s limit, below the 30 s default; a grandchild holds the pipe.
    let marker = d.root.join("grandchild-alive");
    script(
        &d.vendor.join("required.d"),
        "10-hangs",
        &format!(
            "# atomup-timeout: 1s\n(sleep 30; touch {}) &\necho started\nsleep 30",
            marker.display()
        ),
    );
    let t = Instant::now();
    let s = run(&d, &[], Duration::from_secs(30));
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert_eq!(s.verdict, Verdict::Failed);
    assert_eq!(
        s.reason.as_deref(),
        Some("required check 10-hangs did not finish within 1s (killed)")
    );
    assert_eq!(s.record.checks[0].outcome, Outcome::TimedOut);
    let out = Store::new(&d.state)
        .output(Kind::Required, "10-hangs")
        .unwrap();
    assert_eq!(out, b"started\n");

    // The default (1 s) is too short for this check, its own 20 s is not.
    fs::remove_file(d.vendor.join("required.d/10-hangs")).unwrap();
    script(
        &d.vendor.join("required.d"),
        "20-slow",
        "# atomup-timeout: 20s\nsleep 2",
    );
    let s = run(&d, &[], Duration::from_secs(1));
    assert_eq!(s.verdict, Verdict::Passed, "{:?}", s.record);
    assert!(
        !marker.exists(),
        "the hung check's grandchild was killed too"
    );
}

/// Each check's stdout and stderr land in one output file in the state dir;
/// the record names every check with its outcome; a runaway output is kept
/// bounded.
#[test]
fn output_is_captured_into_the_state_dir() {
    let d = dirs("output");
    script(
        &d.vendor.join("required.d"),
        "10-talks",
        "echo to stdout; echo to stderr >&2; echo more",
    );
    script(
        &d.vendor.join("wanted.d"),
        "20-floods",
        "head -c 1000000 /dev/zero | tr '\\0' x; exit 1",
    );
    let s = run(&d, &[], Duration::from_secs(20));
    assert_eq!(s.verdict, Verdict::Passed);
    let store = Store::new(&d.state);
    assert_eq!(
        store.output(Kind::Required, "10-talks").unwrap(),
        b"to stdout\nto stderr\nmore\n"
    );
    let flood = store.output(Kind::Wanted, "20-floods").unwrap();
    assert!(flood.len() < 20_000, "{}", flood.len());
    assert!(String::from_utf8_lossy(&flood).contains("bytes left out"));
    let back = store.read().unwrap().unwrap();
    assert_eq!(back, s.record);
    assert_eq!((back.slot, back.version), (Slot::B, Some(7)));
    assert!(back.finished.is_some());
}

/// Health fails closed: a check without its execute bit, a directory, a
/// check dropped straight into health.d/, a malformed timeout: the trial
/// fails naming it, recorded as the `atomup:checks` failure.
#[test]
fn what_cannot_run_fails_the_trial_by_name() {
    type Plant = fn(&Dirs);
    let cases: [(&str, Plant); 4] = [
        ("not executable", |d| {
            let p = script(&d.vendor.join("required.d"), "10-lost-x", "exit 0");
            fs::set_permissions(p, fs::Permissions::from_mode(0o644)).unwrap();
        }),
        ("a directory, not a runnable check", |d| {
            fs::create_dir(d.site.join("wanted.d/10-dir")).unwrap();
        }),
        ("checks go in", |d| {
            script(&d.site, "10-flat", "exit 0");
        }),
        ("atomup-timeout: soon", |d| {
            script(
                &d.vendor.join("required.d"),
                "10-t",
                "# atomup-timeout: soon\nexit 0",
            );
        }),
    ];
    for (i, (why, plant)) in cases.iter().enumerate() {
        let d = dirs(&format!("closed-{i}"));
        script(&d.vendor.join("required.d"), "05-ok", "exit 0");
        plant(&d);
        let s = run(&d, &[], Duration::from_secs(5));
        assert_eq!(s.verdict, Verdict::Failed, "{why}");
        let reason = s.reason.unwrap();
        assert!(reason.contains(why), "{why}: {reason}");
        assert_eq!(s.record.checks[0].name, "atomup:checks");
    }
    // Missing roots: nothing to run, booting this far is the check.
    let d = dirs("none");
    fs::remove_dir_all(d.root.join("usr")).unwrap();
    fs::remove_dir_all(d.root.join("etc")).unwrap();
    let s = run(&d, &[], Duration::from_secs(5));
    assert_eq!((s.verdict, s.checks_run()), (Verdict::Passed, 0));
}

/// Built-ins fail with what they found: free space below the minimum, a
/// pidfile of no process, the root of this test run mounted read-write.
#[test]
fn builtins_fail_with_what_they_found() {
    let d = dirs("builtins");
    let pid = d.root.join("app.pid");
    fs::write(&pid, "999999999\n").unwrap();
    let s = run(
        &d,
        &[Builtin::Services(vec![pid.display().to_string()])],
        Duration::from_secs(5),
    );
    assert_eq!(s.verdict, Verdict::Failed);
    assert!(s
        .reason
        .unwrap()
        .contains("process 999999999 is not running"));
    let s = run(
        &d,
        &[Builtin::FreeSpace {
            state_dir: d.state.clone(),
            min: u64::MAX,
        }],
        Duration::from_secs(5),
    );
    assert!(s.reason.unwrap().contains("below the"), "free space");
    // A wanted built-in that fails does not fail the trial.
    let s = run(
        &d,
        &[Builtin::ServerReachable {
            url: "http://127.0.0.1:1/repo".into(),
        }],
        Duration::from_secs(5),
    );
    assert_eq!(s.verdict, Verdict::Passed);
    assert_eq!(s.record.failed_wanted().count(), 1);
}

/// While a check runs the record says so: a reset at that moment leaves
/// `verdict=running` and the check's name on disk.
#[test]
fn the_record_names_the_running_check() {
    let d = dirs("running");
    let store = Store::new(&d.state);
    let seen = d.root.join("seen");
    script(
        &d.vendor.join("required.d"),
        "10-peek",
        &format!("cat {} > {}", store.record_path().display(), seen.display()),
    );
    run(&d, &[], Duration::from_secs(5));
    let during = atomup_health::record::parse(&fs::read(&seen).unwrap()).unwrap();
    assert_eq!(during.verdict, Verdict::Running);
    assert_eq!(during.interrupted_in().unwrap().name, "10-peek");
}

/// `tick` runs while checks are within their limits (the watchdog feeding).
#[test]
fn tick_runs_while_checks_run() {
    let d = dirs("tick");
    script(&d.vendor.join("required.d"), "10-sleep", "sleep 1");
    let mut ticks = 0;
    let plan = plan_for(&d.vendor, &d.site, &[], Duration::from_secs(5));
    let s = run_all(
        plan,
        Slot::A,
        None,
        &Store::new(&d.state),
        &mut || ticks += 1,
        &mut |_| {},
    );
    assert_eq!(s.verdict, Verdict::Passed);
    assert!(ticks >= 2, "{ticks}");
}
