//! A real nginx on loopback serving a directory, as the update server in tests,
//! and a fault-injecting TCP proxy in front of it (cuts, stalls, 5xx bursts,
//! a trickle, corrupted bytes): the server stays real, only the link is made
//! flaky.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// nginx serving `root` on 127.0.0.1 until dropped. Its access log records
/// status, Range header and bytes sent per request.
pub struct Nginx {
    child: Child,
    pub port: u16,
    dir: PathBuf,
}

impl Nginx {
    pub fn serve(root: &Path, work: &Path) -> Nginx {
        Nginx::start(root, work, None)
    }

    /// nginx serving `root` over HTTPS with the certificate chain `cert`
    /// (PEM) and its key `key`.
    pub fn serve_tls(root: &Path, work: &Path, cert: &Path, key: &Path) -> Nginx {
        Nginx::start(root, work, Some((cert, key)))
    }

    fn start(root: &Path, work: &Path, tls: Option<(&Path, &Path)>) -> Nginx {
        crate::require_tool("nginx");
        // nginx resolves relative paths against its prefix, not our cwd.
        let root = std::path::absolute(root).unwrap();
        let dir = std::path::absolute(work.join(if tls.is_some() { "nginx-tls" } else { "nginx" }))
            .unwrap();
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        let port = free_port();
        let d = dir.display();
        let listen = match tls {
            None => format!("listen 127.0.0.1:{port};"),
            Some((cert, key)) => format!(
                "listen 127.0.0.1:{port} ssl; ssl_certificate {}; ssl_certificate_key {};",
                std::path::absolute(cert).unwrap().display(),
                std::path::absolute(key).unwrap().display()
            ),
        };
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log;\nevents {{ worker_connections 64; }}\n\
             http {{\n  log_format atomup '$status \"$http_range\" $body_bytes_sent $request_uri';\n\
             access_log {d}/access.log atomup;\n  default_type application/octet-stream;\n\
             client_body_temp_path {d}/tmp/body; proxy_temp_path {d}/tmp/proxy;\n\
             fastcgi_temp_path {d}/tmp/fcgi; uwsgi_temp_path {d}/tmp/uwsgi; scgi_temp_path {d}/tmp/scgi;\n\
             server {{ {listen} root {}; }}\n}}\n",
            root.display()
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let mut cmd = Command::new("nginx");
        cmd.arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .stdin(Stdio::null());
        // Ends with the test process even when its world is a static that
        // is never dropped.
        let child = crate::reaped::spawn(cmd).expect("starting nginx");
        wait_for_port(port);
        Nginx { child, port, dir }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn https_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// Access log lines: `<status> "<range>" <bytes> <uri>`. nginx logs a
    /// request only after its response has gone out, so a client can read
    /// the log before its own request is in it: this waits until the log
    /// has stopped changing (200 ms unchanged; 5 s at most).
    pub fn requests(&self) -> Vec<String> {
        let read = || std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut log = read();
        loop {
            std::thread::sleep(Duration::from_millis(200));
            let again = read();
            if again == log || Instant::now() > deadline {
                return again.lines().map(str::to_owned).collect();
            }
            log = again;
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "server on port {port} did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Faults a [`FlakyProxy`] injects between the agent and the real server.
/// Every request gets a connection of its own (the proxy adds `Connection:
/// close`), so "after N response bytes" counts within one response.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Close a connection once it forwarded this many response bytes
    /// (headers included)...
    pub cut_after: Option<u64>,
    /// ...but only this many times in all (`None`: every connection).
    pub cuts: Option<usize>,
    /// After this many response bytes, stop forwarding for this long (a
    /// stalled link), `stalls` times in all.
    pub stall: Option<(u64, Duration)>,
    pub stalls: usize,
    /// Answer this many requests with this status, without asking the server
    /// (a burst of 5xx).
    pub status_burst: Option<(u16, usize)>,
    /// Forward at most this many bytes per second (a trickle).
    pub trickle: Option<u64>,
    /// Flip the body byte at this offset of every response to a request
    /// whose path contains the string (corrupted bytes).
    pub corrupt: Option<(String, u64)>,
}

/// A TCP proxy to `upstream` (a real nginx) that injects [`Faults`] and
/// counts every response byte it forwards, with the time of each write.
pub struct FlakyProxy {
    pub port: u16,
    forwarded: Arc<AtomicU64>,
    /// Response bytes its TCP transmitted to the client (see [`FlakyProxy::transmitted`]).
    transmitted: Arc<AtomicU64>,
    connections: Arc<AtomicUsize>,
    /// Connections whose `transmitted` bytes are counted.
    counted: Arc<AtomicUsize>,
    samples: Arc<std::sync::Mutex<Vec<(Instant, u64)>>>,
}

/// The faults' shared counters (cuts, stalls and statuses left).
struct Budget {
    faults: Faults,
    cuts_left: AtomicUsize,
    stalls_left: AtomicUsize,
    statuses_left: AtomicUsize,
}

fn take_one(counter: &AtomicUsize) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

impl FlakyProxy {
    /// The first `cuts` connections that reach `cut_after` response bytes are closed there.
    pub fn start(upstream: u16, cut_after: u64, cuts: usize) -> FlakyProxy {
        FlakyProxy::with_faults(
            upstream,
            Faults {
                cut_after: Some(cut_after),
                cuts: Some(cuts),
                ..Faults::default()
            },
        )
    }

    pub fn with_faults(upstream: u16, faults: Faults) -> FlakyProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let forwarded = Arc::new(AtomicU64::new(0));
        let transmitted = Arc::new(AtomicU64::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = Arc::new(AtomicUsize::new(0));
        let samples = Arc::new(std::sync::Mutex::new(Vec::new()));
        let budget = Arc::new(Budget {
            cuts_left: AtomicUsize::new(faults.cuts.unwrap_or(usize::MAX)),
            stalls_left: AtomicUsize::new(faults.stalls),
            statuses_left: AtomicUsize::new(faults.status_burst.map_or(0, |s| s.1)),
            faults,
        });
        let (counter, conns, log) = (forwarded.clone(), connections.clone(), samples.clone());
        let (sent, done) = (transmitted.clone(), counted.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                conns.fetch_add(1, Ordering::SeqCst);
                let (counter, budget, log) = (counter.clone(), budget.clone(), log.clone());
                let (sent, done) = (sent.clone(), done.clone());
                std::thread::spawn(move || {
                    let c = client.try_clone().unwrap();
                    relay(client, upstream, &budget, &counter, &log);
                    sent.fetch_add(tcp_bytes_sent(&c), Ordering::SeqCst);
                    done.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        FlakyProxy {
            port,
            forwarded,
            transmitted,
            connections,
            counted,
            samples,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Response bytes (headers included) that reached the client.
    pub fn forwarded(&self) -> u64 {
        self.forwarded.load(Ordering::SeqCst)
    }

    /// Response bytes (headers included) the proxy's TCP transmitted to the
    /// client (`tcpi_bytes_sent`, so retransmissions count): what crossed
    /// the wire. Unlike [`forwarded`] it leaves out what the proxy wrote
    /// into its socket's send buffer but never transmitted because the
    /// client was killed first (its window was full). Call it once the
    /// client is done: it waits (up to 60 s) until every connection so far
    /// has ended and been counted.
    ///
    /// [`forwarded`]: FlakyProxy::forwarded
    pub fn transmitted(&self) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.counted.load(Ordering::SeqCst) < self.connections() && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.transmitted.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// The rate in bytes/s over the part of the transfer after the first
    /// `skip` bytes (which a socket buffer may have taken in at once), up to
    /// the last byte forwarded.
    pub fn rate_after(&self, skip: u64) -> f64 {
        let samples = self.samples.lock().unwrap();
        let start = samples.iter().find(|(_, total)| *total >= skip);
        match (start, samples.last()) {
            (Some(&(t0, b0)), Some(&(t1, b1))) if t1 > t0 => {
                (b1 - b0) as f64 / (t1 - t0).as_secs_f64()
            }
            _ => 0.0,
        }
    }
}

/// The bytes `s`'s TCP transmitted (`TCP_INFO`'s `tcpi_bytes_sent`, Linux
/// 4.19+) once it is done: everything written was sent and acknowledged, or
/// the connection was reset (nothing more will go), or 60 s passed; 0 if
/// the kernel does not say.
fn tcp_bytes_sent(s: &TcpStream) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let Some(info) = tcp_info(s) else { return 0 };
        // TCP_CLOSE is 7: reset or fully closed.
        let done = info.tcpi_state == 7 || (info.tcpi_notsent_bytes == 0 && info.tcpi_unacked == 0);
        if done || Instant::now() > deadline {
            return info.tcpi_bytes_sent;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `TCP_INFO` of a socket (None when the kernel's is older than the fields
/// up to `tcpi_bytes_sent`, Linux 4.19).
pub fn tcp_info(s: &TcpStream) -> Option<libc::tcp_info> {
    use std::os::fd::AsRawFd;
    // SAFETY: `info` is a plain C struct, zeroed, and `len` is its size; the
    // kernel writes at most `len` bytes into it.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let rc = libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        );
        let end = std::mem::offset_of!(libc::tcp_info, tcpi_bytes_sent) + 8;
        (rc == 0 && len as usize >= end).then_some(info)
    }
}

/// Reads an HTTP head (up to the blank line, at most 64 KiB).
fn read_head(r: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match r.read(&mut b) {
            Ok(1) if head.len() < 64 * 1024 => head.push(b[0]),
            _ => return None,
        }
    }
    Some(head)
}

fn relay(
    mut client: TcpStream,
    upstream: u16,
    budget: &Budget,
    counter: &AtomicU64,
    log: &std::sync::Mutex<Vec<(Instant, u64)>>,
) {
    let Some(head) = read_head(&mut client) else {
        return;
    };
    let text = String::from_utf8_lossy(&head).into_owned();
    let path = text.split(' ').nth(1).unwrap_or("").to_owned();
    let f = &budget.faults;
    if let Some((status, _)) = f.status_burst {
        if take_one(&budget.statuses_left) {
            let answer = format!(
                "HTTP/1.1 {status} Injected\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let _ = client.write_all(answer.as_bytes());
            counter.fetch_add(answer.len() as u64, Ordering::SeqCst);
            return;
        }
    }
    let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)) else {
        return;
    };
    // One request per connection: drop any Connection header, ask for close.
    let mut rewritten: Vec<&str> = text
        .trim_end_matches("\r\n")
        .split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .collect();
    rewritten.push("Connection: close");
    let head = rewritten.join("\r\n") + "\r\n\r\n";
    if server.write_all(head.as_bytes()).is_err() {
        return;
    }
    let (mut c_read, mut s_write) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut c_read, &mut s_write);
        let _ = s_write.shutdown(Shutdown::Write);
    });
    let (mut s_read, mut c_write) = (server, client);
    let corrupt_at = f
        .corrupt
        .as_ref()
        .filter(|(needle, _)| path.contains(needle.as_str()))
        .map(|(_, at)| *at);
    let mut limit = f.cut_after.unwrap_or(u64::MAX);
    let mut sent = 0u64;
    let mut body_start: Option<u64> = None;
    let mut seen = Vec::new();
    let mut stall_done = false;
    let chunk = f
        .trickle
        .map_or(16 * 1024, |r| (r / 10).clamp(1, 16 * 1024) as usize);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let mut want = chunk.min(buf.len()) as u64;
        if limit != u64::MAX {
            match limit.saturating_sub(sent) {
                0 if take_one(&budget.cuts_left) => break,
                0 => limit = u64::MAX,
                room => want = want.min(room),
            }
        }
        if let (Some((after, pause)), false) = (f.stall, stall_done) {
            if sent >= after {
                stall_done = true;
                if take_one(&budget.stalls_left) {
                    std::thread::sleep(pause);
                }
            } else {
                want = want.min(after - sent);
            }
        }
        let want = want as usize;
        let n = match s_read.read(&mut buf[..want]) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if body_start.is_none() {
            seen.extend_from_slice(&buf[..n]);
            if let Some(p) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                body_start = Some(sent - (seen.len() - n) as u64 + (p + 4) as u64);
            }
        }
        if let (Some(at), Some(start)) = (corrupt_at, body_start) {
            let abs = start + at;
            if abs >= sent && abs < sent + n as u64 {
                buf[(abs - sent) as usize] ^= 0xff;
            }
        }
        if c_write.write_all(&buf[..n]).is_err() {
            break;
        }
        sent += n as u64;
        let total = counter.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
        log.lock().unwrap().push((Instant::now(), total));
        if f.trickle.is_some() {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let _ = c_write.shutdown(Shutdown::Both);
    let _ = s_read.shutdown(Shutdown::Both);
}

/// A hand-written HTTP server on loopback for link timing: every request is
/// answered `200` with `body`, `chunk` bytes at a time with `pause` before
/// each (after the headers): a slow but live link, a trickle, or, with a
/// long pause, a server that stalls after its headers.
pub struct Trickle {
    pub port: u16,
}

impl Trickle {
    pub fn start(body: Vec<u8>, chunk: usize, pause: Duration) -> Trickle {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let body = Arc::new(body);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(mut client) = client else { return };
                let body = body.clone();
                std::thread::spawn(move || {
                    // The request: read up to the blank line.
                    let mut req = Vec::new();
                    let mut b = [0u8; 1];
                    while !req.ends_with(b"\r\n\r\n") {
                        match client.read(&mut b) {
                            Ok(1) => req.push(b[0]),
                            _ => return,
                        }
                    }
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    if client.write_all(head.as_bytes()).is_err() {
                        return;
                    }
                    for piece in body.chunks(chunk.max(1)) {
                        std::thread::sleep(pause);
                        if client.write_all(piece).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Trickle { port }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}
