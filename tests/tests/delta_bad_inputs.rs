//! Every bad delta is refused with a clear `error:` naming the problem, and a
//! refused apply writes nothing outside the target and leaves the active root
//! untouched. Each crafted delta has exactly one defect (see
//! `atomup_tests::delta_craft`) and is signed by the trusted key, so the test
//! proves the check it is named after, not the signature check.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use atomup_tests::delta_craft::{dirtree_with_names, xz, Crafted, OBJ_FILE};
use atomup_tests::ostree_fixture::{
    assert_same_tree, pseudo_bytes, tree_digest, tree_digest_with_times, Apply, Keys, Repo,
    ScratchDir, TreeBuilder,
};

struct Fixture {
    _dir: ScratchDir,
    root: PathBuf,
    repo: Repo,
    trusted: Keys,
    other: Keys,
    /// v1 with one unchanged file altered: an active root that is not v1.
    v0: String,
    v1: String,
    v2: String,
    active_v1: PathBuf,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        atomup_tests::require_tool("ostree");
        atomup_tests::require_tool("xz");
        let dir = ScratchDir::new("delta-bad");
        let root = dir.path().to_path_buf();
        let repo = Repo::init(root.join("repo"), "archive");
        let t = TreeBuilder::new(root.join("tree"));
        t.file("keep", b"unchanged\n", 0o644)
            .file("usr/bin/tool", &pseudo_bytes(11, 20_000, false), 0o755)
            .file("etc/config", b"v1\n", 0o644);
        let v1 = repo.commit(&t.root, "v1");
        t.file("keep", b"unchanged, but not in v1\n", 0o644);
        let v0 = repo.commit(&t.root, "v0");
        // v2 holds the raw material the crafted defects rename: `a0b` becomes
        // `..`/`a/b`/`.`/empty, directory `linl` becomes `link` beside the
        // symlink `link` that points out of the target.
        let mut tool = pseudo_bytes(11, 20_000, false);
        for i in (0..tool.len()).step_by(512) {
            tool[i] ^= 0x55;
        }
        t.file("keep", b"unchanged\n", 0o644)
            .file("usr/bin/tool", &tool, 0o755)
            .file("etc/config", b"v2\n", 0o644)
            .file("a0b", b"victim\n", 0o644)
            .file("aa", b"second\n", 0o644)
            .symlink("link", "../outside")
            .file("linl/f", b"escaped\n", 0o644);
        let v2 = repo.commit(&t.root, "v2");
        let active_v1 = root.join("active-v1");
        repo.checkout(&v1, &active_v1);
        let trusted = Keys::generate(&root.join("keys"), "trusted");
        let other = Keys::generate(&root.join("keys"), "other");
        Fixture {
            _dir: dir,
            root,
            repo,
            trusted,
            other,
            v0,
            v1,
            v2,
            active_v1,
        }
    })
}

/// A case directory: `target/` (empty), `outside/` (a sentinel that must stay
/// as it is), and whatever deltas the case writes under `delta*/`.
struct Case {
    dir: PathBuf,
}

impl Case {
    fn new(name: &str) -> Self {
        let dir = fixture().root.join("cases").join(name);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("target")).unwrap();
        TreeBuilder::new(dir.join("outside"))
            .file("sentinel", b"must survive\n", 0o644)
            .dir("sub", 0o755);
        Case { dir }
    }

    fn delta(&self) -> PathBuf {
        self.dir.join("delta")
    }

    /// A v1 -> v2 apply into this case's target, trusting `trusted`.
    fn apply(&self, delta: &Path) -> Apply {
        let f = fixture();
        Apply {
            delta: delta.to_path_buf(),
            to: self.dir.join("target"),
            from_root: Some(f.active_v1.clone()),
            from_meta: Some(f.repo.path.clone()),
            trusted: Some(f.trusted.public.clone()),
            ..Apply::default()
        }
    }

    /// Runs `apply`, which must fail with an `error:` line containing one of
    /// `phrases` (case-insensitive), and checks nothing escaped the target.
    fn assert_refused(&self, apply: &Apply, phrases: &[&str]) -> String {
        let outside_before = tree_digest(&self.dir.join("outside"));
        let active = apply.from_root.clone();
        let active_before = active.as_deref().map(tree_digest);
        let mut listing_before: Vec<_> = fs::read_dir(&self.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        listing_before.sort();

        let out = apply.run();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        eprintln!("{}: {}", self.dir.display(), stderr.trim_end());
        assert!(
            !out.status.success(),
            "bad delta was applied:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(stderr.starts_with("error: "), "no `error:` line:\n{stderr}");
        let lower = stderr.to_lowercase();
        assert!(
            phrases.iter().any(|p| lower.contains(&p.to_lowercase())),
            "error does not say {phrases:?}:\n{stderr}"
        );
        assert!(!lower.contains("panicked"), "{stderr}");

        // Rule: nothing is written outside the target, the active root is read-only.
        assert_eq!(
            tree_digest(&self.dir.join("outside")),
            outside_before,
            "sentinel outside the target changed"
        );
        let mut listing_after: Vec<_> = fs::read_dir(&self.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        listing_after.sort();
        assert_eq!(
            listing_after, listing_before,
            "entries appeared beside the target"
        );
        if let (Some(active), Some(before)) = (active, active_before) {
            assert_eq!(tree_digest(&active), before, "the active root was modified");
        }
        stderr
    }
}

/// A real v1 -> v2 delta (default options), signed by `keys` if given.
fn real_delta(case: &Case, keys: Option<&Keys>) -> PathBuf {
    let f = fixture();
    let dir = case.delta();
    f.repo
        .delta(Some(&f.v1), &f.v2, &["--min-fallback-size=0"], &dir);
    if let Some(keys) = keys {
        keys.sign_delta(&dir);
    }
    dir
}

/// Takes the real v1 -> v2 delta apart for one edit.
fn crafted(case: &Case) -> Crafted {
    let f = fixture();
    Crafted::generate(&f.repo, Some(&f.v1), &f.v2, &case.dir.join("work"))
}

/// Writes and signs a crafted delta with the trusted key.
fn finish(case: &Case, c: &Crafted) -> PathBuf {
    let dir = case.delta();
    c.write(&dir);
    fixture().trusted.sign_delta(&dir);
    dir
}

fn flip_byte(path: &Path, at_fraction: usize) {
    let mut data = fs::read(path).unwrap();
    let i = data.len() * at_fraction / 100;
    data[i] ^= 0x01;
    fs::write(path, data).unwrap();
}

fn truncate_half(path: &Path) {
    let data = fs::read(path).unwrap();
    fs::write(path, &data[..data.len() / 2]).unwrap();
}

const SIGNATURE: &[&str] = &["signature", "signed", "key"];
const BOUNDS: &[&str] = &[
    "past",
    "out of range",
    "bounds",
    "beyond",
    "exceeds",
    "too large",
    "truncated",
    "overflow",
];
const NAME: &[&str] = &["name", "invalid", "unsafe"];

// --- controls: the crafting pipeline alone adds no defect ---

#[test]
fn crafted_delta_without_defect_applies() {
    let case = Case::new("control-identity");
    let c = crafted(&case);
    let delta = finish(&case, &c);
    case.apply(&delta).run_ok();
    let oracle = case.dir.join("oracle");
    fixture().repo.checkout(&fixture().v2, &oracle);
    assert_same_tree(&case.dir.join("target"), &oracle);
}

#[test]
fn crafted_delta_with_valid_rename_applies() {
    let f = fixture();
    let case = Case::new("control-rename");
    let mut c = crafted(&case);
    c.replace_root_dirtree(&dirtree_with_names(&f.repo, &f.v2, "/", |n| {
        if n == "a0b" {
            b"a1b".to_vec()
        } else {
            n.as_bytes().to_vec()
        }
    }));
    let delta = finish(&case, &c);
    case.apply(&delta).run_ok();
    let oracle = case.dir.join("oracle");
    f.repo.checkout(&f.v2, &oracle);
    fs::rename(oracle.join("a0b"), oracle.join("a1b")).unwrap();
    assert_same_tree(&case.dir.join("target"), &oracle);
}

// --- framing and integrity ---

#[test]
fn truncated_superblock_is_refused() {
    let case = Case::new("truncated-superblock");
    let delta = real_delta(&case, Some(&fixture().trusted));
    truncate_half(&delta.join("superblock"));
    case.assert_refused(
        &case.apply(&delta),
        &["superblock", "truncated", "malformed"],
    );
}

#[test]
fn truncated_part_is_refused() {
    let case = Case::new("truncated-part");
    let delta = real_delta(&case, Some(&fixture().trusted));
    truncate_half(&delta.join("0"));
    case.assert_refused(
        &case.apply(&delta),
        &["part", "truncated", "size", "checksum"],
    );
}

#[test]
fn part_checksum_mismatch_is_refused() {
    let case = Case::new("part-checksum");
    let delta = real_delta(&case, Some(&fixture().trusted));
    flip_byte(&delta.join("0"), 50);
    case.assert_refused(&case.apply(&delta), &["checksum", "sha256", "digest"]);
}

#[test]
fn bit_flip_in_compressed_part_is_refused_even_with_matching_checksum() {
    let case = Case::new("bit-flip-xz");
    let mut c = crafted(&case);
    let mut part = fs::read(case.dir.join("work/generated/0")).unwrap();
    assert_eq!(part[0], b'x');
    let mid = part.len() / 2;
    part[mid] ^= 0x10;
    c.raw_part = Some(part);
    let delta = finish(&case, &c);
    case.assert_refused(
        &case.apply(&delta),
        &["xz", "lzma", "decompress", "corrupt", "checksum", "part"],
    );
}

#[test]
fn bit_flip_in_object_data_fails_the_object_checksum() {
    let case = Case::new("bit-flip-object");
    let mut c = crafted(&case);
    // Flip a byte inside the first content object spliced from the blob.
    let op = c
        .ops
        .iter()
        .find(|op| op.code == b'S' && c.objects[op.object.unwrap()].0 == OBJ_FILE && op.args[2] > 0)
        .expect("a content object spliced from the blob")
        .clone();
    let at = (op.args[3] + op.args[2] / 2) as usize;
    c.payload.blob[at] ^= 0x01;
    let delta = finish(&case, &c);
    case.assert_refused(&case.apply(&delta), &["checksum", "mismatch", "sha256"]);
}

// --- trust ---

#[test]
fn unsigned_delta_is_refused_when_keys_are_configured() {
    let case = Case::new("unsigned");
    let delta = real_delta(&case, None);
    case.assert_refused(
        &case.apply(&delta),
        &["unsigned", "not signed", "signature"],
    );
}

#[test]
fn delta_signed_by_untrusted_key_is_refused() {
    let case = Case::new("wrong-key");
    let delta = real_delta(&case, Some(&fixture().other));
    case.assert_refused(&case.apply(&delta), SIGNATURE);
}

#[test]
fn delta_signed_by_revoked_key_is_refused() {
    let case = Case::new("revoked-key");
    let delta = real_delta(&case, Some(&fixture().trusted));
    let apply = Apply {
        revoked: Some(fixture().trusted.public.clone()),
        ..case.apply(&delta)
    };
    case.assert_refused(&apply, &["revoked", "signature", "key"]);
}

#[test]
fn tampered_signed_superblock_is_refused() {
    let case = Case::new("tampered-signed");
    let delta = real_delta(&case, Some(&fixture().trusted));
    // The last bytes are the signature dictionary; flip one inside the signed data.
    flip_byte(&delta.join("superblock"), 40);
    case.assert_refused(
        &case.apply(&delta),
        &["signature", "malformed", "superblock"],
    );
}

// --- tree entry names (rule: no `/`, `.`, `..`, NUL, empty) ---

fn bad_name_case(name: &str, replacement: &[u8]) {
    let f = fixture();
    let case = Case::new(name);
    let mut c = crafted(&case);
    // `a0b` is the first file in strcmp order and stays first after the
    // rename, so the listing is still sorted: the name is the only defect.
    c.replace_root_dirtree(&dirtree_with_names(&f.repo, &f.v2, "/", |n| {
        if n == "a0b" {
            replacement.to_vec()
        } else {
            n.as_bytes().to_vec()
        }
    }));
    let delta = finish(&case, &c);
    case.assert_refused(&case.apply(&delta), NAME);
}

#[test]
fn tree_entry_named_dotdot_is_refused() {
    bad_name_case("name-dotdot", b"..");
}

#[test]
fn tree_entry_named_dot_is_refused() {
    bad_name_case("name-dot", b".");
}

#[test]
fn tree_entry_with_slash_is_refused() {
    bad_name_case("name-slash", b"a/b");
}

#[test]
fn empty_tree_entry_name_is_refused() {
    bad_name_case("name-empty", b"");
}

#[test]
fn symlink_then_directory_of_the_same_name_cannot_escape() {
    let f = fixture();
    let case = Case::new("symlink-escape");
    let mut c = crafted(&case);
    // Symlink `link` -> ../outside (the sentinel) plus a directory `link`
    // holding `f`: following the link would write outside/f.
    c.replace_root_dirtree(&dirtree_with_names(&f.repo, &f.v2, "/", |n| {
        if n == "linl" {
            b"link".to_vec()
        } else {
            n.as_bytes().to_vec()
        }
    }));
    let delta = finish(&case, &c);
    case.assert_refused(
        &case.apply(&delta),
        &[
            "duplicate",
            "symlink",
            "escape",
            "outside",
            "exists",
            "twice",
        ],
    );
    assert!(!case.dir.join("outside/f").exists());
}

// --- op stream ---

#[test]
fn varint_of_11_bytes_is_refused() {
    let case = Case::new("varint-11");
    let mut c = crafted(&case);
    // First op keeps its code; its first argument becomes an 11-byte varint.
    let first = c.ops[0].clone();
    let mut raw = vec![first.code];
    raw.extend_from_slice(&[0x80; 10]);
    raw.push(0x01);
    c.ops.clear();
    c.payload.ops.clear();
    let mut payload = c.payload.clone();
    payload.ops = raw;
    let mut part = vec![0u8];
    part.extend_from_slice(&payload.encode());
    c.raw_part = Some(part);
    let delta = finish(&case, &c);
    case.assert_refused(
        &case.apply(&delta),
        &["varint", "leb128", "too long", "overflow"],
    );
}

fn first_splice(c: &Crafted) -> usize {
    c.ops
        .iter()
        .position(|op| op.code == b'S')
        .expect("an S op")
}

/// Index of (size, offset) among an `S` op's arguments.
fn size_offset(c: &Crafted, op: usize) -> (usize, usize) {
    if c.objects[c.ops[op].object.unwrap()].0 == OBJ_FILE {
        (2, 3)
    } else {
        (0, 1)
    }
}

#[test]
fn splice_offset_past_the_blob_is_refused() {
    let case = Case::new("offset-past-blob");
    let mut c = crafted(&case);
    let i = first_splice(&c);
    let (_, off) = size_offset(&c, i);
    c.ops[i].args[off] = c.payload.blob.len() as u64 + 1;
    let delta = finish(&case, &c);
    case.assert_refused(&case.apply(&delta), BOUNDS);
}

#[test]
fn splice_length_past_the_blob_is_refused() {
    let case = Case::new("length-past-blob");
    let mut c = crafted(&case);
    let i = first_splice(&c);
    let (size, off) = size_offset(&c, i);
    // Ends one byte past the blob, whatever the real offset is.
    c.ops[i].args[size] = c.payload.blob.len() as u64 - c.ops[i].args[off] + 1;
    let delta = finish(&case, &c);
    case.assert_refused(&case.apply(&delta), BOUNDS);
}

#[test]
fn splice_offset_plus_length_overflowing_u64_is_refused() {
    let case = Case::new("offset-overflow");
    let mut c = crafted(&case);
    let i = first_splice(&c);
    let (size, off) = size_offset(&c, i);
    c.ops[i].args[off] = u64::MAX - 1;
    c.ops[i].args[size] = 16;
    let delta = finish(&case, &c);
    case.assert_refused(&case.apply(&delta), BOUNDS);
}

// --- declared sizes ---

#[test]
fn part_inflating_far_beyond_its_declared_size_is_refused() {
    let case = Case::new("decompression-bomb");
    let mut c = crafted(&case);
    // 128 MiB of zeros appended to the blob compress to ~20 KiB; the
    // superblock still declares the real object sizes.
    let declared = c.declared_usize();
    let mut payload = c.payload.clone();
    payload.ops = atomup_tests::delta_craft::encode_ops(&c.ops);
    payload.blob.resize(payload.blob.len() + (128 << 20), 0);
    let mut part = vec![b'x'];
    part.extend_from_slice(&xz(
        &["-z", "-c", "-0", "-T1", "--check=crc64"],
        &payload.encode(),
    ));
    assert!(part.len() < 1 << 20);
    c.raw_part = Some(part);
    c.usize_override = Some(declared);
    let delta = finish(&case, &c);
    case.assert_refused(
        &case.apply(&delta),
        &["size", "declared", "exceeds", "larger", "bomb", "too large"],
    );
}

// --- from-commit ---

/// An apply whose device side describes v0 (metadata and files) for a
/// delta that starts from v1.
fn from_v0(case: &Case, delta: &Path) -> Apply {
    let f = fixture();
    let meta = case.dir.join("work/meta-v0");
    if !meta.exists() {
        let other = Repo::init(&meta, "archive");
        atomup_tests::ostree_fixture::run_ok(
            std::process::Command::new("ostree")
                .arg(format!("--repo={}", other.path.display()))
                .args(["pull-local", "--commit-metadata-only"])
                .arg(&f.repo.path)
                .arg(&f.v0),
        );
        f.repo.checkout(&f.v0, &case.dir.join("active-v0"));
    }
    Apply {
        from_root: Some(case.dir.join("active-v0")),
        from_meta: Some(meta),
        ..case.apply(delta)
    }
}

#[test]
fn delta_from_another_commit_is_refused() {
    let f = fixture();
    let case = Case::new("from-commit-mismatch");
    let delta = real_delta(&case, Some(&f.trusted));
    // The device's metadata describes v0, the delta starts from v1.
    case.assert_refused(
        &from_v0(&case, &delta),
        &["from", "commit", "not found", "missing"],
    );
}

#[test]
fn delta_with_a_from_commit_needs_the_running_root_and_its_metadata() {
    let f = fixture();
    let case = Case::new("from-commit-needs-from");
    let delta = real_delta(&case, Some(&f.trusted));
    let apply = Apply {
        from_root: None,
        from_meta: None,
        ..case.apply(&delta)
    };
    case.assert_refused(&apply, &["--from-root and --from-meta are required"]);
}

/// The checks that need no writing come before the first write: an
/// unsigned, wrongly signed, revoked-key or wrong-from delta leaves a target
/// that holds the old tree exactly as it was, to the timestamps (so not even
/// a staging directory was made and removed).
#[test]
fn refused_before_the_first_write_leaves_a_target_holding_the_old_tree_untouched() {
    let f = fixture();
    let case = Case::new("untouched-old-target");
    let target = case.dir.join("target");
    fs::remove_dir(&target).unwrap();
    f.repo.checkout(&f.v1, &target);
    fs::write(target.join("junk"), b"not in any commit\n").unwrap();
    let signed = real_delta(&case, Some(&f.trusted));
    let unsigned = case.dir.join("delta-unsigned");
    f.repo
        .delta(Some(&f.v1), &f.v2, &["--min-fallback-size=0"], &unsigned);
    let other_key = case.dir.join("delta-other-key");
    f.repo
        .delta(Some(&f.v1), &f.v2, &["--min-fallback-size=0"], &other_key);
    f.other.sign_delta(&other_key);
    let cases = [
        ("unsigned", case.apply(&unsigned), SIGNATURE),
        ("untrusted key", case.apply(&other_key), SIGNATURE),
        (
            "revoked key",
            Apply {
                revoked: Some(f.trusted.public.clone()),
                ..case.apply(&signed)
            },
            SIGNATURE,
        ),
        ("wrong from-commit", from_v0(&case, &signed), &["from"][..]),
    ];
    for (what, apply, phrases) in cases {
        let before = tree_digest_with_times(&target);
        case.assert_refused(&apply, phrases);
        assert_eq!(
            tree_digest_with_times(&target),
            before,
            "{what}: the target was touched"
        );
    }
}

#[test]
fn active_root_differing_from_the_from_commit_is_refused() {
    let f = fixture();
    let case = Case::new("active-root-mismatch");
    let delta = real_delta(&case, Some(&f.trusted));
    // Metadata says v1, but the files on the active root are v0's.
    let active_v0 = case.dir.join("active-v0");
    f.repo.checkout(&f.v0, &active_v0);
    let apply = Apply {
        from_root: Some(active_v0),
        ..case.apply(&delta)
    };
    case.assert_refused(&apply, &["checksum", "mismatch", "verify", "differs"]);
}
