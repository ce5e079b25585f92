//! Format compliance of every `atomup-publish delta` layout with upstream:
//! parts with ARM64 and x86 BCJ blocks, delta-filtered relocation blocks,
//! section-split ELF files rebuilt by `w` ops, files copied from an old
//! object, bsdiff against a renamed and edited old file, `--best`,
//! `--device-ram`, many small parts. Each delta is applied by Debian's
//! `ostree static-delta apply-offline` (liblzma 5.4) into a bare-user repo
//! (fsck, checkout == tree) and by the device engine (`atomup delta apply`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use atomup_tests::ostree_fixture::{
    assert_same_tree, pseudo_bytes, run_ok, Apply, ScratchDir, TreeBuilder,
};
use atomup_tests::{require_tool, workspace_bin};

const TS: &str = "2024-01-01T00:00:00Z";

fn publish_ok(args: &[&str]) -> Output {
    let out = Command::new(workspace_bin("atomup-publish"))
        .args(args)
        .output()
        .expect("spawning atomup-publish");
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

fn ostree(repo: &Path) -> Command {
    let mut c = Command::new("ostree");
    c.arg(format!("--repo={}", repo.display()));
    c
}

fn commit(repo: &Path, tree: &Path, subject: &str) -> String {
    let out = publish_ok(&[
        "commit",
        "--repo",
        s(repo),
        "--tree",
        s(tree),
        "--branch",
        "os/main",
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

/// Real ELF files of both BCJ machines: the aarch64 C library the cross
/// toolchain ships (bootstrap installs libc6-dev-arm64-cross) and host
/// x86-64 programs. Missing ones fail the test: never skipped.
fn elf(name: &str) -> Vec<u8> {
    let p = PathBuf::from(name);
    fs::read(&p).unwrap_or_else(|e| {
        panic!(
            "{} is needed as a real ELF fixture ({e}): run ./bootstrap",
            p.display()
        )
    })
}

const ARM_LIBC: &str = "/usr/aarch64-linux-gnu/lib/libc.so.6";
const ARM_LIBM: &str = "/usr/aarch64-linux-gnu/lib/libm.so.6";
const ARM_RESOLV: &str = "/usr/aarch64-linux-gnu/lib/libresolv.so.2";
const X86_LS: &str = "/bin/ls";
const X86_TRUE: &str = "/bin/true";

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = Command::new("gzip")
        .args(["-9n", "-c"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawning gzip");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    out.stdout
}

/// v1: aarch64 libraries, an x86 program, text, a gzip file.
fn v1(root: PathBuf) -> TreeBuilder {
    let t = TreeBuilder::new(root);
    t.dir("", 0o755)
        .file("lib/libc.so.6", &elf(ARM_LIBC), 0o755)
        .file("lib/libm.so.6", &elf(ARM_LIBM), 0o755)
        .file("usr/bin/ls", &elf(X86_LS), 0o755)
        .file("etc/services", &pseudo_bytes(11, 60_000, true), 0o644)
        .file(
            "usr/share/notes.txt",
            &pseudo_bytes(12, 30_000, true),
            0o644,
        )
        .file(
            "usr/share/doc/changelog.gz",
            &gzip(&pseudo_bytes(13, 40_000, true)),
            0o644,
        );
    t
}

/// v2: libm edited in place (bsdiff by path), a new aarch64 library and x86
/// program (BCJ literals), ls copied to a new path with another mode (copy
/// from the old object), notes.txt moved to another directory under another
/// name and edited (bsdiff against a base found by content).
fn v2(t: &TreeBuilder) {
    let mut libm = elf(ARM_LIBM);
    let at = libm.len() / 3;
    for b in &mut libm[at..at + 64] {
        *b ^= 0x5A;
    }
    let mut notes = fs::read(t.root.join("usr/share/notes.txt")).unwrap();
    notes.splice(1000..1000, b"an inserted paragraph\n".iter().copied());
    t.file("lib/libm.so.6", &libm, 0o755)
        .file("lib/libresolv.so.2", &elf(ARM_RESOLV), 0o755)
        .file("usr/bin/true", &elf(X86_TRUE), 0o755)
        .file("usr/libexec/ls-copy", &elf(X86_LS), 0o700)
        .remove("usr/share/notes.txt")
        .file("opt/readme-moved", &notes, 0o644);
}

/// The filter chains of a part's xz blocks, as `xz --robot -lvv` lists them.
fn part_filters(part: &Path, scratch: &Path) -> String {
    let raw = fs::read(part).unwrap();
    assert_eq!(raw[0], b'x', "an xz part");
    let xz = scratch.join("part.xz");
    fs::write(&xz, &raw[1..]).unwrap();
    let out = run_ok(Command::new("xz").args(["--robot", "-lvv"]).arg(&xz));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn apply_upstream(
    dir: &Path,
    repo: &Path,
    delta: &Path,
    from: Option<&str>,
    to: &str,
    tree: &Path,
) {
    let bare = dir.join("bare");
    let co = dir.join("co");
    let _ = fs::remove_dir_all(&bare);
    let _ = fs::remove_dir_all(&co);
    run_ok(ostree(&bare).args(["init", "--mode=bare-user"]));
    if let Some(f) = from {
        run_ok(ostree(&bare).arg("pull-local").arg(repo).arg(f));
    }
    run_ok(
        ostree(&bare)
            .args(["static-delta", "apply-offline"])
            .arg(delta),
    );
    run_ok(ostree(&bare).args(["fsck"]));
    run_ok(ostree(&bare).args(["checkout", to]).arg(&co));
    assert_same_tree(&co, tree);
}

fn apply_device(dir: &Path, repo: &Path, delta: &Path, active: Option<&Path>, tree: &Path) {
    let target = dir.join("target");
    let _ = fs::remove_dir_all(&target);
    fs::create_dir(&target).unwrap();
    Apply {
        delta: delta.to_path_buf(),
        to: target.clone(),
        from_root: active.map(Path::to_path_buf),
        from_meta: active.map(|_| repo.to_path_buf()),
        ..Default::default()
    }
    .run_ok();
    assert_same_tree(&target, tree);
}

/// Every delta layout `atomup-publish delta` makes is applied by upstream's
/// apply-offline and by the device engine, and gives back the tree: the
/// default (BCJ ARM64 + x86, delta filter, section-split ELF, copies,
/// content-matched bsdiff), `--best`, `--device-ram 16M`, a tiny window with
/// many small parts, and from-scratch deltas of each.
#[test]
fn every_delta_layout_applies_upstream_and_on_device() {
    require_tool("ostree");
    require_tool("xz");
    require_tool("gzip");
    let dir = ScratchDir::new("delta-formats");
    let t1 = v1(dir.join("v1"));
    let t2 = v1(dir.join("v2"));
    v2(&t2);
    let repo = dir.join("repo");
    publish_ok(&["init", "--repo", s(&repo)]);
    let c1 = commit(&repo, &t1.root, "v1");
    let c2 = commit(&repo, &t2.root, "v2");
    let active = dir.join("active");
    run_ok(ostree(&repo).args(["checkout", &c1]).arg(&active));

    let modes: [&[&str]; 4] = [
        &[],
        &["--best"],
        &["--device-ram", "16M"],
        &["--xz-dict", "64K", "--max-part-size", "300K", "--jobs", "1"],
    ];
    for opts in modes {
        let mut args = vec![
            "delta",
            "--repo",
            s(&repo),
            "--to",
            &c2,
            "--from",
            &c1,
            "--scratch",
            "--ostree-compatible",
        ];
        args.extend_from_slice(opts);
        let out = publish_ok(&args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let dirs: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        assert_eq!(dirs.len(), 2, "{opts:?}: {stderr}");
        let from_delta = repo.join(&dirs[0]);
        // The layout under test is really there.
        let first = stderr.lines().find(|l| l.starts_with("delta ")).unwrap();
        assert!(
            first.contains(" 1 copied"),
            "{opts:?}: ls-copy is a copy: {first}"
        );
        assert!(
            !first.contains("(0 bsdiff") && !first.contains("(1 bsdiff"),
            "{opts:?}: libm and the moved notes are patched: {first}"
        );
        // The from-scratch delta ships every file literally: all three kinds
        // of filtered blocks are in it.
        let mut filters = String::new();
        for e in fs::read_dir(repo.join(&dirs[1])).unwrap() {
            let e = e.unwrap();
            if e.file_name() != "superblock" {
                filters.push_str(&part_filters(&e.path(), dir.path()));
            }
        }
        for f in ["arm64", "x86", "delta"] {
            assert!(filters.contains(f), "{opts:?}: no {f} block in\n{filters}");
        }
        if opts.contains(&"--max-part-size") {
            assert!(
                fs::read_dir(&from_delta).unwrap().count() > 3,
                "several parts"
            );
        }
        apply_upstream(dir.path(), &repo, &from_delta, Some(&c1), &c2, &t2.root);
        apply_device(dir.path(), &repo, &from_delta, Some(&active), &t2.root);
        let scratch = repo.join(&dirs[1]);
        apply_upstream(dir.path(), &repo, &scratch, None, &c2, &t2.root);
        apply_device(dir.path(), &repo, &scratch, None, &t2.root);
    }
}

/// The deltas of one `--from-last K` run share their work: the second and
/// later deltas reuse sketches, patches or blocks the first computed, and
/// still apply.
#[test]
fn from_last_reuses_work_across_deltas() {
    require_tool("ostree");
    require_tool("gzip");
    let dir = ScratchDir::new("delta-reuse");
    let t = v1(dir.join("tree"));
    let repo = dir.join("repo");
    publish_ok(&["init", "--repo", s(&repo)]);
    let c1 = commit(&repo, &t.root, "v1");
    v2(&t);
    let c2 = commit(&repo, &t.root, "v2");
    // v3 edits libm again: both deltas diff it, and both need the sketches
    // of the old files v1 and v2 share.
    let mut libm = fs::read(t.root.join("lib/libm.so.6")).unwrap();
    let at = libm.len() / 2;
    libm[at..at + 16].copy_from_slice(b"release three!!!");
    t.file("lib/libm.so.6", &libm, 0o755)
        .file("etc/motd", b"release 3\n", 0o644);
    let c3 = commit(&repo, &t.root, "v3");
    let out = publish_ok(&["delta", "--repo", s(&repo), "--to", &c3, "--from-last", "2"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let reused: Vec<u64> = stderr
        .lines()
        .filter(|l| l.starts_with("delta "))
        .map(|l| {
            let (head, _) = l.split_once(" results reused").expect("summary line");
            head.rsplit(' ').next().unwrap().parse().unwrap()
        })
        .collect();
    assert_eq!(reused.len(), 2, "{stderr}");
    assert!(reused[1] > 0, "the second delta reused nothing: {stderr}");
    let dirs: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    apply_upstream(
        dir.path(),
        &repo,
        &repo.join(&dirs[0]),
        Some(&c2),
        &c3,
        &t.root,
    );
    apply_upstream(
        dir.path(),
        &repo,
        &repo.join(&dirs[1]),
        Some(&c1),
        &c3,
        &t.root,
    );
}

/// A changelog-like text: entries of words, as Debian's changelogs are.
fn changelog(seed: u64, entries: usize) -> Vec<u8> {
    let words = pseudo_bytes(seed, entries * 200, true);
    let mut t = Vec::new();
    for (i, w) in words.chunks(200).enumerate() {
        t.extend_from_slice(format!("pkg (1.{i}-1) bookworm; urgency=medium\n\n  * ").as_bytes());
        t.extend_from_slice(w);
        t.extend_from_slice(b"\n\n -- Maintainer <m@example.org>  Mon, 01 Jan 2024\n\n");
    }
    t
}

/// gzip with the file's name and time in the header (FNAME, MTIME), as
/// `gzip -9 FILE` writes them.
fn gzip_named(dir: &Path, name: &str, data: &[u8]) -> Vec<u8> {
    let f = dir.join(name);
    fs::write(&f, data).unwrap();
    run_ok(Command::new("gzip").args(["-9", "-f"]).arg(&f));
    let gz = dir.join(format!("{name}.gz"));
    let out = fs::read(&gz).unwrap();
    fs::remove_file(gz).unwrap();
    out
}

fn gzip_rebuilt(summary: &str) -> u64 {
    let (head, _) = summary.split_once(" gzip-rebuilt").expect("summary line");
    head.rsplit(' ').next().unwrap().parse().unwrap()
}

/// The default `G` op (atomup's extension, `--gzip-rebuild`): changed and
/// new gzip files go as text or a patch of the old text and the device
/// engine rebuilds them byte for byte, from a base delta and from scratch; files it cannot rebuild
/// exactly (two members) or whose text is over the budget go the usual way.
/// Upstream's apply-offline refuses such a delta and stores nothing of it.
#[test]
fn gzip_rebuild_deltas_apply_on_device_and_upstream_refuses_them() {
    require_tool("ostree");
    require_tool("gzip");
    let dir = ScratchDir::new("delta-gzip");
    let work = dir.join("gz");
    fs::create_dir(&work).unwrap();
    let log = changelog(21, 400);
    let man = changelog(22, 60);
    let big = changelog(23, 1500); // ~380 KB of text: over 256 KiB
    let two = [gzip(b"first member\n"), gzip(&changelog(24, 30))].concat();
    let t = TreeBuilder::new(dir.join("tree"));
    t.dir("", 0o755)
        .file("usr/share/doc/pkg/changelog.Debian.gz", &gzip(&log), 0o644)
        .file(
            "usr/share/man/man1/pkg.1.gz",
            &gzip_named(&work, "pkg.1", &man),
            0o644,
        )
        .file("usr/share/doc/big/changelog.gz", &gzip(&big), 0o644)
        .file("usr/share/doc/two/changelog.gz", &two, 0o644)
        .file("usr/share/doc/tiny/copyright.gz", &gzip(b"tiny\n"), 0o644);
    let repo = dir.join("repo");
    publish_ok(&["init", "--repo", s(&repo)]);
    let c1 = commit(&repo, &t.root, "v1");
    let active = dir.join("active");
    run_ok(ostree(&repo).args(["checkout", &c1]).arg(&active));

    // v2: a new entry on top of each changelog, an edited man page, a new
    // package's changelog, the two-member file and the big one changed.
    let entry = b"pkg (2.0-1) bookworm-security; urgency=high\n\n  * Security fix.\n\n".to_vec();
    let mut man2 = man.clone();
    man2.splice(500..500, b".SH NOTES\nedited\n".iter().copied());
    let mut big2 = entry.clone();
    big2.extend_from_slice(&big);
    t.file(
        "usr/share/doc/pkg/changelog.Debian.gz",
        &gzip(&[&entry[..], &log].concat()),
        0o644,
    )
    .file(
        "usr/share/man/man1/pkg.1.gz",
        &gzip_named(&work, "pkg.1", &man2),
        0o644,
    )
    .file(
        "usr/share/doc/new/changelog.Debian.gz",
        &gzip(&changelog(25, 80)),
        0o644,
    )
    .file("usr/share/doc/big/changelog.gz", &gzip(&big2), 0o644)
    .file(
        "usr/share/doc/two/changelog.gz",
        &[&two[..], &gzip(b"third\n")].concat(),
        0o644,
    );
    let c2 = commit(&repo, &t.root, "v2");

    let v1_to_v2 = ["delta", "--repo", s(&repo), "--to", &c2, "--from", &c1];
    let out = publish_ok(&[&v1_to_v2[..], &["--scratch"]].concat());
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let sums: Vec<&str> = stderr.lines().filter(|l| l.starts_with("delta ")).collect();
    let dirs: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!((sums.len(), dirs.len()), (2, 2), "{stderr}");
    // From v1: the changelog (patch of its text), the man page with its
    // name in the header (patch), the new changelog (text). Not: the big
    // one (text over the budget), the two-member file, the tiny file.
    assert_eq!(gzip_rebuilt(sums[0]), 3, "{}", sums[0]);
    // From scratch every one-member file within the budget goes as text
    // (the tiny one's record costs more than its bytes).
    assert_eq!(gzip_rebuilt(sums[1]), 3, "{}", sums[1]);
    let from_delta = repo.join(&dirs[0]);
    apply_device(dir.path(), &repo, &from_delta, Some(&active), &t.root);
    apply_device(dir.path(), &repo, &repo.join(&dirs[1]), None, &t.root);

    // With --ostree-compatible the three rebuilt files are new deflate bytes that
    // neither xz nor bsdiff shrinks: the rebuilt delta saves most of them.
    let bytes = |d: &Path| -> u64 {
        fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum()
    };
    let rebuilt_bytes = bytes(&from_delta);
    let gz_bytes: u64 = [
        "usr/share/doc/pkg/changelog.Debian.gz",
        "usr/share/man/man1/pkg.1.gz",
        "usr/share/doc/new/changelog.Debian.gz",
    ]
    .iter()
    .map(|p| fs::metadata(t.root.join(p)).unwrap().len())
    .sum();
    fs::rename(&from_delta, dir.join("rebuilt")).unwrap();
    let out = publish_ok(&[&v1_to_v2[..], &["--ostree-compatible"]].concat());
    let plain = repo.join(String::from_utf8(out.stdout).unwrap().trim());
    let saved = bytes(&plain).saturating_sub(rebuilt_bytes);
    assert!(
        saved * 4 > gz_bytes * 3,
        "saved {saved} bytes of the {gz_bytes} bytes of rebuilt gzip files"
    );
    apply_upstream(dir.path(), &repo, &plain, Some(&c1), &c2, &t.root);

    // The superblock marks the extension and says the longest text the
    // device rebuilds (what `release` budgets the helper by); the plain
    // delta carries no mark.
    let text_max = |d: &Path| {
        let bytes = fs::read(d.join("superblock")).unwrap();
        let file = atomup_ostree::delta::SuperblockFile::parse(&bytes).unwrap();
        let sb = atomup_ostree::delta::Superblock::parse(file.unsigned).unwrap();
        sb.gzip_text_max().unwrap()
    };
    // The changelog with its new entry is the longest text, old or new.
    let longest = Some((entry.len() + log.len()) as u64);
    assert!(longest > Some(man2.len() as u64));
    assert_eq!(text_max(&dir.join("rebuilt")), longest);
    assert_eq!(text_max(&plain), None);

    // Upstream's applier refuses the extension op and keeps nothing.
    let bare = dir.join("bare-refuses");
    run_ok(ostree(&bare).args(["init", "--mode=bare-user"]));
    run_ok(ostree(&bare).arg("pull-local").arg(&repo).arg(&c1));
    let r = ostree(&bare)
        .args(["static-delta", "apply-offline"])
        .arg(dir.join("rebuilt"))
        .output()
        .unwrap();
    assert!(!r.status.success(), "apply-offline accepted a G op");
    let shown = ostree(&bare).args(["show", &c2]).output().unwrap();
    assert!(
        !shown.status.success(),
        "the refused delta's commit is stored"
    );
}
