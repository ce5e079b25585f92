//! Memory stays bounded whatever a delta says, even one signed by the
//! trusted key: a part whose mode table, xattr table or op stream is tens of
//! MiB, a part carrying many large metadata objects the commit never
//! references, and a few kilobytes of dirtrees that share one subtree until
//! the tree names 2^40 directories. Each is refused (or, for objects the
//! engine has no use for, not held) with the peak RSS of the `atomup delta
//! apply` process (VmHWM, printed by `--stats` also on failure) far below
//! what the delta asks for. The bounds are in the deploy crate's README.

use std::fs;
use std::path::PathBuf;
use std::process::Output;
use std::sync::OnceLock;
use std::time::Duration;

use atomup_tests::delta_craft::{
    encode_dirtree, ls, sha256, split_var_array, var_array, Crafted, OBJ_DIRTREE,
};
use atomup_tests::ostree_fixture::{
    assert_same_tree, pseudo_bytes, stat_line, Apply, Keys, Repo, ScratchDir, TreeBuilder,
};

const DEADLINE: Duration = Duration::from_secs(120);
const MIB: usize = 1 << 20;
/// OSTree's object type number of detached commit metadata.
const OBJ_COMMITMETA: u8 = 6;

struct Fixture {
    _dir: ScratchDir,
    root: PathBuf,
    repo: Repo,
    keys: Keys,
    v1: String,
    v2: String,
    active_v1: PathBuf,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        atomup_tests::require_tool("ostree");
        atomup_tests::require_tool("xz");
        let dir = ScratchDir::new("delta-memory");
        let root = dir.path().to_path_buf();
        let repo = Repo::init(root.join("repo"), "archive");
        let t = TreeBuilder::new(root.join("tree"));
        t.file("keep", b"unchanged\n", 0o644)
            .file("usr/bin/tool", &pseudo_bytes(21, 20_000, false), 0o755)
            .file("etc/config", b"v1\n", 0o644);
        let v1 = repo.commit(&t.root, "v1");
        t.file("etc/config", b"v2\n", 0o644)
            .file("usr/share/new", b"new in v2\n", 0o644);
        let v2 = repo.commit(&t.root, "v2");
        let active_v1 = root.join("active-v1");
        repo.checkout(&v1, &active_v1);
        let keys = Keys::generate(&root.join("keys"), "trusted");
        Fixture {
            _dir: dir,
            root,
            repo,
            keys,
            v1,
            v2,
            active_v1,
        }
    })
}

struct Case {
    dir: PathBuf,
}

impl Case {
    fn new(name: &str) -> Self {
        let dir = fixture().root.join("cases").join(name);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("target")).unwrap();
        Case { dir }
    }

    /// The real v1 -> v2 delta taken apart for one edit.
    fn crafted(&self) -> Crafted {
        let f = fixture();
        Crafted::generate(&f.repo, Some(&f.v1), &f.v2, &self.dir.join("work"))
    }

    /// Writes `c`, signs it with the trusted key and applies it (with
    /// `--stats`) within the deadline.
    fn apply(&self, c: &Crafted) -> Output {
        let f = fixture();
        let delta = self.dir.join("delta");
        c.write(&delta);
        f.keys.sign_delta(&delta);
        Apply {
            delta,
            to: self.dir.join("target"),
            from_root: Some(f.active_v1.clone()),
            from_meta: Some(f.repo.path.clone()),
            trusted: Some(f.keys.public.clone()),
            stats: true,
            ..Apply::default()
        }
        .run_within(DEADLINE)
    }
}

/// Peak RSS of the apply in MiB.
fn peak_mib(out: &Output) -> u64 {
    stat_line(out, "peak_rss_kib").expect("peak_rss_kib= in --stats output") / 1024
}

/// The apply failed with an error containing `phrase`, its peak RSS under
/// `limit_mib`.
fn assert_refused_within(out: &Output, phrase: &str, limit_mib: u64) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "applied:\n{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(
        stderr.contains(phrase),
        "error does not say {phrase:?}:\n{stderr}"
    );
    let peak = peak_mib(out);
    eprintln!("peak RSS {peak} MiB: {}", stderr.trim_end());
    assert!(
        peak < limit_mib,
        "peak RSS {peak} MiB, bound {limit_mib} MiB:\n{stderr}"
    );
}

#[test]
fn mode_table_of_tens_of_mib_is_refused_in_bounded_memory() {
    let case = Case::new("mode-table");
    let mut c = case.crafted();
    let entry = c.payload.modes[..12].to_vec();
    c.payload.modes = entry.repeat(48 * MIB / 12);
    c.compress = true;
    // Declared so that the payload passes the decompression cap.
    c.usize_override = Some(40 << 20);
    let out = case.apply(&c);
    assert_refused_within(&out, "mode table exceeds its size limit", 16);
}

#[test]
fn xattr_table_of_tens_of_mib_is_refused_in_bounded_memory() {
    let case = Case::new("xattr-table");
    let mut c = case.crafted();
    let mut sets = split_var_array(&c.payload.xattrs, 1);
    sets.push(vec![0u8; 48 * MIB]);
    c.payload.xattrs = var_array(&sets);
    c.compress = true;
    c.usize_override = Some(40 << 20);
    let out = case.apply(&c);
    assert_refused_within(&out, "xattr table exceeds its size limit", 16);
}

#[test]
fn op_stream_of_tens_of_mib_is_refused_in_bounded_memory() {
    let case = Case::new("op-stream");
    let mut c = case.crafted();
    // 48 Mi `R` (unset read source) ops after the real ones.
    let mut ops = atomup_tests::delta_craft::encode_ops(&c.ops);
    ops.resize(ops.len() + 48 * MIB, b'R');
    let mut payload = c.payload.clone();
    payload.ops = ops;
    let mut part = vec![b'x'];
    part.extend_from_slice(&atomup_tests::delta_craft::xz(
        &["-z", "-c", "-0", "-T1", "--check=crc64"],
        &payload.encode(),
    ));
    c.raw_part = Some(part);
    c.usize_override = Some(40 << 20);
    let out = case.apply(&c);
    assert_refused_within(&out, "op stream exceeds its size limit", 16);
}

/// Objects the apply has no use for (commit metadata in a part: the commit
/// and its signatures come from the superblock) are checked by their
/// checksum and not held: 128 MiB of them apply in little memory.
#[test]
fn unreferenced_commit_metadata_in_a_part_is_not_held() {
    let f = fixture();
    let case = Case::new("unreferenced-commitmeta");
    let mut c = case.crafted();
    for i in 0..16u8 {
        let mut bytes = vec![0u8; 8 * MIB];
        bytes[0] = i;
        c.extra_meta.push((OBJ_COMMITMETA, bytes));
    }
    c.compress = true;
    c.usize_override = Some(c.declared_usize() + (128 << 20));
    let out = case.apply(&c);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let oracle = case.dir.join("oracle");
    f.repo.checkout(&f.v2, &oracle);
    assert_same_tree(&case.dir.join("target"), &oracle);
    let peak = peak_mib(&out);
    eprintln!("peak RSS {peak} MiB");
    assert!(
        peak < 24,
        "peak RSS {peak} MiB for 128 MiB of unused objects"
    );
}

/// A valid dirtree of about `bytes` bytes: sorted file entries named
/// `<prefix>NNNNNNN`.
fn big_dirtree(prefix: char, bytes: usize) -> Vec<u8> {
    let names: Vec<Vec<u8>> = (0..bytes / 44)
        .map(|i| format!("{prefix}{i:07}").into_bytes())
        .collect();
    let files: Vec<(&[u8], [u8; 32])> = names.iter().map(|n| (n.as_slice(), [7u8; 32])).collect();
    encode_dirtree(&files, &[])
}

/// Dirtrees a part delivers are held for the tree walks, but never more
/// than the metadata budget: 128 MiB of dirtrees the commit never names are
/// refused once the budget is spent.
#[test]
fn metadata_beyond_its_budget_is_refused_in_bounded_memory() {
    let case = Case::new("metadata-budget");
    let mut c = case.crafted();
    for prefix in 'a'..='p' {
        c.extra_meta
            .push((OBJ_DIRTREE, big_dirtree(prefix, 8 * MIB)));
    }
    c.compress = true;
    c.usize_override = Some(c.declared_usize() + (128 << 20));
    let out = case.apply(&c);
    assert_refused_within(&out, "metadata held in memory", 64);
}

/// Identical subtrees are legitimately shared (OSTree stores one empty
/// dirtree for every empty directory), so sharing is allowed; what a tree
/// expands to is bounded: 41 tiny dirtrees, each naming the next twice,
/// would be 2^40 directories. Refused before one of them is made.
#[test]
fn tree_expanding_to_2_pow_40_directories_is_refused_before_any_is_made() {
    let f = fixture();
    let case = Case::new("expansion");
    let mut c = case.crafted();
    let meta = ls(&f.repo, &f.v2, "/")[0].meta.unwrap();
    let mut tree = encode_dirtree(&[], &[]);
    for _ in 0..40 {
        let id = sha256(&tree);
        c.extra_meta.push((OBJ_DIRTREE, tree));
        tree = encode_dirtree(&[], &[(b"a", id, meta), (b"b", id, meta)]);
    }
    let total: usize = c.extra_meta.iter().map(|(_, b)| b.len()).sum();
    assert!(total < 8 << 10, "{total} bytes of dirtrees");
    c.replace_root_dirtree(&tree);
    let out = case.apply(&c);
    assert_refused_within(&out, "expands to more than", 16);
    let target = case.dir.join("target");
    assert!(
        !target.join("a").exists() && !target.join("b").exists(),
        "directories of the expanding tree were made"
    );
}
