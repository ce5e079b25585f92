//! A simulated device for `atomup update` on the host, shared by the update
//! tests: a vendor repository made by the real `ostree` CLI with signed
//! deltas and `atomup-publish release`, served by real nginx, and a device
//! (active root directory, state dir, U-Boot env in a disk-image file) that
//! polls it. Also what the refusal tests need to prove that nothing was
//! written, to run the agent with a deadline (a hang fails instead of
//! blocking CI), and real ext4 file systems on loop devices.

use crate::nginx::Nginx;
use crate::ostree_fixture::{
    atomup, pseudo_bytes, run_ok, tree_digest, Apply, Keys, Repo, ScratchDir, TreeBuilder,
};
use atomup_ostree::ObjectId;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The release timestamp of the fixture: 2026-01-01.
pub const T0: u64 = 1_767_225_600;

pub struct World {
    pub dir: ScratchDir,
    pub repo: Repo,
    pub keys: Keys,
    pub v1: String,
    pub v2: String,
    pub nginx: Nginx,
}

pub struct Device {
    pub root: PathBuf,
    pub state: PathBuf,
    pub env: PathBuf,
    pub slot_a: PathBuf,
    pub slot_b: PathBuf,
    pub machine_id: PathBuf,
}

/// `atomup-publish release` of `to` as `version` on stable/qemu-virt.
pub fn release(w_repo: &Repo, keys: &Keys, version: u64, to: &str, timestamp: u64, extra: &[&str]) {
    let mut cmd = Command::new(crate::workspace_bin("atomup-publish"));
    cmd.args(["release", "--repo"])
        .arg(&w_repo.path)
        .arg("--key")
        .arg(&keys.secret);
    cmd.args(["--channel", "stable", "--board", "qemu-virt"]);
    cmd.args(["--version", &version.to_string(), "--to", to]);
    cmd.args([
        "--timestamp",
        &timestamp.to_string(),
        "--expires-in-days",
        "30",
    ]);
    cmd.args(extra);
    run_ok(&mut cmd);
}

/// v1 and v2 trees (changed, added, deleted, renamed files, a symlink, an
/// executable), signed deltas scratch→v1, v1→v2, scratch→v2, and release 2.
pub fn world(waves: &[&str]) -> World {
    let (dir, repo, keys, v1, v2) = repo_v1_v2("update-host");
    let mut extra = Vec::new();
    for w in waves {
        extra.extend(["--wave", w]);
    }
    release(&repo, &keys, 2, &v2, T0, &extra);
    let nginx = Nginx::serve(&repo.path, dir.path());
    World {
        dir,
        repo,
        keys,
        v1,
        v2,
        nginx,
    }
}

/// The repository of [`world`] before any release is published.
pub fn repo_v1_v2(name: &str) -> (ScratchDir, Repo, Keys, String, String) {
    crate::require_tool("ostree");
    let dir = ScratchDir::new(name);
    let repo = Repo::init(dir.join("repo"), "archive");
    let t = TreeBuilder::new(dir.join("tree"));
    t.file("etc/os-release", b"VERSION_ID=1\n", 0o644)
        .file("usr/bin/app", &pseudo_bytes(1, 300_000, false), 0o755)
        .file("usr/share/doc/old.txt", b"goes away\n", 0o644)
        .file(
            "usr/lib/libfoo.so.1",
            &pseudo_bytes(3, 100_000, false),
            0o644,
        )
        .symlink("usr/lib/libfoo.so", "libfoo.so.1")
        .dir("var/empty", 0o755);
    let v1 = repo.commit(&t.root, "v1");
    let mut app = pseudo_bytes(1, 300_000, false);
    app[1000..1100].copy_from_slice(&[7; 100]);
    t.file("etc/os-release", b"VERSION_ID=2\n", 0o644)
        .file("usr/bin/app", &app, 0o755)
        .remove("usr/share/doc/old.txt")
        .rename("usr/lib/libfoo.so.1", "usr/lib/libfoo.so.2")
        .symlink("usr/lib/libfoo.so", "libfoo.so.2")
        .file("usr/bin/new-tool", &pseudo_bytes(4, 50_000, true), 0o755);
    let v2 = repo.commit(&t.root, "v2");
    let keys = Keys::generate(&dir.join("keys"), "vendor");
    let (id1, id2) = (
        ObjectId::from_hex(&v1).unwrap(),
        ObjectId::from_hex(&v2).unwrap(),
    );
    for (from, to, to_hex) in [
        (None, &id1, &v1),
        (Some(&id1), &id2, &v2),
        (None, &id2, &v2),
    ] {
        let d = repo.path.join(atomup_ostree::delta::delta_path(from, to));
        repo.delta(
            from.map(|_| v1.as_str()),
            to_hex,
            &["--min-fallback-size=0"],
            &d,
        );
        keys.sign_delta(&d);
    }
    (dir, repo, keys, v1, v2)
}

/// A device provisioned with v1 in slot A the way a factory image is: the
/// from-scratch delta applied with `--meta-out` into the state dir.
pub fn provision(w: &World, name: &str) -> Device {
    let root = w.dir.join(name);
    let d = Device {
        root: root.clone(),
        state: root.join("var/lib/atomup"),
        env: root.join("disk.img"),
        slot_a: root.join("slot-a"),
        slot_b: root.join("slot-b"),
        machine_id: root.join("machine-id"),
    };
    // Both slots exist as (mounted) filesystems; B starts empty.
    fs::create_dir_all(&d.slot_a).unwrap();
    fs::create_dir_all(&d.slot_b).unwrap();
    let id1 = ObjectId::from_hex(&w.v1).unwrap();
    Apply {
        delta: w
            .repo
            .path
            .join(atomup_ostree::delta::delta_path(None, &id1)),
        to: d.slot_a.clone(),
        meta_out: Some(d.state.join("meta")),
        trusted: Some(w.keys.public.clone()),
        ..Default::default()
    }
    .run_ok();
    fs::create_dir_all(d.state.join("slots")).unwrap();
    fs::write(
        d.state.join("slots/A"),
        format!("format=1\ncommit={}\nversion=1\n", w.v1),
    )
    .unwrap();
    fs::write(&d.machine_id, format!("{name}\n")).unwrap();
    fs::File::create(&d.env).unwrap().set_len(1 << 20).unwrap();
    let out = atomup(env_args(&d, &["env", "init", "--order", "A"]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    d
}

pub fn env_args(d: &Device, cmd: &[&str]) -> Vec<OsString> {
    let mut a: Vec<OsString> = cmd.iter().map(Into::into).collect();
    a.push("--env-image".into());
    a.push(d.env.clone().into());
    a.push("--state-dir".into());
    a.push(d.state.clone().into());
    a
}

/// `atomup update` arguments for device `d` booted from `booted`, without a
/// target or running root (the caller adds `--target-dir`/`--target-device`
/// and `--from-root`).
pub fn update_base_args(w: &World, d: &Device, server: &str, booted: &str) -> Vec<OsString> {
    let mut a = env_args(
        d,
        &[
            "update",
            "--server",
            server,
            "--channel",
            "stable",
            "--board",
            "qemu-virt",
        ],
    );
    a.extend([
        "--booted-slot".into(),
        booted.into(),
        "--trusted-keys".into(),
        w.keys.public.clone().into(),
    ]);
    a.extend([
        "--machine-id".into(),
        d.machine_id.clone().into(),
        "--now".into(),
        (T0 + 60).to_string().into(),
    ]);
    a.extend(["--retry-backoff-ms".into(), "20".into()]);
    a
}

/// `atomup update` for device `d` booted from `booted`: the other slot's
/// directory is the target, the booted one the running root.
pub fn update_args(
    w: &World,
    d: &Device,
    server: &str,
    booted: &str,
    extra: &[&str],
) -> Vec<OsString> {
    let mut a = update_base_args(w, d, server, booted);
    let (active, inactive) = if booted == "A" {
        (&d.slot_a, &d.slot_b)
    } else {
        (&d.slot_b, &d.slot_a)
    };
    a.extend([
        "--from-root".into(),
        active.into(),
        "--target-dir".into(),
        inactive.into(),
    ]);
    a.extend(extra.iter().map(Into::into));
    a
}

pub fn update(w: &World, d: &Device, server: &str, booted: &str, extra: &[&str]) -> Output {
    atomup(update_args(w, d, server, booted, extra))
}

pub fn env_show(d: &Device) -> String {
    let out = atomup(env_args(d, &["env", "show"]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Nothing the device relies on changed: env bytes, both slots, and (for
/// [`Untouched::assert_nothing_written`]) the state directory.
pub struct Untouched {
    env: Vec<u8>,
    slot_a: String,
    slot_b: String,
    state: String,
    records: String,
}

/// A digest of the state directory without the download cache: the records,
/// the trusted time and the metadata store.
pub fn records_digest(state: &Path) -> String {
    let snap: Vec<String> = crate::ostree_fixture::snapshot(state)
        .into_iter()
        .filter(|(p, _)| !p.starts_with("cache"))
        .map(|(p, e)| format!("{} {e:?}", p.display()))
        .collect();
    crate::ostree_fixture::hex(&<sha2::Sha256 as sha2::Digest>::digest(snap.join("\n")))
}

impl Untouched {
    pub fn snap(d: &Device) -> Self {
        Untouched {
            env: fs::read(&d.env).unwrap(),
            slot_a: tree_digest(&d.slot_a),
            slot_b: tree_digest(&d.slot_b),
            state: tree_digest(&d.state),
            records: records_digest(&d.state),
        }
    }

    /// The env and both slots are as before.
    pub fn assert_same(&self, d: &Device) {
        assert!(fs::read(&d.env).unwrap() == self.env, "env changed");
        assert_eq!(tree_digest(&d.slot_a), self.slot_a, "slot A changed");
        assert_eq!(tree_digest(&d.slot_b), self.slot_b, "slot B changed");
    }

    /// Also the records, the trusted time and the metadata store are as
    /// before (downloads into the cache may have happened).
    pub fn assert_records_same(&self, d: &Device) {
        self.assert_same(d);
        assert_eq!(records_digest(&d.state), self.records, "records changed");
    }

    /// Also the state directory (records, trusted time, cache) is as before.
    pub fn assert_nothing_written(&self, d: &Device) {
        self.assert_same(d);
        assert_eq!(tree_digest(&d.state), self.state, "state directory changed");
    }
}

/// Runs `cmd` and kills it if it has not finished within `limit`: a hang
/// becomes a test failure instead of a CI job that never ends.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{cmd:?} did not finish within {limit:?} (killed): {}",
                text(&out)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `atomup` with `args`, killed (and the test failed) after 30 s.
pub fn atomup_bounded<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    run_bounded(
        Command::new(crate::workspace_bin("atomup")).args(args),
        Duration::from_secs(30),
    )
}

/// Creates a FIFO (named pipe): opening it for reading blocks until a
/// writer appears, so anything that opens it naively hangs.
pub fn mkfifo(path: &Path) {
    let _ = fs::remove_file(path);
    run_ok(Command::new("mkfifo").arg(path));
}

/// Tests that mount file systems and attach loop devices need root; they
/// fail loudly without it unless `ATOMUP_ALLOW_MISSING_PEERS=1`.
pub fn require_root() -> bool {
    let root = rustix_uid_is_root();
    if !root && std::env::var_os("ATOMUP_ALLOW_MISSING_PEERS").is_none() {
        panic!("this test mounts file systems: run it as root (the CI machine is)");
    }
    root
}

fn rustix_uid_is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// A real ext4 file system on a loop device, made from the contents of a
/// directory; detached when dropped.
pub struct LoopFs {
    pub dev: PathBuf,
    image: PathBuf,
}

impl LoopFs {
    pub fn from_dir(image: &Path, contents: &Path) -> LoopFs {
        run_ok(
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-d"])
                .arg(contents)
                .arg(image)
                .arg("64M"),
        );
        let out = run_ok(Command::new("losetup").args(["-f", "--show"]).arg(image));
        let dev = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        LoopFs {
            dev,
            image: image.to_owned(),
        }
    }

    /// A digest of the file system's tree, read through a private read-only
    /// mount (so digesting writes nothing).
    pub fn digest(&self) -> String {
        let out = in_mount_ns(
            &format!(
                "d=$(mktemp -d) && mount -o ro,noload {} \"$d\" && cd \"$d\" && \
                 find . -printf '%p %y %m %s %l\\n' | sort | sha256sum && \
                 find . -type f -exec sha256sum {{}} + | sort | sha256sum",
                self.dev.display()
            ),
            &[],
        );
        assert!(
            out.status.success(),
            "digest of {}: {}",
            self.dev.display(),
            text(&out)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
        let _ = fs::remove_file(&self.image);
    }
}

/// Runs `script` with `sh` in a private mount namespace (mounts made there
/// vanish with it); `args` are `"$@"` (use `exec "$@"` to run them after
/// setting up mounts). Killed after 60 s.
pub fn in_mount_ns(script: &str, args: &[OsString]) -> Output {
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-ec",
        script,
        "sh",
    ])
    .args(args);
    run_bounded(&mut cmd, Duration::from_secs(60))
}
