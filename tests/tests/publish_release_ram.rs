//! `atomup-publish release` warns when a delta it indexes needs more device
//! RAM to apply (the engine plus the largest xz window its parts declare)
//! than the board's budget (`--device-ram`, default 8 MiB), and stays quiet
//! for deltas made to fit it.

use atomup_tests::ostree_fixture::{pseudo_bytes, Keys, Repo, ScratchDir, TreeBuilder};
use std::path::Path;
use std::process::{Command, Output};

fn publish(args: &[&str], repo: &Path) -> Output {
    let out = Command::new(atomup_tests::workspace_bin("atomup-publish"))
        .args(args)
        .arg("--repo")
        .arg(repo)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "atomup-publish {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Makes a from-scratch delta of `commit` with `opts`, signed.
fn scratch_delta(repo: &Repo, keys: &Keys, commit: &str, opts: &[&str]) {
    let mut args = vec!["delta", "--to", commit, "--scratch"];
    args.extend_from_slice(opts);
    let out = publish(&args, &repo.path);
    let dir = String::from_utf8(out.stdout).unwrap();
    keys.sign_delta(&repo.path.join(dir.trim()));
}

fn release(repo: &Repo, keys: &Keys, version: u64, commit: &str, extra: &[&str]) -> String {
    let version = version.to_string();
    let mut args = vec![
        "release",
        "--key",
        keys.secret.to_str().unwrap(),
        "--channel",
        "stable",
        "--board",
        "qemu-virt",
        "--version",
        &version,
        "--to",
        commit,
    ];
    args.extend_from_slice(extra);
    String::from_utf8(publish(&args, &repo.path).stderr).unwrap()
}

#[test]
fn release_warns_about_a_delta_over_the_boards_ram_budget() {
    // A 3 MiB file: a 32 MiB device budget gives it a window of about 3 MiB,
    // so applying needs ~9 MiB; the default (8 MiB budget) gives 2 MiB.
    atomup_tests::require_tool("ostree");
    let dir = ScratchDir::new("release-ram");
    let repo = Repo::init(dir.join("repo"), "archive");
    let keys = Keys::generate(&dir.join("keys"), "vendor");
    let tree = TreeBuilder::new(dir.join("t"));
    tree.file("usr/lib/big", &pseudo_bytes(1, 3 << 20, true), 0o644);
    let c1 = repo.commit(&dir.join("t"), "v1");
    scratch_delta(&repo, &keys, &c1, &["--device-ram", "32M"]);

    let warned = release(&repo, &keys, 1, &c1, &[]);
    assert!(
        warned.contains("warning: delta ")
            && warned.contains("over the board's budget of 8192 KiB")
            && warned.contains("--device-ram 8192K"),
        "{warned}"
    );
    // The same delta on a board declaring 16 MiB: no warning.
    let quiet = release(&repo, &keys, 2, &c1, &["--device-ram", "16M"]);
    assert!(!quiet.contains("warning"), "{quiet}");

    // A delta made with the defaults fits the default budget.
    tree.file("etc/os-release", b"VERSION=3\n", 0o644);
    let c3 = repo.commit(&dir.join("t"), "v3");
    scratch_delta(&repo, &keys, &c3, &[]);
    let fits = release(&repo, &keys, 3, &c3, &[]);
    assert!(!fits.contains("warning"), "{fits}");
}
