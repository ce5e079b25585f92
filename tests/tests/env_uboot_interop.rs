//! Our U-Boot env reader/writer and libubootenv's real `fw_printenv` /
//! `fw_setenv` read what the other wrote: redundant and single envs, the
//! 0xff -> 0x00 flags wrap, a corrupt newer copy, and a blank env.

use atomup_bootctl::{Bootloader, UbootEnv};
use atomup_bootenv::uboot::{self, Layout};
use atomup_bootenv::{FwEnvConfig, Vars};
use atomup_scratch::ScratchDir;
use atomup_tests::uboot::{fw_printenv, redundant_image};
use std::path::Path;
use std::process::Command;

fn scratch(name: &str) -> ScratchDir {
    ScratchDir::new(&format!("env-uboot-{name}"))
}

fn env(cfg: &Path) -> UbootEnv {
    UbootEnv::from_config_file(cfg, Path::new("/")).unwrap()
}

fn printenv(cfg: &Path) -> Vec<(String, String)> {
    let mut v = fw_printenv(cfg);
    v.sort();
    v
}

fn setenv(cfg: &Path, name: &str, value: &str) -> std::process::Output {
    Command::new("fw_setenv")
        .arg("-c")
        .arg(cfg)
        .arg(name)
        .arg(value)
        .output()
        .unwrap()
}

fn vars(pairs: &[(&str, &str)]) -> Vars {
    let mut v = Vars::default();
    for (k, val) in pairs {
        v.set(k, val).unwrap();
    }
    v
}

fn sorted(v: &Vars) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = v
        .iter()
        .map(|(k, v)| {
            (
                String::from_utf8_lossy(k).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

fn flags(img: &Path, offset: usize) -> u8 {
    std::fs::read(img).unwrap()[offset + 4]
}

#[test]
fn redundant_env_both_ways_with_fw_printenv_and_fw_setenv() {
    if !atomup_tests::require_tool("fw_printenv") {
        return;
    }
    let d = scratch("redundant");
    let (img, cfg) = redundant_image(&d);
    let mut ours = env(&cfg);
    // Ours -> theirs.
    let v = vars(&[
        ("ATOMUP_ORDER", "A B"),
        ("ATOMUP_TRIAL", ""),
        ("ATOMUP_LEFT", "0"),
        ("bootdelay", "0"),
    ]);
    ours.init(&v).unwrap();
    assert_eq!(printenv(&cfg), sorted(&v));
    let v2 = vars(&[
        ("ATOMUP_ORDER", "B A"),
        ("ATOMUP_TRIAL", "B"),
        ("ATOMUP_LEFT", "3"),
        ("bootdelay", "0"),
    ]);
    ours.write(&v2).unwrap();
    assert_eq!((flags(&img, 0x80000), flags(&img, 0x84000)), (1, 2));
    assert_eq!(printenv(&cfg), sorted(&v2));
    // Theirs -> ours: fw_setenv writes the other copy with flags + 1.
    let out = setenv(&cfg, "ATOMUP_LEFT", "2");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!((flags(&img, 0x80000), flags(&img, 0x84000)), (3, 2));
    let got = ours.read().unwrap().unwrap();
    assert_eq!(got.get("ATOMUP_LEFT"), Some("2"));
    assert_eq!(got.get("ATOMUP_ORDER"), Some("B A"));
    // And ours again after theirs, both ways agree.
    ours.write(&vars(&[
        ("ATOMUP_ORDER", "B A"),
        ("ATOMUP_TRIAL", ""),
        ("ATOMUP_LEFT", "0"),
    ]))
    .unwrap();
    assert_eq!(flags(&img, 0x84000), 4);
    assert_eq!(
        printenv(&cfg)
            .iter()
            .find(|(k, _)| k == "ATOMUP_TRIAL")
            .unwrap()
            .1,
        ""
    );
}

#[test]
fn flags_wrap_from_0xff_to_0x00_both_ways() {
    if !atomup_tests::require_tool("fw_printenv") {
        return;
    }
    let d = scratch("wrap");
    let (img, cfg) = redundant_image(&d);
    let mut bytes = std::fs::read(&img).unwrap();
    let old =
        uboot::serialize_copy(&vars(&[("x", "old")]), Layout::Redundant, 0x4000, 0xfe).unwrap();
    let cur =
        uboot::serialize_copy(&vars(&[("x", "cur")]), Layout::Redundant, 0x4000, 0xff).unwrap();
    bytes[0x80000..0x84000].copy_from_slice(&old);
    bytes[0x84000..0x88000].copy_from_slice(&cur);
    std::fs::write(&img, &bytes).unwrap();
    let mut ours = env(&cfg);
    assert_eq!(ours.read().unwrap().unwrap().get("x"), Some("cur"));
    // Ours writes copy 1 with 0x00, which both sides must then prefer.
    ours.write(&vars(&[("x", "wrapped")])).unwrap();
    assert_eq!((flags(&img, 0x80000), flags(&img, 0x84000)), (0x00, 0xff));
    assert_eq!(printenv(&cfg), vec![("x".to_owned(), "wrapped".to_owned())]);
    // Theirs wraps the other way: copy 2 at 0xff... set copy 1 back to 0xff first.
    let mut bytes = std::fs::read(&img).unwrap();
    let c1 = uboot::serialize_copy(&vars(&[("x", "c1")]), Layout::Redundant, 0x4000, 0xff).unwrap();
    let c2 = uboot::serialize_copy(&vars(&[("x", "c2")]), Layout::Redundant, 0x4000, 0xfe).unwrap();
    bytes[0x80000..0x84000].copy_from_slice(&c1);
    bytes[0x84000..0x88000].copy_from_slice(&c2);
    std::fs::write(&img, &bytes).unwrap();
    let out = setenv(&cfg, "x", "theirs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!((flags(&img, 0x80000), flags(&img, 0x84000)), (0xff, 0x00));
    assert_eq!(ours.read().unwrap().unwrap().get("x"), Some("theirs"));
}

#[test]
fn corrupt_newer_copy_is_ignored_by_both() {
    if !atomup_tests::require_tool("fw_printenv") {
        return;
    }
    let d = scratch("corrupt");
    let (img, cfg) = redundant_image(&d);
    let mut ours = env(&cfg);
    ours.init(&vars(&[("x", "older")])).unwrap();
    ours.write(&vars(&[("x", "newer")])).unwrap();
    assert_eq!(printenv(&cfg), vec![("x".to_owned(), "newer".to_owned())]);
    let mut bytes = std::fs::read(&img).unwrap();
    bytes[0x84000 + 7] ^= 0x01; // copy 2 (flags 2) is the newer one
    std::fs::write(&img, &bytes).unwrap();
    assert_eq!(ours.read().unwrap().unwrap().get("x"), Some("older"));
    assert_eq!(printenv(&cfg), vec![("x".to_owned(), "older".to_owned())]);
    // The next write (either tool) replaces the corrupt copy, not the valid one.
    ours.write(&vars(&[("x", "repaired")])).unwrap();
    assert_eq!(flags(&img, 0x84000), 2);
    assert_eq!(
        printenv(&cfg),
        vec![("x".to_owned(), "repaired".to_owned())]
    );
}

#[test]
fn single_copy_env_both_ways() {
    if !atomup_tests::require_tool("fw_printenv") {
        return;
    }
    let d = scratch("single");
    let img = d.join("env.bin");
    std::fs::write(&img, vec![0u8; 0x2000]).unwrap();
    let cfg = d.join("fw_env.config");
    std::fs::write(
        &cfg,
        format!("# single copy\n{} 0x1000 0x1000\n", img.display()),
    )
    .unwrap();
    assert!(!FwEnvConfig::parse(&std::fs::read(&cfg).unwrap())
        .unwrap()
        .redundant());
    let mut ours = env(&cfg);
    ours.init(&vars(&[("a", "1"), ("b", "two words")])).unwrap();
    assert_eq!(
        printenv(&cfg),
        vec![("a".into(), "1".into()), ("b".into(), "two words".into())]
    );
    let out = setenv(&cfg, "c", "3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = ours.read().unwrap().unwrap();
    assert_eq!((got.get("a"), got.get("c")), (Some("1"), Some("3")));
    // Byte-exact: fw_setenv and we serialize the same copy for the same vars
    // (libubootenv keeps variables sorted; so do we here).
    let theirs = std::fs::read(&img).unwrap()[0x1000..0x2000].to_vec();
    let ours_bytes = uboot::serialize_copy(&got, Layout::Single, 0x1000, 0).unwrap();
    assert_eq!(theirs, ours_bytes);
}

#[test]
fn blank_env_is_refused_by_fw_setenv_until_initialized() {
    if !atomup_tests::require_tool("fw_setenv") {
        return;
    }
    let d = scratch("blank");
    let (_img, cfg) = redundant_image(&d);
    let mut ours = env(&cfg);
    assert!(ours.read().unwrap().is_none());
    let defenv = d.join("u-boot-initial-env");
    std::fs::write(&defenv, "bootdelay=0\n").unwrap();
    // Without a default env libubootenv will not write over a blank env ...
    let refused = setenv(&cfg, "x", "1");
    assert!(
        ours.read().unwrap().is_none(),
        "fw_setenv wrote over a blank env"
    );
    // ... with -f it starts from the default env file.
    let out = Command::new("fw_setenv")
        .arg("-c")
        .arg(&cfg)
        .arg("-f")
        .arg(&defenv)
        .args(["x", "1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = ours.read().unwrap().unwrap();
    assert_eq!(got.get("x"), Some("1"));
    // libubootenv 0.3.2 exits non-zero ("Cannot read default environment
    // from file") and writes nothing.
    assert!(!refused.status.success());
    // After our init, plain fw_setenv works.
    let d2 = scratch("blank2");
    let (_img2, cfg2) = redundant_image(&d2);
    env(&cfg2).init(&vars(&[("ATOMUP_ORDER", "A")])).unwrap();
    let out = setenv(&cfg2, "y", "2");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(env(&cfg2).read().unwrap().unwrap().get("y"), Some("2"));
}
