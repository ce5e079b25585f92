//! Fault injection never reaches a release binary through feature
//! unification (issue 11.7): `cargo build --release --bin atomup` at the
//! workspace root selects every default member, so a feature that any
//! member enables on a normal dependency is compiled into the device binary.
//! The env fault points (`atomup-bootctl/failpoints`) and the /etc merge's
//! (`atomup-etc/failpoints`) must be enabled only as dev-dependency features. (Two more guards, checked by hand: the
//! feature refuses to compile without debug assertions, and
//! `scripts/build-device.sh` fails on a binary containing `ATOMUP_FAILPOINT`.)

use std::process::Command;

#[test]
fn env_fault_points_are_never_a_normal_dependency_feature() {
    assert_no_normal_failpoints("atomup-bootctl");
}

#[test]
fn etc_merge_fault_points_are_never_a_normal_dependency_feature() {
    assert_no_normal_failpoints("atomup-etc");
}

fn assert_no_normal_failpoints(krate: &str) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(atomup_tests::workspace_root())
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
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(tree.contains(&format!("{krate} v")), "{tree}");
    assert!(
        !tree.contains("feature \"failpoints\""),
        "a normal dependency enables {krate}/failpoints:\n{tree}"
    );
}
