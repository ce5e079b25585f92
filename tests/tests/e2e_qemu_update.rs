//! The main job as a test: `qemu/demo-update.sh` publishes releases with
//! atomup-publish, serves them with nginx, and a QEMU aarch64 device on real
//! firmware and Linux updates v1 -> v2 (trial boot, health check, confirm;
//! the device's own /etc file carried over, the vendor's changed ones
//! updated, config-diff listing the change),
//! then rejects v3 (its health check fails) and v4 (its kernel panics on
//! every boot) and falls back by itself, never retrying either. The script
//! checks every step; these tests run it with the binaries `./test` built,
//! once on the U-Boot board and once on the GRUB/EFI board.

use atomup_tests::ostree_fixture::ScratchDir;
use std::process::Command;

fn run_demo(grub: bool, loader_name: &str) {
    let mut tools = vec![
        "qemu-system-aarch64",
        "nginx",
        "mkfs.ext4",
        "sgdisk",
        "mcopy",
    ];
    tools.extend(if grub {
        ["grub-mkstandalone", "grub-editenv"]
    } else {
        ["mkimage", "fw_printenv"]
    });
    for tool in tools {
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
    let work = ScratchDir::new(if grub { "e2e-qemu-grub" } else { "e2e-qemu" });
    let mut cmd = Command::new(atomup_tests::workspace_root().join("qemu/demo-update.sh"));
    if grub {
        cmd.arg("--grub");
    }
    let out = cmd
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
    let booted_b = format!("ok: {loader_name} booted slot B on trial");
    for proof in [
        "ok: v2 downloaded, verified and written into slot B",
        booted_b.as_str(),
        "ok: health passed: slot B confirmed",
        "ok: the update carried the device's /etc change into slot B",
        "ok: on slot B /etc/site.conf is there with its content, and the vendor's /etc/atomup-image is v2's",
        "ok: config-diff on slot B shows the device's change (A site.conf)",
        "ok: env is ATOMUP_ORDER=B A;ATOMUP_TRIAL=;ATOMUP_LEFT=0",
        "ok: the device fell back to slot B (v2) by itself",
        "ok: v3 is never retried",
        "ok: slot A's v4 kernel panicked on its trial boot",
        "ok: the bootloader spent slot A's attempts and fell back to slot B",
        "ok: slot A was tried exactly 3 times",
        "ok: v4 is never retried",
        "ok: env is ATOMUP_ORDER=B;ATOMUP_TRIAL=;ATOMUP_LEFT=0",
    ] {
        assert!(log.contains(proof), "missing `{proof}` in:\n{log}");
    }
    eprintln!(
        "{}",
        log.lines()
            .filter(|l| l.starts_with("ok:")
                || l.contains("bytes served")
                || l.starts_with("VM run")
                || l.contains("done in"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn device_updates_confirms_and_rolls_back_bad_releases_on_uboot() {
    run_demo(false, "U-Boot");
}

/// The same cycle on the GRUB/EFI board: AAVMF, GRUB reading the sealed
/// grubenv pair, the device writing it on its ESP through the board profile.
#[test]
fn device_updates_confirms_and_rolls_back_bad_releases_on_grub() {
    run_demo(true, "GRUB");
}
