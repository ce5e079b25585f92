//! The device agent as a service, on the host: a world whose v1 → v2 delta is
//! a few MiB in several parts (so downloads can be cut, capped, stopped and
//! killed in the middle), a configuration directory per device, the daemon
//! as a child process whose output is watched, and a report endpoint that
//! records what it is POSTed and can be taken down.

use crate::device::{self, Device, World, T0};
use crate::nginx::Nginx;
use crate::ostree_fixture::{pseudo_bytes, Keys, Repo, ScratchDir, TreeBuilder};
use atomup_ostree::ObjectId;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Size of the incompressible file v2 replaces: the bulk of the v1 → v2
/// delta, one part (parts hold at most 1 MiB here).
pub const BLOB: usize = 600 * 1024;

/// v1, v2 (one new incompressible file of [`BLOB`] bytes) and v3 (a small
/// change from v2), signed deltas scratch→v1, v1→v2, v2→v3; release 2
/// published. `World::v2` is v2; v3's commit is returned beside it.
pub fn big_world(name: &str) -> (World, String) {
    world_with(name, 1, BLOB)
}

/// [`big_world`] with `blobs` files of `blob` incompressible bytes each
/// replaced from v1 to v2 (one delta part each when `blob` ≤ 1 MiB).
pub fn world_with(name: &str, blobs: usize, blob: usize) -> (World, String) {
    crate::require_tool("ostree");
    let dir = ScratchDir::new(name);
    let repo = Repo::init(dir.join("repo"), "archive");
    let t = TreeBuilder::new(dir.join("tree"));
    t.file("etc/os-release", b"VERSION_ID=1\n", 0o644)
        .file("usr/bin/app", &pseudo_bytes(1, 200_000, false), 0o755)
        .file(
            "usr/bin/setuid-tool",
            &pseudo_bytes(2, 20_000, false),
            0o4755,
        );
    let blob_name = |i: usize| {
        if i == 0 {
            "usr/share/blob".to_owned()
        } else {
            format!("usr/share/blob{i}")
        }
    };
    for i in 0..blobs {
        t.file(
            &blob_name(i),
            &pseudo_bytes(11 + 100 * i as u64, blob, false),
            0o644,
        );
    }
    let v1 = repo.commit(&t.root, "v1");
    t.file("etc/os-release", b"VERSION_ID=2\n", 0o644);
    for i in 0..blobs {
        t.file(
            &blob_name(i),
            &pseudo_bytes(12 + 100 * i as u64, blob, false),
            0o644,
        );
    }
    let v2 = repo.commit(&t.root, "v2");
    t.file("etc/os-release", b"VERSION_ID=3\n", 0o644).file(
        "usr/bin/v3-tool",
        &pseudo_bytes(13, 30_000, false),
        0o755,
    );
    let v3 = repo.commit(&t.root, "v3");
    let keys = Keys::generate(&dir.join("keys"), "vendor");
    let id = |h: &str| ObjectId::from_hex(h).unwrap();
    for (from, to) in [(None, &v1), (Some(&v1), &v2), (Some(&v2), &v3)] {
        let d = repo.path.join(atomup_ostree::delta::delta_path(
            from.map(|f| id(f)).as_ref(),
            &id(to),
        ));
        repo.delta(
            from.map(String::as_str),
            to,
            &[
                "--min-fallback-size=0",
                "--max-chunk-size=1",
                "--disable-bsdiff",
            ],
            &d,
        );
        keys.sign_delta(&d);
    }
    device::release(&repo, &keys, 2, &v2, T0, &[]);
    let nginx = Nginx::serve(&repo.path, dir.path());
    (
        World {
            dir,
            repo,
            keys,
            v1,
            v2,
            nginx,
        },
        v3,
    )
}

/// One [`big_world`] per test binary, release 2 published (tests that
/// publish more make their own). Each test serves it with its own nginx
/// (`Nginx::serve(&w.repo.path, dir)`), so access logs are its own.
pub fn shared_big_world() -> &'static (World, String) {
    static WORLD: std::sync::OnceLock<(World, String)> = std::sync::OnceLock::new();
    WORLD.get_or_init(|| big_world("service-world"))
}

/// nginx over `w`'s repository for one test, logging to `dir`.
pub fn serve(w: &World, dir: &Path) -> Nginx {
    Nginx::serve(&w.repo.path, dir)
}

/// The delta bytes (superblock and parts) of `from` → `to` in the repository.
pub fn delta_bytes(w: &World, from: &str, to: &str) -> u64 {
    let id = |h: &str| ObjectId::from_hex(h).unwrap();
    let dir = w
        .repo
        .path
        .join(atomup_ostree::delta::delta_path(Some(&id(from)), &id(to)));
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

/// `d`'s configuration drop-in (`<root>/config.d/50-test.toml`): the
/// server, the keys, the device's state dir and machine id, a reboot command
/// that only records itself (`<root>/rebooted`), and what a test adds.
pub struct Conf {
    /// `[server]` keys and their TOML values, in order.
    server: Vec<(String, String)>,
    rest: String,
    dir: PathBuf,
}

impl Conf {
    pub fn new(w: &World, d: &Device, server: &str) -> Conf {
        let marker = d.root.join("rebooted");
        Conf {
            server: vec![
                ("url".into(), format!("{server:?}")),
                ("channel".into(), "\"stable\"".into()),
            ],
            rest: format!(
                "[trust]\nkeys_file = {:?}\n\n[device]\nstate_dir = {:?}\nmachine_id = {:?}\n\n\
                 [reboot]\ncommand = [\"/bin/sh\", \"-c\", {:?}]\n\n",
                w.keys.public.display().to_string(),
                d.state.display().to_string(),
                d.machine_id.display().to_string(),
                format!("echo reboot >> {}", marker.display())
            ),
            dir: d.root.join("config.d"),
        }
    }

    /// Sets `[server]`'s `key` to the TOML `value` (`"\"beta\""`).
    pub fn server(mut self, key: &str, value: &str) -> Conf {
        self.server.retain(|(k, _)| k != key);
        self.server.push((key.into(), value.into()));
        self
    }

    /// No `server.url` (a device updated only from bundles keeps its channel).
    pub fn without_url(mut self) -> Conf {
        self.server.retain(|(k, _)| k != "url");
        self
    }

    /// More sections (`[link]\nbandwidth = ...`).
    pub fn with(mut self, toml: &str) -> Conf {
        self.rest.push_str(toml);
        self.rest.push('\n');
        self
    }

    /// Writes the drop-in atomically; returns the directory.
    pub fn write(self) -> PathBuf {
        std::fs::create_dir_all(&self.dir).unwrap();
        let server: String = self
            .server
            .iter()
            .map(|(k, v)| format!("{k} = {v}\n"))
            .collect();
        let text = format!("[server]\n{server}\n{}", self.rest);
        let tmp = self.dir.join(".50-test.toml.new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.dir.join("50-test.toml")).unwrap();
        self.dir
    }
}

/// Times the reboot command ran.
pub fn reboots(d: &Device) -> usize {
    std::fs::read_to_string(d.root.join("rebooted"))
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

/// `atomup --config-dir <d>/config.d <cmd> --env-image ... --booted-slot X
/// --from-root <booted> --target-dir <other> --now T0+60 --retry-backoff-ms 20`.
pub fn agent_args(d: &Device, cmd: &str, booted: &str, extra: &[&str]) -> Vec<std::ffi::OsString> {
    let (active, inactive) = if booted == "A" {
        (&d.slot_a, &d.slot_b)
    } else {
        (&d.slot_b, &d.slot_a)
    };
    let mut a: Vec<std::ffi::OsString> = vec![
        "--config-dir".into(),
        d.root.join("config.d").into(),
        cmd.into(),
        "--env-image".into(),
        d.env.clone().into(),
        "--board".into(),
        "qemu-virt".into(),
        "--booted-slot".into(),
        booted.into(),
        "--from-root".into(),
        active.into(),
        "--target-dir".into(),
        inactive.into(),
        "--now".into(),
        (T0 + 60).to_string().into(),
        "--retry-backoff-ms".into(),
        "20".into(),
    ];
    a.extend(extra.iter().map(Into::into));
    a
}

/// A running `atomup` (daemon or update) whose stdout and stderr are
/// collected line by line as they come.
pub struct Agent {
    pub child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Agent {
    pub fn spawn(args: &[std::ffi::OsString]) -> Agent {
        Agent::spawn_bin(&crate::workspace_bin("atomup"), args)
    }

    /// [`Agent::spawn`] of another build of the agent (the benchmark's
    /// static release build).
    pub fn spawn_bin(bin: &Path, args: &[std::ffi::OsString]) -> Agent {
        let mut child = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { return };
                    lines.lock().unwrap().push(line);
                }
            });
        }
        Agent { child, lines }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything printed so far.
    pub fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Waits until a line contains `needle`; fails the test after `limit`.
    pub fn wait_for(&self, needle: &str, limit: Duration) -> String {
        let start = Instant::now();
        loop {
            if let Some(l) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return l.clone();
            }
            if start.elapsed() > limit {
                panic!("no `{needle}` within {limit:?}:\n{}", self.output());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends `signal` (`TERM`, `HUP`, `KILL`, ...).
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{signal} {}", self.pid());
    }

    /// Waits for the process to exit; fails the test after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the readers drain the pipes.
                std::thread::sleep(Duration::from_millis(50));
                return status;
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                panic!("did not exit within {limit:?}:\n{}", self.output());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A report endpoint on loopback: answers `POST`s with 204 and keeps their
/// bodies while up, answers 503 (and keeps nothing) while down.
pub struct ReportSink {
    pub port: u16,
    up: Arc<AtomicBool>,
    bodies: Arc<Mutex<Vec<String>>>,
}

impl ReportSink {
    pub fn start(up: bool) -> ReportSink {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(up));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let (u, b) = (up.clone(), bodies.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let (u, b) = (u.clone(), b.clone());
                std::thread::spawn(move || serve_report(conn, &u, &b));
            }
        });
        ReportSink { port, up, bodies }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/reports", self.port)
    }

    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
    }

    /// The bodies received, in order.
    pub fn received(&self) -> Vec<String> {
        self.bodies.lock().unwrap().clone()
    }
}

fn serve_report(mut conn: TcpStream, up: &AtomicBool, bodies: &Mutex<Vec<String>>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    loop {
        let mut head = Vec::new();
        let mut len = 0usize;
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
            head.push(line);
        }
        let mut body = vec![0u8; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let is_post = head
            .first()
            .is_some_and(|l| l.starts_with("POST /reports "));
        let answer = if is_post && up.load(Ordering::SeqCst) {
            bodies
                .lock()
                .unwrap()
                .push(String::from_utf8_lossy(&body).into_owned());
            "HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"
        } else {
            "HTTP/1.1 503 Down\r\nContent-Length: 0\r\n\r\n"
        };
        if conn.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// `atomup env show` of `d` as one line (`;` between variables).
pub fn env_line(d: &Device) -> String {
    device::env_show(d).trim_end().replace('\n', ";")
}

/// The state directory's `cache/` entries.
pub fn cache_entries(d: &Device) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = std::fs::read_dir(d.state.join("cache"))
        .map(|r| {
            r.map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().into_string().unwrap(),
                    e.metadata().unwrap().len(),
                )
            })
            .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Bytes of partial downloads in `d`'s cache.
pub fn partial_bytes(d: &Device) -> u64 {
    cache_entries(d)
        .iter()
        .filter(|(n, _)| n.ends_with(".partial"))
        .map(|(_, l)| l)
        .sum()
}

/// Waits until `cond` holds; fails the test after `limit`, naming `what`.
pub fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A daemon started on `d` (booted from A) that installs the release into
/// slot B, then stops on SIGTERM with exit 0: the next start after an
/// interruption, completing the update.
pub fn daemon_completes_into_b(d: &Device) {
    let mut a = Agent::spawn(&agent_args(d, "daemon", "A", &[]));
    a.wait_for("into slot B", Duration::from_secs(60));
    a.signal("TERM");
    assert!(
        a.wait_exit(Duration::from_secs(60)).success(),
        "{}",
        a.output()
    );
}

/// `d`'s daemon, caught in the middle of its download: the link capped at
/// 512 KiB/s to `nginx`, started, and returned once a part is half
/// downloaded (256 KiB in its partial).
pub fn daemon_mid_download(w: &World, d: &Device, nginx: &Nginx) -> Agent {
    Conf::new(w, d, &nginx.url())
        .with("[link]\nbandwidth = \"512KiB\"\n")
        .write();
    let a = Agent::spawn(&agent_args(d, "daemon", "A", &[]));
    wait_until("a part half downloaded", Duration::from_secs(60), || {
        partial_bytes(d) >= 256 * 1024
    });
    a
}

/// A pristine copy of a provisioned device, restored before each trial.
pub struct Pristine {
    dir: PathBuf,
}

impl Pristine {
    pub fn save(d: &Device) -> Pristine {
        let dir = d.root.with_extension("pristine");
        let _ = std::fs::remove_dir_all(&dir);
        crate::ostree_fixture::run_ok(Command::new("cp").arg("-a").arg(&d.root).arg(&dir));
        Pristine { dir }
    }

    pub fn restore(&self, d: &Device) {
        std::fs::remove_dir_all(&d.root).unwrap();
        crate::ostree_fixture::run_ok(Command::new("cp").arg("-a").arg(&self.dir).arg(&d.root));
    }
}

/// Whether `path` exists below `root` (a convenience for assertions).
pub fn exists(root: &Path, rel: &str) -> bool {
    root.join(rel).exists()
}
