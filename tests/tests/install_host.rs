//! `atomup install` end to end on the host, on the same simulated device as
//! `atomup update` (`tests/src/device.rs`: a vendor repository made by the
//! real `ostree` CLI, signed deltas, `atomup-publish release` and `bundle`;
//! a device with its active root directory, state dir and U-Boot env in a
//! disk-image file). A bundle installs into the inactive slot and flips the
//! env exactly as a network update does; every refused bundle leaves the env,
//! both slots and the records untouched; the stick collects one result line
//! per run.

use atomup_tests::device::{
    atomup_bounded, env_args, env_show, mkfifo, provision, text, world, Device, Untouched, World,
    T0,
};
use atomup_tests::ostree_fixture::{assert_same_tree, run_ok, Keys};
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `atomup-publish` with `args` on the world's repository.
fn publish(w: &World, args: &[&str]) {
    run_ok(
        Command::new(atomup_tests::workspace_bin("atomup-publish"))
            .args(args)
            .arg("--repo")
            .arg(&w.repo.path),
    );
}

/// A release of the v2 commit as `version` for `board`.
fn release(w: &World, board: &str, version: u64) {
    let key = w.keys.secret.to_str().unwrap().to_owned();
    publish(
        w,
        &[
            "release",
            "--key",
            &key,
            "--channel",
            "stable",
            "--board",
            board,
            "--version",
            &version.to_string(),
            "--to",
            &w.v2,
            "--timestamp",
            &(T0 + version).to_string(),
            "--expires-in-days",
            "30",
        ],
    );
}

/// The board's current release as a bundle in `out` (`extra`: which deltas).
fn bundle(w: &World, board: &str, out: &Path, extra: &[&str]) {
    let mut args = vec![
        "bundle",
        "--channel",
        "stable",
        "--board",
        board,
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    publish(w, &args);
}

/// `atomup install` arguments for device `d` booted from A: slot B's
/// directory is the target. `what` is the bundle or `--scan DIR`.
fn install_args(w: &World, d: &Device, what: &[&Path], extra: &[&str]) -> Vec<OsString> {
    let mut a = env_args(d, &["install"]);
    a.extend(what.iter().map(|p| p.as_os_str().to_owned()));
    for (k, v) in [
        ("--server", "http://127.0.0.1:1/"),
        ("--channel", "stable"),
        ("--booted-slot", "A"),
        ("--now", &(T0 + 60).to_string()),
    ] {
        a.extend([k.into(), v.into()]);
    }
    a.extend([
        "--board".into(),
        "qemu-virt".into(),
        "--trusted-keys".into(),
        w.keys.public.clone().into(),
        "--machine-id".into(),
        d.machine_id.clone().into(),
        "--from-root".into(),
        d.slot_a.clone().into(),
        "--target-dir".into(),
        d.slot_b.clone().into(),
    ]);
    // A later flag of the same name overrides an earlier one.
    a.extend(extra.iter().map(Into::into));
    a
}

fn checkout(w: &World, commit: &str) -> PathBuf {
    let dest = w.dir.join(format!("checkout-{commit}"));
    if !dest.exists() {
        w.repo.checkout(commit, &dest);
    }
    dest
}

fn stick(w: &World, name: &str) -> PathBuf {
    let dir = w.dir.join(name);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// The whole offline cycle: the bundle on a stick installs v2 into slot B on
/// trial (the same env and records as a network update), the `._` file is
/// skipped, and the stick's log gets one line per run.
#[test]
fn install_scan_writes_the_inactive_slot_flips_the_env_and_logs_on_the_stick() {
    let w = world(&[]);
    let d = provision(&w, "inst1");
    let s = stick(&w, "stick1");
    bundle(&w, "qemu-virt", &s.join("update.atomup"), &[]);
    fs::write(s.join("._update.atomup"), b"\x00\x05\x16\x07AppleDouble").unwrap();
    let scan = install_args(&w, &d, &[Path::new("--scan"), &s], &[]);
    let out = atomup_bounded(&scan);
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("skipping ._update.atomup: a macOS metadata file (._*), not a bundle"),
        "{t}"
    );
    assert!(t.contains("into slot B"), "{t}");
    assert_same_tree(&d.slot_b, &checkout(&w, &w.v2));
    assert_same_tree(&d.slot_a, &checkout(&w, &w.v1));
    assert_eq!(
        env_show(&d),
        "ATOMUP_ORDER=B A\nATOMUP_TRIAL=B\nATOMUP_LEFT=3\n"
    );
    let rec = fs::read_to_string(d.state.join("slots/B")).unwrap();
    assert!(
        rec.contains(&format!("commit={}", w.v2)) && rec.contains("version=2"),
        "{rec}"
    );
    // The delta from the booted commit was used (the bundle has both).
    let id1 = atomup_ostree::ObjectId::from_hex(&w.v1).unwrap();
    let from_v1 = atomup_ostree::delta::delta_path(
        Some(&id1),
        &atomup_ostree::ObjectId::from_hex(&w.v2).unwrap(),
    );
    assert!(t.contains(&format!("delta {from_v1} from {}", w.v1)), "{t}");
    // The cache holds nothing once installed.
    assert_eq!(fs::read_dir(d.state.join("cache")).unwrap().count(), 0);

    // A second insertion: already installed, waiting for its trial boot.
    let again = atomup_bounded(&scan);
    assert!(again.status.success(), "{}", text(&again));
    assert!(
        text(&again).contains("version 2 is installed in slot B on trial: reboot to try it"),
        "{}",
        text(&again)
    );
    let log = fs::read_to_string(s.join("atomup-log.txt")).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 2, "{log}");
    assert!(
        lines[0].contains(" device=inst1 bundle=update.atomup from=1 to=2 outcome=installed")
            && lines[0].starts_with("start=20"),
        "{log}"
    );
    assert!(lines[1].contains(" outcome=pending"), "{log}");
}

/// A bundle without the delta from the booted commit installs through its
/// from-scratch delta (a stick is not metered: no flag needed); `--json`
/// gives progress events only on stdout.
#[test]
fn install_falls_back_to_the_bundles_from_scratch_delta() {
    let w = world(&[]);
    let d = provision(&w, "inst2");
    let b = w.dir.join("scratch-only.atomup");
    bundle(&w, "qemu-virt", &b, &["--from-last", "0"]);
    let out = atomup_bounded(install_args(&w, &d, &[&b], &["--no-log", "--json"]));
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(" from scratch, "), "{}", text(&out));
    // --json: stdout is events only, one JSON object a line, ending in `done`.
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    let events: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(events.iter().any(|e| e["phase"] == "receiving"), "{stdout}");
    assert_eq!(events.last().unwrap()["phase"], "done", "{stdout}");
    assert_same_tree(&d.slot_b, &checkout(&w, &w.v2));
    assert_eq!(
        env_show(&d),
        "ATOMUP_ORDER=B A\nATOMUP_TRIAL=B\nATOMUP_LEFT=3\n"
    );
}

/// Every bad bundle is refused with its reason before the env, either slot or
/// any record is touched, and the refusal is logged on the stick.
#[test]
fn install_refuses_bad_bundles_before_touching_anything() {
    let w = world(&[]);
    let d = provision(&w, "inst3");
    let good = w.dir.join("good.atomup");
    bundle(&w, "qemu-virt", &good, &[]);
    let bytes = fs::read(&good).unwrap();
    let members = atomup_bundle::scan(&mut fs::File::open(&good).unwrap()).unwrap();
    let dir = stick(&w, "stick3");

    // A byte flipped in the data of the part of the delta from v1 (the one
    // this device uses).
    let from_v1 = atomup_ostree::delta::delta_path(
        Some(&atomup_ostree::ObjectId::from_hex(&w.v1).unwrap()),
        &atomup_ostree::ObjectId::from_hex(&w.v2).unwrap(),
    );
    let part = members
        .iter()
        .find(|m| m.name == format!("{from_v1}/0"))
        .expect("a separate part");
    let mut corrupt = bytes.clone();
    corrupt[(part.offset + part.size / 2) as usize] ^= 0x40;
    fs::write(dir.join("corrupt-part.atomup"), &corrupt).unwrap();
    // A byte flipped in the signed release.
    let mut bad_sig = bytes.clone();
    bad_sig[(members[0].offset + 20) as usize] ^= 0x01;
    fs::write(dir.join("corrupt-release.atomup"), &bad_sig).unwrap();
    // Cut in the middle (a copy that did not finish).
    fs::write(dir.join("truncated.atomup"), &bytes[..bytes.len() / 2]).unwrap();
    fs::write(dir.join("notes.txt"), b"not a bundle at all\n").unwrap();
    mkfifo(&dir.join("fifo.atomup"));
    let other_keys = Keys::generate(&w.dir.join("other-keys"), "other");

    let before = Untouched::snap(&d);
    let log = dir.join("atomup-log.txt");
    let log_arg = log.to_str().unwrap().to_owned();
    let f = |n: &str| dir.join(n);
    let expired = format!("release metadata expired at {}", T0 + 30 * 86_400);
    let cases: Vec<(PathBuf, Vec<String>, String)> = vec![
        (
            f("corrupt-part.atomup"),
            vec![],
            "is refused: its sha256 differs from what the signed metadata says",
        ),
        (
            f("corrupt-release.atomup"),
            vec![],
            "release metadata is not signed by any trusted, non-revoked key",
        ),
        (f("truncated.atomup"), vec![], "(truncated?)"),
        (f("notes.txt"), vec![], "not a bundle: the header at byte 0"),
        (f("fifo.atomup"), vec![], "cannot open the bundle"),
        (
            good.clone(),
            vec![
                "--trusted-keys".into(),
                other_keys.public.to_str().unwrap().into(),
            ],
            "release metadata is not signed by any trusted, non-revoked key",
        ),
        (
            good.clone(),
            vec!["--board".into(), "other-board".into()],
            "release is for board `qemu-virt`, this device is `other-board`",
        ),
        (
            good.clone(),
            vec!["--now".into(), (T0 + 31 * 86_400).to_string()],
            &expired,
        ),
    ]
    .into_iter()
    .map(|(p, e, m): (PathBuf, Vec<String>, &str)| (p, e, m.to_owned()))
    .collect();
    for (path, extra, want) in &cases {
        let mut extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        extra.extend(["--log", &log_arg]);
        let out = atomup_bounded(install_args(&w, &d, &[path], &extra));
        let t = text(&out);
        assert!(!out.status.success(), "{path:?} {extra:?} installed: {t}");
        assert!(
            t.contains(want.as_str()),
            "{path:?} {extra:?}: wanted `{want}` in: {t}"
        );
        before.assert_records_same(&d);
    }
    // The FIFO is refused by type, at once.
    let fifo = atomup_bounded(install_args(&w, &d, &[&f("fifo.atomup")], &["--no-log"]));
    assert!(
        text(&fifo).contains("a FIFO, not a regular file"),
        "{}",
        text(&fifo)
    );
    let lines = fs::read_to_string(&log).unwrap();
    assert_eq!(lines.lines().count(), cases.len(), "{lines}");
    assert!(
        lines
            .lines()
            .all(|l| l.contains(" outcome=failed error=\"")),
        "{lines}"
    );

    // An older release than the running one: the device runs version 3.
    fs::write(
        d.state.join("slots/A"),
        format!("format=1\ncommit={}\nversion=3\n", w.v1),
    )
    .unwrap();
    let before = Untouched::snap(&d);
    let out = atomup_bounded(install_args(&w, &d, &[&good], &["--no-log"]));
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("release version 2 is older than the running 3: downgrade refused"),
        "{}",
        text(&out)
    );
    before.assert_nothing_written(&d);
}

/// With several files on the stick the newest valid bundle for this board
/// wins; `._` files, non-bundles, FIFOs, other boards' bundles and older
/// versions are skipped, each with its reason.
#[test]
fn install_scan_takes_the_newest_bundle_for_this_board_and_says_why_others_are_skipped() {
    let w = world(&[]);
    let d = provision(&w, "inst4");
    let s = stick(&w, "stick4");
    bundle(&w, "qemu-virt", &s.join("a-v2.atomup"), &[]);
    release(&w, "qemu-virt", 3);
    bundle(&w, "qemu-virt", &s.join("b-v3.atomup"), &[]);
    release(&w, "other-board", 4);
    bundle(&w, "other-board", &s.join("c-other.atomup"), &[]);
    fs::write(s.join("._b-v3.atomup"), b"\x00\x05\x16\x07").unwrap();
    fs::write(s.join("README.txt"), b"for site 12\n").unwrap();
    mkfifo(&s.join("pipe"));
    let out = atomup_bounded(install_args(&w, &d, &[Path::new("--scan"), &s], &[]));
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    for want in [
        "skipping ._b-v3.atomup: a macOS metadata file (._*), not a bundle",
        "skipping README.txt: not a bundle: the header at byte 0",
        "skipping a-v2.atomup: version 2, a newer bundle is here",
        "skipping c-other.atomup: the release was refused -> release is for board `other-board`, this device is `qemu-virt`",
        "skipping pipe: cannot open the bundle",
        "installed version 3",
    ] {
        assert!(t.contains(want), "wanted `{want}` in: {t}");
    }
    let rec = fs::read_to_string(d.state.join("slots/B")).unwrap();
    assert!(rec.contains("version=3"), "{rec}");
    let log = fs::read_to_string(s.join("atomup-log.txt")).unwrap();
    assert!(
        log.contains("bundle=b-v3.atomup from=1 to=3 outcome=installed"),
        "{log}"
    );

    // Nothing newer on the stick: every file is skipped, nothing written.
    let d2 = provision(&w, "inst4b");
    fs::write(
        d2.state.join("slots/A"),
        format!("format=1\ncommit={}\nversion=5\n", w.v1),
    )
    .unwrap();
    let before = Untouched::snap(&d2);
    let out = atomup_bounded(install_args(
        &w,
        &d2,
        &[Path::new("--scan"), &s],
        &["--no-log"],
    ));
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("no bundle in "), "{t}");
    assert!(t.contains("installs on this device (board qemu-virt, channel stable, version 5): 6 file(s) skipped"), "{t}");
    before.assert_nothing_written(&d2);
}

/// The expiry rule of the release crate's README for long-offline devices: a
/// clock behind the trusted time (no RTC) says nothing, so the bundle's
/// expiry is judged against the trusted time: it installs when the trusted
/// time is before the expiry and is refused when it is after.
#[test]
fn install_judges_expiry_against_the_trusted_time_when_the_clock_is_behind_it() {
    let w = world(&[]);
    let b = w.dir.join("v2.atomup");
    bundle(&w, "qemu-virt", &b, &[]);
    // Trusted time after the expiry, clock at 1970: refused.
    let stale = provision(&w, "inst5a");
    fs::write(
        stale.state.join("trusted-time"),
        format!("{}\n", T0 + 40 * 86_400),
    )
    .unwrap();
    let before = Untouched::snap(&stale);
    let out = atomup_bounded(install_args(
        &w,
        &stale,
        &[&b],
        &["--now", "1000", "--no-log"],
    ));
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "release metadata expired at {} (trusted time is {})",
            T0 + 30 * 86_400,
            T0 + 40 * 86_400
        )),
        "{}",
        text(&out)
    );
    before.assert_nothing_written(&stale);
    // Trusted time before the expiry, clock at 1970: installs.
    let d = provision(&w, "inst5b");
    fs::write(d.state.join("trusted-time"), format!("{}\n", T0 - 86_400)).unwrap();
    let out = atomup_bounded(install_args(&w, &d, &[&b], &["--now", "1000", "--no-log"]));
    assert!(out.status.success(), "{}", text(&out));
    assert_same_tree(&d.slot_b, &checkout(&w, &w.v2));
}

/// The stick: a file system image on a loop device (detached when
/// dropped), read back without mounting.
struct Stick {
    image: PathBuf,
    fs: atomup_tests::device::LoopFs,
}

impl Stick {
    /// ext4, not FAT: the host kernel CI runs on may have no vfat driver
    /// (the script mounts whatever the stick holds; FAT is the QEMU test's).
    fn new(image: &Path, contents: &Path) -> Stick {
        Stick {
            image: image.to_owned(),
            fs: atomup_tests::device::LoopFs::from_dir(image, contents),
        }
    }

    fn read(&self, name: &str) -> String {
        let out = run_ok(
            Command::new("debugfs")
                .arg("-R")
                .arg(format!("cat /{name}"))
                .arg(&self.image),
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

/// The shipped insertion script (`dist/stick/atomup-stick`, run by udev's
/// unit and by mdev) on a real stick (a loop device): it mounts it read-only, installs,
/// and the result line lands on the stick through the remount; the stick's
/// file system is clean afterwards and a second insertion logs a second line;
/// started the way busybox mdev starts it ($MDEV, in the background) it logs
/// a third.
#[test]
fn stick_script_installs_from_a_read_only_mounted_stick_and_logs_back_to_it() {
    if !atomup_tests::device::require_root() || !atomup_tests::require_tool("debugfs") {
        return;
    }
    let w = world(&[]);
    let d = provision(&w, "inst6");
    let b = w.dir.join("v2.atomup");
    bundle(&w, "qemu-virt", &b, &[]);
    let contents = stick(&w, "stick6");
    fs::copy(&b, contents.join("update.atomup")).unwrap();
    fs::write(contents.join("._update.atomup"), b"\x00\x05\x16\x07").unwrap();
    let stick = Stick::new(&w.dir.join("stick.img"), &contents);
    // `atomup` on the PATH is the real agent with this device's flags.
    let bin = w.dir.join("bin");
    fs::create_dir_all(&bin).unwrap();
    let mut flags = String::new();
    for a in install_args(&w, &d, &[], &[]).into_iter().skip(1) {
        flags.push_str(&format!(" '{}'", a.to_str().unwrap()));
    }
    let wrapper = bin.join("atomup");
    fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\ncmd=$1; shift\nexec '{}' \"$cmd\" \"$@\"{flags}\n",
            atomup_tests::workspace_bin("atomup").display()
        ),
    )
    .unwrap();
    run_ok(Command::new("chmod").arg("755").arg(&wrapper));
    let run = w.dir.join("run");
    let script = atomup_tests::workspace_root().join("updater/agent/dist/stick/atomup-stick");
    let insert = || {
        atomup_tests::device::run_bounded(
            Command::new("sh")
                .arg(&script)
                .arg(&stick.fs.dev)
                .env(
                    "PATH",
                    format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
                )
                .env("ATOMUP_STICK_RUN", &run)
                .env("ATOMUP_STICK_LINGER", "0")
                .env("ATOMUP_STICK_REBOOT", "no"),
            std::time::Duration::from_secs(60),
        )
    };
    let out = insert();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("skipping ._update.atomup"),
        "{}",
        text(&out)
    );
    assert_same_tree(&d.slot_b, &checkout(&w, &w.v2));
    assert_eq!(
        env_show(&d),
        "ATOMUP_ORDER=B A\nATOMUP_TRIAL=B\nATOMUP_LEFT=3\n"
    );
    // Unmounted again, and the file system is clean (read-only but for the append).
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!mounts.contains(run.to_str().unwrap()), "{mounts}");
    run_ok(Command::new("e2fsck").args(["-n", "-f"]).arg(&stick.image));
    let log = stick.read("atomup-log.txt");
    assert!(
        log.contains("device=inst6 bundle=update.atomup from=1 to=2 outcome=installed"),
        "{log}"
    );
    let again = insert();
    assert!(again.status.success(), "{}", text(&again));
    let log = stick.read("atomup-log.txt");
    assert_eq!(log.lines().count(), 2, "{log}");
    assert!(
        log.lines().nth(1).unwrap().contains(" outcome=pending"),
        "{log}"
    );

    // As busybox mdev runs it: no argument, $MDEV and $ACTION set; it goes on
    // in the background (mdev waits for its helpers) and logs to RUN/stick.log.
    let dev_name = stick
        .fs
        .dev
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let out = atomup_tests::device::run_bounded(
        Command::new("sh")
            .arg(&script)
            .env(
                "PATH",
                format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
            )
            .env("MDEV", &dev_name)
            .env("ACTION", "add")
            .env("ATOMUP_STICK_RUN", &run)
            .env("ATOMUP_STICK_LINGER", "0")
            .env("ATOMUP_STICK_REBOOT", "no"),
        std::time::Duration::from_secs(10),
    );
    assert!(out.status.success(), "{}", text(&out));
    // Bounded wait for the background run (a hang fails the test).
    let start = std::time::Instant::now();
    while run.join("stick.lock").exists() || stick.read("atomup-log.txt").lines().count() < 3 {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "the mdev run did not finish: {}",
            fs::read_to_string(run.join("stick.log")).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let log = stick.read("atomup-log.txt");
    assert!(
        log.lines().nth(2).unwrap().contains(" outcome=pending"),
        "{log}"
    );
}

fn sha256_hex(data: &[u8]) -> String {
    atomup_tests::ostree_fixture::hex(&<sha2::Sha256 as sha2::Digest>::digest(data))
}

/// What a stick pulled in the middle of the extraction leaves (the
/// superblock extracted and verified, the part cut short as a `.partial`,
/// plus a damaged complete-looking copy from an older pull) is never used as
/// is: the next insertion re-hashes what is there, resumes the cut part
/// from its `.partial` (its first half is not read from the stick again),
/// and installs; nothing but the cache was touched in between.
#[test]
fn install_after_a_pulled_stick_rehashes_the_cache_resumes_the_cut_member_and_completes() {
    let w = world(&[]);
    let d = provision(&w, "inst7");
    let b = w.dir.join("v2.atomup");
    bundle(&w, "qemu-virt", &b, &[]);
    let from_v1 = atomup_ostree::delta::delta_path(
        Some(&atomup_ostree::ObjectId::from_hex(&w.v1).unwrap()),
        &atomup_ostree::ObjectId::from_hex(&w.v2).unwrap(),
    );
    let sb = fs::read(w.repo.path.join(&from_v1).join("superblock")).unwrap();
    let part = fs::read(w.repo.path.join(&from_v1).join("0")).unwrap();
    let cache = d.state.join("cache");
    fs::create_dir_all(&cache).unwrap();
    fs::write(cache.join(sha256_hex(&sb)), &sb).unwrap();
    fs::write(
        cache.join(format!("{}.partial", sha256_hex(&part))),
        &part[..part.len() / 2],
    )
    .unwrap();
    let before = Untouched::snap(&d);
    let out = atomup_bounded(install_args(&w, &d, &[&b], &["--no-log", "--check"]));
    assert!(out.status.success(), "{}", text(&out));
    before.assert_nothing_written(&d);
    // A complete-looking but damaged part (it does not hash right) is replaced.
    let mut damaged = part.clone();
    damaged[part.len() / 3] ^= 1;
    fs::write(cache.join(sha256_hex(&part)), &damaged).unwrap();
    let out = atomup_bounded(install_args(&w, &d, &[&b], &["--no-log"]));
    assert!(out.status.success(), "{}", text(&out));
    // The cut copy is resumed from its `.partial`, not read from the stick again.
    let resumed = format!(
        "{from_v1}/0: resumed at byte {} of {} (the copy cut when the stick was pulled)",
        part.len() / 2,
        part.len()
    );
    assert!(text(&out).contains(&resumed), "{resumed}: {}", text(&out));
    assert_same_tree(&d.slot_b, &checkout(&w, &w.v2));
    assert_eq!(
        env_show(&d),
        "ATOMUP_ORDER=B A\nATOMUP_TRIAL=B\nATOMUP_LEFT=3\n"
    );
}

/// `--remount` on a stick mounted `ro,nosuid,nodev,noexec`: the result line
/// is appended, and the stick is left mounted read-only with the same
/// `nosuid,nodev,noexec` (a remount replaces the per-mount flags: they must
/// be carried, or the stick would end up executable).
#[test]
fn install_remount_appends_the_log_and_keeps_the_sticks_mount_flags() {
    if !atomup_tests::device::require_root() {
        return;
    }
    let w = world(&[]);
    let d = provision(&w, "inst8");
    let contents = stick(&w, "stick8");
    bundle(&w, "qemu-virt", &contents.join("update.atomup"), &[]);
    let lo = Stick::new(&w.dir.join("stick8.img"), &contents);
    let mnt = w.dir.join("mnt8");
    fs::create_dir_all(&mnt).unwrap();
    run_ok(
        Command::new("mount")
            .args(["-o", "ro,nosuid,nodev,noexec"])
            .arg(&lo.fs.dev)
            .arg(&mnt),
    );
    let out = atomup_bounded(install_args(
        &w,
        &d,
        &[Path::new("--scan"), &mnt],
        &["--remount"],
    ));
    let opts = fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(mnt.to_str().unwrap()))
        .map(|l| l.split(' ').nth(5).unwrap().to_owned());
    let log = fs::read_to_string(mnt.join("atomup-log.txt"));
    let _ = Command::new("umount").arg(&mnt).status();
    assert!(out.status.success(), "{}", text(&out));
    assert!(log.unwrap().contains(" outcome=installed"));
    let opts = opts.expect("the stick is still mounted");
    for want in ["ro", "nosuid", "nodev", "noexec"] {
        assert!(opts.split(',').any(|o| o == want), "{want} missing: {opts}");
    }
}

/// One install at a time across processes: while another holds the state
/// directory's install lock (a daemon writing a slot), `atomup install`
/// says it waits and writes neither slot nor env; once the lock is free it
/// completes.
#[test]
fn install_waits_for_the_install_lock_then_completes() {
    use rustix::fs::{flock, FlockOperation};
    let w = world(&[]);
    let d = provision(&w, "inst9");
    let b = w.dir.join("v2-inst9.atomup");
    bundle(&w, "qemu-virt", &b, &[]);
    let lock = fs::File::create(d.state.join("install.lock")).unwrap();
    flock(&lock, FlockOperation::NonBlockingLockExclusive).unwrap();
    let env = env_show(&d);
    let record_b = fs::read(d.state.join("slots/B")).ok();
    let accepted = fs::read(d.state.join("accepted")).ok();
    let slot_b = atomup_tests::ostree_fixture::tree_digest(&d.slot_b);
    let mut a = atomup_tests::service::Agent::spawn(&install_args(&w, &d, &[&b], &["--no-log"]));
    let minute = std::time::Duration::from_secs(60);
    a.wait_for("waiting for another atomup install to finish", minute);
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert!(a.child.try_wait().unwrap().is_none(), "{}", a.output());
    // Only the cache (and the progress record) changed meanwhile.
    assert_eq!(fs::read(d.state.join("slots/B")).ok(), record_b);
    assert_eq!(fs::read(d.state.join("accepted")).ok(), accepted);
    assert_eq!(atomup_tests::ostree_fixture::tree_digest(&d.slot_b), slot_b);
    assert_eq!(env_show(&d), env);
    drop(lock);
    assert!(a.wait_exit(minute).success(), "{}", a.output());
    assert!(a.output().contains("into slot B"), "{}", a.output());
    assert_same_tree(&d.slot_b, &checkout(&w, &w.v2));
    assert_eq!(
        env_show(&d),
        "ATOMUP_ORDER=B A\nATOMUP_TRIAL=B\nATOMUP_LEFT=3\n"
    );
}
