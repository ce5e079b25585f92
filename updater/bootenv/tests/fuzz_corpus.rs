//! Every saved fuzz input of the env targets (seeds and past finds) goes
//! through the entry point its cargo-fuzz target calls, without panicking.

use std::path::PathBuf;

fn replay(target: &str, entry: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
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
    for path in files {
        let data = std::fs::read(&path).unwrap();
        let ok = std::panic::catch_unwind(|| entry(&data)).is_ok();
        assert!(ok, "{target} panicked on {}", path.display());
    }
}

#[test]
fn uboot_env_corpus_replays() {
    replay("uboot_env", atomup_bootenv::fuzz::uboot_env);
}

#[test]
fn grub_env_corpus_replays() {
    replay("grub_env", atomup_bootenv::fuzz::grub_env);
}

#[test]
fn fw_env_config_corpus_replays() {
    replay("fw_env_config", atomup_bootenv::fuzz::fw_env_config);
}
