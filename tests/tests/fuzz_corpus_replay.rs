//! Every saved fuzz input (seeds and past finds) of every cargo-fuzz target
//! goes through the same entry point its target calls, on stable Rust,
//! without panicking. The one replay harness of the workspace.

use std::fs;
use std::path::PathBuf;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = atomup_tests::workspace_root()
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(
        files.len() >= 3,
        "corpus {} has only {} files",
        dir.display(),
        files.len()
    );
    files
        .into_iter()
        .map(|p| {
            let data = fs::read(&p).unwrap();
            (p, data)
        })
        .collect()
}

fn replay(target: &str, entry: fn(&[u8])) {
    for (path, data) in corpus(target) {
        // A panic names the input so it can be re-run with `cargo fuzz run`.
        let ok = std::panic::catch_unwind(|| entry(&data)).is_ok();
        assert!(ok, "{target} panicked on {}", path.display());
    }
}

#[test]
fn gvariant_corpus_replays_without_panic() {
    replay("gvariant", atomup_ostree::fuzz::gvariant);
}

#[test]
fn superblock_corpus_replays_without_panic() {
    replay("superblock", atomup_ostree::fuzz::superblock);
}

#[test]
fn part_payload_corpus_replays_without_panic() {
    replay("part_payload", atomup_ostree::fuzz::payload);
}

#[test]
fn release_metadata_corpus_replays_without_panic() {
    replay("release_metadata", |d| {
        atomup_release::fuzz::release_body(d);
        atomup_release::fuzz::signed_release(d);
    });
}

#[test]
fn uboot_env_corpus_replays_without_panic() {
    replay("uboot_env", atomup_bootenv::fuzz::uboot_env);
}

#[test]
fn grub_env_corpus_replays_without_panic() {
    replay("grub_env", atomup_bootenv::fuzz::grub_env);
}

#[test]
fn fw_env_config_corpus_replays_without_panic() {
    replay("fw_env_config", atomup_bootenv::fuzz::fw_env_config);
}

#[test]
fn bundle_corpus_replays_without_panic() {
    replay("bundle", atomup_bundle::fuzz);
}

#[test]
fn agent_config_corpus_replays_without_panic() {
    replay("agent_config", atomup_config::fuzz);
}

#[test]
fn budget_record_corpus_replays_without_panic() {
    replay("budget_record", atomup_link::budget::fuzz);
}

#[test]
fn etc_lists_corpus_replays_without_panic() {
    replay("etc_lists", atomup_etc::fuzz::lists);
}
