//! `atomup update` end to end on the host: a vendor repository made by the real
//! `ostree` CLI with signed deltas and `atomup-publish release`, served by real
//! nginx; a simulated device (active root directory, state dir, U-Boot env in a
//! disk-image file) polls it, installs into the inactive slot and flips the env.
//! Every refusal leaves the env bytes and the inactive slot untouched.

use atomup_ostree::ObjectId;
use atomup_tests::nginx::{FlakyProxy, Nginx};
use atomup_tests::ostree_fixture::{
    assert_same_tree, atomup, pseudo_bytes, run_ok, tree_digest, Apply, Keys, Repo, ScratchDir,
    TreeBuilder,
};
use std::fs;
use std::path::PathBuf;
use std::process::{Command, Output};

const T0: u64 = 1_767_225_600; // 2026-01-01, the release timestamp

struct World {
    dir: ScratchDir,
    repo: Repo,
    keys: Keys,
    v1: String,
    v2: String,
    nginx: Nginx,
}

struct Device {
    state: PathBuf,
    env: PathBuf,
    slot_a: PathBuf,
    slot_b: PathBuf,
    machine_id: PathBuf,
}

/// v1 and v2 trees (changed, added, deleted, renamed files, a symlink, an
/// executable), signed deltas scratch→v1, v1→v2, scratch→v2, and release 2.
fn world(waves: &[&str]) -> World {
    atomup_tests::require_tool("ostree");
    let dir = ScratchDir::new("update-host");
    let repo = Repo::init(dir.join("repo"), "archive");
    let t = TreeBuilder::new(dir.join("tree"));
    t.file("etc/os-release", b"VERSION_ID=1\n", 0o644)
        .file("usr/bin/app", &pseudo_bytes(1, 300_000, false), 0o755)
        .file("usr/share/doc/old.txt", b"goes away\n", 0o644)
        .file(
            "usr/lib/libfoo.so.1",
            &pseudo_bytes(3, 100_000, false),
            0o644,
        )
        .symlink("usr/lib/libfoo.so", "libfoo.so.1")
        .dir("var/empty", 0o755);
    let v1 = repo.commit(&t.root, "v1");
    let mut app = pseudo_bytes(1, 300_000, false);
    app[1000..1100].copy_from_slice(&[7; 100]);
    t.file("etc/os-release", b"VERSION_ID=2\n", 0o644)
        .file("usr/bin/app", &app, 0o755)
        .remove("usr/share/doc/old.txt")
        .rename("usr/lib/libfoo.so.1", "usr/lib/libfoo.so.2")
        .symlink("usr/lib/libfoo.so", "libfoo.so.2")
        .file("usr/bin/new-tool", &pseudo_bytes(4, 50_000, true), 0o755);
    let v2 = repo.commit(&t.root, "v2");
    let keys = Keys::generate(&dir.join("keys"), "vendor");
    let (id1, id2) = (
        ObjectId::from_hex(&v1).unwrap(),
        ObjectId::from_hex(&v2).unwrap(),
    );
    for (from, to, to_hex) in [
        (None, &id1, &v1),
        (Some(&id1), &id2, &v2),
        (None, &id2, &v2),
    ] {
        let d = repo.path.join(atomup_ostree::delta::delta_path(from, to));
        repo.delta(
            from.map(|_| v1.as_str()),
            to_hex,
            &["--min-fallback-size=0"],
            &d,
        );
        keys.sign_delta(&d);
    }
    let mut cmd = Command::new(atomup_tests::workspace_bin("atomup-publish"));
    cmd.args(["release", "--repo"])
        .arg(&repo.path)
        .arg("--key")
        .arg(&keys.secret);
    cmd.args([
        "--channel",
        "stable",
        "--board",
        "qemu-virt",
        "--version",
        "2",
        "--to",
        &v2,
    ]);
    cmd.args(["--timestamp", &T0.to_string(), "--expires-in-days", "30"]);
    for w in waves {
        cmd.args(["--wave", w]);
    }
    run_ok(&mut cmd);
    let nginx = Nginx::serve(&repo.path, dir.path());
    World {
        dir,
        repo,
        keys,
        v1,
        v2,
        nginx,
    }
}

/// A device provisioned with v1 in slot A the way a factory image is: the
/// from-scratch delta applied with `--meta-out` into the state dir.
fn provision(w: &World, name: &str) -> Device {
    let root = w.dir.join(name);
    let d = Device {
        state: root.join("var/lib/atomup"),
        env: root.join("disk.img"),
        slot_a: root.join("slot-a"),
        slot_b: root.join("slot-b"),
        machine_id: root.join("machine-id"),
    };
    // Both slots exist as (mounted) filesystems; B starts empty.
    fs::create_dir_all(&d.slot_a).unwrap();
    fs::create_dir_all(&d.slot_b).unwrap();
    let id1 = ObjectId::from_hex(&w.v1).unwrap();
    Apply {
        delta: w
            .repo
            .path
            .join(atomup_ostree::delta::delta_path(None, &id1)),
        to: d.slot_a.clone(),
        meta_out: Some(d.state.join("meta")),
        trusted: Some(w.keys.public.clone()),
        ..Default::default()
    }
    .run_ok();
    fs::create_dir_all(d.state.join("slots")).unwrap();
    fs::write(
        d.state.join("slots/A"),
        format!("format=1\ncommit={}\nversion=1\n", w.v1),
    )
    .unwrap();
    fs::write(&d.machine_id, format!("{name}\n")).unwrap();
    fs::File::create(&d.env).unwrap().set_len(1 << 20).unwrap();
    let out = atomup(env_args(&d, &["env", "init", "--order", "A"]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    d
}

fn env_args<'a>(d: &'a Device, cmd: &[&'a str]) -> Vec<std::ffi::OsString> {
    let mut a: Vec<std::ffi::OsString> = cmd.iter().map(Into::into).collect();
    a.push("--env-image".into());
    a.push(d.env.clone().into());
    a.push("--state-dir".into());
    a.push(d.state.clone().into());
    a
}

fn update(w: &World, d: &Device, server: &str, booted: &str, extra: &[&str]) -> Output {
    let mut a = env_args(
        d,
        &[
            "update",
            "--server",
            server,
            "--channel",
            "stable",
            "--board",
            "qemu-virt",
        ],
    );
    a.extend([
        "--booted-slot".into(),
        booted.into(),
        "--trusted-keys".into(),
        w.keys.public.clone().into(),
    ]);
    let (active, inactive) = if booted == "A" {
        (&d.slot_a, &d.slot_b)
    } else {
        (&d.slot_b, &d.slot_a)
    };
    a.extend([
        "--from-root".into(),
        active.into(),
        "--target-dir".into(),
        inactive.into(),
    ]);
    a.extend([
        "--machine-id".into(),
        d.machine_id.clone().into(),
        "--now".into(),
        (T0 + 60).to_string().into(),
    ]);
    a.extend(["--retry-backoff-ms".into(), "20".into()]);
    a.extend(extra.iter().map(Into::into));
    atomup(a)
}

fn env_show(d: &Device) -> String {
    let out = atomup(env_args(d, &["env", "show"]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn checkout(w: &World, commit: &str) -> PathBuf {
    let dest = w.dir.join(format!("checkout-{commit}"));
    if !dest.exists() {
        w.repo.checkout(commit, &dest);
    }
    dest
}

/// Nothing the device relies on changed: env bytes, inactive slot, active slot.
struct Untouched {
    env: Vec<u8>,
    slot_a: String,
    slot_b: String,
}

impl Untouched {
    fn snap(d: &Device) -> Self {
        Untouched {
            env: fs::read(&d.env).unwrap(),
            slot_a: tree_digest(&d.slot_a),
            slot_b: tree_digest(&d.slot_b),
        }
    }
    fn assert_same(&self, d: &Device) {
        assert!(fs::read(&d.env).unwrap() == self.env, "env changed");
        assert_eq!(tree_digest(&d.slot_a), self.slot_a, "active slot changed");
        assert_eq!(tree_digest(&d.slot_b), self.slot_b, "inactive slot touched");
    }
}

/// The whole cycle: update installs v2 into B on trial; a second poll sees it
/// pending; after B boots and is confirmed, the device is up to date.
#[test]
fn update_installs_into_inactive_slot_and_flips_env_once() {
    let w = world(&[]);
    let d = provision(&w, "dev1");
    let out = update(&w, &d, &w.nginx.url(), "A", &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("into slot B"), "{}", text(&out));
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

    let again = update(&w, &d, &w.nginx.url(), "A", &[]);
    assert!(
        again.status.success() && text(&again).contains("reboot to try it"),
        "{}",
        text(&again)
    );

    // The bootloader boots B on trial; health passes.
    let ok = atomup(env_args(&d, &["mark-good", "--booted-slot", "B"]));
    assert!(ok.status.success(), "{}", text(&ok));
    assert_eq!(
        env_show(&d),
        "ATOMUP_ORDER=B A\nATOMUP_TRIAL=\nATOMUP_LEFT=0\n"
    );
    let done = update(&w, &d, &w.nginx.url(), "B", &[]);
    assert!(
        done.status.success() && text(&done).contains("up to date"),
        "{}",
        text(&done)
    );
}

/// A link that cuts twice mid-download still installs, paying each byte once.
#[test]
fn update_survives_a_flaky_link() {
    let w = world(&[]);
    let d = provision(&w, "dev2");
    let proxy = FlakyProxy::start(w.nginx.port, 8_000, 2);
    let out = update(&w, &d, &proxy.url(), "A", &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_same_tree(&d.slot_b, &checkout(&w, &w.v2));
    assert!(
        w.nginx.requests().iter().any(|l| l.starts_with("206 ")),
        "{:#?}",
        w.nginx.requests()
    );
}

/// Metadata altered on the server is refused before the env or a slot is touched.
#[test]
fn tampered_release_is_refused_and_nothing_changes() {
    let w = world(&[]);
    let d = provision(&w, "dev3");
    let file = w.repo.path.join("atomup/stable/qemu-virt/release");
    let body = fs::read_to_string(&file)
        .unwrap()
        .replace("version 2\n", "version 3\n");
    fs::write(&file, body).unwrap();
    let before = Untouched::snap(&d);
    let out = update(&w, &d, &w.nginx.url(), "A", &[]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("not signed by any trusted"),
        "{}",
        text(&out)
    );
    before.assert_same(&d);
}

/// Expired metadata (a freeze attack) is refused; nothing changes.
#[test]
fn expired_release_is_refused_and_nothing_changes() {
    let w = world(&[]);
    let d = provision(&w, "dev4");
    let before = Untouched::snap(&d);
    let later = (T0 + 31 * 86400).to_string();
    let out = update(&w, &d, &w.nginx.url(), "A", &["--now", &later]);
    assert!(!out.status.success());
    assert!(text(&out).contains("expired"), "{}", text(&out));
    before.assert_same(&d);
}

/// A part corrupted on the server fails its digest before the env is touched.
#[test]
fn corrupt_part_is_refused_before_the_env_is_touched() {
    let w = world(&[]);
    let d = provision(&w, "dev5");
    let id1 = ObjectId::from_hex(&w.v1).unwrap();
    let id2 = ObjectId::from_hex(&w.v2).unwrap();
    let part = w
        .repo
        .path
        .join(atomup_ostree::delta::delta_path(Some(&id1), &id2))
        .join("0");
    let mut bytes = fs::read(&part).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    fs::write(&part, bytes).unwrap();
    let before = Untouched::snap(&d);
    let out = update(&w, &d, &w.nginx.url(), "A", &[]);
    assert!(!out.status.success());
    assert!(text(&out).contains("sha256 mismatch"), "{}", text(&out));
    before.assert_same(&d);
}

/// While the running slot is itself on trial, its fallback is never overwritten.
#[test]
fn update_refuses_while_the_running_slot_is_on_trial() {
    let w = world(&[]);
    let d = provision(&w, "dev6");
    let set = atomup(env_args(
        &d,
        &["env", "set", "--order", "A", "--trial", "A", "--left", "2"],
    ));
    assert!(set.status.success(), "{}", text(&set));
    let before = Untouched::snap(&d);
    let out = update(&w, &d, &w.nginx.url(), "A", &[]);
    assert!(!out.status.success());
    assert!(text(&out).contains("running on trial"), "{}", text(&out));
    before.assert_same(&d);
}

/// A release that rolled back on this device is never retried.
#[test]
fn rolled_back_release_is_never_retried() {
    let w = world(&[]);
    let d = provision(&w, "dev7");
    fs::write(
        d.state.join("rollbacks"),
        format!("format=1\n{} B {} 2\n", T0, w.v2),
    )
    .unwrap();
    let before = Untouched::snap(&d);
    let out = update(&w, &d, &w.nginx.url(), "A", &[]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("rolled back on this device"),
        "{}",
        text(&out)
    );
    before.assert_same(&d);
}

/// Before its wave opens a device waits, without touching anything.
#[test]
fn device_waits_for_its_rollout_wave() {
    // One wave a day after publication admitting the whole fleet.
    let w = world(&["+86400:100"]);
    let d = provision(&w, "dev8");
    let before = Untouched::snap(&d);
    let out = update(&w, &d, &w.nginx.url(), "A", &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("wave opens at {}", T0 + 86400)),
        "{}",
        text(&out)
    );
    before.assert_same(&d);
    let later = (T0 + 86400).to_string();
    let out = update(&w, &d, &w.nginx.url(), "A", &["--now", &later]);
    assert!(out.status.success(), "{}", text(&out));
    assert_same_tree(&d.slot_b, &checkout(&w, &w.v2));
}
