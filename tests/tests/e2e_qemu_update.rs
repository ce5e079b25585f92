//! The main job as a test: `qemu/demo-update.sh` publishes releases with
//! atomup-publish, serves them with nginx, and a QEMU aarch64 device on real
//! U-Boot and Linux updates v1 -> v2 (trial boot, health check, confirm), then
//! rejects a bad v3 and falls back by itself. The script checks every step;
//! this test runs it with the binaries `./test` built.

use atomup_tests::ostree_fixture::ScratchDir;
use std::process::Command;

#[test]
fn device_updates_confirms_and_rolls_back_a_bad_release_in_qemu() {
    for tool in [
        "qemu-system-aarch64",
        "nginx",
        "mkfs.ext4",
        "sgdisk",
        "mkimage",
        "fw_printenv",
    ] {
        atomup_tests::require_tool(tool);
    }
    let target = atomup_tests::target_dir();
    let device_bin = target.join("aarch64-unknown-linux-musl/release/atomup");
    assert!(
        device_bin.is_file(),
        "{} is missing: run scripts/build-device.sh first (./test does)",
        device_bin.display()
    );
    // The host binaries must exist (workspace_bin asserts it).
    let bin_dir = atomup_tests::workspace_bin("atomup-publish")
        .parent()
        .unwrap()
        .to_owned();
    atomup_tests::workspace_bin("atomup");
    let work = ScratchDir::new("e2e-qemu");
    let out = Command::new(atomup_tests::workspace_root().join("qemu/demo-update.sh"))
        .arg("--work")
        .arg(work.path())
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg("--device-bin")
        .arg(&device_bin)
        .args(["--timeout", "240"])
        .output()
        .unwrap();
    let log =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{log}");
    for proof in [
        "ok: v2 downloaded, verified and written into slot B",
        "ok: U-Boot booted slot B on trial",
        "ok: health passed: slot B confirmed",
        "ok: env is ATOMUP_ORDER=B A;ATOMUP_TRIAL=;ATOMUP_LEFT=0",
        "ok: the device fell back to slot B (v2) by itself",
        "ok: v3 is never retried",
        "ok: env is ATOMUP_ORDER=B;ATOMUP_TRIAL=;ATOMUP_LEFT=0",
    ] {
        assert!(log.contains(proof), "missing `{proof}` in:\n{log}");
    }
    eprintln!(
        "{}",
        log.lines()
            .filter(|l| l.starts_with("ok:")
                || l.contains("bytes served")
                || l.starts_with("VM run"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
