//! `atomup daemon` with `bundle.scan`: a bundle that appears in a scanned
//! directory (a USB stick's mount point) between network polls is installed
//! through the same pipeline as `atomup install --scan` (the env flipped, the
//! result line on the stick, then the reboot policy); a bad bundle is refused
//! once per appearance with nothing touched; the same stick again after the
//! install installs nothing. The network is unreachable throughout (the
//! technician's case).

use atomup_tests::device::{env_show, provision, world, Device, Untouched, World};
use atomup_tests::ostree_fixture::{assert_same_tree, run_ok};
use atomup_tests::service::{agent_args, reboots, Agent, Conf};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const MINUTE: Duration = Duration::from_secs(60);

/// The board's current release as a bundle at `out`, made beside it and
/// renamed in (a stick's files appear whole).
fn bundle(w: &World, out: &Path) {
    let tmp = w.dir.join(format!(
        "made-{}",
        out.file_name().unwrap().to_string_lossy()
    ));
    run_ok(
        Command::new(atomup_tests::workspace_bin("atomup-publish"))
            .args([
                "bundle",
                "--channel",
                "stable",
                "--board",
                "qemu-virt",
                "--out",
            ])
            .arg(&tmp)
            .arg("--repo")
            .arg(&w.repo.path),
    );
    fs::rename(&tmp, out).unwrap();
}

/// `d`'s configuration: no reachable server (one attempt per poll), the
/// stick's mount point `stick` scanned every second.
fn daemon(w: &World, d: &Device, stick: &Path) -> Agent {
    Conf::new(w, d, "http://127.0.0.1:1/")
        .with(&format!(
            "[link]\nretries = 1\n\n[bundle]\nscan = [{:?}]\ninterval = \"1s\"\n",
            stick.display().to_string()
        ))
        .write();
    let a = Agent::spawn(&agent_args(d, "daemon", "A", &[]));
    a.wait_for(
        &format!(", bundles from {} every 1s", stick.display()),
        MINUTE,
    );
    // The network poll failed: the daemon waits, watching the stick.
    a.wait_for("next poll in", MINUTE);
    a.wait_for("(1 failed in a row)", MINUTE);
    a
}

fn count(a: &Agent, needle: &str) -> usize {
    a.output().matches(needle).count()
}

/// Waits for `n` occurrences of `needle` in the daemon's output.
fn wait_count(a: &Agent, needle: &str, n: usize) {
    let start = Instant::now();
    while count(a, needle) < n {
        assert!(
            start.elapsed() < MINUTE,
            "not {n} times `{needle}`:\n{}",
            a.output()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn checkout(w: &World, commit: &str) -> PathBuf {
    let dest = w.dir.join(format!("checkout-{commit}"));
    if !dest.exists() {
        w.repo.checkout(commit, &dest);
    }
    dest
}

fn log_lines(stick: &Path) -> Vec<String> {
    fs::read_to_string(stick.join("atomup-log.txt"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A bundle dropped into the scanned directory while the daemon waits is
/// installed into slot B on trial, logged on the stick, and the reboot
/// policy's command runs; the stick pulled and plugged in again installs
/// nothing: one message, one more log line, the env and slot as they were.
#[test]
fn daemon_installs_a_bundle_that_appears_and_not_again_when_the_stick_returns() {
    let w = world(&[]);
    let d = provision(&w, "dbun1");
    let stick = w.dir.join("stick-dbun1");
    fs::create_dir_all(&stick).unwrap();
    let mut a = daemon(&w, &d, &stick);
    assert_eq!(count(&a, "a bundle appeared"), 0, "an empty mount point");

    bundle(&w, &stick.join("update.atomup"));
    a.wait_for("into slot B", MINUTE);
    a.wait_for("rebooting into slot B (version 2)", MINUTE);
    let start = Instant::now();
    while reboots(&d) == 0 {
        assert!(start.elapsed() < MINUTE, "the reboot command did not run");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        env_show(&d),
        "ATOMUP_ORDER=B A\nATOMUP_TRIAL=B\nATOMUP_LEFT=3\n"
    );
    assert_same_tree(&d.slot_b, &checkout(&w, &w.v2));
    let log = log_lines(&stick);
    assert_eq!(log.len(), 1, "{log:?}");
    assert!(
        log[0].contains(" device=dbun1 bundle=update.atomup from=1 to=2 outcome=installed"),
        "{log:?}"
    );

    // Pulled: the mount point is empty; then the same stick again.
    let away = w.dir.join("away-dbun1.atomup");
    fs::rename(stick.join("update.atomup"), &away).unwrap();
    a.wait_for("is empty or gone", MINUTE);
    let env = env_show(&d);
    fs::rename(&away, stick.join("update.atomup")).unwrap();
    wait_count(&a, "a bundle appeared", 2);
    a.wait_for(
        "version 2 is installed in slot B on trial: reboot to try it",
        MINUTE,
    );
    wait_count(
        &a,
        &format!(
            "result logged to {}",
            stick.join("atomup-log.txt").display()
        ),
        2,
    );
    let log = log_lines(&stick);
    assert_eq!(log.len(), 2, "{log:?}");
    assert!(log[1].contains(" outcome=pending"), "{log:?}");
    // Left in place for several more looks: nothing more.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(count(&a, "a bundle appeared"), 2, "{}", a.output());
    assert_eq!(log_lines(&stick).len(), 2);
    assert_eq!(env_show(&d), env);
    assert_eq!(reboots(&d), 1);
    assert_eq!(count(&a, "installing version 2"), 1, "{}", a.output());
    a.signal("TERM");
    assert!(a.wait_exit(MINUTE).success(), "{}", a.output());
}

/// A corrupt bundle in the scanned directory is refused once, with its
/// reason, one log line on the stick and nothing of the device touched,
/// however long it stays; a good bundle added next to it then installs.
#[test]
fn daemon_refuses_a_bad_bundle_once_and_installs_the_good_one_added_later() {
    let w = world(&[]);
    let d = provision(&w, "dbun2");
    let stick = w.dir.join("stick-dbun2");
    fs::create_dir_all(&stick).unwrap();
    let good = w.dir.join("good-dbun2.atomup");
    bundle(&w, &good);
    let bytes = fs::read(&good).unwrap();
    let mut a = daemon(&w, &d, &stick);
    let before = Untouched::snap(&d);
    let env = env_show(&d);

    let cut = w.dir.join("cut-dbun2");
    fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    fs::rename(&cut, stick.join("a-truncated.atomup")).unwrap();
    a.wait_for("skipping a-truncated.atomup:", MINUTE);
    a.wait_for("no bundle in", MINUTE);
    std::thread::sleep(Duration::from_secs(4));
    let out = a.output();
    assert_eq!(count(&a, "skipping a-truncated.atomup:"), 1, "{out}");
    assert!(out.contains("(truncated?)"), "{out}");
    assert_eq!(count(&a, "a bundle appeared"), 1, "{out}");
    before.assert_records_same(&d);
    assert_eq!(env_show(&d), env);
    let log = log_lines(&stick);
    assert_eq!(log.len(), 1, "{log:?}");
    assert!(
        log[0].contains(" outcome=failed error=\"no bundle in"),
        "{log:?}"
    );

    fs::copy(&good, stick.join("b-good.atomup")).unwrap();
    a.wait_for("into slot B", MINUTE);
    assert_eq!(
        count(&a, "skipping a-truncated.atomup:"),
        2,
        "looked at again with the new file"
    );
    assert_eq!(
        env_show(&d),
        "ATOMUP_ORDER=B A\nATOMUP_TRIAL=B\nATOMUP_LEFT=3\n"
    );
    assert_same_tree(&d.slot_b, &checkout(&w, &w.v2));
    a.wait_for("rebooting into slot B (version 2)", MINUTE);
    let log = log_lines(&stick);
    assert_eq!(log.len(), 2, "{log:?}");
    assert!(
        log[1].contains("bundle=b-good.atomup from=1 to=2 outcome=installed"),
        "{log:?}"
    );
    a.signal("TERM");
    assert!(a.wait_exit(MINUTE).success(), "{}", a.output());
}

/// A real stick: an ext4 loop device mounted read-only (`nosuid,nodev,noexec`)
/// onto the empty scanned mount point while the daemon waits. With
/// `bundle.remount` the bundle installs, the result line lands on the stick
/// through the remount and the stick is read-only again afterwards; unmounted,
/// the daemon sees it gone.
#[test]
fn daemon_installs_from_a_stick_mounted_read_only_and_logs_through_the_remount() {
    if !atomup_tests::device::require_root() {
        return;
    }
    let w = world(&[]);
    let d = provision(&w, "dbun3");
    let contents = w.dir.join("contents-dbun3");
    fs::create_dir_all(&contents).unwrap();
    bundle(&w, &contents.join("update.atomup"));
    let lo = atomup_tests::device::LoopFs::from_dir(&w.dir.join("dbun3.img"), &contents);
    let mnt = w.dir.join("mnt-dbun3");
    fs::create_dir_all(&mnt).unwrap();
    Conf::new(&w, &d, "http://127.0.0.1:1/")
        .with(&format!(
            "[link]\nretries = 1\n\n[bundle]\nscan = [{:?}]\ninterval = \"1s\"\nremount = true\n",
            mnt.display().to_string()
        ))
        .write();
    let mut a = Agent::spawn(&agent_args(&d, "daemon", "A", &[]));
    a.wait_for("(1 failed in a row)", MINUTE);
    run_ok(
        Command::new("mount")
            .args(["-o", "ro,nosuid,nodev,noexec"])
            .arg(&lo.dev)
            .arg(&mnt),
    );
    a.wait_for("into slot B", MINUTE);
    a.wait_for("result logged to", MINUTE);
    let opts = fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(mnt.to_str().unwrap()))
        .map(|l| l.split(' ').nth(5).unwrap().to_owned());
    let log = log_lines(&mnt);
    let _ = Command::new("umount").arg(&mnt).status();
    a.wait_for("is empty or gone", MINUTE);
    a.signal("TERM");
    assert!(a.wait_exit(MINUTE).success(), "{}", a.output());
    assert_eq!(log.len(), 1, "{log:?}");
    assert!(log[0].contains(" outcome=installed"), "{log:?}");
    let opts = opts.expect("the stick is still mounted");
    for want in ["ro", "nosuid", "nodev", "noexec"] {
        assert!(opts.split(',').any(|o| o == want), "{want} missing: {opts}");
    }
    assert_eq!(
        env_show(&d),
        "ATOMUP_ORDER=B A\nATOMUP_TRIAL=B\nATOMUP_LEFT=3\n"
    );
}

/// A device that never sees a network: `server.channel` and `bundle.scan`,
/// no `server.url`. The daemon does not poll at all and installs the bundle
/// that appears.
#[test]
fn daemon_without_a_server_watches_for_bundles_only() {
    let w = world(&[]);
    let d = provision(&w, "dbun4");
    let stick = w.dir.join("stick-dbun4");
    fs::create_dir_all(&stick).unwrap();
    Conf::new(&w, &d, "http://127.0.0.1:1/")
        .without_url()
        .with(&format!(
            "[bundle]\nscan = [{:?}]\ninterval = \"1s\"\n",
            stick.display().to_string()
        ))
        .write();
    let mut a = Agent::spawn(&agent_args(&d, "daemon", "A", &[]));
    a.wait_for("no server configured", MINUTE);
    bundle(&w, &stick.join("update.atomup"));
    a.wait_for("into slot B", MINUTE);
    assert_eq!(
        env_show(&d),
        "ATOMUP_ORDER=B A\nATOMUP_TRIAL=B\nATOMUP_LEFT=3\n"
    );
    a.signal("TERM");
    assert!(a.wait_exit(MINUTE).success(), "{}", a.output());
    let out = a.output();
    assert!(!out.contains("next poll in"), "it polled: {out}");
    assert!(!out.contains("no update server"), "{out}");
}
