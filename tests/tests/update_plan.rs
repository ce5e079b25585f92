//! `atomup update` checks everything that needs no writing before its first
//! write (issue 11.3): an unsigned delta, a delta signed by a key the device
//! does not trust, a delta from another commit than the release says, and an
//! `--attempts` outside 1..=9 are refused with the env, both slots (the
//! confirmed fallback included) and the records untouched. Releases are
//! re-signed here with the vendor key after the delta entries were edited, as
//! a vendor with a broken pipeline (or a leaked metadata key) would.

use atomup_ostree::delta::SuperblockFile;
use atomup_ostree::ObjectId;
use atomup_release::check::{signature_line, unsigned_body};
use atomup_release::{DeltaSource, Release};
use atomup_tests::device::{provision, text, update, world, Untouched, World};
use atomup_tests::ostree_fixture::{Keys, ScratchDir};
use sha2::{Digest, Sha256};
use std::fs;
use std::path::PathBuf;

fn release_file(w: &World) -> PathBuf {
    w.repo.path.join("atomup/stable/qemu-virt/release")
}

/// Rewrites the published release through `edit` and signs it again with
/// the vendor's release key.
fn resign(w: &World, edit: impl FnOnce(&mut Release)) {
    let bytes = fs::read(release_file(w)).unwrap();
    let mut r = Release::parse(unsigned_body(&bytes)).unwrap();
    edit(&mut r);
    let key = atomup_ostree::sign::parse_secret_key(&fs::read_to_string(&w.keys.secret).unwrap())
        .unwrap();
    let body = r.to_canonical();
    let sig = atomup_ostree::sign::sign(&key, body.as_bytes());
    fs::write(release_file(w), format!("{body}{}", signature_line(&sig))).unwrap();
}

/// The v1→v2 delta directory.
fn delta_12(w: &World) -> PathBuf {
    let (id1, id2) = (
        ObjectId::from_hex(&w.v1).unwrap(),
        ObjectId::from_hex(&w.v2).unwrap(),
    );
    w.repo
        .path
        .join(atomup_ostree::delta::delta_path(Some(&id1), &id2))
}

/// Replaces the superblock in `dir` and points the release's entry for it at
/// the new bytes.
fn replace_superblock(w: &World, dir: &std::path::Path, bytes: &[u8]) {
    fs::write(dir.join("superblock"), bytes).unwrap();
    let rel = dir
        .strip_prefix(&w.repo.path)
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    resign(w, |r| {
        let d = r.deltas.iter_mut().find(|d| d.path == rel).unwrap();
        d.superblock_size = bytes.len() as u64;
        d.superblock_sha256 = Sha256::digest(bytes).into();
    });
}

fn unsigned(dir: &std::path::Path) -> Vec<u8> {
    let bytes = fs::read(dir.join("superblock")).unwrap();
    SuperblockFile::parse(&bytes).unwrap().unsigned.to_vec()
}

fn assert_refused_untouched(w: &World, name: &str, extra: &[&str], why: &str) {
    let d = provision(w, name);
    let before = Untouched::snap(&d);
    let out = update(w, &d, &w.nginx.url(), "A", extra);
    assert!(!out.status.success(), "not refused: {}", text(&out));
    assert!(
        text(&out).contains(why),
        "expected `{why}` in: {}",
        text(&out)
    );
    before.assert_records_same(&d);
}

/// A delta without a signature, in a validly signed release.
#[test]
fn unsigned_delta_is_refused_before_the_first_write() {
    let w = world(&[]);
    let dir = delta_12(&w);
    replace_superblock(&w, &dir, &unsigned(&dir));
    assert_refused_untouched(&w, "unsigned", &[], "is not signed");
}

/// A delta signed only by a key the device does not trust (mid-rotation).
#[test]
fn delta_signed_by_an_untrusted_key_is_refused_before_the_first_write() {
    let w = world(&[]);
    let dir = delta_12(&w);
    let other = Keys::generate(&w.dir.join("other-keys"), "other");
    let scratch = ScratchDir::new("resign");
    fs::write(scratch.join("superblock"), unsigned(&dir)).unwrap();
    other.sign_delta(scratch.path());
    replace_superblock(&w, &dir, &fs::read(scratch.join("superblock")).unwrap());
    assert_refused_untouched(&w, "untrusted", &[], "no signature verifies with a trusted");
}

/// A release entry "from v1" that points at the from-scratch delta.
#[test]
fn delta_from_another_commit_than_the_release_says_is_refused() {
    let w = world(&[]);
    let id1 = ObjectId::from_hex(&w.v1).unwrap();
    resign(&w, |r| {
        let scratch = r
            .deltas
            .iter()
            .find(|d| d.from == DeltaSource::Scratch)
            .unwrap()
            .clone();
        let from_v1 = r
            .deltas
            .iter_mut()
            .find(|d| d.from == DeltaSource::From(id1.0))
            .unwrap();
        *from_v1 = atomup_release::Delta {
            from: DeltaSource::From(id1.0),
            ..scratch
        };
    });
    assert_refused_untouched(
        &w,
        "wrongfrom",
        &[],
        "starts from scratch, the release says",
    );
}

/// `--attempts 0` (the slot would never boot) and above the env's one digit.
#[test]
fn attempts_out_of_range_are_refused_before_the_first_write() {
    let w = world(&[]);
    assert_refused_untouched(
        &w,
        "att0",
        &["--attempts", "0"],
        "--attempts must be 1..=9, got 0",
    );
    assert_refused_untouched(
        &w,
        "att10",
        &["--attempts", "10"],
        "--attempts must be 1..=9, got 10",
    );
}

/// The download is checked against the free space of the data partition
/// before it starts: a cache that cannot hold the delta gets nothing written
/// into it (it used to fill up with a partial file until ENOSPC).
#[test]
fn a_download_larger_than_the_free_space_is_refused_before_it_starts() {
    if !atomup_tests::device::require_root() {
        return;
    }
    let w = world(&[]);
    let d = provision(&w, "nospace");
    let cache = d.state.join("cache");
    fs::create_dir_all(&cache).unwrap();
    let before = Untouched::snap(&d);
    let mut args: Vec<std::ffi::OsString> = vec![atomup_tests::workspace_bin("atomup").into()];
    args.extend(atomup_tests::device::update_args(
        &w,
        &d,
        &w.nginx.url(),
        "A",
        &[],
    ));
    let script = format!(
        "mount -t tmpfs -o size=4k tmpfs {c}\nrc=0; \"$@\" || rc=$?\necho CACHE:$(ls -A {c})\nexit $rc",
        c = cache.display()
    );
    let out = atomup_tests::device::in_mount_ns(&script, &args);
    assert!(!out.status.success(), "not refused: {}", text(&out));
    before.assert_records_same(&d);
    assert!(text(&out).contains("more bytes in"), "{}", text(&out));
    assert!(
        text(&out).contains("CACHE:\n"),
        "the cache was written: {}",
        text(&out)
    );
}
