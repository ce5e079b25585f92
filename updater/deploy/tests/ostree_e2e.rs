//! End-to-end: the real `ostree` CLI commits trees and generates static deltas;
//! the engine applies them; the written tree must equal `ostree checkout` of
//! the same commit (contents, modes, uid/gid, symlink targets). Kept small:
//! the full matrix lives in the workspace `tests` crate.

use std::collections::BTreeMap;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use atomup_deploy::{apply, DeployError, Options};
use atomup_ostree::sign::{key_lines, Trust};

static N: AtomicUsize = AtomicUsize::new(0);

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "atomup-deploy-{}-{}-{}",
        name,
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Removes a scratch directory when the test ends (pass or fail).
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn ostree(args: &[&str]) -> String {
    let out = Command::new("ostree")
        .args(args)
        .output()
        .expect("the `ostree` CLI is required (apt package ostree)");
    assert!(
        out.status.success(),
        "ostree {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn commit(repo: &Path, tree: &Path, subject: &str) -> String {
    ostree(&[
        &format!("--repo={}", repo.display()),
        "commit",
        "-b",
        "os/main",
        "--owner-uid=0",
        "--owner-gid=0",
        "--timestamp=2024-01-01T00:00:00Z",
        "-s",
        subject,
        &format!("--tree=dir={}", tree.display()),
    ])
}

fn delta(repo: &Path, from: Option<&str>, to: &str, dir: &Path, extra: &[&str]) {
    std::fs::create_dir_all(dir).unwrap();
    let mut args = vec![
        format!("--repo={}", repo.display()),
        "static-delta".into(),
        "generate".into(),
    ];
    match from {
        Some(f) => args.push(format!("--from={f}")),
        None => args.push("--empty".into()),
    }
    args.push(format!("--to={to}"));
    args.push("--min-fallback-size=0".into());
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(format!("--filename={}/superblock", dir.display()));
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    ostree(&a);
}

fn checkout(repo: &Path, rev: &str, dest: &Path) {
    ostree(&[
        &format!("--repo={}", repo.display()),
        "checkout",
        rev,
        &dest.display().to_string(),
    ]);
}

/// path → (type+mode, uid, gid, content or link target)
fn snapshot(root: &Path) -> BTreeMap<String, (u32, u32, u32, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let data = if m.file_type().is_symlink() {
                std::fs::read_link(&p)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes()
            } else if m.is_dir() {
                stack.push(p.clone());
                Vec::new()
            } else {
                std::fs::read(&p).unwrap()
            };
            out.insert(rel, (m.mode(), m.uid(), m.gid(), data));
        }
    }
    out
}

fn assert_same_tree(written: &Path, reference: &Path) {
    let (a, b) = (snapshot(written), snapshot(reference));
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "entry names differ"
    );
    for (k, v) in &a {
        assert_eq!(Some(v), b.get(k), "entry {k} differs");
    }
    let (ma, mb) = (
        std::fs::metadata(written).unwrap(),
        std::fs::metadata(reference).unwrap(),
    );
    assert_eq!(ma.mode(), mb.mode(), "root mode");
}

fn write(p: &Path, data: &[u8]) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

fn pseudo_random(n: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2654435761).max(1);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Two trees exercising every entry kind and change kind.
fn make_trees(base: &Path) -> (PathBuf, PathBuf) {
    let t1 = base.join("t1");
    write(&t1.join("etc/hostname"), b"device\n");
    write(&t1.join("usr/bin/tool"), &pseudo_random(60_000, 1));
    write(&t1.join("usr/lib/keep.so"), &pseudo_random(10_000, 2));
    write(&t1.join("old-name.txt"), b"renamed content\n");
    write(&t1.join("gone.txt"), b"deleted\n");
    write(&t1.join("empty-file"), b"");
    std::fs::create_dir_all(t1.join("var/empty")).unwrap();
    symlink("usr/lib", t1.join("lib")).unwrap();
    std::fs::set_permissions(
        t1.join("usr/bin/tool"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();

    let t2 = base.join("t2");
    write(&t2.join("etc/hostname"), b"device-2\n");
    let mut tool = pseudo_random(60_000, 1);
    tool[1000..1010].copy_from_slice(b"0123456789");
    tool.extend_from_slice(b"appended");
    write(&t2.join("usr/bin/tool"), &tool);
    write(&t2.join("usr/lib/keep.so"), &pseudo_random(10_000, 2));
    write(&t2.join("new-name.txt"), b"renamed content\n");
    write(&t2.join("empty-file"), b"");
    write(&t2.join("usr/bin/su"), b"#!/bin/sh\n");
    std::fs::create_dir_all(t2.join("var/empty")).unwrap();
    std::fs::create_dir_all(t2.join("srv")).unwrap();
    symlink("usr/lib", t2.join("lib")).unwrap();
    symlink("/etc/hostname", t2.join("abs-link")).unwrap();
    symlink("does/not/exist", t2.join("dangling")).unwrap();
    symlink("../usr", t2.join("srv/to-dir")).unwrap();
    std::fs::set_permissions(
        t2.join("usr/bin/tool"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::set_permissions(
        t2.join("usr/bin/su"),
        std::fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    std::fs::set_permissions(t2.join("srv"), std::fs::Permissions::from_mode(0o700)).unwrap();
    (t1, t2)
}

struct Fixture {
    _cleanup: Cleanup,
    base: PathBuf,
    repo: PathBuf,
    v1: String,
    v2: String,
    active: PathBuf,
}

fn fixture(name: &str) -> Fixture {
    let base = scratch(name);
    let repo = base.join("repo");
    ostree(&[
        &format!("--repo={}", repo.display()),
        "init",
        "--mode=archive",
    ]);
    let (t1, t2) = make_trees(&base);
    let v1 = commit(&repo, &t1, "v1");
    let v2 = commit(&repo, &t2, "v2");
    let active = base.join("active");
    checkout(&repo, &v1, &active);
    Fixture {
        _cleanup: Cleanup(base.clone()),
        base,
        repo,
        v1,
        v2,
        active,
    }
}

fn opts<'a>(f: &'a Fixture, d: &'a Path, target: &'a Path) -> Options<'a> {
    Options {
        delta: d,
        target,
        from_root: Some(&f.active),
        from_meta: Some(&f.repo),
        fallback_repo: None,
        meta_out: None,
        trust: None,
    }
}

/// Separate xz parts with bsdiff, inline parts, big-endian, 1-byte chunks and
/// no-bsdiff deltas all produce exactly the checked-out tree.
#[test]
fn delta_variants_match_checkout() {
    let f = fixture("variants");
    let reference = f.base.join("ref");
    checkout(&f.repo, &f.v2, &reference);
    let variants: &[&[&str]] = &[
        &[],
        &["--inline"],
        &["--set-endianness=B"],
        &["--max-chunk-size=1"],
        &["--disable-bsdiff"],
    ];
    for (i, extra) in variants.iter().enumerate() {
        let d = f.base.join(format!("delta{i}"));
        delta(&f.repo, Some(&f.v1), &f.v2, &d, extra);
        let target = f.base.join(format!("target{i}"));
        std::fs::create_dir_all(&target).unwrap();
        let stats = apply(&opts(&f, &d, &target)).unwrap_or_else(|e| panic!("{extra:?}: {e:?}"));
        assert!(stats.objects_written >= 3, "{extra:?}: {stats:?}");
        assert!(stats.objects_reused >= 2, "{extra:?}: {stats:?}");
        assert_same_tree(&target, &reference);
    }
    // The active root was only read.
    let active_ref = f.base.join("active-ref");
    checkout(&f.repo, &f.v1, &active_ref);
    assert_same_tree(&f.active, &active_ref);
}

/// A from-scratch delta needs no from-root; meta-out then serves as from-meta
/// for the next delta, applied on top of the first target as the active root.
#[test]
fn from_scratch_then_chained_update() {
    let f = fixture("chain");
    let d0 = f.base.join("scratch");
    delta(&f.repo, None, &f.v1, &d0, &[]);
    let slot_a = f.base.join("slot-a");
    let meta_a = f.base.join("meta-a");
    std::fs::create_dir_all(&slot_a).unwrap();
    let o = Options {
        delta: &d0,
        target: &slot_a,
        from_root: None,
        from_meta: None,
        fallback_repo: None,
        meta_out: Some(&meta_a),
        trust: None,
    };
    apply(&o).unwrap();
    assert_same_tree(&slot_a, &f.active);

    let d1 = f.base.join("d1");
    delta(&f.repo, Some(&f.v1), &f.v2, &d1, &[]);
    let slot_b = f.base.join("slot-b");
    std::fs::create_dir_all(&slot_b).unwrap();
    let o = Options {
        delta: &d1,
        target: &slot_b,
        from_root: Some(&slot_a),
        from_meta: Some(&meta_a),
        fallback_repo: None,
        meta_out: None,
        trust: None,
    };
    apply(&o).unwrap();
    let reference = f.base.join("ref");
    checkout(&f.repo, &f.v2, &reference);
    assert_same_tree(&slot_b, &reference);
}

/// With keys configured: unsigned and wrongly signed deltas are refused before
/// anything is written; a properly signed one applies.
#[test]
fn signatures_are_enforced() {
    let f = fixture("signed");
    let d = f.base.join("d");
    delta(&f.repo, Some(&f.v1), &f.v2, &d, &[]);
    let (secret, public) = key_lines([3; 32]);
    let (_, other) = key_lines([4; 32]);
    let trust = Trust::from_key_files(&public, None).unwrap();
    let target = f.base.join("target");
    std::fs::create_dir_all(&target).unwrap();
    let mut o = opts(&f, &d, &target);
    o.trust = Some(&trust);
    assert!(matches!(apply(&o), Err(DeployError::Signature { .. })));
    assert_eq!(
        std::fs::read_dir(&target).unwrap().count(),
        0,
        "nothing written for an unsigned delta"
    );

    let sb = std::fs::read(d.join("superblock")).unwrap();
    let key = atomup_ostree::sign::parse_secret_key(&secret).unwrap();
    let dict =
        atomup_ostree::sign::add_signature(&[], &atomup_ostree::sign::sign(&key, &sb)).unwrap();
    std::fs::write(
        d.join("superblock"),
        atomup_ostree::sign::signed_superblock(&sb, &dict),
    )
    .unwrap();
    let wrong = Trust::from_key_files(&other, None).unwrap();
    o.trust = Some(&wrong);
    assert!(matches!(apply(&o), Err(DeployError::Signature { .. })));
    assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0);
    let revoked = Trust::from_key_files(&public, Some(&public)).unwrap();
    o.trust = Some(&revoked);
    assert!(matches!(apply(&o), Err(DeployError::Signature { .. })));
    o.trust = Some(&trust);
    apply(&o).unwrap();
}

/// Stale target content is removed, and a symlink planted in the target where
/// the commit has a directory is replaced, never followed out of the target.
#[test]
fn stale_entries_and_planted_symlinks() {
    let f = fixture("stale");
    let d = f.base.join("d");
    delta(&f.repo, Some(&f.v1), &f.v2, &d, &[]);
    let outside = f.base.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let target = f.base.join("target");
    write(&target.join("stale/deep/file"), b"x");
    write(&target.join("gone.txt"), b"x");
    symlink(&outside, target.join("usr")).unwrap();
    symlink(&outside, target.join("etc")).unwrap();
    apply(&opts(&f, &d, &target)).unwrap();
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "nothing written through the planted symlink"
    );
    let reference = f.base.join("ref");
    checkout(&f.repo, &f.v2, &reference);
    assert_same_tree(&target, &reference);
}

/// A modified file in the active root (an old object the delta relies on) is
/// detected by re-hashing, and the wrong from-commit is refused up front.
#[test]
fn corrupt_active_root_and_wrong_from_commit() {
    let f = fixture("corrupt");
    let d = f.base.join("d");
    delta(&f.repo, Some(&f.v1), &f.v2, &d, &[]);
    // keep.so is unchanged between v1 and v2: it is copied from the active root.
    std::fs::write(f.active.join("usr/lib/keep.so"), b"tampered").unwrap();
    let target = f.base.join("target");
    std::fs::create_dir_all(&target).unwrap();
    let err = apply(&opts(&f, &d, &target)).unwrap_err();
    assert!(matches!(err, DeployError::Corrupt { .. }), "{err:?}");
    assert_eq!(
        std::fs::read(f.active.join("usr/lib/keep.so")).unwrap(),
        b"tampered",
        "active root untouched"
    );

    let other_meta = f.base.join("empty-meta");
    std::fs::create_dir_all(&other_meta).unwrap();
    let mut o = opts(&f, &d, &target);
    o.from_meta = Some(&other_meta);
    assert!(matches!(apply(&o), Err(DeployError::FromMismatch { .. })));
    o.from_meta = None;
    o.from_root = None;
    assert!(matches!(apply(&o), Err(DeployError::NeedFrom { .. })));
}

/// A file above the fallback size is not in any part: it is imported from the
/// archive repo's `.filez` (raw deflate), verified, and placed.
#[test]
fn fallback_object_from_archive_repo() {
    let f = fixture("fallback");
    let t3 = f.base.join("t3");
    checkout(&f.repo, &f.v2, &t3);
    write(&t3.join("usr/share/big.bin"), &pseudo_random(1_500_000, 9));
    let v3 = commit(&f.repo, &t3, "v3");
    let d = f.base.join("d");
    // Sizes in MB: the 1.5 MB file becomes a fallback object.
    delta(&f.repo, Some(&f.v2), &v3, &d, &["--min-fallback-size=1"]);
    let info = atomup_deploy::show(&d).unwrap();
    assert_eq!(info.fallbacks.len(), 1);
    let active = f.base.join("active2");
    checkout(&f.repo, &f.v2, &active);
    let target = f.base.join("target");
    std::fs::create_dir_all(&target).unwrap();
    let mut o = Options {
        delta: &d,
        target: &target,
        from_root: Some(&active),
        from_meta: Some(&f.repo),
        fallback_repo: None,
        meta_out: None,
        trust: None,
    };
    assert!(matches!(
        apply(&o),
        Err(DeployError::NeedFallbackRepo { .. })
    ));
    o.fallback_repo = Some(&f.repo);
    apply(&o).unwrap();
    let reference = f.base.join("ref");
    checkout(&f.repo, &v3, &reference);
    assert_same_tree(&target, &reference);
}

fn xattrs_of(p: &Path) -> Vec<(String, Vec<u8>)> {
    let mut names = vec![0u8; 4096];
    let n = rustix::fs::llistxattr(p, &mut names[..]).unwrap();
    let mut out: Vec<(String, Vec<u8>)> = names[..n]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|name| {
            let name = String::from_utf8(name.to_vec()).unwrap();
            let mut v = vec![0u8; 4096];
            let k = rustix::fs::lgetxattr(p, name.as_str(), &mut v[..]).unwrap();
            v.truncate(k);
            (name, v)
        })
        .collect();
    out.sort();
    out
}

/// Xattrs on files and directories (set in non-sorted order) are written and
/// verified, both for objects from the delta and objects reused from the
/// active root.
#[test]
fn xattrs_on_files_and_directories() {
    let base = scratch("xattrs");
    let _cleanup = Cleanup(base.clone());
    let t1 = base.join("t1");
    write(&t1.join("d/x"), b"x\n");
    write(&t1.join("d/keep"), b"keep\n");
    let set = |p: &Path, n: &str, v: &[u8]| {
        rustix::fs::lsetxattr(p, n, v, rustix::fs::XattrFlags::empty()).unwrap()
    };
    for f in ["d/x", "d/keep"] {
        set(&t1.join(f), "user.b", b"2");
        set(&t1.join(f), "user.a", b"1");
    }
    set(&t1.join("d"), "user.z", b"z");
    set(&t1.join("d"), "user.c", b"c");
    let repo = base.join("repo");
    ostree(&[
        &format!("--repo={}", repo.display()),
        "init",
        "--mode=archive",
    ]);
    let v1 = commit(&repo, &t1, "v1");
    std::fs::write(t1.join("d/x"), b"x changed\n").unwrap();
    let v2 = commit(&repo, &t1, "v2");
    let (s, d) = (base.join("scratch"), base.join("d"));
    delta(&repo, None, &v1, &s, &[]);
    delta(&repo, Some(&v1), &v2, &d, &[]);
    let (a, b, meta) = (base.join("a"), base.join("b"), base.join("meta"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    apply(&Options {
        delta: &s,
        target: &a,
        from_root: None,
        from_meta: None,
        fallback_repo: None,
        meta_out: Some(&meta),
        trust: None,
    })
    .unwrap();
    apply(&Options {
        delta: &d,
        target: &b,
        from_root: Some(&a),
        from_meta: Some(&meta),
        fallback_repo: None,
        meta_out: None,
        trust: None,
    })
    .unwrap();
    let reference = base.join("ref");
    checkout(&repo, &v2, &reference);
    assert_same_tree(&b, &reference);
    for p in ["d", "d/x", "d/keep"] {
        assert_eq!(xattrs_of(&b.join(p)), xattrs_of(&reference.join(p)), "{p}");
        assert_eq!(xattrs_of(&b.join(p)).len(), 2, "{p}");
    }
}

/// An unchanged object that was modified in the active root is taken whole
/// from the fallback repo when one is given (and is an error without one,
/// see `corrupt_active_root_and_wrong_from_commit`).
#[test]
fn modified_active_file_recovered_from_fallback_repo() {
    let f = fixture("recover");
    let d = f.base.join("d");
    delta(&f.repo, Some(&f.v1), &f.v2, &d, &[]);
    std::fs::write(f.active.join("usr/lib/keep.so"), b"edited at run time").unwrap();
    let target = f.base.join("target");
    std::fs::create_dir_all(&target).unwrap();
    let mut o = opts(&f, &d, &target);
    o.fallback_repo = Some(&f.repo);
    apply(&o).unwrap();
    let reference = f.base.join("ref");
    checkout(&f.repo, &f.v2, &reference);
    assert_same_tree(&target, &reference);
}

/// The seed copies the whole old tree before the new one is known: a file
/// edited in the active root that the new commit deletes is simply not
/// carried over, and does not block the update.
#[test]
fn edited_active_file_that_the_new_commit_deletes_does_not_block_the_update() {
    let f = fixture("edited-gone");
    let d = f.base.join("d");
    delta(&f.repo, Some(&f.v1), &f.v2, &d, &[]);
    // gone.txt is in v1 only.
    std::fs::write(f.active.join("gone.txt"), b"edited at run time").unwrap();
    let target = f.base.join("target");
    std::fs::create_dir_all(&target).unwrap();
    apply(&opts(&f, &d, &target)).unwrap();
    let reference = f.base.join("ref");
    checkout(&f.repo, &f.v2, &reference);
    assert_same_tree(&target, &reference);
}

/// Entries that change type between commits (file to directory, directory to
/// file, symlink to file, directory to symlink) come out right whether the
/// target starts empty, holds the old tree, or already holds the new one.
#[test]
fn type_changes_into_empty_old_and_new_targets() {
    let base = scratch("types");
    let _cleanup = Cleanup(base.clone());
    let repo = base.join("repo");
    ostree(&[
        &format!("--repo={}", repo.display()),
        "init",
        "--mode=archive",
    ]);
    let (t1, t2) = (base.join("t1"), base.join("t2"));
    // At the top (a directory the seed did not create) and one level down
    // (one it did).
    for top in [t1.clone(), t1.join("sub")] {
        write(&top.join("becomes-dir"), b"was a file\n");
        write(&top.join("becomes-file/inner"), b"was in a directory\n");
        write(&top.join("becomes-link/inner"), b"was in a directory too\n");
        write(&top.join("usr/share/same"), &pseudo_random(5_000, 7));
        symlink("usr", top.join("link-becomes-file")).unwrap();
    }
    for top in [t2.clone(), t2.join("sub")] {
        write(&top.join("becomes-dir/now-inside"), b"was a file\n");
        write(&top.join("becomes-file"), b"was a directory\n");
        symlink("usr/share", top.join("becomes-link")).unwrap();
        write(&top.join("usr/share/same"), &pseudo_random(5_000, 7));
        write(&top.join("link-becomes-file"), b"was a symlink\n");
    }
    let v1 = commit(&repo, &t1, "v1");
    let v2 = commit(&repo, &t2, "v2");
    let active = base.join("active");
    checkout(&repo, &v1, &active);
    let reference = base.join("ref");
    checkout(&repo, &v2, &reference);
    let d = base.join("d");
    delta(&repo, Some(&v1), &v2, &d, &[]);

    let empty = base.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let old = base.join("old");
    checkout(&repo, &v1, &old);
    let new = base.join("new");
    checkout(&repo, &v2, &new);
    for target in [&empty, &old, &new] {
        let o = Options {
            delta: &d,
            target,
            from_root: Some(&active),
            from_meta: Some(&repo),
            fallback_repo: None,
            meta_out: None,
            trust: None,
        };
        apply(&o).unwrap_or_else(|e| panic!("{}: {e:?}", target.display()));
        assert_same_tree(target, &reference);
    }
}
