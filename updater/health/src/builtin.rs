//! The checks atomup brings along, each switched on or off in the
//! configuration (`health.*`, see atomup-config): things every A/B device
//! needs and a vendor should not have to script.
//!
//! | name | kind | passes when |
//! |---|---|---|
//! | `atomup:read-only-root` | required | `/` is mounted read-only (the immutable root) |
//! | `atomup:data-partition` | required | the state directory lies on a mounted file system of its own (not the root's), read-write, on the board's `data` device when the profile names one, and a file written there survives `fsync` and rename |
//! | `atomup:free-space` | required | the data partition has at least `health.min_free` bytes available |
//! | `atomup:services` | required | each listed service runs: a systemd unit (`systemctl is-active` printing `active`: its exit status alone passes every unit in a chroot), or a pidfile whose process is alive (not a zombie) |
//! | `atomup:server-reachable` | wanted, never required | a TCP connection to the update server's host and port opens |
//!
//! Each returns `Ok(what it found)` or `Err(why it failed)`; the runner
//! gives it the same time limit as any check and runs it off the main
//! thread, so a hung file system or DNS cannot stop the watchdog feeding
//! within the limit.

use crate::record::Kind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Builtin {
    ReadOnlyRoot,
    DataPartition {
        state_dir: PathBuf,
        /// The board profile's `data` device.
        device: Option<PathBuf>,
    },
    FreeSpace {
        state_dir: PathBuf,
        min: u64,
    },
    Services(Vec<String>),
    ServerReachable {
        url: String,
    },
}

impl Builtin {
    pub fn name(&self) -> &'static str {
        match self {
            Builtin::ReadOnlyRoot => "atomup:read-only-root",
            Builtin::DataPartition { .. } => "atomup:data-partition",
            Builtin::FreeSpace { .. } => "atomup:free-space",
            Builtin::Services(_) => "atomup:services",
            Builtin::ServerReachable { .. } => "atomup:server-reachable",
        }
    }

    /// Rule (issue 15): the server being unreachable never fails a trial; a
    /// device must be able to confirm a slot while its link is down.
    pub fn kind(&self) -> Kind {
        match self {
            Builtin::ServerReachable { .. } => Kind::Wanted,
            _ => Kind::Required,
        }
    }

    /// Runs the check; `limit` bounds what it waits for itself (a TCP
    /// connect, a `systemctl` call).
    pub fn run(&self, limit: Duration) -> Result<String, String> {
        match self {
            Builtin::ReadOnlyRoot => read_only_root(),
            Builtin::DataPartition { state_dir, device } => {
                data_partition(state_dir, device.as_deref())
            }
            Builtin::FreeSpace { state_dir, min } => free_space(state_dir, *min),
            Builtin::Services(list) => services(list, limit),
            Builtin::ServerReachable { url } => server_reachable(url, limit),
        }
    }
}

fn mounts() -> Result<Vec<atomup_fsio::mountinfo::Mount>, String> {
    atomup_fsio::mountinfo::read().map_err(|e| format!("reading /proc/self/mountinfo: {e}"))
}

fn read_only_root() -> Result<String, String> {
    let m = mounts()?;
    let root = atomup_fsio::mountinfo::mount_of(&m, Path::new("/"))
        .ok_or("no mount for / in /proc/self/mountinfo")?;
    if root.read_only {
        Ok(format!(
            "/ is mounted read-only ({} {})",
            root.fstype, root.source
        ))
    } else {
        Err(format!(
            "/ is mounted read-write ({} {}): the root must be the immutable, read-only slot",
            root.fstype, root.source
        ))
    }
}

fn devname(dev: u64) -> String {
    format!("{}:{}", rustix::fs::major(dev), rustix::fs::minor(dev))
}

fn data_partition(state_dir: &Path, device: Option<&Path>) -> Result<String, String> {
    let dir = std::fs::canonicalize(state_dir)
        .map_err(|e| format!("state directory {}: {e}", state_dir.display()))?;
    let md = std::fs::metadata(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let m = mounts()?;
    let mount = atomup_fsio::mountinfo::mount_of(&m, &dir)
        .ok_or_else(|| format!("no mount for {} in /proc/self/mountinfo", dir.display()))?;
    if mount.point == Path::new("/") {
        return Err(format!(
            "{} is on the root file system: the data partition is not mounted",
            dir.display()
        ));
    }
    if mount.read_only {
        return Err(format!(
            "{} is mounted read-only ({} on {})",
            mount.point.display(),
            mount.source,
            mount.point.display()
        ));
    }
    if let Some(dev) = device {
        let want = std::fs::metadata(dev)
            .map_err(|e| format!("the board's data partition {}: {e}", dev.display()))?
            .rdev();
        if want != md.dev() {
            return Err(format!(
                "{} is on device {} ({}), not on the board's data partition {} ({})",
                dir.display(),
                devname(md.dev()),
                mount.source,
                dev.display(),
                devname(want)
            ));
        }
    }
    // Writable and syncable: the durable replace every record uses.
    let probe = dir.join(".health-probe");
    atomup_fsio::replace(&probe, b"atomup health probe\n")
        .map_err(|e| format!("cannot write {}: {e}", probe.display()))?;
    std::fs::remove_file(&probe).map_err(|e| format!("cannot remove {}: {e}", probe.display()))?;
    Ok(format!(
        "{} on {} ({} {}), writable",
        dir.display(),
        mount.point.display(),
        mount.fstype,
        mount.source
    ))
}

/// Bytes as MiB with one decimal, rounded down (integer arithmetic: no float
/// formatting in the device binary for this).
fn mib(b: u64) -> String {
    let tenths = b / ((1 << 20) / 10);
    format!("{}.{} MiB", tenths / 10, tenths % 10)
}

fn free_space(state_dir: &Path, min: u64) -> Result<String, String> {
    let st = rustix::fs::statvfs(state_dir)
        .map_err(|e| format!("statvfs {}: {e}", state_dir.display()))?;
    let avail = st.f_bavail.saturating_mul(st.f_frsize);
    if avail < min {
        Err(format!(
            "{} free on {}, below the {} required (health.min_free)",
            mib(avail),
            state_dir.display(),
            mib(min)
        ))
    } else {
        Ok(format!("{} free on {}", mib(avail), state_dir.display()))
    }
}

/// Whether process `pid` is alive: it exists and is not a zombie.
fn alive(pid: u32) -> Result<(), String> {
    let stat = atomup_fsio::read_text_capped(Path::new(&format!("/proc/{pid}/stat")), 4096)
        .map_err(|e| format!("process {pid} is not running ({e})"))?;
    // `pid (comm) S ...`: the state follows the last `)`.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next())
        .ok_or_else(|| format!("/proc/{pid}/stat is not readable"))?;
    match state {
        'Z' | 'X' | 'x' => Err(format!("process {pid} has exited (state {state})")),
        _ => Ok(()),
    }
}

fn pidfile(path: &Path) -> Result<String, String> {
    let text = atomup_fsio::read_text_capped(path, 64)
        .map_err(|e| format!("pidfile {}: {e}", path.display()))?;
    let pid: u32 = text
        .trim()
        .parse()
        .ok()
        .filter(|&p| p > 0)
        .ok_or_else(|| format!("pidfile {} holds no process id", path.display()))?;
    alive(pid).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(format!("{} (pid {pid})", path.display()))
}

/// Whether systemd says unit `name` is active. Rule (fails closed): only
/// `active` on systemctl's stdout passes. Its exit status alone is not
/// enough: in a chroot, or where PID 1 is not systemd, systemctl answers
/// "Running in chroot, ignoring command" on stderr and exits 0 for every unit
/// (regression: a unit that does not exist passed the trial in a container).
fn unit(name: &str, limit: Duration) -> Result<String, String> {
    use std::io::Read;
    let mut child = std::process::Command::new("systemctl")
        .args(["is-active", "--", name])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("{name}: cannot run systemctl ({e})"))?;
    let start = std::time::Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if start.elapsed() > limit => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{name}: systemctl did not answer"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("{name}: {e}")),
        }
    };
    // One word ("active", "inactive", "failed", ...); a pipe's worth at most
    // was written before the exit, read capped.
    let mut said = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = out.take(256).read_to_string(&mut said);
    }
    match (status.success(), said.trim()) {
        (true, "active") => Ok(name.to_owned()),
        (_, "") => Err(format!(
            "{name}: systemctl gave no state (exit {status}; no running systemd here?)"
        )),
        (_, state) => Err(format!("{name} is not active ({state})")),
    }
}

fn services(list: &[String], limit: Duration) -> Result<String, String> {
    let mut ok = Vec::new();
    for s in list {
        ok.push(if s.starts_with('/') {
            pidfile(Path::new(s))?
        } else {
            unit(s, limit)?
        });
    }
    Ok(format!("running: {}", ok.join(", ")))
}

/// `host:port` of an `http://` or `https://` URL (the port defaults by
/// scheme; `[v6]` literals keep their brackets for the resolver).
pub fn host_port(url: &str) -> Option<(String, u16)> {
    let (rest, default) = if let Some(r) = url.strip_prefix("https://") {
        (r, 443)
    } else {
        (url.strip_prefix("http://")?, 80)
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if authority.is_empty() {
        return None;
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && !p.contains(']') => (h, p.parse().ok()?),
        _ => (authority, default),
    };
    Some((host.to_owned(), port))
}

fn server_reachable(url: &str, limit: Duration) -> Result<String, String> {
    use std::net::ToSocketAddrs;
    let (host, port) = host_port(url).ok_or_else(|| format!("`{url}` names no host"))?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<_> = (bare, port)
        .to_socket_addrs()
        .map_err(|e| format!("{host}: cannot resolve ({e})"))?
        .collect();
    let mut last = format!("{host}: no address");
    for a in addrs {
        match std::net::TcpStream::connect_timeout(&a, limit) {
            Ok(_) => return Ok(format!("{host}:{port} ({a}) accepts connections")),
            Err(e) => last = format!("{host}:{port} ({a}): {e}"),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The server's host and port come out of the URL forms the config
    /// accepts, with the scheme's default port.
    #[test]
    fn host_and_port_of_server_urls() {
        let hp = |u| host_port(u);
        assert_eq!(
            hp("https://updates.example.com/repo"),
            Some(("updates.example.com".into(), 443))
        );
        assert_eq!(
            hp("http://10.0.2.2:18080/repo"),
            Some(("10.0.2.2".into(), 18080))
        );
        assert_eq!(hp("http://[::1]:8080/x"), Some(("[::1]".into(), 8080)));
        assert_eq!(hp("http://[::1]/x"), Some(("[::1]".into(), 80)));
        assert_eq!(hp("ftp://x/"), None);
        assert_eq!(hp("http:///x"), None);
        assert_eq!(hp("http://h:notaport/"), None);
    }

    /// A pidfile passes while its process lives and fails once it is gone
    /// (or never named one).
    #[test]
    fn pidfiles_follow_their_process() {
        let dir = std::env::temp_dir().join(format!("atomup-pid-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("svc.pid");
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        std::fs::write(&f, format!("{}\n", child.id())).unwrap();
        let list = vec![f.display().to_string()];
        assert!(services(&list, Duration::from_secs(1)).is_ok());
        child.kill().unwrap();
        // A zombie until reaped: not running.
        std::thread::sleep(Duration::from_millis(100));
        let e = services(&list, Duration::from_secs(1)).unwrap_err();
        assert!(e.contains("has exited"), "{e}");
        child.wait().unwrap();
        assert!(services(&list, Duration::from_secs(1))
            .unwrap_err()
            .contains("not running"));
        std::fs::write(&f, "garbage").unwrap();
        assert!(services(&list, Duration::from_secs(1))
            .unwrap_err()
            .contains("no process id"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Free space is compared with the minimum: nothing is free enough
    /// against u64::MAX, everything against 0; sizes print in MiB.
    #[test]
    fn free_space_against_the_minimum() {
        assert_eq!(mib(50 << 20), "50.0 MiB");
        assert_eq!(mib((1 << 20) + (1 << 19)), "1.5 MiB");
        assert_eq!(mib(0), "0.0 MiB");
        let tmp = std::env::temp_dir();
        assert!(free_space(&tmp, 0).unwrap().contains("free on"));
        assert!(free_space(&tmp, u64::MAX)
            .unwrap_err()
            .contains("health.min_free"));
    }

    /// A server that does not listen is reported unreachable, one that
    /// listens reachable. The closed port is port 1 (privileged, unused),
    /// not a port just freed: a parallel test may bind that one again
    /// (regression: this test failed once in a full `cargo test`).
    #[test]
    fn server_reachable_follows_the_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let url = format!("http://127.0.0.1:{port}/repo");
        assert!(server_reachable(&url, Duration::from_secs(2)).is_ok());
        assert!(server_reachable("http://127.0.0.1:1/repo", Duration::from_secs(2)).is_err());
    }

    /// The state dir on the root file system of this machine's test run is
    /// never "the data partition" when a board device is named that it is
    /// not on.
    #[test]
    fn data_partition_names_the_wrong_device() {
        let dir = std::env::temp_dir();
        let e = data_partition(&dir, Some(Path::new("/dev/null"))).unwrap_err();
        assert!(
            e.contains("not on the board's data partition /dev/null")
                || e.contains("is on the root file system"),
            "{e}"
        );
        let e = data_partition(Path::new("/nonexistent/state"), None).unwrap_err();
        assert!(e.contains("/nonexistent/state"), "{e}");
    }
}
