//! The `G` op's gzip rebuilds run in a helper process (`atomup
//! gzip-rebuild`), so a damaged record that crashes the rebuilding library
//! (preflate asserts on some damaged correction streams; the device binary
//! aborts on panic) fails the delta with a clear error instead of killing
//! the applier. The fixture `data/gzip-rebuild/` holds a real `gzip -9`
//! man page and a damaged copy of its corrections that makes preflate panic
//! (found by mutating the corrections at random).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use atomup_tests::delta_craft::{find, sha256, xz};
use atomup_tests::ostree_fixture::{Apply, ScratchDir, TreeBuilder};
use atomup_tests::{require_tool, workspace_bin};

fn fixture(name: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("data/gzip-rebuild")
        .join(name);
    fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn publish(args: &[&str]) -> String {
    let out = Command::new(workspace_bin("atomup-publish"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// gzip header length of a `gzip -9 FILE` output (FNAME set).
fn header_len(gz: &[u8]) -> usize {
    assert_eq!(gz[3], 0x08, "the fixture has FNAME and nothing else");
    10 + gz[10..].iter().position(|b| *b == 0).unwrap() + 1
}

#[test]
fn damaged_record_that_crashes_the_rebuilder_fails_the_delta_cleanly() {
    require_tool("xz");
    let dir = ScratchDir::new("gzip-helper");
    let man = fixture("man-page.gz");
    let bad = fixture("man-page.corrections-that-crash-preflate");
    let t = TreeBuilder::new(dir.join("tree"));
    t.dir("", 0o755)
        .file("usr/share/man/man1/pkg.1.gz", &man, 0o644);
    let repo = dir.join("repo");
    publish(&["init", "--repo", s(&repo)]);
    let c = publish(&[
        "commit",
        "--repo",
        s(&repo),
        "--tree",
        s(&t.root),
        "--branch",
        "os/main",
        "--owner-uid",
        "0",
        "--owner-gid",
        "0",
        "--quiet",
    ]);
    let delta = repo.join(publish(&[
        "delta",
        "--repo",
        s(&repo),
        "--to",
        &c,
        "--scratch",
        "--gzip-rebuild",
        "--quiet",
    ]));
    // The intact delta applies and rebuilds the man page (in the helper).
    let good_target = dir.join("good");
    fs::create_dir(&good_target).unwrap();
    let out = Apply {
        delta: delta.clone(),
        to: good_target.clone(),
        stats: true,
        ..Default::default()
    }
    .run_ok();
    assert_eq!(
        fs::read(good_target.join("usr/share/man/man1/pkg.1.gz")).unwrap(),
        man
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let helper_kib: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("helper_private_peak_kib="))
        .expect("helper peak in --stats")
        .parse()
        .unwrap();
    assert!(helper_kib > 0, "no helper process ran: {stdout}");

    // Swap the record's corrections for the damaged ones (same length),
    // then re-seal the part: new xz stream, new sha256 and size in the
    // (unsigned) superblock.
    let part_path = delta.join("0");
    let part = fs::read(&part_path).unwrap();
    let mut payload = xz(&["-dc"], &part[1..]);
    let h = header_len(&man);
    let at = find(&payload, &man[..h]).expect("the record's gzip header in the payload") + h;
    payload[at..at + bad.len()].copy_from_slice(&bad);
    let mut new_part = vec![b'x'];
    new_part.extend_from_slice(&xz(&["-zc", "-6"], &payload));
    let mut sb = fs::read(delta.join("superblock")).unwrap();
    let csum_at = find(&sb, &sha256(&part)).expect("part checksum in the superblock");
    sb[csum_at..csum_at + 32].copy_from_slice(&sha256(&new_part));
    let size_at = find(&sb, &(part.len() as u64).to_le_bytes()).expect("part size");
    sb[size_at..size_at + 8].copy_from_slice(&(new_part.len() as u64).to_le_bytes());
    fs::write(&part_path, &new_part).unwrap();
    fs::write(delta.join("superblock"), &sb).unwrap();

    let target = dir.join("target");
    fs::create_dir(&target).unwrap();
    let out = Apply {
        delta: delta.clone(),
        to: target.clone(),
        ..Default::default()
    }
    .run();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a damaged record was accepted");
    assert!(
        stderr.contains("crashed on the record"),
        "the applier should report the helper's crash:\n{stderr}"
    );
    assert!(!target.join("usr/share/man/man1/pkg.1.gz").exists());

    // The helper alone: the same input ends it abnormally (a panic), never
    // with output.
    let mut rec = Vec::new();
    let text = {
        let mut d = Command::new("gzip")
            .args(["-dc"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        d.stdin.take().unwrap().write_all(&man).unwrap();
        d.wait_with_output().unwrap().stdout
    };
    atomup_tests::delta_craft::write_varint(&mut rec, text.len() as u64);
    atomup_tests::delta_craft::write_varint(&mut rec, h as u64);
    rec.extend_from_slice(&man[..h]);
    rec.extend_from_slice(&bad);
    let mut input = (rec.len() as u32).to_le_bytes().to_vec();
    input.extend_from_slice(&rec);
    input.extend_from_slice(&text);
    let mut helper = Command::new(workspace_bin("atomup"))
        .arg("gzip-rebuild")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        helper.stdin.take().unwrap().write_all(&input).unwrap();
    }
    let r = helper.wait_with_output().unwrap();
    assert!(
        !r.status.success() && r.status.code() != Some(1),
        "{:?}",
        r.status
    );
    assert!(r.stdout.is_empty());
}
