//! A real nginx on loopback serving a directory, as the update server in tests,
//! and a fault-injecting TCP proxy in front of it that cuts connections: the
//! server stays real, only the link is made flaky.

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
        crate::require_tool("nginx");
        // nginx resolves relative paths against its prefix, not our cwd.
        let root = std::path::absolute(root).unwrap();
        let dir = std::path::absolute(work.join("nginx")).unwrap();
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        let port = free_port();
        let d = dir.display();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log;\nevents {{ worker_connections 64; }}\n\
             http {{\n  log_format atomup '$status \"$http_range\" $body_bytes_sent $request_uri';\n\
             access_log {d}/access.log atomup;\n  default_type application/octet-stream;\n\
             client_body_temp_path {d}/tmp/body; proxy_temp_path {d}/tmp/proxy;\n\
             fastcgi_temp_path {d}/tmp/fcgi; uwsgi_temp_path {d}/tmp/uwsgi; scgi_temp_path {d}/tmp/scgi;\n\
             server {{ listen 127.0.0.1:{port}; root {}; }}\n}}\n",
            root.display()
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let child = Command::new("nginx")
            .arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .stdin(Stdio::null())
            .spawn()
            .expect("starting nginx");
        wait_for_port(port);
        Nginx { child, port, dir }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
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

/// A proxy to `upstream` whose first `cuts` connections are closed after
/// `cut_after` response bytes; it counts every response byte it forwards.
pub struct FlakyProxy {
    pub port: u16,
    forwarded: Arc<AtomicU64>,
}

impl FlakyProxy {
    pub fn start(upstream: u16, cut_after: u64, cuts: usize) -> FlakyProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let forwarded = Arc::new(AtomicU64::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = forwarded.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let n = connections.fetch_add(1, Ordering::SeqCst);
                let limit = if n < cuts { cut_after } else { u64::MAX };
                let counter = counter.clone();
                std::thread::spawn(move || relay(client, upstream, limit, &counter));
            }
        });
        FlakyProxy { port, forwarded }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Response bytes (headers included) that reached the client.
    pub fn forwarded(&self) -> u64 {
        self.forwarded.load(Ordering::SeqCst)
    }
}

fn relay(client: TcpStream, upstream: u16, limit: u64, counter: &AtomicU64) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
        return;
    };
    let (mut c_read, mut s_write) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut c_read, &mut s_write);
        let _ = s_write.shutdown(Shutdown::Write);
    });
    let (mut s_read, mut c_write) = (server, client);
    let mut sent = 0u64;
    let mut buf = [0u8; 16 * 1024];
    loop {
        let want = buf.len().min((limit - sent).min(buf.len() as u64) as usize);
        if want == 0 {
            break;
        }
        let n = match s_read.read(&mut buf[..want]) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if c_write.write_all(&buf[..n]).is_err() {
            break;
        }
        sent += n as u64;
        counter.fetch_add(n as u64, Ordering::SeqCst);
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
