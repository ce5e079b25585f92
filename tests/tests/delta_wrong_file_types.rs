//! Every file `atomup delta apply` reads may have been replaced by something
//! that is not a regular file. A FIFO in its place (the superblock on a
//! stick, a part file, a from-meta object, a fallback-repo object, a key
//! file, an unchanged file or a bsdiff source in the running root) is
//! refused at once with an error naming the path and the type, never opened
//! so that the engine blocks, never read as content. A part file longer than
//! its superblock says is refused at its declared size, not read to its end.
//! Every run here has a deadline, so a regression fails instead of hanging.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use atomup_tests::delta_craft::{ls, object_path};
use atomup_tests::ostree_fixture::{
    assert_same_tree, make_fifo, pseudo_bytes, run_ok, stat_line, Apply, Keys, Repo, ScratchDir,
    TreeBuilder,
};

/// Far more than any apply here needs; a blocked engine never ends.
const DEADLINE: Duration = Duration::from_secs(60);

struct Fixture {
    _dir: ScratchDir,
    root: PathBuf,
    repo: Repo,
    keys: Keys,
    v1: String,
    v2: String,
    /// v1 -> v2, no fallback objects, signed.
    plain: PathBuf,
    /// v1 -> v2 with `big.bin` as a fallback object, signed.
    with_fallback: PathBuf,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        atomup_tests::require_tool("ostree");
        atomup_tests::require_tool("mkfifo");
        let dir = ScratchDir::new("delta-types");
        let root = dir.path().to_path_buf();
        let repo = Repo::init(root.join("repo"), "archive");
        let t = TreeBuilder::new(root.join("tree"));
        t.file("keep", &pseudo_bytes(1, 3_000, true), 0o644)
            .file("usr/lib/lib.so", &pseudo_bytes(2, 40_000, false), 0o644)
            .file("etc/config", b"v1\n", 0o644);
        let v1 = repo.commit(&t.root, "v1");
        // A byte changed every 512 defeats rollsum, so upstream bsdiffs
        // lib.so against v1's copy: an `r` source in the running root.
        let mut lib = pseudo_bytes(2, 40_000, false);
        for i in (0..lib.len()).step_by(512) {
            lib[i] ^= 0xff;
        }
        t.file("usr/lib/lib.so", &lib, 0o644)
            .file("etc/config", b"v2\n", 0o644)
            .file("big.bin", &pseudo_bytes(3, 1_500_000, false), 0o644);
        let v2 = repo.commit(&t.root, "v2");
        let keys = Keys::generate(&root.join("keys"), "vendor");
        let plain = root.join("plain");
        let stats = repo.delta(Some(&v1), &v2, &["--min-fallback-size=0"], &plain);
        assert!(
            stats.contains("bsdiff=") && !stats.contains("bsdiff=0 "),
            "no bsdiff object:\n{stats}"
        );
        keys.sign_delta(&plain);
        let with_fallback = root.join("with-fallback");
        // Sizes in MB: the 1.5 MB big.bin becomes a fallback object.
        let stats = repo.delta(Some(&v1), &v2, &["--min-fallback-size=1"], &with_fallback);
        assert!(stats.contains("fallback for"), "{stats}");
        keys.sign_delta(&with_fallback);
        Fixture {
            _dir: dir,
            root,
            repo,
            keys,
            v1,
            v2,
            plain,
            with_fallback,
        }
    })
}

/// A case directory holding an empty `target/`.
fn case(name: &str) -> PathBuf {
    let dir = fixture().root.join("cases").join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("target")).unwrap();
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    run_ok(Command::new("cp").arg("-a").arg(from).arg(to));
}

/// A v1 -> v2 apply of `delta` into the case's target, v1 checked out as the
/// running root (made per case: some cases plant FIFOs in it).
fn apply(dir: &Path, delta: &Path) -> Apply {
    let f = fixture();
    let active = dir.join("active");
    if !active.exists() {
        f.repo.checkout(&f.v1, &active);
    }
    Apply {
        delta: delta.to_path_buf(),
        to: dir.join("target"),
        from_root: Some(active),
        from_meta: Some(f.repo.path.clone()),
        trusted: Some(f.keys.public.clone()),
        ..Apply::default()
    }
}

/// Runs `apply` within the deadline; it must fail with an `error:` naming
/// `path` and a FIFO.
fn assert_refused_naming(apply: &Apply, path: &Path) -> Output {
    let out = apply.run_within(DEADLINE);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "applied:\n{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(
        stderr.contains(&path.display().to_string()),
        "error does not name {}:\n{stderr}",
        path.display()
    );
    assert!(stderr.contains("a FIFO, not a regular file"), "{stderr}");
    out
}

fn assert_target_empty(dir: &Path) {
    assert_eq!(
        fs::read_dir(dir.join("target")).unwrap().count(),
        0,
        "the target was written"
    );
}

#[test]
fn superblock_that_is_a_fifo_is_refused_at_once() {
    let dir = case("fifo-superblock");
    let delta = dir.join("delta");
    copy_dir(&fixture().plain, &delta);
    make_fifo(&delta.join("superblock"));
    assert_refused_naming(&apply(&dir, &delta), &delta.join("superblock"));
    assert_target_empty(&dir);
}

#[test]
fn part_file_that_is_a_fifo_is_refused_at_once() {
    let dir = case("fifo-part");
    let delta = dir.join("delta");
    copy_dir(&fixture().plain, &delta);
    make_fifo(&delta.join("0"));
    assert_refused_naming(&apply(&dir, &delta), &delta.join("0"));
    assert_target_empty(&dir);
}

#[test]
fn from_commit_in_from_meta_that_is_a_fifo_is_refused_at_once() {
    let f = fixture();
    let dir = case("fifo-from-commit");
    let meta = dir.join("meta");
    copy_dir(&f.repo.path, &meta);
    let commit = object_path(&meta, &f.v1, "commit");
    make_fifo(&commit);
    let a = Apply {
        from_meta: Some(meta),
        ..apply(&dir, &f.plain)
    };
    assert_refused_naming(&a, &commit);
    assert_target_empty(&dir);
}

#[test]
fn from_dirtree_in_from_meta_that_is_a_fifo_is_refused_at_once() {
    let f = fixture();
    let dir = case("fifo-from-dirtree");
    let meta = dir.join("meta");
    copy_dir(&f.repo.path, &meta);
    let root_tree = atomup_tests::delta_craft::id(&ls(&f.repo, &f.v1, "/")[0].csum);
    let tree = object_path(&meta, &root_tree, "dirtree");
    make_fifo(&tree);
    let a = Apply {
        from_meta: Some(meta),
        ..apply(&dir, &f.plain)
    };
    assert_refused_naming(&a, &tree);
}

/// The fallback object's id, from `atomup delta show`.
fn fallback_id(delta: &Path) -> String {
    use std::ffi::OsStr;
    let out = atomup_tests::ostree_fixture::atomup([
        OsStr::new("delta"),
        OsStr::new("show"),
        OsStr::new("--delta"),
        delta.as_os_str(),
    ]);
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines()
        .find_map(|l| l.trim().strip_prefix("fallback "))
        .and_then(|rest| rest.split(':').next())
        .unwrap_or_else(|| panic!("no fallback in:\n{text}"))
        .to_owned()
}

#[test]
fn fallback_object_that_is_a_fifo_is_refused_at_once() {
    let f = fixture();
    let dir = case("fifo-fallback");
    let repo = dir.join("fallback-repo");
    copy_dir(&f.repo.path, &repo);
    let filez = object_path(&repo, &fallback_id(&f.with_fallback), "filez");
    make_fifo(&filez);
    let a = Apply {
        fallback_repo: Some(repo),
        ..apply(&dir, &f.with_fallback)
    };
    assert_refused_naming(&a, &filez);
}

#[test]
fn trusted_keys_file_that_is_a_fifo_is_refused_at_once() {
    let dir = case("fifo-keys");
    let keys = dir.join("trusted.pub");
    make_fifo(&keys);
    let a = Apply {
        trusted: Some(keys.clone()),
        ..apply(&dir, &fixture().plain)
    };
    assert_refused_naming(&a, &keys);
    assert_target_empty(&dir);
}

/// Decision: an unchanged file of the from-commit that is something else in
/// the running root is treated like an edited one: taken whole from the
/// fallback repo when one holds it, else refused naming path and type.
#[test]
fn unchanged_file_in_the_running_root_that_is_a_fifo_is_refused_or_taken_from_the_fallback_repo() {
    let f = fixture();
    let dir = case("fifo-active-unchanged");
    let a = apply(&dir, &f.plain);
    let active = a.from_root.clone().unwrap();
    make_fifo(&active.join("keep"));
    assert_refused_naming(&a, &active.join("keep"));

    fs::remove_dir_all(dir.join("target")).unwrap();
    fs::create_dir(dir.join("target")).unwrap();
    let out = Apply {
        fallback_repo: Some(f.repo.path.clone()),
        ..a
    }
    .run_within(DEADLINE);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let oracle = dir.join("oracle");
    f.repo.checkout(&f.v2, &oracle);
    assert_same_tree(&dir.join("target"), &oracle);
}

#[test]
fn bsdiff_source_in_the_running_root_that_is_a_fifo_is_refused_at_once() {
    let f = fixture();
    let dir = case("fifo-active-source");
    let a = apply(&dir, &f.plain);
    let active = a.from_root.clone().unwrap();
    let source = active.join("usr/lib/lib.so");
    make_fifo(&source);
    assert_refused_naming(&a, &source);
}

#[test]
fn part_file_with_a_sparse_tail_of_gigabytes_is_refused_at_its_declared_size() {
    let dir = case("sparse-part");
    let delta = dir.join("delta");
    copy_dir(&fixture().plain, &delta);
    let part = delta.join("0");
    let len = fs::metadata(&part).unwrap().len();
    // 16 GiB of holes after the real part: nothing on disk, endless zeros
    // to a reader.
    fs::OpenOptions::new()
        .write(true)
        .open(&part)
        .unwrap()
        .set_len(len + (16 << 30))
        .unwrap();
    let a = Apply {
        stats: true,
        ..apply(&dir, &delta)
    };
    let out = a.run_within(DEADLINE);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "applied:\n{stderr}");
    assert!(stderr.contains("part 0"), "{stderr}");
    assert!(stderr.contains("longer than"), "{stderr}");
    let read = stat_line(&out, "read_kib").expect("read_kib= in --stats output");
    // The superblock, the key file and at most the part's declared size.
    assert!(
        read < 4 * 1024,
        "read {read} KiB for a part of {len} bytes: read past its declared size"
    );
    assert_target_empty(&dir);
}
