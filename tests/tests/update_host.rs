//! `atomup update` end to end on the host: a vendor repository made by the real
//! `ostree` CLI with signed deltas and `atomup-publish release`, served by real
//! nginx; a simulated device (active root directory, state dir, U-Boot env in a
//! disk-image file) polls it, installs into the inactive slot and flips the env.
//! Every refusal leaves the env bytes and the inactive slot untouched.

use atomup_ostree::ObjectId;
use atomup_tests::device::{
    env_args, env_show, provision, text, update, world, Untouched, World, T0,
};
use atomup_tests::nginx::FlakyProxy;
use atomup_tests::ostree_fixture::{assert_same_tree, atomup};
use std::fs;
use std::path::PathBuf;

fn checkout(w: &World, commit: &str) -> PathBuf {
    let dest = w.dir.join(format!("checkout-{commit}"));
    if !dest.exists() {
        w.repo.checkout(commit, &dest);
    }
    dest
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

/// Regression (issue 11.7): the trusted time was replaced by a hand-written
/// helper that followed a symlink planted at its temporary name (and did not
/// fsync the directory); it is `atomup_fsio::replace` now, which never does.
/// The refusal comes before the first env write.
#[test]
fn trusted_time_write_never_follows_a_symlink_at_its_temp_name() {
    let w = world(&[]);
    let d = provision(&w, "tmplink");
    let victim = w.dir.join("victim");
    fs::write(&victim, b"keep\n").unwrap();
    std::os::unix::fs::symlink(&victim, d.state.join("trusted-time.tmp")).unwrap();
    let before = Untouched::snap(&d);
    let out = update(&w, &d, &w.nginx.url(), "A", &[]);
    assert!(!out.status.success(), "{}", text(&out));
    assert_eq!(
        fs::read(&victim).unwrap(),
        b"keep\n",
        "the write followed the symlink"
    );
    before.assert_same(&d);
    assert!(text(&out).contains("trusted-time"), "{}", text(&out));
}
