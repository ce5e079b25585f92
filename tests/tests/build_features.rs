//! Crash points never reach a release binary (issues 11.7 and 17), by any of
//! the ways a feature gets in:
//! - feature unification: `cargo build --release --bin atomup` at the
//!   workspace root selects every default member, so a feature any member
//!   enables on a normal dependency is compiled into the device binary; the
//!   crash points (`atomup-faults/failpoints`) must be enabled only as a
//!   dev-dependency feature (and by the agent's own `failpoints` feature,
//!   which only the `faults` profile build turns on);
//! - an optimized build with the feature: `compile_error!`;
//! - the plain debug `atomup` the other tests run: built without them (the
//!   campaigns' agent is `target/faults/atomup`).
//!
//! The /etc merge's own fault points (`atomup-etc/failpoints`) obey the
//! same rule.
//!
//! (`scripts/build-device.sh` also fails on a device binary containing
//! `ATOMUP_FAILPOINT`.)

use std::process::Command;

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(atomup_tests::workspace_root());
    cmd
}

/// `cargo tree` of the normal dependency edges (with the features they
/// enable) that reach `krate`.
fn normal_features_tree(krate: &str) -> String {
    let out = cargo()
        .args([
            "tree",
            "--workspace",
            "--offline",
            "--locked",
            "-e",
            "normal,features",
            "-i",
            krate,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn etc_merge_fault_points_are_never_a_normal_dependency_feature() {
    let tree = normal_features_tree("atomup-etc");
    assert!(tree.contains("atomup-etc v"), "{tree}");
    assert!(
        !tree.contains("feature \"failpoints\""),
        "a normal dependency enables atomup-etc/failpoints:\n{tree}"
    );
}

#[test]
fn crash_points_are_never_a_normal_dependency_feature() {
    let tree = normal_features_tree("atomup-faults");
    // Every device crate reaches the facility (so the points are real)...
    for user in [
        "atomup-fsio",
        "atomup-bootctl",
        "atomup-deploy",
        "atomup-fetch",
        "atomup v",
    ] {
        assert!(
            tree.contains(user),
            "{user} does not use atomup-faults:\n{tree}"
        );
    }
    // ...but no normal dependency edge turns them on.
    assert!(
        !tree.contains("feature \"failpoints\""),
        "a normal dependency enables atomup-faults/failpoints:\n{tree}"
    );
}

/// Regression guard for the `compile_error!`: an optimized build of the
/// crash points refuses to compile, naming why.
#[test]
fn crash_points_refuse_to_compile_without_debug_assertions() {
    let out = cargo()
        .args([
            "check",
            "--offline",
            "--locked",
            "--release",
            "-p",
            "atomup-faults",
            "--features",
            "failpoints",
            "--target-dir",
        ])
        .arg(atomup_tests::target_dir().join("faults-guard"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "an optimized build with crash points compiled"
    );
    assert!(
        err.contains("must never reach a release binary"),
        "refused for another reason:\n{err}"
    );
}

/// The plain debug agent the other tests (and the demo's host side) run has
/// no crash points: they live only in `target/faults/atomup`.
#[test]
fn the_plain_debug_atomup_has_no_crash_points() {
    let has = |bin: &std::path::Path| {
        let bytes = std::fs::read(bin).unwrap();
        bytes.windows(16).any(|w| w == b"ATOMUP_FAILPOINT")
    };
    assert!(!has(&atomup_tests::workspace_bin("atomup")));
    assert!(has(&atomup_tests::crash::faults_atomup()));
}
