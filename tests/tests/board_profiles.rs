//! The shipped board profiles are data the real tools accept (board.conf by
//! the agent, fw_env.config by our parser and `fw_printenv`, the boot scripts
//! by `mkimage` and `grub-script-check`), and `atomup board check` says what
//! is wrong when a profile does not describe the system it runs on.

use atomup_tests::device::{atomup_bounded, text};
use atomup_tests::ostree_fixture::ScratchDir;
use atomup_tests::{require_tool, workspace_root};
use std::ffi::OsString;
use std::fs;
use std::path::PathBuf;
use std::process::Command;

fn profiles() -> PathBuf {
    workspace_root().join("board-support/profiles")
}

/// Each profile directory holds a board.conf and its bootloader script, and
/// the scripts are what the bootloaders' own tools accept.
#[test]
fn every_profile_is_a_board_conf_and_a_bootloader_script_the_tools_accept() {
    require_tool("mkimage");
    require_tool("grub-script-check");
    let dir = ScratchDir::new("profiles");
    let mut seen = Vec::new();
    for e in fs::read_dir(profiles()).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let conf = fs::read_to_string(p.join("board.conf")).unwrap();
        let board =
            atomup_board::Board::parse(&conf).unwrap_or_else(|e| panic!("{name}/board.conf: {e}"));
        match board.bootloader {
            atomup_board::Bootloader::UBoot { .. } => {
                let out = Command::new("mkimage")
                    .args([
                        "-A", "arm64", "-O", "linux", "-T", "script", "-C", "none", "-d",
                    ])
                    .arg(p.join("boot.cmd"))
                    .arg(dir.join(format!("{name}.scr")))
                    .output()
                    .unwrap();
                assert!(out.status.success(), "{name}: {}", text(&out));
                let cfg = fs::read(p.join("fw_env.config")).unwrap();
                let parsed = atomup_bootenv::fwconfig::FwEnvConfig::parse(&cfg)
                    .unwrap_or_else(|e| panic!("{name}/fw_env.config: {e}"));
                assert_eq!(parsed.devices.len(), 2, "{name}: a redundant env");
            }
            atomup_board::Bootloader::Grub { .. } => {
                let out = Command::new("grub-script-check")
                    .arg(p.join("grub.cfg"))
                    .output()
                    .unwrap();
                assert!(out.status.success(), "{name}: {}", text(&out));
            }
        }
        assert!(
            atomup_board::Board::shipped(&name).is_some(),
            "{name} is not in PROFILES"
        );
        seen.push(name);
    }
    seen.sort();
    assert_eq!(
        seen,
        ["qemu-virt-grub-efi", "qemu-virt-uboot", "rpi4-uboot"]
    );
}

/// The Raspberry Pi's fw_env.config is read by libubootenv's own parser the
/// same way: two copies of 0x4000 bytes at 0x80000 and 0x84000 (pointed at an
/// image file, `fw_printenv` reads the env atomup writes there).
#[test]
fn the_rpi4_fw_env_config_is_read_by_fw_printenv() {
    require_tool("fw_printenv");
    let dir = ScratchDir::new("rpi4-env");
    let img = dir.join("sd.img");
    fs::File::create(&img).unwrap().set_len(1 << 20).unwrap();
    let cfg = fs::read_to_string(profiles().join("rpi4-uboot/fw_env.config"))
        .unwrap()
        .replace("/dev/mmcblk0", &img.display().to_string());
    let cfg_path = dir.join("fw_env.config");
    fs::write(&cfg_path, cfg).unwrap();
    let a: Vec<OsString> = vec![
        "env".into(),
        "init".into(),
        "--order".into(),
        "A".into(),
        "--env-config".into(),
        cfg_path.clone().into(),
    ];
    let out = atomup_bounded(a);
    assert!(out.status.success(), "{}", text(&out));
    let out = Command::new("fw_printenv")
        .arg("-c")
        .arg(&cfg_path)
        .arg("ATOMUP_ORDER")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ATOMUP_ORDER=A\n",
        "{}",
        text(&out)
    );
}

/// A profile that does not describe this machine fails the check with one
/// FAIL line per problem: devices that do not exist or are not block
/// devices, no booted slot, no env, a missing watchdog and LED.
#[test]
fn board_check_says_what_is_wrong() {
    let dir = ScratchDir::new("board-check");
    let conf = dir.join("board.conf");
    fs::write(
        &conf,
        format!(
            "board = test\nbootloader = uboot\nenv = {}\nslot.A = /dev/null\nslot.B = {}\n\
             data = {}\nwatchdog = {}\nled = {}\n",
            dir.join("fw_env.config").display(),
            dir.join("no-such-b").display(),
            dir.join("no-such-data").display(),
            dir.join("no-watchdog").display(),
            dir.join("leds/none").display(),
        ),
    )
    .unwrap();
    let cmdline = dir.join("cmdline");
    fs::write(&cmdline, "console=ttyS0\n").unwrap();
    let a: Vec<OsString> = vec![
        "board".into(),
        "check".into(),
        "--board-conf".into(),
        conf.clone().into(),
        "--cmdline".into(),
        cmdline.into(),
        "--state-dir".into(),
        dir.join("state").into(),
    ];
    let out = atomup_bounded(a);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(
        t.contains(&format!(
            "ok    profile: {} parses: board `test`",
            conf.display()
        )),
        "{t}"
    );
    for want in [
        "FAIL  slot.A: /dev/null: a character device, not a block device",
        "FAIL  slot.B: ",
        "FAIL  data: ",
        "FAIL  booted slot: no atomup.slot= on the kernel command line",
        "FAIL  env: U-Boot, ",
        "FAIL  watchdog: ",
        "FAIL  led: ",
    ] {
        assert!(t.contains(want), "no `{want}` in:\n{t}");
    }
    assert!(t.contains("error: board check: 8 problem(s)"), "{t}");
    // Without a profile there is nothing to check.
    let a: Vec<OsString> = vec![
        "board".into(),
        "check".into(),
        "--board-conf".into(),
        dir.join("missing.conf").into(),
    ];
    let out = atomup_bounded(a);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("cannot read board profile"),
        "{}",
        text(&out)
    );
}
