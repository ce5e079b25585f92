//! A vendor publishes signed release metadata with `atomup-publish release`
//! over deltas made by the real `ostree` CLI; a device fetches it from a real
//! nginx, verifies it, and is pointed at the right delta with caps and digests.

use atomup_fetch::{Expect, Fetcher, Options};
use atomup_ostree::sign::Trust;
use atomup_ostree::ObjectId;
use atomup_release::check::{check_release, verify_signed, DeviceFacts, Offer};
use atomup_release::{release_path, DeltaSource};
use atomup_tests::nginx::Nginx;
use atomup_tests::ostree_fixture::{Keys, Repo, ScratchDir, TreeBuilder};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const T0: u64 = 1_767_225_600; // 2026-01-01

struct Published {
    dir: ScratchDir,
    repo: Repo,
    keys: Keys,
    v1: String,
    v2: String,
}

/// Two small releases and deltas v1→v2 and scratch→v2 in an archive repo.
fn publish_two_versions() -> Published {
    atomup_tests::require_tool("ostree");
    let dir = ScratchDir::new("release-publish");
    let repo = Repo::init(dir.join("repo"), "archive");
    let t1 = TreeBuilder::new(dir.join("t1"));
    t1.file("etc/os-release", b"VERSION=1\n", 0o644).file(
        "usr/bin/app",
        &atomup_tests::ostree_fixture::pseudo_bytes(1, 200_000, false),
        0o755,
    );
    let v1 = repo.commit(&dir.join("t1"), "v1");
    t1.file("etc/os-release", b"VERSION=2\n", 0o644).file(
        "usr/bin/app",
        &atomup_tests::ostree_fixture::pseudo_bytes(2, 200_000, false),
        0o755,
    );
    let v2 = repo.commit(&dir.join("t1"), "v2");
    let (id1, id2) = (
        ObjectId::from_hex(&v1).unwrap(),
        ObjectId::from_hex(&v2).unwrap(),
    );
    let keys = Keys::generate(&dir.join("keys"), "vendor");
    for from in [Some(&id1), None] {
        let rel = atomup_ostree::delta::delta_path(from, &id2);
        repo.delta(
            from.map(|_| v1.as_str()),
            &v2,
            &["--min-fallback-size=0"],
            &repo.path.join(&rel),
        );
        keys.sign_delta(&repo.path.join(rel));
    }
    Published {
        dir,
        repo,
        keys,
        v1,
        v2,
    }
}

fn release_cmd(p: &Published, version: u64, extra: &[&str]) -> std::process::Output {
    Command::new(atomup_tests::workspace_bin("atomup-publish"))
        .arg("release")
        .arg("--repo")
        .arg(&p.repo.path)
        .arg("--key")
        .arg(&p.keys.secret)
        .args(["--channel", "stable", "--board", "qemu-virt"])
        .args(["--version", &version.to_string(), "--to", &p.v2])
        .args(["--timestamp", &T0.to_string()])
        .args(extra)
        .output()
        .unwrap()
}

fn trust(public: &Path) -> Trust {
    Trust::from_key_files(&std::fs::read_to_string(public).unwrap(), None).unwrap()
}

fn facts(commit: &str) -> DeviceFacts<'static> {
    DeviceFacts {
        channel: "stable",
        board: "qemu-virt",
        current_version: 1,
        current_commit: ObjectId::from_hex(commit).unwrap().0,
        trusted_time: T0,
        highest_version: 1,
        allow_downgrade: false,
    }
}

/// The published release, fetched over HTTP, verifies and points a v1 device at
/// the v1→v2 delta, whose superblock then downloads within its cap and digest.
#[test]
fn device_finds_its_delta_through_signed_metadata_over_http() {
    let p = publish_two_versions();
    let out = release_cmd(&p, 2, &["--wave", "+0:10", "--wave", "+86400:100"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let nginx = Nginx::serve(&p.repo.path, p.dir.path());
    let opts = Options {
        backoff: Duration::from_millis(10),
        ..Options::default()
    };
    let fetcher = Fetcher::new(&nginx.url(), &p.dir.join("cache"), opts).unwrap();
    let bytes = fetcher
        .fetch_small(&release_path("stable", "qemu-virt"), 70_000)
        .unwrap();
    let verified = verify_signed(&bytes, &trust(&p.keys.public)).unwrap();
    let r = verified.release();
    assert_eq!((r.version, r.waves.len(), r.deltas.len()), (2, 2, 2));
    assert_eq!(r.waves[0].share, 1000);

    let Offer::Update { delta } = check_release(&verified, &facts(&p.v1), T0 + 60).unwrap() else {
        panic!("no update offered");
    };
    assert_eq!(
        delta.from,
        DeltaSource::From(ObjectId::from_hex(&p.v1).unwrap().0)
    );
    let expect = Expect {
        size: delta.superblock_size,
        sha256: delta.superblock_sha256,
    };
    let sb = fetcher
        .fetch_verified(
            &format!("{}/superblock", delta.path),
            expect,
            &mut |_, _| {},
        )
        .unwrap();
    assert_eq!(
        std::fs::read(sb).unwrap(),
        std::fs::read(p.repo.path.join(&delta.path).join("superblock")).unwrap()
    );
    let parts: u64 = (0..)
        .map(|i| p.repo.path.join(&delta.path).join(i.to_string()))
        .take_while(|f| f.exists())
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    assert_eq!(delta.parts_size, parts);

    // A device on an unknown commit gets the from-scratch delta.
    let other = "00".repeat(32);
    let Offer::Update { delta } = check_release(&verified, &facts(&other), T0 + 60).unwrap() else {
        panic!("no update offered");
    };
    assert_eq!(delta.from, DeltaSource::Scratch);
}

/// The publisher refuses a version that does not go up, unless forced.
#[test]
fn publisher_refuses_a_version_that_goes_backwards() {
    let p = publish_two_versions();
    assert!(release_cmd(&p, 5, &[]).status.success());
    let out = release_cmd(&p, 4, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not above the published version 5"), "{err}");
    assert!(release_cmd(&p, 4, &["--force-version"]).status.success());
}

/// Metadata signed by another vendor key, or altered on the server, is refused.
#[test]
fn device_refuses_foreign_key_and_tampered_metadata() {
    let p = publish_two_versions();
    assert!(release_cmd(&p, 2, &[]).status.success());
    let file = p.repo.path.join(release_path("stable", "qemu-virt"));
    let good = std::fs::read(&file).unwrap();
    let other = Keys::generate(&p.dir.join("keys"), "other");
    assert!(verify_signed(&good, &trust(&other.public)).is_err());
    let tampered = String::from_utf8(good)
        .unwrap()
        .replace("version 2\n", "version 9\n");
    let err = verify_signed(tampered.as_bytes(), &trust(&p.keys.public)).unwrap_err();
    assert!(
        err.to_string().contains("not signed by any trusted"),
        "{err}"
    );
}

/// Releasing a commit with no delta leading to it is a clear error.
#[test]
fn release_without_a_delta_is_refused() {
    let p = publish_two_versions();
    let out = Command::new(atomup_tests::workspace_bin("atomup-publish"))
        .args(["release", "--repo"])
        .arg(&p.repo.path)
        .arg("--key")
        .arg(&p.keys.secret)
        .args([
            "--channel",
            "stable",
            "--board",
            "qemu-virt",
            "--version",
            "1",
            "--to",
            &p.v1,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no delta"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A signed release never names an unsigned delta, nor one signed by another
/// key than the release's (devices would refuse it after downloading it).
#[test]
fn publisher_refuses_unsigned_or_foreign_signed_deltas() {
    let p = publish_two_versions();
    let id2 = ObjectId::from_hex(&p.v2).unwrap();
    let dir = p
        .repo
        .path
        .join(atomup_ostree::delta::delta_path(None, &id2));
    let sb = dir.join("superblock");
    let signed = std::fs::read(&sb).unwrap();
    let unsigned = atomup_ostree::delta::SuperblockFile::parse(&signed)
        .unwrap()
        .unsigned
        .to_vec();
    std::fs::write(&sb, &unsigned).unwrap();
    let out = release_cmd(&p, 2, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not signed: sign it"), "{err}");
    let other = Keys::generate(&p.dir.join("keys"), "other");
    other.sign_delta(&dir);
    let out = release_cmd(&p, 2, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not signed by the release key"), "{err}");
    assert!(!p
        .repo
        .path
        .join(release_path("stable", "qemu-virt"))
        .exists());
    // Signed by the release key too (a rotation signs with both): accepted.
    p.keys.sign_delta(&dir);
    assert!(release_cmd(&p, 2, &[]).status.success());
}

/// Regression (issue 11.7): `atomup-publish sign` replaced the superblock
/// through a temporary name it followed if it was a symlink, without any
/// fsync; it uses `atomup_fsio::replace` now, as `release` does.
#[test]
fn signing_never_follows_a_symlink_at_the_temporary_name() {
    let p = publish_two_versions();
    let id2 = ObjectId::from_hex(&p.v2).unwrap();
    let dir = p
        .repo
        .path
        .join(atomup_ostree::delta::delta_path(None, &id2));
    let victim = p.dir.join("victim");
    std::fs::write(&victim, b"keep").unwrap();
    for tmp in ["superblock.atomup-tmp", "superblock.tmp"] {
        std::os::unix::fs::symlink(&victim, dir.join(tmp)).unwrap();
    }
    let out = Command::new(atomup_tests::workspace_bin("atomup-publish"))
        .args(["sign", "--key"])
        .arg(&p.keys.secret)
        .arg("--delta")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success(), "signed through a planted symlink");
    assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
}
