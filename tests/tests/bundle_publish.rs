//! `atomup-publish bundle` over a repository made with the real `ostree` CLI:
//! the bundle is a tar the real `tar` lists, the signed release comes first,
//! each chosen delta's files are in it byte for byte, and the options choose
//! which base versions go in.

use atomup_ostree::ObjectId;
use atomup_tests::ostree_fixture::{pseudo_bytes, Keys, Repo, ScratchDir, TreeBuilder};
use std::path::Path;
use std::process::{Command, Output};

const T0: u64 = 1_767_225_600; // 2026-01-01

struct Fleet {
    dir: ScratchDir,
    repo: Repo,
    commits: Vec<String>,
}

fn publish(args: &[&str], repo: &Path) -> Output {
    Command::new(atomup_tests::workspace_bin("atomup-publish"))
        .args(args)
        .arg("--repo")
        .arg(repo)
        .output()
        .unwrap()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Versions 1, 2, 3 released in turn; version 3 has deltas from 1, from 2
/// and from scratch.
fn three_releases() -> Fleet {
    atomup_tests::require_tool("ostree");
    let dir = ScratchDir::new("bundle-publish");
    let repo = Repo::init(dir.join("repo"), "archive");
    let keys = Keys::generate(&dir.join("keys"), "vendor");
    let tree = TreeBuilder::new(dir.join("t"));
    let mut commits = Vec::new();
    for v in 1..=3u64 {
        tree.file("etc/os-release", format!("VERSION={v}\n").as_bytes(), 0o644)
            .file("usr/bin/app", &pseudo_bytes(v, 150_000, false), 0o755);
        let c = repo.commit(&dir.join("t"), &format!("v{v}"));
        let to = ObjectId::from_hex(&c).unwrap();
        let mut froms: Vec<Option<String>> = vec![None];
        if v == 3 {
            froms.extend(commits.iter().cloned().map(Some));
        }
        for from in froms {
            let from_id = from.as_deref().map(|f| ObjectId::from_hex(f).unwrap());
            let rel = atomup_ostree::delta::delta_path(from_id.as_ref(), &to);
            let dir = repo.path.join(rel);
            repo.delta(from.as_deref(), &c, &["--min-fallback-size=0"], &dir);
            keys.sign_delta(&dir);
        }
        let key = keys.secret.to_str().unwrap().to_owned();
        ok(publish(
            &[
                "release",
                "--key",
                &key,
                "--channel",
                "stable",
                "--board",
                "qemu-virt",
                "--version",
                &v.to_string(),
                "--to",
                &c,
                "--timestamp",
                &(T0 + v).to_string(),
            ],
            &repo.path,
        ));
        commits.push(c);
    }
    Fleet { dir, repo, commits }
}

fn bundle(f: &Fleet, name: &str, extra: &[&str]) -> (std::path::PathBuf, String) {
    let out = f.dir.join(name);
    let mut args = vec![
        "bundle",
        "--channel",
        "stable",
        "--board",
        "qemu-virt",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let stdout = ok(publish(&args, &f.repo.path));
    (out, stdout)
}

fn tar_names(path: &Path) -> Vec<String> {
    let out = Command::new("tar").arg("tf").arg(path).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn delta_dir(from: Option<&str>, to: &str) -> String {
    let from = from.map(|f| ObjectId::from_hex(f).unwrap());
    atomup_ostree::delta::delta_path(from.as_ref(), &ObjectId::from_hex(to).unwrap())
}

/// By default every delta of the release goes in, after the signed release,
/// and every member is the repository's file byte for byte.
#[test]
fn default_bundle_holds_the_release_then_every_delta() {
    let f = three_releases();
    let (path, stdout) = bundle(&f, "all.atomup", &[]);
    let names = tar_names(&path);
    assert_eq!(names[0], "atomup/stable/qemu-virt/release");
    let v3 = &f.commits[2];
    for from in [
        None,
        Some(f.commits[0].as_str()),
        Some(f.commits[1].as_str()),
    ] {
        let sb = format!("{}/superblock", delta_dir(from, v3));
        assert!(names.contains(&sb), "{sb} missing from {names:?}");
    }
    let bytes = std::fs::read(&path).unwrap();
    let members = atomup_bundle::scan(&mut std::io::Cursor::new(&bytes)).unwrap();
    assert_eq!(
        members.iter().map(|m| &m.name).collect::<Vec<_>>(),
        names.iter().collect::<Vec<_>>()
    );
    for m in &members {
        let want = std::fs::read(f.repo.path.join(&m.name)).unwrap();
        assert_eq!(
            &bytes[m.offset as usize..(m.offset + m.size) as usize],
            &want[..],
            "{}",
            m.name
        );
    }
    assert_eq!(stdout.matches("  delta from ").count(), 3, "{stdout}");
    assert!(stdout.contains("3 delta(s)"), "{stdout}");
    assert!(
        stdout.contains("bytes of tar headers and padding"),
        "{stdout}"
    );
}

/// `--from-last 1` keeps the newest earlier version and scratch;
/// `--from-version 1 --no-scratch` keeps exactly the delta from version 1.
#[test]
fn options_choose_the_base_versions() {
    let f = three_releases();
    let v3 = &f.commits[2];
    let superblocks = |p: &Path| -> Vec<String> {
        tar_names(p)
            .into_iter()
            .filter(|n| n.ends_with("/superblock"))
            .collect()
    };
    let (p, _) = bundle(&f, "last1.atomup", &["--from-last", "1"]);
    let mut want = vec![
        format!("{}/superblock", delta_dir(None, v3)),
        format!("{}/superblock", delta_dir(Some(&f.commits[1]), v3)),
    ];
    let mut got = superblocks(&p);
    want.sort();
    got.sort();
    assert_eq!(got, want);

    let (p, _) = bundle(&f, "v1.atomup", &["--from-version", "1", "--no-scratch"]);
    assert_eq!(
        superblocks(&p),
        vec![format!("{}/superblock", delta_dir(Some(&f.commits[0]), v3))]
    );

    let bad = publish(
        &[
            "bundle",
            "--channel",
            "stable",
            "--board",
            "qemu-virt",
            "--out",
            f.dir.join("x").to_str().unwrap(),
            "--from-version",
            "7",
        ],
        &f.repo.path,
    );
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr)
            .contains("version 7 is not an earlier release in the history"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    assert!(!f.dir.join("x").exists() && !f.dir.join("x.partial").exists());
}
