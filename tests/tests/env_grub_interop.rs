//! Our grubenv reader/writer and the real `grub-editenv` read what the other
//! wrote (create, set with escapes, unset, list), byte for byte, and a GRUB
//! style in-place decrement of the sealed pair is picked up by our reader.

use atomup_bootctl::{Bootloader, GrubEnv};
use atomup_bootenv::grub_pair::{self, Pair};
use atomup_bootenv::{grub, Vars};
use atomup_scratch::ScratchDir;
use std::path::Path;
use std::process::Command;

fn scratch(name: &str) -> ScratchDir {
    ScratchDir::new(&format!("env-grub-{name}"))
}

/// Blocks compared as text so a mismatch prints readably.
fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn editenv(file: &Path, args: &[&str]) -> String {
    let out = Command::new("grub-editenv")
        .arg(file)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "grub-editenv {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn grub_editenv_and_we_read_each_other_byte_for_byte() {
    if !atomup_tests::require_tool("grub-editenv") {
        return;
    }
    let d = scratch("bytes");
    let theirs = d.join("theirs");
    editenv(&theirs, &["create"]);
    assert_eq!(
        grub::parse(&std::fs::read(&theirs).unwrap()).unwrap(),
        Vars::default()
    );
    editenv(
        &theirs,
        &[
            "set",
            "saved_entry=1",
            "weird=back\\slash",
            "ATOMUP_ORDER=B A",
        ],
    );
    editenv(&theirs, &["set", "nl=line1\nline2"]);
    let theirs_bytes = std::fs::read(&theirs).unwrap();
    let parsed = grub::parse(&theirs_bytes).unwrap();
    assert_eq!(parsed.get("weird"), Some("back\\slash"));
    assert_eq!(parsed.get("nl"), Some("line1\nline2"));
    assert_eq!(parsed.get("ATOMUP_ORDER"), Some("B A"));
    // Our serialization of the same variables is the same 1024 bytes.
    assert_eq!(
        text(&grub::serialize(&parsed).unwrap()),
        text(&theirs_bytes)
    );
    // Unset in the middle: the block shifts up and is re-padded, as ours.
    editenv(&theirs, &["unset", "weird"]);
    let mut expect = parsed.clone();
    expect.remove("weird");
    assert_eq!(
        std::fs::read(&theirs).unwrap(),
        grub::serialize(&expect).unwrap()
    );

    // Ours -> theirs.
    let ours = d.join("ours");
    let mut v = Vars::default();
    v.set("ATOMUP_TRIAL", "").unwrap();
    v.set("esc", "a\\b\nc").unwrap();
    std::fs::write(&ours, grub::serialize(&v).unwrap()).unwrap();
    let listed = editenv(&ours, &["list"]);
    assert_eq!(listed, "ATOMUP_TRIAL=\nesc=a\\b\nc\n");
    editenv(&ours, &["set", "added=1"]);
    let back = grub::parse(&std::fs::read(&ours).unwrap()).unwrap();
    assert_eq!(
        (back.get("esc"), back.get("added")),
        (Some("a\\b\nc"), Some("1"))
    );
}

#[test]
fn sealed_blocks_are_plain_grubenv_and_a_grub_style_decrement_wins() {
    if !atomup_tests::require_tool("grub-editenv") {
        return;
    }
    let d = scratch("sealed");
    let file1 = d.join("grubenv");
    let mut env = GrubEnv::new(&file1);
    let mut v = Vars::default();
    for (k, val) in [
        ("ATOMUP_ORDER", "B A"),
        ("ATOMUP_TRIAL", "B"),
        ("ATOMUP_LEFT", "3"),
    ] {
        v.set(k, val).unwrap();
    }
    env.init(&v).unwrap();
    let [f1, f2] = env.files().clone();
    assert_eq!(
        editenv(&f1, &["list"]),
        "ATOMUP_SEQ=1\nATOMUP_ORDER=B A\nATOMUP_TRIAL=B\nATOMUP_LEFT=3\nATOMUP_SEAL=1:B A:B:3\n"
    );
    assert_eq!(
        editenv(&f2, &["list"]),
        "ATOMUP_SEQ=0\nATOMUP_ORDER=B A\nATOMUP_TRIAL=B\nATOMUP_LEFT=3\nATOMUP_SEAL=0:B A:B:3\n"
    );
    // Same bytes as grub-editenv makes when it sets the variables in order.
    let fresh = d.join("fresh");
    editenv(&fresh, &["create"]);
    editenv(
        &fresh,
        &[
            "set",
            "ATOMUP_SEQ=1",
            "ATOMUP_ORDER=B A",
            "ATOMUP_TRIAL=B",
            "ATOMUP_LEFT=3",
            "ATOMUP_SEAL=1:B A:B:3",
        ],
    );
    assert_eq!(
        text(&std::fs::read(&fresh).unwrap()),
        text(&std::fs::read(&f1).unwrap())
    );
    // GRUB's trial boot: save_env into the NON-current block (block 2) with
    // the same SEQ, LEFT-1 and a new seal.
    editenv(
        &f2,
        &[
            "set",
            "ATOMUP_SEQ=1",
            "ATOMUP_LEFT=2",
            "ATOMUP_SEAL=1:B A:B:2",
        ],
    );
    let p = Pair::parse(&std::fs::read(&f1).unwrap(), &std::fs::read(&f2).unwrap());
    assert_eq!(p.current, Some(1));
    assert_eq!(env.read().unwrap().unwrap().get("ATOMUP_LEFT"), Some("2"));
    // A torn GRUB write that updated LEFT but not the seal is ignored.
    editenv(&f1, &["set", "ATOMUP_LEFT=1"]);
    assert_eq!(env.read().unwrap().unwrap().get("ATOMUP_LEFT"), Some("2"));
    // The agent then writes block 1 (invalid now) with SEQ 2.
    v.set("ATOMUP_TRIAL", "").unwrap();
    v.set("ATOMUP_LEFT", "0").unwrap();
    env.write(&v).unwrap();
    assert!(editenv(&f1, &["list"]).starts_with("ATOMUP_SEQ=2\n"));
    let p = Pair::parse(&std::fs::read(&f1).unwrap(), &std::fs::read(&f2).unwrap());
    assert_eq!((p.current, p.next_write()), (Some(0), (1, 3)));
    assert!(grub_pair::parse_sealed(&std::fs::read(&f2).unwrap()).is_ok());
}
