//! `atomup-publish release` warns when a delta it indexes needs more device
//! RAM to apply (the engine, the largest xz window its parts declare and,
//! with `G` ops, the gzip helper for the longest text) than the board's budget (`--device-ram`, default 8 MiB), and stays quiet
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

/// Makes a from-scratch delta of `commit` with `opts`, signed; returns the
/// publisher's summary line.
fn scratch_delta(repo: &Repo, keys: &Keys, commit: &str, opts: &[&str]) -> String {
    let mut args = vec!["delta", "--to", commit, "--scratch"];
    args.extend_from_slice(opts);
    let out = publish(&args, &repo.path);
    let dir = String::from_utf8(out.stdout).unwrap();
    keys.sign_delta(&repo.path.join(dir.trim()));
    String::from_utf8(out.stderr).unwrap()
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
    // A 5 MiB file: a 32 MiB device budget gives it a window of about 5 MiB,
    // so applying needs ~10 MiB; the default (8 MiB budget) gives 2 MiB.
    atomup_tests::require_tool("ostree");
    let dir = ScratchDir::new("release-ram");
    let repo = Repo::init(dir.join("repo"), "archive");
    let keys = Keys::generate(&dir.join("keys"), "vendor");
    let tree = TreeBuilder::new(dir.join("t"));
    tree.file("usr/lib/big", &pseudo_bytes(1, 5 << 20, true), 0o644);
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

/// A delta with `G` ops counts the gzip helper: the same 3 MiB-window delta
/// fits 8 MiB as plain upstream format (engine 4.5 + window 3) and is warned
/// about once a 200 KiB text is rebuilt beside it (its helper adds ~1.3 MiB),
/// which the superblock's `atomup.gzip-text-max` tells the release step.
#[test]
fn release_counts_the_gzip_helper_of_a_delta_with_g_ops() {
    atomup_tests::require_tool("ostree");
    atomup_tests::require_tool("gzip");
    let dir = ScratchDir::new("release-ram-gzip");
    let repo = Repo::init(dir.join("repo"), "archive");
    let keys = Keys::generate(&dir.join("keys"), "vendor");
    let tree = TreeBuilder::new(dir.join("t"));
    let text = pseudo_bytes(2, 200 << 10, true);
    let gz = dir.join("changelog");
    std::fs::write(&gz, &text).unwrap();
    let st = Command::new("gzip")
        .args(["-9", "-n"])
        .arg(&gz)
        .status()
        .unwrap();
    assert!(st.success());
    let gz_bytes = std::fs::read(dir.join("changelog.gz")).unwrap();
    tree.file("usr/lib/big", &pseudo_bytes(1, 5 << 19, true), 0o644)
        .file("usr/share/doc/pkg/changelog.gz", &gz_bytes, 0o644);
    let c1 = repo.commit(&dir.join("t"), "v1");

    let sum = scratch_delta(
        &repo,
        &keys,
        &c1,
        &["--xz-dict", "3M", "--ostree-compatible"],
    );
    assert!(
        sum.contains("0 gzip-rebuilt") && sum.contains("xz window 3.0 MiB"),
        "{sum}"
    );
    let plain = release(&repo, &keys, 1, &c1, &[]);
    assert!(!plain.contains("warning"), "{plain}");

    let sum = scratch_delta(&repo, &keys, &c1, &["--xz-dict", "3M"]);
    assert!(
        sum.contains("1 gzip-rebuilt") && sum.contains("xz window 3.0 MiB"),
        "{sum}"
    );
    let warned = release(&repo, &keys, 2, &c1, &[]);
    assert!(
        warned.contains("warning: delta ") && warned.contains("any gzip helper"),
        "{warned}"
    );
}
