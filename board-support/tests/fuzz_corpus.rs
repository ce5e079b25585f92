//! The saved fuzz inputs of `fuzz/corpus/board_profile` (seeds and past finds) go
//! through the entry point the cargo-fuzz target calls, on stable Rust,
//! without panicking.

#[test]
fn board_profile_corpus_replays() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/board_profile");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("fuzz corpus directory") {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let ok = std::panic::catch_unwind(|| atomup_board::fuzz_profile(&data)).is_ok();
        assert!(ok, "board_profile panicked on {}", path.display());
        n += 1;
    }
    assert!(n > 0, "empty corpus {}", dir.display());
}
