//! `atomup-publish prune` keeps what the newest releases need and frees the
//! rest; the real `ostree` CLI still accepts the pruned repository.

use atomup_tests::ostree_fixture::{
    assert_same_tree, pseudo_bytes, run_ok, Keys, ScratchDir, TreeBuilder,
};
use std::path::Path;
use std::process::Command;

fn publish(args: &[&str]) -> String {
    let out = run_ok(Command::new(atomup_tests::workspace_bin("atomup-publish")).args(args));
    String::from_utf8(out.stdout).unwrap()
}

fn count_files(dir: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                n += 1;
            }
        }
    }
    n
}

/// Four releases, keep two: old records, deltas into pruned commits and their
/// unique objects go; the kept commits check out whole and `ostree fsck` passes.
#[test]
fn prune_keeps_the_newest_releases_and_frees_the_rest() {
    atomup_tests::require_tool("ostree");
    let dir = ScratchDir::new("prune");
    let repo = dir.join("repo");
    let r = repo.to_str().unwrap();
    publish(&["init", "--repo", r]);
    let keys = Keys::generate(&dir.join("keys"), "vendor");
    let key = keys.secret.to_str().unwrap();
    let tree = TreeBuilder::new(dir.join("tree"));
    tree.file("usr/lib/shared.bin", &pseudo_bytes(9, 50_000, false), 0o644);
    let mut commits: Vec<String> = Vec::new();
    for v in 1..=4u64 {
        tree.file("etc/version", format!("{v}\n").as_bytes(), 0o644)
            .file("usr/lib/unique.bin", &pseudo_bytes(v, 80_000, false), 0o644);
        let c = publish(&[
            "commit",
            "--repo",
            r,
            "--tree",
            tree.root.to_str().unwrap(),
            "--branch",
            "os/main",
            "--subject",
            &format!("v{v}"),
            "--owner-uid",
            "0",
            "--owner-gid",
            "0",
            "--quiet",
        ]);
        let c = c.trim().to_owned();
        let sign = |delta: String| {
            let d = repo.join(delta.trim());
            publish(&["sign", "--key", key, "--delta", d.to_str().unwrap()]);
        };
        if v > 1 {
            sign(publish(&[
                "delta",
                "--repo",
                r,
                "--to",
                &c,
                "--from",
                commits.last().unwrap(),
                "--quiet",
            ]));
        }
        sign(publish(&[
            "delta",
            "--repo",
            r,
            "--to",
            &c,
            "--scratch",
            "--quiet",
        ]));
        publish(&[
            "release",
            "--repo",
            r,
            "--key",
            key,
            "--channel",
            "stable",
            "--board",
            "qemu-virt",
            "--version",
            &v.to_string(),
            "--to",
            &c,
            "--timestamp",
            &(1_767_225_600 + v).to_string(),
        ]);
        let co = dir.join(format!("tree-v{v}"));
        run_ok(Command::new("cp").arg("-a").arg(&tree.root).arg(&co));
        commits.push(c);
    }
    let before = count_files(&repo.join("objects"));
    let deltas_before = count_files(&repo.join("deltas"));

    let dry = publish(&["prune", "--repo", r, "--keep-releases", "2", "--dry-run"]);
    assert!(
        dry.contains("would free 2 release record(s), 3 delta(s)"),
        "{dry}"
    );
    assert_eq!(
        count_files(&repo.join("objects")),
        before,
        "dry run deleted objects"
    );

    let out = publish(&["prune", "--repo", r, "--keep-releases", "2"]);
    assert!(
        out.contains("freed 2 release record(s), 3 delta(s)"),
        "{out}"
    );
    let after = count_files(&repo.join("objects"));
    // v1 and v2 each own 7 objects: the commit, dirtrees of /, /etc, /usr and
    // /usr/lib, and the contents of /etc/version and unique.bin.
    assert!(out.contains(", 14 object(s)"), "{out}");
    assert_eq!(after, before - 14);
    assert!(count_files(&repo.join("deltas")) < deltas_before);
    assert_eq!(
        std::fs::read_dir(repo.join("atomup/stable/qemu-virt/history"))
            .unwrap()
            .count(),
        2
    );

    run_ok(
        Command::new("ostree")
            .arg(format!("--repo={r}"))
            .arg("fsck"),
    );
    for (i, c) in commits.iter().enumerate().skip(2) {
        let co = dir.join(format!("checkout-{i}"));
        run_ok(
            Command::new("ostree")
                .arg(format!("--repo={r}"))
                .args(["checkout", c])
                .arg(&co),
        );
        assert_same_tree(&co, &dir.join(format!("tree-v{}", i + 1)));
    }
    for c in &commits[..2] {
        let obj = repo.join(format!("objects/{}/{}.commit", &c[..2], &c[2..]));
        assert!(!obj.exists(), "pruned commit {c} still present");
    }
    // Running it again frees nothing more.
    let again = publish(&["prune", "--repo", r, "--keep-releases", "2"]);
    assert!(
        again.contains("freed 0 release record(s), 0 delta(s)") && again.contains("0 object(s)"),
        "{again}"
    );
}
