//! Time and version are trusted only within bounds (issue 11.4): a validly
//! signed release stamped far in the future is refused by a device with a
//! usable clock and moves the trusted time of one without a clock by at most
//! a week; a replayed older release never replaces a newer one waiting on
//! trial; a slot record whose version is not a number fails closed.

use atomup_ostree::ObjectId;
use atomup_tests::device::{
    env_show, provision, release, text, update, world, Untouched, World, T0,
};
use atomup_tests::ostree_fixture::TreeBuilder;
use std::fs;

const Y2100: u64 = 4_102_444_800;
const WEEK: u64 = 7 * 86_400;

fn trusted_time(d: &atomup_tests::device::Device) -> Option<u64> {
    fs::read_to_string(d.state.join("trusted-time"))
        .ok()
        .map(|s| s.trim().parse().unwrap())
}

/// A device whose clock is fine refuses a release from 2100, nothing written.
#[test]
fn release_stamped_in_the_future_is_refused_by_a_device_with_a_clock() {
    let w = world(&[]);
    release(&w.repo, &w.keys, 3, &w.v2, Y2100, &[]);
    let d = provision(&w, "future");
    let before = Untouched::snap(&d);
    let out = update(&w, &d, &w.nginx.url(), "A", &[]);
    assert!(!out.status.success(), "{}", text(&out));
    before.assert_records_same(&d);
    assert!(
        text(&out).contains("ahead of this device's clock"),
        "{}",
        text(&out)
    );
    assert_eq!(trusted_time(&d), None);
}

/// A device without a usable clock (it reads 1970, behind its trusted time)
/// installs such a release, but its trusted time moves by at most a week, so
/// the vendor's next honest release is not "expired".
#[test]
fn release_from_the_future_moves_a_clockless_trusted_time_by_a_week_at_most() {
    let w = world(&[]);
    release(&w.repo, &w.keys, 3, &w.v2, Y2100, &[]);
    let d = provision(&w, "clockless");
    fs::write(d.state.join("trusted-time"), format!("{T0}\n")).unwrap();
    let out = update(&w, &d, &w.nginx.url(), "A", &["--now", "0"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(trusted_time(&d), Some(T0 + WEEK));
}

/// A third commit with a signed delta from v1.
fn commit_v3(w: &World) -> String {
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
    v3
}

/// Regression: release 3 waits in B on trial; the server replays the validly
/// signed release 2 (above the running 1). It must not replace release 3.
#[test]
fn replayed_older_release_never_replaces_a_newer_one_waiting_on_trial() {
    let w = world(&[]);
    let v3 = commit_v3(&w);
    release(&w.repo, &w.keys, 3, &v3, T0 + 10, &[]);
    let d = provision(&w, "replay");
    let out = update(&w, &d, &w.nginx.url(), "A", &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("installed version 3"), "{}", text(&out));
    assert_eq!(
        env_show(&d),
        "ATOMUP_ORDER=B A\nATOMUP_TRIAL=B\nATOMUP_LEFT=3\n"
    );
    let rel = w.repo.path.join("atomup/stable/qemu-virt");
    fs::copy(rel.join("history/2"), rel.join("release")).unwrap();
    let before = Untouched::snap(&d);
    let out = update(&w, &d, &w.nginx.url(), "A", &[]);
    assert!(!out.status.success(), "{}", text(&out));
    before.assert_records_same(&d);
    assert!(
        text(&out).contains("older than version 3, which this device accepted before"),
        "{}",
        text(&out)
    );
}

/// Regression: `version=2.0` (or no version) in the running slot's record
/// read as 0 and disabled downgrade protection; it now fails closed.
#[test]
fn slot_record_with_a_version_that_is_not_a_number_fails_closed() {
    let w = world(&[]);
    let d = provision(&w, "badversion");
    for (record, why) in [
        (
            format!("format=1\ncommit={}\nversion=2.0\n", w.v1),
            "`version` is not an unsigned integer",
        ),
        (
            format!("format=1\ncommit={}\n", w.v1),
            "commit without a version",
        ),
    ] {
        fs::write(d.state.join("slots/A"), record).unwrap();
        let before = Untouched::snap(&d);
        let out = update(&w, &d, &w.nginx.url(), "A", &[]);
        assert!(!out.status.success(), "{}", text(&out));
        before.assert_nothing_written(&d);
        assert!(
            text(&out).contains("invalid agent record"),
            "{}",
            text(&out)
        );
        assert!(text(&out).contains(why), "{}", text(&out));
    }
}
