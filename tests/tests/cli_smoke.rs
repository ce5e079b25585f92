//! The built binaries start and answer `--help`/`version` on the host.

use std::process::Command;

#[test]
fn atomup_help_lists_commands() {
    let out = Command::new(atomup_tests::workspace_bin("atomup"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("Usage: atomup <command>"), "{text}");
}

#[test]
fn atomup_rejects_unknown_command_with_one_error_line() {
    let out = Command::new(atomup_tests::workspace_bin("atomup"))
        .arg("frobnicate")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: unknown command `frobnicate`"),
        "{err}"
    );
}

#[test]
fn publisher_reports_its_version() {
    let out = Command::new(atomup_tests::workspace_bin("atomup-publish"))
        .arg("version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8(out.stdout)
        .unwrap()
        .starts_with("atomup-publish "));
}
