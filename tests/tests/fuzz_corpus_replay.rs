//! Every saved fuzz input (seeds and past crashers) goes through the same
//! entry point its cargo-fuzz target calls, on stable Rust, without panicking.

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
    assert!(!files.is_empty(), "empty corpus {}", dir.display());
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
fn etc_lists_corpus_replays_without_panic() {
    replay("etc_lists", atomup_etc::fuzz::lists);
}
