//! Shared helpers for the end-to-end tests: locating the built binaries and
//! the real peer tools the tests use as oracles.

pub mod crash;
pub mod delta_craft;
pub mod device;
pub mod nginx;
pub mod ostree_fixture;
pub mod reaped;
pub mod service;
pub mod uboot;

use std::path::PathBuf;

/// Path of a binary built from this workspace (`atomup`, `atomup-publish`).
///
/// Cargo does not build other packages' binaries for integration tests, and a
/// nested `cargo build` would wait forever on the lock `cargo test` holds, so
/// `./test` builds them first (`cargo build --workspace --bins`).
pub fn workspace_bin(name: &str) -> PathBuf {
    let path = target_dir().join("debug").join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace --bins` before the tests (./test does)",
        path.display()
    );
    path
}

pub use atomup_scratch::target_dir;

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
