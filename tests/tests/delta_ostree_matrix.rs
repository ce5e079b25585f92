//! `atomup delta apply` writes exactly the tree `ostree checkout` writes, for
//! deltas the real `ostree` CLI generates with every option that changes the
//! delta's shape (inline/separate parts, bsdiff on/off, big-endian, one part
//! per object, from-scratch, fallback objects), signed by `atomup-publish`.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use atomup_tests::ostree_fixture::{
    assert_same_tree, pseudo_bytes, tree_digest, tree_digest_with_times, Apply, Keys, Repo,
    ScratchDir, TreeBuilder,
};

/// Above upstream's 4 MB default `--min-fallback-size`.
const BIG_FILE_SIZE: usize = 5 * 1024 * 1024;
const MANY_FILES: usize = 300;

/// One archive repo with three commits, shared by every case to keep the run short.
struct Fixture {
    _dir: ScratchDir,
    root: PathBuf,
    repo: Repo,
    keys: Keys,
    v1: String,
    v2: String,
    v3: String,
    v4: String,
}

impl Fixture {
    fn checkout(&self, commit: &str) -> PathBuf {
        // One oracle checkout per commit, made on first use.
        let dest = self.root.join(format!("co-{commit}"));
        static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        if !dest.exists() {
            let tmp = self.root.join(format!("co-{commit}.tmp"));
            let _ = fs::remove_dir_all(&tmp);
            self.repo.checkout(commit, &tmp);
            fs::rename(&tmp, &dest).unwrap();
        }
        dest
    }

    /// A new delta directory made by `ostree static-delta generate`, signed
    /// unless `signed` is false. Returns the dir and the generator's stats.
    fn delta(
        &self,
        name: &str,
        from: Option<&str>,
        to: &str,
        opts: &[&str],
        signed: bool,
    ) -> (PathBuf, String) {
        let dir = self.root.join("deltas").join(name);
        let stats = self.repo.delta(from, to, opts, &dir);
        if signed {
            self.keys.sign_delta(&dir);
        }
        (dir, stats)
    }

    fn case_dir(&self, name: &str) -> PathBuf {
        let dir = self.root.join("cases").join(name);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Applies `delta` from `from` (a commit, whose checkout is the active
    /// root) into a fresh target and checks it equals the checkout of `to`.
    fn apply_and_compare(
        &self,
        case: &str,
        delta: &Path,
        from: Option<&str>,
        to: &str,
        verify: bool,
    ) -> PathBuf {
        self.apply_and_compare_out(case, delta, from, to, verify).0
    }

    /// [`apply_and_compare`](Self::apply_and_compare), also returning the
    /// apply's output.
    fn apply_and_compare_out(
        &self,
        case: &str,
        delta: &Path,
        from: Option<&str>,
        to: &str,
        verify: bool,
    ) -> (PathBuf, std::process::Output) {
        let dir = self.case_dir(case);
        let target = dir.join("target");
        fs::create_dir(&target).unwrap();
        let active = from.map(|c| self.checkout(c));
        let active_before = active.as_deref().map(tree_digest);
        let out = Apply {
            delta: delta.to_path_buf(),
            to: target.clone(),
            from_root: active.clone(),
            from_meta: from.map(|_| self.repo.path.clone()),
            meta_out: Some(dir.join("meta")),
            trusted: verify.then(|| self.keys.public.clone()),
            ..Apply::default()
        }
        .run_ok();
        assert_same_tree(&target, &self.checkout(to));
        if let (Some(active), Some(before)) = (active, active_before) {
            assert_eq!(tree_digest(&active), before, "the active root was modified");
        }
        (target, out)
    }
}

/// v1: every entry kind the engine must reproduce, plus hundreds of files.
fn build_v1(t: &TreeBuilder) {
    t.file("etc/hostname", b"device\n", 0o644)
        .file("etc/empty.conf", b"", 0o644)
        .file("usr/bin/tool", &pseudo_bytes(1, 20_000, false), 0o755)
        .file("usr/bin/su", &pseudo_bytes(2, 3_000, false), 0o4755)
        .file("usr/bin/wall", &pseudo_bytes(3, 2_000, false), 0o2755)
        .file(
            "usr/share/doc/changelog.txt",
            &pseudo_bytes(4, 60_000, true),
            0o644,
        )
        .file("usr/share/doc/to-delete.txt", b"going away\n", 0o644)
        .file(
            "usr/share/doc/old-name.txt",
            &pseudo_bytes(5, 5_000, true),
            0o644,
        )
        .file("root/.secret", b"only root\n", 0o600)
        .dir("root", 0o700)
        .dir("var/empty", 0o755)
        .dir("tmp", 0o1777)
        .symlink("usr/lib/libfoo.so", "libfoo.so.1")
        .file("usr/lib/libfoo.so.1", &pseudo_bytes(6, 9_000, false), 0o644)
        .file("usr/lib/libbar.so", &pseudo_bytes(9, 40_000, false), 0o644)
        .symlink("etc/localtime", "/usr/share/zoneinfo/UTC")
        .symlink("etc/dangling", "../nowhere/at/all")
        .symlink("bin", "usr/bin")
        .symlink("usr/share/doc/link-to-dir", "/usr/lib")
        // xattrs set unsorted (older OSTree keeps listxattr order), on a
        // file v2 keeps (reused from the running root), one it changes
        // (from the delta) and a directory.
        .file("etc/labelled.conf", b"kept\n", 0o644)
        .xattr("etc/labelled.conf", "user.b", b"2")
        .xattr("etc/labelled.conf", "user.a", b"1")
        .file("etc/labelled-changed.conf", b"v1\n", 0o644)
        .xattr("etc/labelled-changed.conf", "user.y", b"y")
        .xattr("etc/labelled-changed.conf", "user.x", b"x")
        .dir("usr/share/labelled", 0o755)
        .xattr("usr/share/labelled", "user.z", b"z")
        .xattr("usr/share/labelled", "user.c", b"c");
    for i in 0..MANY_FILES {
        t.file(
            &format!("usr/share/many/d{}/f{i:03}", i % 10),
            format!("file {i}\n").as_bytes(),
            0o644,
        );
    }
}

/// v2 changes v1: modified (bsdiff-sized), deleted, renamed, new, mode and
/// symlink-target changes, a directory replaced by a file.
fn build_v2(t: &TreeBuilder) {
    let mut changelog = pseudo_bytes(4, 60_000, true);
    changelog[30_000..30_100].copy_from_slice(&[b'Z'; 100]);
    changelog.extend_from_slice(b"v2 entry\n");
    // A byte changed every 512 defeats rollsum matching, so upstream picks bsdiff.
    let mut libbar = pseudo_bytes(9, 40_000, false);
    for i in (0..libbar.len()).step_by(512) {
        libbar[i] ^= 0xff;
    }
    t.file("usr/share/doc/changelog.txt", &changelog, 0o644)
        .file("usr/lib/libbar.so", &libbar, 0o644)
        .remove("usr/share/doc/to-delete.txt")
        .rename("usr/share/doc/old-name.txt", "usr/share/doc/new-name.txt")
        .file("etc/hostname", b"device-v2\n", 0o644)
        .file("usr/bin/tool", &pseudo_bytes(1, 20_000, false), 0o750)
        .symlink("usr/lib/libfoo.so", "libfoo.so.2")
        .rename("usr/lib/libfoo.so.1", "usr/lib/libfoo.so.2")
        .file("usr/bin/newtool", &pseudo_bytes(7, 4_000, false), 0o755)
        .dir("var/lib/new-empty", 0o750)
        .remove("var/empty")
        .file("var/empty", b"now a file\n", 0o644);
    // Rewritten in place: the xattrs stay, the content changes.
    fs::write(t.root.join("etc/labelled-changed.conf"), b"v2\n").unwrap();
    for i in (0..MANY_FILES).step_by(7) {
        t.file(
            &format!("usr/share/many/d{}/f{i:03}", i % 10),
            format!("file {i} v2\n").as_bytes(),
            0o644,
        );
    }
}

/// Large but cheap to compress and decompress (xz matches), so the big-file
/// cases cost little time in a debug build.
fn repetitive(seed: u64, len: usize) -> Vec<u8> {
    let block = pseudo_bytes(seed, 8192, false);
    let mut out = Vec::with_capacity(len);
    let mut n = 0u32;
    while out.len() < len {
        out.extend_from_slice(&n.to_be_bytes());
        out.extend_from_slice(&block);
        n += 1;
    }
    out.truncate(len);
    out
}

/// v3 adds a file above the default fallback size.
fn build_v3(t: &TreeBuilder) {
    t.file("usr/share/big.bin", &repetitive(8, BIG_FILE_SIZE), 0o644)
        .file("etc/hostname", b"device-v3\n", 0o644);
    // Enough new data for several 1 MB chunks.
    for i in 0..3 {
        t.file(
            &format!("usr/share/medium/{i}.txt"),
            &repetitive(20 + i, 450_000),
            0o644,
        );
    }
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        atomup_tests::require_tool("ostree");
        let dir = ScratchDir::new("delta-matrix");
        let root = dir.path().to_path_buf();
        let repo = Repo::init(root.join("repo"), "archive");
        let tree = TreeBuilder::new(root.join("tree"));
        build_v1(&tree);
        let v1 = repo.commit(&tree.root, "v1");
        build_v2(&tree);
        let v2 = repo.commit(&tree.root, "v2");
        build_v3(&tree);
        let v3 = repo.commit(&tree.root, "v3");
        // v4: committed with the tree's real owners, one user's home not root's.
        tree.file("home/user/notes", b"mine\n", 0o640)
            .dir("home/user", 0o700)
            .chown("home/user", 1234, 5678)
            .chown("home/user/notes", 1234, 5678)
            .symlink("home/user/link", "notes")
            .chown("home/user/link", 1234, 5678);
        let v4 = repo.commit_keeping_owners(&tree.root, "v4");
        let keys = Keys::generate(&root.join("keys"), "vendor");
        Fixture {
            _dir: dir,
            root,
            repo,
            keys,
            v1,
            v2,
            v3,
            v4,
        }
    })
}

fn stat(stats: &str, key: &str) -> u64 {
    let line = stats
        .lines()
        .find(|l| l.starts_with(key))
        .unwrap_or_else(|| panic!("no `{key}` in generator output:\n{stats}"));
    line[key.len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn separate_parts_with_bsdiff() {
    let f = fixture();
    let (delta, stats) = f.delta(
        "separate-bsdiff",
        Some(&f.v1),
        &f.v2,
        &["--min-fallback-size=0"],
        true,
    );
    // The case only proves bspatch if upstream really chose it.
    assert!(
        stat(&stats, "bsdiff=") >= 1,
        "generator made no bsdiff object:\n{stats}"
    );
    assert!(
        stat(&stats, "rollsum=") >= 1,
        "generator made no rollsum object:\n{stats}"
    );
    assert!(delta.join("0").is_file(), "expected a separate part file");
    let (_, out) = f.apply_and_compare_out("separate-bsdiff", &delta, Some(&f.v1), &f.v2, true);
    // Built from the delta and reused from the running root, both.
    let summary = String::from_utf8(out.stdout).unwrap();
    let count = |after: &str| -> u64 {
        let at = summary.find(after).unwrap_or_else(|| panic!("{summary}"));
        summary[..at]
            .split_whitespace()
            .last()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(count(" objects written") >= 3, "{summary}");
    assert!(count(" reused from the active root") >= 2, "{summary}");
}

#[test]
fn inline_parts() {
    let f = fixture();
    let (delta, _) = f.delta(
        "inline",
        Some(&f.v1),
        &f.v2,
        &["--inline", "--min-fallback-size=0"],
        true,
    );
    assert!(
        !delta.join("0").exists(),
        "--inline must leave no part files"
    );
    f.apply_and_compare("inline", &delta, Some(&f.v1), &f.v2, true);
}

#[test]
fn bsdiff_disabled() {
    let f = fixture();
    let (delta, stats) = f.delta(
        "no-bsdiff",
        Some(&f.v1),
        &f.v2,
        &["--disable-bsdiff", "--min-fallback-size=0"],
        true,
    );
    assert_eq!(stat(&stats, "bsdiff="), 0, "{stats}");
    f.apply_and_compare("no-bsdiff", &delta, Some(&f.v1), &f.v2, true);
}

#[test]
fn big_endian_superblock() {
    let f = fixture();
    let (delta, _) = f.delta(
        "big-endian",
        Some(&f.v1),
        &f.v2,
        &["--set-endianness=B", "--min-fallback-size=0"],
        true,
    );
    f.apply_and_compare("big-endian", &delta, Some(&f.v1), &f.v2, true);
}

#[test]
fn several_parts_with_max_chunk_size_1() {
    let f = fixture();
    let (delta, _) = f.delta(
        "many-parts",
        Some(&f.v2),
        &f.v3,
        &["--max-chunk-size=1", "--min-fallback-size=0"],
        true,
    );
    let parts = fs::read_dir(&delta).unwrap().count() - 1;
    assert!(parts >= 3, "expected several parts, got {parts}");
    f.apply_and_compare("many-parts", &delta, Some(&f.v2), &f.v3, true);
}

#[test]
fn from_scratch_delta_needs_no_active_root() {
    let f = fixture();
    let (delta, _) = f.delta("scratch-v2", None, &f.v2, &["--min-fallback-size=0"], true);
    f.apply_and_compare("scratch-v2", &delta, None, &f.v2, true);
}

#[test]
fn unsigned_delta_applies_with_no_verify() {
    let f = fixture();
    let (delta, _) = f.delta(
        "unsigned",
        Some(&f.v1),
        &f.v2,
        &["--min-fallback-size=0"],
        false,
    );
    f.apply_and_compare("unsigned", &delta, Some(&f.v1), &f.v2, false);
}

#[test]
fn big_file_inside_parts_with_min_fallback_size_0() {
    let f = fixture();
    let (delta, stats) = f.delta(
        "big-in-parts",
        Some(&f.v2),
        &f.v3,
        &["--min-fallback-size=0"],
        true,
    );
    assert!(!stats.contains("fallback"), "{stats}");
    f.apply_and_compare("big-in-parts", &delta, Some(&f.v2), &f.v3, true);
}

#[test]
fn big_file_as_fallback_object_from_archive_repo() {
    let f = fixture();
    let (delta, stats) = f.delta("big-fallback", Some(&f.v2), &f.v3, &[], true);
    assert!(stats.contains("fallback for"), "{stats}");
    let shown = atomup_tests::ostree_fixture::atomup([
        std::ffi::OsStr::new("delta"),
        std::ffi::OsStr::new("show"),
        std::ffi::OsStr::new("--delta"),
        delta.as_os_str(),
    ]);
    let shown = String::from_utf8(shown.stdout).unwrap();
    assert!(shown.contains("fallbacks: 1\n"), "{shown}");
    let dir = f.case_dir("big-fallback");
    let target = dir.join("target");
    fs::create_dir(&target).unwrap();
    let active = f.checkout(&f.v2);
    let before = tree_digest(&active);
    let apply = Apply {
        delta,
        to: target.clone(),
        from_root: Some(active.clone()),
        from_meta: Some(f.repo.path.clone()),
        trusted: Some(f.keys.public.clone()),
        ..Apply::default()
    };
    // Without the archive repo the fallback object cannot be fetched; with
    // one that lacks it, that is known before the first write too.
    let out = apply.run();
    assert!(!out.status.success(), "applied without the fallback object");
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs --fallback-repo"));
    let empty_repo = Repo::init(dir.join("empty-repo"), "archive");
    let target_before = tree_digest_with_times(&target);
    let out = Apply {
        fallback_repo: Some(empty_repo.path.clone()),
        ..apply.clone()
    }
    .run();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "applied without the fallback object");
    assert!(stderr.contains(".filez"), "{stderr}");
    assert_eq!(
        tree_digest_with_times(&target),
        target_before,
        "a missing fallback object was found only after writing"
    );
    fs::remove_dir_all(&target).unwrap();
    fs::create_dir(&target).unwrap();
    Apply {
        fallback_repo: Some(f.repo.path.clone()),
        ..apply
    }
    .run_ok();
    assert_same_tree(&target, &f.checkout(&f.v3));
    assert_eq!(tree_digest(&active), before, "the active root was modified");
}

#[test]
fn stale_entries_in_target_are_removed() {
    let f = fixture();
    let (delta, _) = f.delta(
        "stale",
        Some(&f.v1),
        &f.v2,
        &["--min-fallback-size=0"],
        true,
    );
    let dir = f.case_dir("stale");
    let target = dir.join("target");
    // Junk where the new tree has files, dirs and nothing; a symlink where a
    // directory must go; an unwritable directory.
    let junk = TreeBuilder::new(&target);
    junk.file("junk.txt", b"stale\n", 0o644)
        .file("usr/bin/old-binary", b"stale\n", 0o755)
        .file("etc/hostname", b"stale hostname\n", 0o600)
        .dir("usr/share/many/d3/f003", 0o755)
        .file("usr/share/many/d3/f003/inside", b"x", 0o644)
        .symlink("var", "../outside")
        .dir("stale-dir/deep/er", 0o500);
    fs::create_dir(dir.join("outside")).unwrap();
    Apply {
        delta,
        to: target.clone(),
        from_root: Some(f.checkout(&f.v1)),
        from_meta: Some(f.repo.path.clone()),
        trusted: Some(f.keys.public.clone()),
        ..Apply::default()
    }
    .run_ok();
    assert_same_tree(&target, &f.checkout(&f.v2));
    // Rule: writes never follow a symlink out of the target.
    assert_eq!(
        fs::read_dir(dir.join("outside")).unwrap().count(),
        0,
        "wrote through a stale symlink"
    );
}

#[test]
fn second_delta_chains_from_first_result_via_meta_out() {
    let f = fixture();
    let (first, _) = f.delta("chain-1", None, &f.v1, &["--min-fallback-size=0"], true);
    let (second, _) = f.delta(
        "chain-2",
        Some(&f.v1),
        &f.v2,
        &["--min-fallback-size=0"],
        true,
    );
    let dir = f.case_dir("chain");
    let (slot_a, slot_b, meta_a, meta_b) = (
        dir.join("a"),
        dir.join("b"),
        dir.join("meta-a"),
        dir.join("meta-b"),
    );
    fs::create_dir(&slot_a).unwrap();
    fs::create_dir(&slot_b).unwrap();
    Apply {
        delta: first,
        to: slot_a.clone(),
        meta_out: Some(meta_a.clone()),
        trusted: Some(f.keys.public.clone()),
        ..Apply::default()
    }
    .run_ok();
    assert_same_tree(&slot_a, &f.checkout(&f.v1));
    // The second update knows v1 only through what the first one left behind.
    let before = tree_digest(&slot_a);
    Apply {
        delta: second,
        to: slot_b.clone(),
        from_root: Some(slot_a.clone()),
        from_meta: Some(meta_a),
        meta_out: Some(meta_b.clone()),
        trusted: Some(f.keys.public.clone()),
        ..Apply::default()
    }
    .run_ok();
    assert_same_tree(&slot_b, &f.checkout(&f.v2));
    assert_eq!(tree_digest(&slot_a), before, "the active slot was modified");
    assert!(
        fs::read_dir(meta_b.join("objects")).unwrap().count() > 0,
        "meta-out left empty"
    );
}

/// `--meta-out` keeps an object already there only if it hashes to its
/// name: one torn by a power cut (here: empty) is rewritten, so the next
/// update still starts from intact metadata.
#[test]
fn meta_out_rewrites_a_torn_object_left_by_a_power_cut() {
    let f = fixture();
    let (first, _) = f.delta("torn-1", None, &f.v1, &["--min-fallback-size=0"], true);
    let (second, _) = f.delta(
        "torn-2",
        Some(&f.v1),
        &f.v2,
        &["--min-fallback-size=0"],
        true,
    );
    let dir = f.case_dir("torn-meta");
    let (slot_a, slot_b, meta) = (dir.join("a"), dir.join("b"), dir.join("meta"));
    fs::create_dir(&slot_a).unwrap();
    fs::create_dir(&slot_b).unwrap();
    let root_tree =
        atomup_tests::delta_craft::id(&atomup_tests::delta_craft::ls(&f.repo, &f.v1, "/")[0].csum);
    let torn = atomup_tests::delta_craft::object_path(&meta, &root_tree, "dirtree");
    fs::create_dir_all(torn.parent().unwrap()).unwrap();
    fs::write(&torn, b"").unwrap();
    Apply {
        delta: first,
        to: slot_a.clone(),
        meta_out: Some(meta.clone()),
        trusted: Some(f.keys.public.clone()),
        ..Apply::default()
    }
    .run_ok();
    assert!(fs::metadata(&torn).unwrap().len() > 0, "torn object kept");
    Apply {
        delta: second,
        to: slot_b.clone(),
        from_root: Some(slot_a),
        from_meta: Some(meta),
        trusted: Some(f.keys.public.clone()),
        ..Apply::default()
    }
    .run_ok();
    assert_same_tree(&slot_b, &f.checkout(&f.v2));
}

#[test]
fn non_root_uid_and_gid_are_kept() {
    let f = fixture();
    let (delta, _) = f.delta(
        "owners",
        Some(&f.v3),
        &f.v4,
        &["--min-fallback-size=0"],
        true,
    );
    let target = f.apply_and_compare("owners", &delta, Some(&f.v3), &f.v4, true);
    // The comparison covers owners; make sure this case really has non-root ones.
    let meta = fs::symlink_metadata(target.join("home/user/link")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (1234, 5678));
}

/// A private copy of v1's checkout as a running root, for cases that edit it.
fn own_active_v1(f: &Fixture, dir: &Path) -> PathBuf {
    let active = dir.join("active");
    f.repo.checkout(&f.v1, &active);
    active
}

/// An unchanged file edited in the running root is taken whole from the
/// fallback repo when one is given (without one the apply is refused, see
/// `delta_bad_inputs::active_root_differing_from_the_from_commit_is_refused`).
#[test]
fn edited_running_root_file_is_taken_from_the_fallback_repo() {
    let f = fixture();
    let (delta, _) = f.delta(
        "recover",
        Some(&f.v1),
        &f.v2,
        &["--min-fallback-size=0"],
        true,
    );
    let dir = f.case_dir("recover");
    let active = own_active_v1(f, &dir);
    fs::write(active.join("usr/bin/su"), b"edited at run time").unwrap();
    let target = dir.join("target");
    fs::create_dir(&target).unwrap();
    Apply {
        delta,
        to: target.clone(),
        from_root: Some(active),
        from_meta: Some(f.repo.path.clone()),
        fallback_repo: Some(f.repo.path.clone()),
        trusted: Some(f.keys.public.clone()),
        ..Apply::default()
    }
    .run_ok();
    assert_same_tree(&target, &f.checkout(&f.v2));
}

/// The seed copies the old tree before the new one is known: a file edited
/// in the running root that the new commit deletes is simply not carried
/// over, and does not block the update.
#[test]
fn edited_running_root_file_that_the_new_commit_deletes_does_not_block_the_update() {
    let f = fixture();
    let (delta, _) = f.delta(
        "edited-gone",
        Some(&f.v1),
        &f.v2,
        &["--min-fallback-size=0"],
        true,
    );
    let dir = f.case_dir("edited-gone");
    let active = own_active_v1(f, &dir);
    fs::write(
        active.join("usr/share/doc/to-delete.txt"),
        b"edited at run time",
    )
    .unwrap();
    let target = dir.join("target");
    fs::create_dir(&target).unwrap();
    Apply {
        delta,
        to: target.clone(),
        from_root: Some(active),
        from_meta: Some(f.repo.path.clone()),
        trusted: Some(f.keys.public.clone()),
        ..Apply::default()
    }
    .run_ok();
    assert_same_tree(&target, &f.checkout(&f.v2));
}

/// Entries that change type between commits (file to directory, directory
/// to file, directory to symlink, symlink to file), at the top (a directory
/// the seed did not create) and one level down (one it did), come out right
/// whether the target starts empty, holds the old tree or already the new.
#[test]
fn type_changes_into_empty_old_and_new_targets() {
    let f = fixture();
    let dir = f.case_dir("types");
    let repo = Repo::init(dir.join("repo"), "archive");
    let (t1, t2) = (
        TreeBuilder::new(dir.join("t1")),
        TreeBuilder::new(dir.join("t2")),
    );
    for top in ["", "sub/"] {
        t1.file(&format!("{top}becomes-dir"), b"was a file\n", 0o644)
            .file(
                &format!("{top}becomes-file/inner"),
                b"was in a directory\n",
                0o644,
            )
            .file(
                &format!("{top}becomes-link/inner"),
                b"was in a directory too\n",
                0o644,
            )
            .file(
                &format!("{top}usr/share/same"),
                &pseudo_bytes(7, 5_000, false),
                0o644,
            )
            .symlink(&format!("{top}link-becomes-file"), "usr");
        t2.file(
            &format!("{top}becomes-dir/now-inside"),
            b"was a file\n",
            0o644,
        )
        .file(&format!("{top}becomes-file"), b"was a directory\n", 0o644)
        .symlink(&format!("{top}becomes-link"), "usr/share")
        .file(
            &format!("{top}usr/share/same"),
            &pseudo_bytes(7, 5_000, false),
            0o644,
        )
        .file(
            &format!("{top}link-becomes-file"),
            b"was a symlink\n",
            0o644,
        );
    }
    let v1 = repo.commit(&t1.root, "v1");
    let v2 = repo.commit(&t2.root, "v2");
    let (active, oracle) = (dir.join("active"), dir.join("oracle"));
    repo.checkout(&v1, &active);
    repo.checkout(&v2, &oracle);
    let delta = dir.join("delta");
    repo.delta(Some(&v1), &v2, &["--min-fallback-size=0"], &delta);
    let (empty, old, new) = (dir.join("empty"), dir.join("old"), dir.join("new"));
    fs::create_dir(&empty).unwrap();
    repo.checkout(&v1, &old);
    repo.checkout(&v2, &new);
    for target in [empty, old, new] {
        Apply {
            delta: delta.clone(),
            to: target.clone(),
            from_root: Some(active.clone()),
            from_meta: Some(repo.path.clone()),
            ..Apply::default()
        }
        .run_ok();
        assert_same_tree(&target, &oracle);
    }
}
