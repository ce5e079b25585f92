//! Shared helpers for the end-to-end tests: locating the built binaries and
//! the real peer tools the tests use as oracles.

use std::path::PathBuf;

/// Path of a binary built from this workspace (`atomup`, `atomup-publish`),
/// building it first if the test run has not.
pub fn workspace_bin(name: &str) -> PathBuf {
    let root = workspace_root();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let path = target.join("debug").join(name);
    if !path.exists() {
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--bin", name])
            .current_dir(&root)
            .status()
            .expect("running cargo build");
        assert!(status.success(), "cargo build --bin {name} failed");
    }
    path
}

/// The workspace's top directory.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_path_buf()
}

/// Whether a peer tool is on PATH; tests that need one fail loudly without it
/// unless `ATOMUP_ALLOW_MISSING_PEERS=1` (never set in CI).
pub fn require_tool(name: &str) -> bool {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
        .unwrap_or(false);
    if !found && std::env::var_os("ATOMUP_ALLOW_MISSING_PEERS").is_none() {
        panic!("peer tool `{name}` is not installed: run ./bootstrap first");
    }
    found
}
