//! The main job as a test: `qemu/demo-update.sh` publishes releases with
//! atomup-publish, serves them with nginx, and a QEMU aarch64 device on real
//! firmware and Linux updates v1 -> v2 (trial boot, health check, confirm;
//! the device's own /etc file carried over, the vendor's changed ones
//! updated, config-diff listing the change),
//! then rejects v3 (its health check fails) and v4 (its kernel panics on
//! every boot) and falls back by itself, never retrying either. The script
//! checks every step; these tests run it with the binaries `./test` built,
//! once on the U-Boot board and once on the GRUB/EFI board. With `--stick`
//! (issue 16) the update comes from a FAT USB stick instead of the server
//! (on both boards; the pulled stick on U-Boot).

use atomup_tests::ostree_fixture::ScratchDir;
use std::process::Command;

/// Runs `demo-update.sh` (with `extra` arguments) and returns its output, asserting success.
fn run_demo(grub: bool, extra: &[&str]) -> String {
    let mut tools = vec![
        "qemu-system-aarch64",
        "nginx",
        "mkfs.ext4",
        "mkfs.vfat",
        "sgdisk",
        "mcopy",
        "mtype",
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
    let name = if grub { "e2e-qemu-grub" } else { "e2e-qemu" }.to_owned() + &extra.concat();
    let work = ScratchDir::new(&name);
    let mut cmd = Command::new(atomup_tests::workspace_root().join("qemu/demo-update.sh"));
    if grub {
        cmd.arg("--grub");
    }
    cmd.args(extra);
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
    log
}

fn assert_network_demo(grub: bool, loader_name: &str) {
    let log = run_demo(grub, &[]);
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
}

#[test]
fn device_updates_confirms_and_rolls_back_bad_releases_on_uboot() {
    assert_network_demo(false, "U-Boot");
}

/// The same cycle on the GRUB/EFI board: AAVMF, GRUB reading the sealed
/// grubenv pair, the device writing it on its ESP through the board profile.
#[test]
fn device_updates_confirms_and_rolls_back_bad_releases_on_grub() {
    assert_network_demo(true, "GRUB");
}

fn assert_stick_demo(grub: bool, loader_name: &str) {
    let log = run_demo(grub, &["--stick"]);
    let booted_b = format!("ok: {loader_name} booted slot B on trial");
    for proof in [
        "ok: the macOS ._ file on the stick was skipped",
        "ok: v2 read from the stick, verified and written into slot B",
        "ok: the result was appended to the stick's log",
        booted_b.as_str(),
        "ok: health passed: slot B confirmed",
        "ok: env is ATOMUP_ORDER=B A;ATOMUP_TRIAL=;ATOMUP_LEFT=0",
        "ok: the stick's log has one line per pass, 2",
        "ok: the stick's log: demo-device-0001 installed 1 -> 2 from v2.atomup",
        "ok: the stick's log: then demo-device-0001 on 2, up to date",
    ] {
        assert!(log.contains(proof), "missing `{proof}` in:\n{log}");
    }
}

/// Issue 16 on the U-Boot board: a bundle on a FAT stick (a second virtio
/// disk, no network) is installed by `atomup-stick`, the device reboots into
/// slot B on trial and confirms it, and the stick's log, read back with
/// mtype, says device, from/to version and outcome for both passes.
#[test]
fn device_installs_a_bundle_from_a_fat_stick_confirms_it_and_logs_to_the_stick() {
    // The bundle on a FAT stick installs v1 -> v2, confirmed, and the host reads the result log.
    assert_stick_demo(false, "U-Boot");
}

/// The same stick on the GRUB/EFI board: the install writes the sealed
/// grubenv pair on the ESP (board `qemu-virt-grub`), GRUB boots slot B on
/// trial, the device confirms it and logs both passes on the stick.
#[test]
fn device_installs_a_bundle_from_a_fat_stick_confirms_it_and_logs_to_the_stick_on_grub() {
    // The bundle on a FAT stick installs v1 -> v2 through GRUB's env, confirmed, logged.
    assert_stick_demo(true, "GRUB");
}

/// Issue 16's pulled stick: QMP `device_del` removes the stick (on its PCIe
/// root port) while the device copies the delta off it (the stick throttled
/// to 256 KiB/s, the delta 4 MiB); the install fails with the env unchanged
/// and slot B out of the boot order, and after `device_add` (a second
/// insertion) it resumes the cut copy where it stopped, completes, confirms
/// and logs as above.
#[test]
fn stick_pulled_mid_install_fails_cleanly_and_a_second_insertion_completes() {
    // A stick pulled mid-copy leaves the env untouched; re-inserted, the install completes.
    let log = run_demo(false, &["--stick-pull"]);
    for proof in [
        "ok: the install from the pulled stick failed",
        "ok: nothing was logged on the pulled stick",
        "ok: the env is unchanged after the pull: slot B not in the boot order",
        "ok: the device saw the stick inserted again",
        "ok: the second insertion resumed the cut copy where it stopped",
        "ok: v2 read from the stick, verified and written into slot B",
        "ok: health passed: slot B confirmed",
        "ok: env is ATOMUP_ORDER=B A;ATOMUP_TRIAL=;ATOMUP_LEFT=0",
        "ok: the stick's log: demo-device-0001 installed 1 -> 2 from v2.atomup",
        "ok: the stick's log: then demo-device-0001 on 2, up to date",
    ] {
        assert!(log.contains(proof), "missing `{proof}` in:\n{log}");
    }
}
