//! Scenario fixtures made by the real `ostree` CLI, and a tree comparator.
//!
//! The delta tests must prove the engine against upstream, not against our own
//! idea of the format: trees are built here, committed and turned into deltas
//! by `ostree`, and what `atomup delta apply` writes is compared entry by entry
//! (type, mode incl. setuid, uid/gid, contents, symlink target) with what
//! `ostree checkout` writes for the same commit.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

/// Fixed commit time, so commits of equal trees have equal checksums.
pub const TIMESTAMP: &str = "--timestamp=2024-01-01T00:00:00Z";

/// Runs a command and returns its output, panicking with stderr if it failed.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Builds a scenario tree below `root`; paths are relative to it.
pub struct TreeBuilder {
    pub root: PathBuf,
}

impl TreeBuilder {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        fs::create_dir_all(&root).unwrap();
        TreeBuilder { root }
    }

    fn at(&self, rel: &str) -> PathBuf {
        let path = self.root.join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        path
    }

    /// A regular file with `data` and permission bits `mode` (setuid included).
    pub fn file(&self, rel: &str, data: &[u8], mode: u32) -> &Self {
        let path = self.at(rel);
        let _ = fs::remove_file(&path);
        fs::write(&path, data).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        self
    }

    pub fn symlink(&self, rel: &str, target: &str) -> &Self {
        let path = self.at(rel);
        let _ = fs::remove_file(&path);
        symlink(target, path).unwrap();
        self
    }

    pub fn dir(&self, rel: &str, mode: u32) -> &Self {
        let path = self.at(rel);
        fs::create_dir_all(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        self
    }

    pub fn remove(&self, rel: &str) -> &Self {
        let path = self.root.join(rel);
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(&path).unwrap(),
            Ok(_) => fs::remove_file(&path).unwrap(),
            Err(_) => {}
        }
        self
    }

    /// Sets extended attribute `name` on an entry (without following a
    /// symlink). Setting several in an order other than sorted makes
    /// `listxattr` (and older OSTree's encoding) unsorted.
    pub fn xattr(&self, rel: &str, name: &str, value: &[u8]) -> &Self {
        rustix::fs::lsetxattr(
            self.root.join(rel),
            name,
            value,
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap_or_else(|e| panic!("setting {name} on {rel}: {e}"));
        self
    }

    /// Sets the owner of an entry (without following a symlink).
    pub fn chown(&self, rel: &str, uid: u32, gid: u32) -> &Self {
        std::os::unix::fs::lchown(self.root.join(rel), Some(uid), Some(gid)).unwrap();
        self
    }

    pub fn rename(&self, from: &str, to: &str) -> &Self {
        let dest = self.at(to);
        fs::rename(self.root.join(from), dest).unwrap();
        self
    }
}

/// Deterministic pseudo-random bytes (xorshift), so fixtures are reproducible
/// without a dependency. `text` restricts them to a small alphabet so xz and
/// bsdiff behave as on real files.
pub fn pseudo_bytes(seed: u64, len: usize, text: bool) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if text {
                b"abcdefgh \n"[(x % 10) as usize]
            } else {
                x as u8
            }
        })
        .collect()
}

/// An OSTree archive repository driven through the real `ostree` CLI.
pub struct Repo {
    pub path: PathBuf,
}

impl Repo {
    pub fn init(path: impl Into<PathBuf>, mode: &str) -> Self {
        let path = path.into();
        fs::create_dir_all(&path).unwrap();
        run_ok(
            Command::new("ostree")
                .arg(repo_arg(&path))
                .args(["init", &format!("--mode={mode}")]),
        );
        Repo { path }
    }

    fn ostree(&self) -> Command {
        let mut cmd = Command::new("ostree");
        cmd.arg(repo_arg(&self.path));
        cmd
    }

    /// Commits `tree` owned by root with the fixed timestamp; returns its checksum.
    pub fn commit(&self, tree: &Path, subject: &str) -> String {
        let out = run_ok(
            self.ostree()
                .args([
                    "commit",
                    "-b",
                    "test/main",
                    "--owner-uid=0",
                    "--owner-gid=0",
                    TIMESTAMP,
                    "-s",
                    subject,
                ])
                .arg(tree),
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// Commits `tree` keeping each file's own uid/gid (no owner override).
    pub fn commit_keeping_owners(&self, tree: &Path, subject: &str) -> String {
        let out = run_ok(
            self.ostree()
                .args(["commit", "-b", "test/main", TIMESTAMP, "-s", subject])
                .arg(tree),
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// `ostree static-delta generate` into `dir/superblock` (+ part files);
    /// `from = None` makes a from-scratch delta. Returns the generator's output
    /// (its statistics, e.g. `bsdiff=N objects`).
    pub fn delta(&self, from: Option<&str>, to: &str, opts: &[&str], dir: &Path) -> String {
        fs::create_dir_all(dir).unwrap();
        let mut cmd = self.ostree();
        cmd.args(["static-delta", "generate"]);
        match from {
            Some(from) => cmd.arg(format!("--from={from}")),
            None => cmd.arg("--empty"),
        };
        cmd.arg(format!("--to={to}"))
            .args(opts)
            .arg(format!("--filename={}", dir.join("superblock").display()));
        let out = run_ok(&mut cmd);
        // The statistics go to stderr.
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }

    /// `ostree checkout` as root without `-U`, so uid/gid are kept: the oracle.
    pub fn checkout(&self, commit: &str, dest: &Path) {
        run_ok(self.ostree().args(["checkout", commit]).arg(dest));
    }
}

fn repo_arg(path: &Path) -> String {
    format!("--repo={}", path.display())
}

/// One tree entry as the comparison sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File { size: u64, sha256: String },
    Symlink(PathBuf),
    Other(u32),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    /// Permission bits incl. setuid/setgid/sticky (file type masked off).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Extended attributes (name, value), sorted by name.
    pub xattrs: Vec<(String, Vec<u8>)>,
}

/// The extended attributes of `path` itself (not following a symlink).
pub fn xattrs(path: &Path) -> Vec<(String, Vec<u8>)> {
    let mut names = vec![0u8; 64 * 1024];
    let n = match rustix::fs::llistxattr(path, &mut names[..]) {
        Ok(n) => n,
        Err(rustix::io::Errno::OPNOTSUPP) => return Vec::new(),
        Err(e) => panic!("listing xattrs of {}: {e}", path.display()),
    };
    let mut out: Vec<(String, Vec<u8>)> = names[..n]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|name| {
            let name = String::from_utf8(name.to_vec()).unwrap();
            let mut v = vec![0u8; 64 * 1024];
            let k = rustix::fs::lgetxattr(path, name.as_str(), &mut v[..]).unwrap();
            v.truncate(k);
            (name, v)
        })
        .collect();
    out.sort();
    out
}

/// Every entry below `root` (root itself as ""), without following symlinks.
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, Entry> {
    let mut map = BTreeMap::new();
    walk(root, Path::new(""), &mut map);
    map
}

fn walk(root: &Path, rel: &Path, map: &mut BTreeMap<PathBuf, Entry>) {
    let path = root.join(rel);
    let meta =
        fs::symlink_metadata(&path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
    let ft = meta.file_type();
    let kind = if ft.is_dir() {
        Kind::Dir
    } else if ft.is_file() {
        let data = fs::read(&path).unwrap();
        Kind::File {
            size: meta.len(),
            sha256: hex(&Sha256::digest(&data)),
        }
    } else if ft.is_symlink() {
        Kind::Symlink(fs::read_link(&path).unwrap())
    } else {
        Kind::Other(meta.mode() & 0o170000)
    };
    map.insert(
        rel.to_path_buf(),
        Entry {
            kind: kind.clone(),
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            xattrs: xattrs(&path),
        },
    );
    if kind == Kind::Dir {
        let mut names: Vec<_> = fs::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for name in names {
            walk(root, &rel.join(name), map);
        }
    }
}

/// Panics with a readable list of differences if the two trees differ in any
/// entry's type, mode, owner, xattrs, contents or symlink target.
pub fn assert_same_tree(actual: &Path, expected: &Path) {
    let a = snapshot(actual);
    let e = snapshot(expected);
    let mut diffs = Vec::new();
    for (path, want) in &e {
        match a.get(path) {
            None => diffs.push(format!("missing: /{}", path.display())),
            Some(got) if got != want => diffs.push(format!(
                "differs: /{}\n   got  {got:?}\n   want {want:?}",
                path.display()
            )),
            Some(_) => {}
        }
    }
    for path in a.keys().filter(|p| !e.contains_key(*p)) {
        diffs.push(format!("extra: /{}", path.display()));
    }
    assert!(
        diffs.is_empty(),
        "{} differs from {} in {} entries:\n{}",
        actual.display(),
        expected.display(),
        diffs.len(),
        diffs
            .iter()
            .take(40)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// One digest over a whole tree's snapshot: equal before/after proves a
/// directory (the active root, a sentinel) was not touched.
pub fn tree_digest(root: &Path) -> String {
    let mut h = Sha256::new();
    for (path, entry) in snapshot(root) {
        h.update(path.as_os_str().as_encoded_bytes());
        h.update(format!("{entry:?}\n").as_bytes());
    }
    hex(&h.finalize())
}

/// [`tree_digest`] plus every entry's mtime and ctime (to the nanosecond):
/// equal before/after proves nothing was even created and removed again in
/// the tree (a directory's times move with any entry added or removed).
pub fn tree_digest_with_times(root: &Path) -> String {
    let mut h = Sha256::new();
    h.update(tree_digest(root).as_bytes());
    for path in snapshot(root).keys() {
        let m = fs::symlink_metadata(root.join(path)).unwrap();
        h.update(
            format!(
                "{} {}.{} {}.{}\n",
                path.display(),
                m.mtime(),
                m.mtime_nsec(),
                m.ctime(),
                m.ctime_nsec()
            )
            .as_bytes(),
        );
    }
    hex(&h.finalize())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An ed25519 key pair made by `atomup-publish keygen`.
pub struct Keys {
    pub secret: PathBuf,
    pub public: PathBuf,
}

impl Keys {
    pub fn generate(dir: &Path, name: &str) -> Self {
        fs::create_dir_all(dir).unwrap();
        let keys = Keys {
            secret: dir.join(format!("{name}.secret")),
            public: dir.join(format!("{name}.pub")),
        };
        run_ok(
            Command::new(crate::workspace_bin("atomup-publish"))
                .args(["keygen", "--secret-out"])
                .arg(&keys.secret)
                .arg("--public-out")
                .arg(&keys.public),
        );
        keys
    }

    /// Signs the superblock in `delta_dir` in place (OSTSGNDT).
    pub fn sign_delta(&self, delta_dir: &Path) {
        run_ok(
            Command::new(crate::workspace_bin("atomup-publish"))
                .args(["sign", "--key"])
                .arg(&self.secret)
                .arg("--delta")
                .arg(delta_dir),
        );
    }

    /// Writes the commit's `.commitmeta` signature into an OSTree repo.
    pub fn sign_commit(&self, repo: &Path, commit: &str) {
        run_ok(
            Command::new(crate::workspace_bin("atomup-publish"))
                .args(["sign", "--key"])
                .arg(&self.secret)
                .arg("--repo")
                .arg(repo)
                .args(["--commit", commit]),
        );
    }
}

/// Runs `atomup` with `args` and returns its output (success or not).
pub fn atomup<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Command::new(crate::workspace_bin("atomup"))
        .args(args)
        .output()
        .expect("spawning atomup")
}

/// Builder for one `atomup delta apply` invocation.
#[derive(Default, Clone)]
pub struct Apply {
    pub delta: PathBuf,
    pub to: PathBuf,
    pub from_root: Option<PathBuf>,
    pub from_meta: Option<PathBuf>,
    pub fallback_repo: Option<PathBuf>,
    pub meta_out: Option<PathBuf>,
    /// None = `--no-verify`.
    pub trusted: Option<PathBuf>,
    pub revoked: Option<PathBuf>,
    /// `--stats`: peak RSS and bytes read are printed, also on failure.
    pub stats: bool,
}

impl Apply {
    pub fn args(&self) -> Vec<std::ffi::OsString> {
        let mut a: Vec<std::ffi::OsString> = vec!["delta".into(), "apply".into()];
        let mut opt = |name: &str, v: &Option<PathBuf>| {
            if let Some(v) = v {
                a.push(name.into());
                a.push(v.into());
            }
        };
        opt("--delta", &Some(self.delta.clone()));
        opt("--to", &Some(self.to.clone()));
        opt("--from-root", &self.from_root);
        opt("--from-meta", &self.from_meta);
        opt("--fallback-repo", &self.fallback_repo);
        opt("--meta-out", &self.meta_out);
        opt("--trusted-keys", &self.trusted);
        opt("--revoked-keys", &self.revoked);
        if self.trusted.is_none() {
            a.push("--no-verify".into());
        }
        if self.stats {
            a.push("--stats".into());
        }
        a
    }

    pub fn run(&self) -> Output {
        atomup(self.args())
    }

    /// Runs, and fails the test (killing the process) if it has not ended
    /// within `limit`: a regression that makes the engine block fails
    /// instead of hanging the suite.
    pub fn run_within(&self, limit: std::time::Duration) -> Output {
        run_within(
            Command::new(crate::workspace_bin("atomup")).args(self.args()),
            limit,
        )
    }
}

/// Runs `cmd` with its output in temporary files (no pipe to fill), killing
/// it and panicking if it has not ended within `limit`.
pub fn run_within(cmd: &mut Command, limit: std::time::Duration) -> Output {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let base = std::env::temp_dir().join(format!("atomup-run-{}-{n}", std::process::id()));
    let (out_path, err_path) = (base.with_extension("out"), base.with_extension("err"));
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(fs::File::create(&out_path).unwrap())
        .stderr(fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let err = fs::read_to_string(&err_path).unwrap_or_default();
            let _ = fs::remove_file(&out_path);
            let _ = fs::remove_file(&err_path);
            panic!("{cmd:?} did not end within {limit:?} (blocked?); stderr so far:\n{err}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let out = Output {
        status,
        stdout: fs::read(&out_path).unwrap(),
        stderr: fs::read(&err_path).unwrap(),
    };
    let _ = fs::remove_file(&out_path);
    let _ = fs::remove_file(&err_path);
    out
}

/// The number after `key=` in `atomup delta apply --stats` output.
pub fn stat_line(out: &Output, key: &str) -> Option<u64> {
    let text = String::from_utf8_lossy(&out.stdout);
    let prefix = format!("{key}=");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse().ok())
}

/// Makes a FIFO at `path` (replacing whatever is there) with the real
/// `mkfifo`: nothing ever writes to it, so a reader that opens it blocking
/// waits forever.
pub fn make_fifo(path: &Path) {
    let _ = fs::remove_file(path);
    run_ok(Command::new("mkfifo").arg(path));
}

impl Apply {
    /// Runs and panics with the error chain unless it succeeded.
    pub fn run_ok(&self) -> Output {
        let out = self.run();
        assert!(
            out.status.success(),
            "atomup {:?} failed:\n{}{}",
            self.args(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

/// The workspace's one scratch-directory helper (crate `atomup-scratch`).
pub use atomup_scratch::ScratchDir;

#[cfg(test)]
mod tests {
    use super::*;

    /// The comparator notices each property the delta tests rely on it for.
    #[test]
    fn comparator_detects_mode_owner_xattr_content_link_and_extra_entries() {
        let dir = ScratchDir::new("comparator");
        let make = |name: &str| {
            let t = TreeBuilder::new(dir.join(name));
            t.file("a", b"x", 0o4755).symlink("l", "a").dir("d", 0o700);
            t.root.clone()
        };
        let (a, b) = (make("a"), make("b"));
        assert_same_tree(&a, &b);
        let differs = |change: &dyn Fn(&Path)| {
            let c = make("c");
            change(&c);
            let caught = std::panic::catch_unwind(|| assert_same_tree(&c, &a)).is_err();
            fs::remove_dir_all(&c).unwrap();
            caught
        };
        assert!(differs(&|c| fs::set_permissions(
            c.join("a"),
            fs::Permissions::from_mode(0o755)
        )
        .unwrap()));
        assert!(differs(&|c| std::os::unix::fs::lchown(
            c.join("a"),
            Some(1),
            None
        )
        .unwrap()));
        assert!(differs(&|c| fs::write(c.join("a"), b"y").unwrap()));
        assert!(differs(&|c| {
            fs::remove_file(c.join("l")).unwrap();
            symlink("b", c.join("l")).unwrap()
        }));
        assert!(differs(&|c| {
            TreeBuilder {
                root: c.to_path_buf(),
            }
            .xattr("d", "user.x", b"1");
        }));
        assert!(differs(&|c| fs::create_dir(c.join("d/e")).unwrap()));
        assert!(differs(&|c| fs::remove_dir(c.join("d")).unwrap()));
        let before = tree_digest(&a);
        fs::set_permissions(a.join("d"), fs::Permissions::from_mode(0o755)).unwrap();
        assert_ne!(tree_digest(&a), before);
    }
}
