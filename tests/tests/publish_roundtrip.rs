//! `atomup-publish init/commit/delta` against the real `ostree` CLI as oracle:
//! upstream accepts our repository (fsck), gives back the committed tree
//! (checkout), computes the same commit id for the same tree, and applies our
//! static deltas (apply-offline); the device engine applies them too.

use std::fs;
use std::os::unix::fs::chown;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use atomup_tests::ostree_fixture::{
    assert_same_tree, pseudo_bytes, run_ok, Apply, Keys, Repo, ScratchDir, TreeBuilder,
};
use atomup_tests::{require_tool, workspace_bin};

const TS: &str = "2024-01-01T00:00:00Z";

fn publish(args: &[&str]) -> Output {
    Command::new(workspace_bin("atomup-publish"))
        .args(args)
        .output()
        .expect("spawning atomup-publish")
}

fn publish_ok(args: &[&str]) -> Output {
    let out = publish(args);
    assert!(
        out.status.success(),
        "atomup-publish {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Our commit of `tree` onto `branch` (forced root ownership); returns the id.
fn our_commit(repo: &Path, tree: &Path, branch: &str, subject: &str) -> String {
    let out = publish_ok(&[
        "commit",
        "--repo",
        s(repo),
        "--tree",
        s(tree),
        "--branch",
        branch,
        "--subject",
        subject,
        "--timestamp",
        TS,
        "--owner-uid",
        "0",
        "--owner-gid",
        "0",
        "--quiet",
    ]);
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn ostree(repo: &Path) -> Command {
    let mut c = Command::new("ostree");
    c.arg(format!("--repo={}", repo.display()));
    c
}

fn set_xattr(path: &Path) {
    let ok = Command::new("python3")
        .args([
            "-c",
            "import os,sys; os.setxattr(sys.argv[1], 'user.atomup', b'v1')",
        ])
        .arg(path)
        .status()
        .unwrap();
    assert!(
        ok.success(),
        "setting a user xattr failed on the scratch filesystem"
    );
}

/// A root-like tree: setuid binary, nested dirs with odd modes, an empty
/// dir, symlinks (relative and absolute), a hard link, a large text file.
fn base_tree(root: PathBuf) -> TreeBuilder {
    let t = TreeBuilder::new(root);
    t.dir("", 0o755)
        .file("usr/bin/tool", &pseudo_bytes(1, 40_000, false), 0o4755)
        .file(
            "usr/lib/libfoo.so.1.2.3",
            &pseudo_bytes(2, 120_000, false),
            0o644,
        )
        .symlink("usr/lib/libfoo.so.1", "libfoo.so.1.2.3")
        .file("etc/config.txt", &pseudo_bytes(3, 200_000, true), 0o600)
        .file("etc/motd", b"hello\n", 0o644)
        .symlink("bin", "usr/bin")
        .symlink("etc/abs", "/etc/motd")
        .dir("var/empty", 0o700)
        .dir("tmp", 0o1777)
        .file(
            "usr/share/doc/a/copyright",
            &pseudo_bytes(4, 5_000, true),
            0o644,
        );
    fs::hard_link(t.root.join("etc/motd"), t.root.join("etc/motd.hardlink")).unwrap();
    t
}

/// v2: an edited config (bsdiff by path), a library renamed to a new version
/// with small changes (bsdiff by version-stripped name), a new file, a
/// removed file, a mode change and a retargeted symlink.
fn change_tree(t: &TreeBuilder) {
    let mut cfg = fs::read(t.root.join("etc/config.txt")).unwrap();
    cfg.splice(1000..1000, b"inserted line\n".iter().copied());
    cfg[150_000] = b'Z';
    let mut lib = fs::read(t.root.join("usr/lib/libfoo.so.1.2.3")).unwrap();
    lib[5000..5100].copy_from_slice(&[7u8; 100]);
    lib.extend_from_slice(b"new tail");
    t.file("etc/config.txt", &cfg, 0o600)
        .remove("usr/lib/libfoo.so.1.2.3")
        .file("usr/lib/libfoo.so.1.2.4", &lib, 0o644)
        .symlink("usr/lib/libfoo.so.1", "libfoo.so.1.2.4")
        .file("usr/bin/new", &pseudo_bytes(5, 30_000, false), 0o755)
        .remove("usr/share/doc/a/copyright")
        .file("etc/motd", b"hello\n", 0o640);
}

/// Our commit is byte-exact: upstream `ostree commit` of the same tree with
/// the same subject/timestamp/owners yields the same id; fsck and checkout
/// accept it; a second commit records the first as parent and reuses objects.
#[test]
fn commit_is_byte_exact_with_upstream_and_checks_out() {
    require_tool("ostree");
    let dir = ScratchDir::new("publish-commit");
    let t = base_tree(dir.join("tree"));
    // A user xattr must survive and hash as upstream hashes it.
    set_xattr(&t.root.join("etc/motd"));
    let ours = dir.join("ours");
    publish_ok(&["init", "--repo", s(&ours)]);
    assert!(ours.join("atomup").is_dir());
    let id = our_commit(&ours, &t.root, "os/main", "v1");
    let upstream = Repo::init(dir.join("upstream"), "archive");
    let up_id = upstream.commit(&t.root, "v1");
    // Upstream used branch test/main: recommit ours on the same branch name.
    let id_same_branch = our_commit(&ours, &t.root, "test/main", "v1");
    assert_eq!(
        id_same_branch, up_id,
        "commit ids differ from upstream for the same tree"
    );
    assert_ne!(id, id_same_branch, "the ref binding is part of the commit");
    run_ok(ostree(&ours).args(["fsck"]));
    let co = dir.join("co");
    run_ok(ostree(&ours).args(["checkout", &id]).arg(&co));
    assert_same_tree(&co, &t.root);
    let got = Command::new("python3")
        .args([
            "-c",
            "import os,sys; print(os.getxattr(sys.argv[1], 'user.atomup').decode())",
        ])
        .arg(co.join("etc/motd"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "v1");

    // Second commit on the same branch: parent recorded, nothing rewritten.
    let before = fs::metadata(ours.join(format!("objects/{}/{}.commit", &id[..2], &id[2..])))
        .unwrap()
        .modified()
        .unwrap();
    let out = publish_ok(&[
        "commit",
        "--repo",
        s(&ours),
        "--tree",
        s(&t.root),
        "--branch",
        "os/main",
        "-s",
        "v1 again",
        "--timestamp",
        "1704067201",
        "--owner-uid",
        "0",
        "--owner-gid",
        "0",
    ]);
    let id2 = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(
        summary.contains(" 1 new objects"),
        "only the commit is new: {summary}"
    );
    let parent = run_ok(ostree(&ours).args(["rev-parse", &format!("{id2}^")]));
    assert_eq!(String::from_utf8_lossy(&parent.stdout).trim(), id);
    let after = fs::metadata(ours.join(format!("objects/{}/{}.commit", &id[..2], &id[2..])))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(before, after);
}

/// Owners are kept unless forced; a tarball of the tree (numeric owners,
/// xattrs in PAX headers) commits to the very same id as the directory.
#[test]
fn owners_kept_and_tarball_equals_directory() {
    require_tool("ostree");
    require_tool("tar");
    let dir = ScratchDir::new("publish-tar");
    let t = base_tree(dir.join("tree"));
    t.file("home/user/notes", b"mine\n", 0o600);
    chown(t.root.join("home/user"), Some(1000), Some(1000)).unwrap();
    set_xattr(&t.root.join("etc/motd"));
    chown(t.root.join("home/user/notes"), Some(1000), Some(100)).unwrap();
    let repo = dir.join("repo");
    publish_ok(&["init", "--repo", s(&repo)]);
    let from_dir = publish_ok(&[
        "commit",
        "--repo",
        s(&repo),
        "--tree",
        s(&t.root),
        "--branch",
        "a",
        "--timestamp",
        TS,
        "-q",
    ]);
    let from_dir = String::from_utf8(from_dir.stdout)
        .unwrap()
        .trim()
        .to_owned();
    let co = dir.join("co");
    run_ok(ostree(&repo).args(["checkout", &from_dir]).arg(&co));
    assert_same_tree(&co, &t.root);

    let tarball = dir.join("tree.tar.gz");
    run_ok(
        Command::new("tar")
            .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-czf"])
            .arg(&tarball)
            .arg("-C")
            .arg(&t.root)
            .arg("."),
    );
    let from_tar = publish_ok(&[
        "commit",
        "--repo",
        s(&repo),
        "--tarball",
        s(&tarball),
        "--branch",
        "a",
        "--timestamp",
        TS,
        "-q",
    ]);
    let from_tar = String::from_utf8(from_tar.stdout)
        .unwrap()
        .trim()
        .to_owned();
    // Same tree -> same root dirtree/dirmeta; only the parent differs.
    let show = |id: &str| {
        let out = run_ok(ostree(&repo).args(["ls", "-R", "-C", id, "/"]));
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(show(&from_tar), show(&from_dir));
    run_ok(ostree(&repo).args(["fsck"]));
}

/// Device nodes and FIFOs cannot be stored: refused by default, skipped on request.
#[test]
fn device_files_refused_or_skipped() {
    let dir = ScratchDir::new("publish-dev");
    let t = TreeBuilder::new(dir.join("tree"));
    t.file("a", b"a", 0o644);
    run_ok(Command::new("mkfifo").arg(t.root.join("fifo")));
    let repo = dir.join("repo");
    publish_ok(&["init", "--repo", s(&repo)]);
    let out = publish(&[
        "commit",
        "--repo",
        s(&repo),
        "--tree",
        s(&t.root),
        "--branch",
        "a",
        "-q",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/fifo"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = publish_ok(&[
        "commit",
        "--repo",
        s(&repo),
        "--tree",
        s(&t.root),
        "--branch",
        "a",
        "--no-devices",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 device files skipped"));
}

/// Our `--ostree-compatible` deltas (from a previous commit, from scratch,
/// split in many parts) are applied by upstream `ostree static-delta apply-offline` into a bare-user
/// repo; fsck passes and checkout equals the source tree. The device engine
/// (`atomup delta apply`) builds the same tree from the same delta.
#[test]
fn deltas_apply_offline_upstream_and_on_device_engine() {
    require_tool("ostree");
    let dir = ScratchDir::new("publish-delta");
    let t1 = base_tree(dir.join("v1"));
    let t2 = base_tree(dir.join("v2"));
    change_tree(&t2);
    let repo = dir.join("repo");
    publish_ok(&["init", "--repo", s(&repo)]);
    let v1 = our_commit(&repo, &t1.root, "os/main", "v1");
    let v2 = our_commit(&repo, &t2.root, "os/main", "v2");

    let out = publish_ok(&[
        "delta",
        "--repo",
        s(&repo),
        "--to",
        "os/main",
        "--from-last",
        "1",
        "--scratch",
        "--ostree-compatible",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let dirs: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(dirs.len(), 2, "{stderr}");
    assert!(
        stderr.contains("(2 bsdiff"),
        "config.txt by path and libfoo by version-stripped name: {stderr}"
    );

    let apply_check = |delta: &Path, base: Option<&str>, name: &str| {
        let bare = dir.join(name);
        run_ok(ostree(&bare).args(["init", "--mode=bare-user"]));
        if let Some(b) = base {
            run_ok(ostree(&bare).arg("pull-local").arg(&repo).arg(b));
        }
        run_ok(
            ostree(&bare)
                .args(["static-delta", "apply-offline"])
                .arg(delta),
        );
        run_ok(ostree(&bare).args(["fsck"]));
        let co = dir.join(format!("{name}-co"));
        run_ok(ostree(&bare).args(["checkout", &v2]).arg(&co));
        assert_same_tree(&co, &t2.root);
    };
    apply_check(&repo.join(&dirs[0]), Some(&v1), "bare-from");
    apply_check(&repo.join(&dirs[1]), None, "bare-scratch");

    // Many small parts with a small dictionary still apply.
    let out = publish_ok(&[
        "delta",
        "--repo",
        s(&repo),
        "--to",
        &v2,
        "--from",
        &v1,
        "--max-part-size",
        "1",
        "--xz-dict",
        "65536",
        "--ostree-compatible",
    ]);
    let parts = fs::read_dir(repo.join(&dirs[0])).unwrap().count() - 1;
    assert!(
        parts >= 5,
        "expected several parts, got {parts}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    apply_check(&repo.join(&dirs[0]), Some(&v1), "bare-parts");

    // Regenerating with fewer parts removes the stale part files.
    publish_ok(&[
        "delta",
        "--repo",
        s(&repo),
        "--to",
        &v2,
        "--from",
        &v1,
        "-q",
    ]);
    let files = fs::read_dir(repo.join(&dirs[0])).unwrap().count();
    assert_eq!(files, 2, "superblock + one part after regenerating");

    // The device engine, with the superblock signed by `atomup-publish sign`:
    // old content read from a checkout of v1, signature checked.
    let keys = Keys::generate(&dir.join("keys"), "vendor");
    keys.sign_delta(&repo.join(&dirs[0]));
    let active = dir.join("active");
    run_ok(ostree(&repo).args(["checkout", &v1]).arg(&active));
    let target = dir.join("target");
    fs::create_dir(&target).unwrap();
    Apply {
        delta: repo.join(&dirs[0]),
        to: target.clone(),
        from_root: Some(active),
        from_meta: Some(repo.clone()),
        trusted: Some(keys.public.clone()),
        ..Default::default()
    }
    .run_ok();
    assert_same_tree(&target, &t2.root);
    // Upstream still applies the signed (OSTSGNDT) superblock.
    apply_check(&repo.join(&dirs[0]), Some(&v1), "bare-signed");
}

/// Bad input is refused with a clear error, not a panic: unknown revs, a
/// directory that is not a repo, an invalid ref, a missing tree, flags that
/// contradict each other.
#[test]
fn bad_input_is_refused_cleanly() {
    let dir = ScratchDir::new("publish-bad");
    let repo = dir.join("repo");
    publish_ok(&["init", "--repo", s(&repo)]);
    let missing = dir.join("missing");
    let cases: [&[&str]; 6] = [
        &["delta", "--repo", s(&repo), "--to", "nope", "--scratch"],
        &[
            "delta",
            "--repo",
            s(&repo),
            "--to",
            "nope",
            "--scratch",
            "--gzip-rebuild",
            "--ostree-compatible",
        ],
        &["delta", "--repo", s(dir.path()), "--to", "x", "--scratch"],
        &[
            "commit",
            "--repo",
            s(&repo),
            "--tree",
            s(&missing),
            "--branch",
            "a",
        ],
        &[
            "commit",
            "--repo",
            s(&repo),
            "--tree",
            s(dir.path()),
            "--branch",
            "../x",
        ],
        &["init", "--repo", s(&repo)],
    ];
    for args in cases {
        let out = publish(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.starts_with("error: ") && !err.contains("panicked"),
            "{args:?}: {err}"
        );
    }
}

/// Which of `security.*` / `user.*` xattrs the scratch file system keeps, and
/// whether it lists them in an order other than sorted (so the test below
/// can tell "sorted" from "listxattr order"). Panics, never skips silently.
fn xattr_support(dir: &Path) -> (bool, bool) {
    let probe = dir.join("xattr-probe");
    fs::write(&probe, b"x").unwrap();
    let out = Command::new("python3")
        .args([
            "-c",
            "import os,sys\n\
             p=sys.argv[1]\n\
             ok={}\n\
             for n in ['user.zz','security.zz','user.aa']:\n\
             \ttry:\n\t\tos.setxattr(p,n,b'1'); ok[n]=1\n\
             \texcept OSError: ok[n]=0\n\
             names=os.listxattr(p)\n\
             print(ok['user.zz'] and ok['user.aa'], ok['security.zz'], int(names!=sorted(names)))",
        ])
        .arg(&probe)
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    let v: Vec<&str> = s.split_whitespace().collect();
    assert_eq!(v.len(), 3, "probing xattrs failed: {s}");
    assert_eq!(
        v[0], "1",
        "the test scratch file system refuses user.* xattrs: commit parity with several xattrs cannot be tested here"
    );
    (v[1] == "1", v[2] == "1")
}

/// Regression: a file with several `security.*` and `user.*` xattrs, one of
/// them with an empty value, set in an order that is not sorted, gets the
/// same commit id from `atomup-publish commit` as from upstream `ostree
/// commit`. libglnx (2022.7) sorts xattrs by name and drops empty values;
/// we kept the empty one, so the ids differed.
#[test]
fn commit_id_matches_upstream_with_several_xattrs() {
    require_tool("ostree");
    let dir = ScratchDir::new("publish-xattrs");
    let (security, unsorted) = xattr_support(dir.path());
    eprintln!("scratch fs: security.* xattrs {security}, listxattr order unsorted {unsorted}");
    let t = base_tree(dir.join("tree"));
    let mut attrs = vec![
        ("user.zeta", "7a"),
        ("user.alpha", "61"),
        ("user.empty", ""),
        ("user.mid", "6d00ff"),
    ];
    if security {
        attrs.insert(1, ("security.beta", "62"));
        attrs.push((
            "security.capability",
            "0100000200200000000000000000000000000000",
        ));
    }
    // Values in hex: they may hold NUL bytes.
    let script = "import os,sys\nfor a in sys.argv[2:]:\n\tn,v=a.split('=',1); os.setxattr(sys.argv[1],n,bytes.fromhex(v))";
    for file in ["usr/bin/tool", "etc/config.txt", "usr/lib"] {
        let mut c = Command::new("python3");
        c.args(["-c", script]).arg(t.root.join(file));
        for (n, v) in &attrs {
            c.arg(format!("{n}={v}"));
        }
        run_ok(&mut c);
    }
    let ours = dir.join("ours");
    publish_ok(&["init", "--repo", s(&ours)]);
    let id = our_commit(&ours, &t.root, "test/main", "v1");
    let upstream = Repo::init(dir.join("upstream"), "archive");
    let up_id = upstream.commit(&t.root, "v1");
    assert_eq!(
        id, up_id,
        "commit ids differ from upstream with several xattrs"
    );
    run_ok(ostree(&ours).args(["fsck"]));
}
