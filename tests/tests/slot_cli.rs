//! The `atomup` boot-state commands drive a whole update life on a disk image
//! (U-Boot env) and on a grubenv pair, with the real fw_setenv / grub-editenv
//! playing the bootloader's decrement and fw_printenv / grub-editenv reading
//! the result: install, trial, confirm, fallback + recorded rollback, manual
//! rollback, and the refusals that keep a confirmed slot.

use atomup_scratch::ScratchDir;
use std::path::Path;
use std::process::{Command, Output};

/// The commits the records name (typed: 64 lower-case hex digits).
const GOOD: &str = "c0ffeec0ffeec0ffeec0ffeec0ffeec0ffeec0ffeec0ffeec0ffeec0ffeec0ff";
const BAD: &str = "bad0bad0bad0bad0bad0bad0bad0bad0bad0bad0bad0bad0bad0bad0bad0bad0";

fn scratch(name: &str) -> ScratchDir {
    ScratchDir::new(&format!("slot-cli-{name}"))
}

fn atomup(args: &[&str], env: &[&str]) -> Output {
    Command::new(atomup_tests::workspace_bin("atomup"))
        .args(args)
        .args(env)
        .output()
        .unwrap()
}

fn ok(args: &[&str], env: &[&str]) -> String {
    let out = atomup(args, env);
    assert!(
        out.status.success(),
        "atomup {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fails(args: &[&str], env: &[&str]) -> String {
    let out = atomup(args, env);
    assert!(!out.status.success(), "atomup {args:?} should fail");
    String::from_utf8(out.stderr).unwrap()
}

/// `atomup status --json`, parsed by a real JSON parser (one document,
/// nothing after it).
fn status_json(env: &[&str]) -> serde_json::Value {
    let text = ok(&["status", "--json"], env);
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {text}"))
}

fn printenv(cfg: &Path, name: &str) -> String {
    atomup_tests::uboot::fw_printenv(cfg)
        .into_iter()
        .find(|(k, _)| k == name)
        .unwrap_or_else(|| panic!("fw_printenv has no {name}"))
        .1
}

#[test]
fn update_life_on_a_uboot_disk_image() {
    if !atomup_tests::require_tool("fw_printenv") {
        return;
    }
    let d = scratch("uboot");
    let (img, cfg) = atomup_tests::uboot::redundant_image(&d);
    let state = d.join("state");
    let (img_s, cfg_s, state_s) = (
        img.to_str().unwrap(),
        cfg.to_str().unwrap(),
        state.to_str().unwrap(),
    );
    let on_a = [
        "--env-config",
        cfg_s,
        "--state-dir",
        state_s,
        "--booted-slot",
        "A",
    ];
    let on_b = [
        "--env-config",
        cfg_s,
        "--state-dir",
        state_s,
        "--booted-slot",
        "B",
    ];

    ok(&["env", "init", "--env-image", img_s, "--order", "A"], &[]);
    assert_eq!(printenv(&cfg, "ATOMUP_ORDER"), "A");
    ok(&["install-start", "--slot", "B"], &on_a);
    ok(
        &[
            "install-done",
            "--slot",
            "B",
            "--commit",
            GOOD,
            "--version",
            "2",
            "--timestamp",
            "2026-11-22T00:00:00Z",
        ],
        &on_a,
    );
    assert_eq!(
        (
            printenv(&cfg, "ATOMUP_ORDER"),
            printenv(&cfg, "ATOMUP_TRIAL"),
            printenv(&cfg, "ATOMUP_LEFT")
        ),
        ("B A".into(), "B".into(), "3".into())
    );
    // The bootloader's trial decrement, done by the real fw_setenv.
    let st = Command::new("fw_setenv")
        .arg("-c")
        .arg(&cfg)
        .args(["ATOMUP_LEFT", "2"])
        .status()
        .unwrap();
    assert!(st.success());
    let json = status_json(&on_b);
    assert_eq!(json["format"], 2, "{json}");
    assert_eq!(json["booted"], "B", "{json}");
    assert_eq!(
        json["slots"][1],
        serde_json::json!({"slot": "B", "booted": true, "state": "trial", "commit": GOOD,
            "version": 2, "timestamp": 1_795_305_600u64, "attempts_left": 2,
            "etc_merge": null}),
        "{json}"
    );
    let text = ok(&["status"], &on_b);
    assert!(
        text.contains("● B")
            && text.contains("State: trial")
            && text.contains("Timestamp: 2026-11-22T00:00:00Z"),
        "{text}"
    );
    ok(&["mark-good"], &on_b);
    assert_eq!(
        (
            printenv(&cfg, "ATOMUP_TRIAL"),
            printenv(&cfg, "ATOMUP_LEFT")
        ),
        (String::new(), "0".into())
    );
    // A confirmed boot writes nothing.
    let before = std::fs::read(&img).unwrap();
    assert!(ok(&["mark-good"], &on_b).contains("nothing to write"));
    assert_eq!(std::fs::read(&img).unwrap(), before);

    // Next release into A, which never passes: the bootloader spends its
    // attempts and falls back to B; mark-good on B records the rollback.
    ok(&["install-start", "--slot", "A"], &on_b);
    assert_eq!(printenv(&cfg, "ATOMUP_ORDER"), "B");
    ok(
        &[
            "install-done",
            "--slot",
            "A",
            "--attempts",
            "1",
            "--commit",
            BAD,
            "--version",
            "3",
        ],
        &on_b,
    );
    let st = Command::new("fw_setenv")
        .arg("-c")
        .arg(&cfg)
        .args(["ATOMUP_LEFT", "0"])
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(status_json(&on_b)["fallback_pending"], true);
    let out = ok(&["mark-good"], &on_b);
    assert!(out.contains("rollback detected"), "{out}");
    assert_eq!(
        (
            printenv(&cfg, "ATOMUP_ORDER"),
            printenv(&cfg, "ATOMUP_TRIAL")
        ),
        ("B".into(), String::new())
    );
    let json = status_json(&on_b);
    let rollbacks = json["rollbacks"].as_array().unwrap();
    assert_eq!(rollbacks.len(), 1, "{json}");
    assert_eq!(
        (
            &rollbacks[0]["slot"],
            &rollbacks[0]["commit"],
            &rollbacks[0]["version"]
        ),
        (&"A".into(), &BAD.into(), &3.into()),
        "{json}"
    );
    assert!(rollbacks[0]["at"].is_u64(), "{json}");
    assert_eq!(
        (
            &json["slots"][0]["slot"],
            &json["slots"][0]["booted"],
            &json["slots"][0]["state"]
        ),
        (&"A".into(), &false.into(), &"bad".into()),
        "{json}"
    );

    // Refusals that keep a confirmed slot: no rollback to a bad slot, no
    // mark-bad of the only confirmed slot.
    assert!(fails(&["rollback"], &on_b).contains("cannot roll back"));
    assert!(fails(&["mark-bad"], &on_b).contains("only slot in the boot order"));
    assert_eq!(printenv(&cfg, "ATOMUP_ORDER"), "B");
    // With both confirmed, rollback swaps the order.
    ok(&["env", "set", "--order", "B A"], &on_b);
    ok(&["rollback"], &on_b);
    assert_eq!(printenv(&cfg, "ATOMUP_ORDER"), "A B");
    // Booted slot unknown on a host without --booted-slot and no atomup.slot=.
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    if !cmdline.contains("atomup.slot=") {
        assert!(fails(&["mark-good", "--env-config", cfg_s], &[]).contains("booted slot unknown"));
    }
}

#[test]
fn update_life_on_a_grubenv_pair() {
    if !atomup_tests::require_tool("grub-editenv") {
        return;
    }
    let d = scratch("grub");
    let env = d.join("grubenv");
    let env_s = env.to_str().unwrap();
    let env2 = d.join("grubenv2");
    let list = |p: &Path| {
        let out = Command::new("grub-editenv")
            .arg(p)
            .arg("list")
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    let on_a = ["--grubenv", env_s, "--booted-slot", "A"];
    ok(&["env", "init", "--order", "A"], &on_a);
    ok(&["install-start", "--slot", "B"], &on_a);
    ok(&["install-done", "--slot", "B"], &on_a);
    // SEQ 0/1 from init, the two writes went to block 2 then block 1.
    assert!(list(&env).contains("ATOMUP_SEQ=3\nATOMUP_ORDER=B A\nATOMUP_TRIAL=B\nATOMUP_LEFT=3\nATOMUP_SEAL=3:B A:B:3\n"), "{}", list(&env));
    assert!(
        list(&env2).contains("ATOMUP_SEQ=2\nATOMUP_ORDER=A\n"),
        "{}",
        list(&env2)
    );
    // GRUB's decrement into the non-current block (block 2) with grub-editenv.
    let st = Command::new("grub-editenv")
        .arg(&env2)
        .args([
            "set",
            "ATOMUP_SEQ=3",
            "ATOMUP_ORDER=B A",
            "ATOMUP_TRIAL=B",
            "ATOMUP_LEFT=2",
            "ATOMUP_SEAL=3:B A:B:2",
        ])
        .status()
        .unwrap();
    assert!(st.success());
    let on_b = ["--grubenv", env_s, "--booted-slot", "B"];
    assert!(ok(&["env", "show"], &on_b).contains("ATOMUP_LEFT=2"));
    ok(&["mark-good"], &on_b);
    assert!(
        list(&env).contains("ATOMUP_SEQ=4\nATOMUP_ORDER=B A\nATOMUP_TRIAL=\nATOMUP_LEFT=0\n"),
        "{}",
        list(&env)
    );
    let json = status_json(&on_b);
    assert_eq!(json["order"], serde_json::json!(["B", "A"]), "{json}");
    assert!(json["trial"].is_null(), "{json}");
}

/// Regression (issue 11.7): the slot commands ignored the board profile, so
/// on a GRUB board with only `board.conf`, `mark-good` opened
/// /etc/fw_env.config. They now find the env as `update` does.
#[test]
fn slot_commands_find_the_env_through_the_board_profile() {
    let d = scratch("board");
    let env = d.join("grubenv");
    let env_s = env.to_str().unwrap();
    let conf = d.join("board.conf");
    std::fs::write(
        &conf,
        format!(
            "board = pc\nbootloader = grub\nenv = {env_s}\nslot.A = /dev/null\nslot.B = /dev/null\n"
        ),
    )
    .unwrap();
    let conf_s = conf.to_str().unwrap();
    let state = d.join("state");
    let state_s = state.to_str().unwrap();
    ok(&["env", "init", "--order", "A"], &["--grubenv", env_s]);
    let on = |slot: &'static str| {
        [
            "--board-conf",
            conf_s,
            "--booted-slot",
            slot,
            "--state-dir",
            state_s,
        ]
    };
    ok(&["install-start", "--slot", "B"], &on("A"));
    ok(&["install-done", "--slot", "B"], &on("A"));
    assert!(ok(&["status"], &on("B")).contains("State: trial"));
    assert!(ok(&["mark-good"], &on("B")).contains("slot B confirmed good"));
    assert_eq!(
        ok(&["env", "show"], &["--grubenv", env_s]),
        "ATOMUP_ORDER=B A\nATOMUP_TRIAL=\nATOMUP_LEFT=0\n"
    );
}

/// Record first, env last (issue 11.7): when a record cannot be written the
/// env is not changed. `install-start` writes the target's record before it
/// takes the slot out of the order; `mark-good` after a fallback records the
/// rollback before it clears the exhausted trial (it wrote the env first,
/// unlike `mark-bad`). A directory where the record goes makes the write
/// fail for real.
#[test]
fn a_record_that_cannot_be_written_leaves_the_env_untouched() {
    let d = scratch("record-first");
    let (img, _) = atomup_tests::uboot::redundant_image(&d);
    let (img_s, state) = (img.to_str().unwrap(), d.join("state"));
    let state_s = state.to_str().unwrap();
    let on = |slot: &'static str| {
        [
            "--env-image",
            img_s,
            "--state-dir",
            state_s,
            "--booted-slot",
            slot,
        ]
    };
    ok(&["env", "init", "--order", "A"], &on("A"));
    std::fs::create_dir_all(state.join("slots/B")).unwrap();
    let before = std::fs::read(&img).unwrap();
    fails(&["install-start", "--slot", "B"], &on("A"));
    assert!(
        std::fs::read(&img).unwrap() == before,
        "install-start wrote the env first"
    );
    std::fs::remove_dir(state.join("slots/B")).unwrap();

    // A's trial ran out of attempts; B booted.
    ok(
        &[
            "env", "set", "--order", "A B", "--trial", "A", "--left", "0",
        ],
        &on("B"),
    );
    std::fs::create_dir_all(state.join("rollbacks")).unwrap();
    let before = std::fs::read(&img).unwrap();
    fails(&["mark-good"], &on("B"));
    assert!(
        std::fs::read(&img).unwrap() == before,
        "mark-good wrote the env before the rollback record"
    );
    std::fs::remove_dir(state.join("rollbacks")).unwrap();
    assert!(ok(&["mark-good"], &on("B")).contains("rollback detected"));
    // A cut between record and env repeats the detection: recorded once.
    ok(
        &[
            "env", "set", "--order", "A B", "--trial", "A", "--left", "0",
        ],
        &on("B"),
    );
    ok(&["mark-good"], &on("B"));
    let list = std::fs::read_to_string(state.join("rollbacks")).unwrap();
    assert_eq!(list.lines().count(), 2, "{list}");
}
