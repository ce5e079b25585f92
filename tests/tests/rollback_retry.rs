//! A release that rolled back is never retried, and a newer one is (DESIGN
//! "Data flow": "agent reports rollback and never retries that release"):
//! the device rejects v2 on its trial boot (a required check fails, recorded
//! with its reason), `update` then refuses release 2 without touching
//! anything, and installs release 3 when the vendor publishes it.

use atomup_ostree::ObjectId;
use atomup_tests::device::{
    atomup_bounded, env_args, env_show, provision, release, text, update, world, Untouched, T0,
};
use atomup_tests::ostree_fixture::{assert_same_tree, TreeBuilder};
use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::PermissionsExt;

#[test]
fn a_rolled_back_release_is_never_retried_and_a_newer_one_installs() {
    let w = world(&[]);
    let d = provision(&w, "retry");
    // v2 installed into B and booted on trial.
    let out = update(&w, &d, &w.nginx.url(), "A", &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        env_show(&d),
        "ATOMUP_ORDER=B A\nATOMUP_TRIAL=B\nATOMUP_LEFT=3\n"
    );
    // Its required check fails: rejected, recorded with the reason.
    let checks = d.root.join("health.d/required.d");
    fs::create_dir_all(&checks).unwrap();
    let check = checks.join("10-app");
    fs::write(&check, "#!/bin/sh\necho app down\nexit 1\n").unwrap();
    fs::set_permissions(&check, fs::Permissions::from_mode(0o755)).unwrap();
    let config = d.root.join("config.d");
    fs::create_dir_all(&config).unwrap();
    fs::write(
        config.join("t.toml"),
        "[health]\nread_only_root = false\ndata_partition = false\nmin_free = 0\n",
    )
    .unwrap();
    let mut a = env_args(&d, &["health", "--no-reboot", "--booted-slot", "B"]);
    for (opt, p) in [
        ("--checks", d.root.join("health.d")),
        ("--vendor-checks", d.root.join("none")),
        ("--config-dir", config),
    ] {
        a.extend([OsString::from(opt), p.into()]);
    }
    let out = atomup_bounded(a);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out)
            .contains("rolled back from version 2 (required check 10-app failed: exit status 1)"),
        "{}",
        text(&out)
    );
    assert_eq!(
        env_show(&d),
        "ATOMUP_ORDER=A\nATOMUP_TRIAL=\nATOMUP_LEFT=0\n"
    );

    // Back on A: release 2 is refused, nothing written.
    let before = Untouched::snap(&d);
    let out = update(&w, &d, &w.nginx.url(), "A", &[]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("release 2 (")
            && text(&out).contains("rolled back on this device before"),
        "{}",
        text(&out)
    );
    before.assert_same(&d);

    // The vendor fixes it: v3, a delta from v1 (what the device runs), release 3.
    let t = TreeBuilder::new(w.dir.join("tree"));
    t.file("etc/os-release", b"VERSION_ID=3\n", 0o644);
    let v3 = w.repo.commit(&t.root, "v3");
    let (id1, id3) = (
        ObjectId::from_hex(&w.v1).unwrap(),
        ObjectId::from_hex(&v3).unwrap(),
    );
    let dir = w
        .repo
        .path
        .join(atomup_ostree::delta::delta_path(Some(&id1), &id3));
    w.repo
        .delta(Some(&w.v1), &v3, &["--min-fallback-size=0"], &dir);
    w.keys.sign_delta(&dir);
    release(&w.repo, &w.keys, 3, &v3, T0 + 30, &[]);
    let out = update(&w, &d, &w.nginx.url(), "A", &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("installed version 3"), "{}", text(&out));
    assert_eq!(
        env_show(&d),
        "ATOMUP_ORDER=B A\nATOMUP_TRIAL=B\nATOMUP_LEFT=3\n"
    );
    let co = w.dir.join("checkout-v3");
    w.repo.checkout(&v3, &co);
    assert_same_tree(&d.slot_b, &co);
    // The rollback of v2 stays on record, with its reason.
    let out = atomup_bounded(env_args(&d, &["status", "--booted-slot", "A", "--json"]));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["rollbacks"][0]["version"], 2);
    assert_eq!(
        j["rollbacks"][0]["reason"],
        "required check 10-app failed: exit status 1"
    );
}
