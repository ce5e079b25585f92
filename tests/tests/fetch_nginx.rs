//! The device downloader against a real nginx: size caps, sha256 before use,
//! Range resume over a link that cuts, and clear errors for bad answers.

use atomup_fetch::{Expect, FetchError, Fetcher, Options};
use atomup_tests::nginx::{FlakyProxy, Nginx, Trickle};
use atomup_tests::ostree_fixture::ScratchDir;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::Duration;

fn quick() -> Options {
    Options {
        attempts: 5,
        backoff: Duration::from_millis(10),
        connect_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(5),
        attempt_deadline: None,
        low_speed: None,
        ..Options::default()
    }
}

/// Deterministic, incompressible-looking payload.
fn payload(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut block = Sha256::digest(b"atomup fetch payload").to_vec();
    while out.len() < len {
        block = Sha256::digest(&block).to_vec();
        out.extend_from_slice(&block);
    }
    out.truncate(len);
    out
}

fn expect_of(data: &[u8]) -> Expect {
    Expect {
        size: data.len() as u64,
        sha256: Sha256::digest(data).into(),
    }
}

struct Site {
    _tmp: ScratchDir,
    root: std::path::PathBuf,
    cache: std::path::PathBuf,
    nginx: Nginx,
}

fn site(files: &[(&str, &[u8])]) -> Site {
    let tmp = ScratchDir::new("fetch");
    let root = tmp.join("repo");
    for (name, data) in files {
        let p = root.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
    let nginx = Nginx::serve(&root, tmp.path());
    let cache = tmp.join("cache");
    Site {
        root,
        cache,
        nginx,
        _tmp: tmp,
    }
}

fn no_progress() -> impl FnMut(u64, u64) {
    |_, _| {}
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A payload is downloaded whole, checked, and stored under its digest.
#[test]
fn payload_downloads_and_verifies() {
    let data = payload(3 << 20);
    let s = site(&[("deltas/a/0", &data)]);
    let f = Fetcher::new(&s.nginx.url(), &s.cache, quick()).unwrap();
    let path = f
        .fetch_verified("deltas/a/0", expect_of(&data), &mut no_progress())
        .unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), data);
    assert_eq!(s.nginx.requests().len(), 1);
}

/// A link that cuts twice mid-transfer resumes with Range requests and pays for
/// the payload's bytes once: what crosses the wire stays within headers of the size.
#[test]
fn cut_connection_resumes_with_range_and_no_byte_twice() {
    let data = payload(4 << 20);
    let s = site(&[("deltas/b/0", &data)]);
    let proxy = FlakyProxy::start(s.nginx.port, 1 << 20, 2);
    let f = Fetcher::new(&proxy.url(), &s.cache, quick()).unwrap();
    let path = f
        .fetch_verified("deltas/b/0", expect_of(&data), &mut no_progress())
        .unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), data);
    let log = s.nginx.requests();
    assert!(
        log.iter().filter(|l| l.starts_with("206 \"bytes=")).count() >= 2,
        "{log:#?}"
    );
    let overhead = proxy.forwarded() - data.len() as u64;
    assert!(
        overhead < 4096,
        "{overhead} extra bytes over the wire: {log:#?}"
    );
}

/// A partial file left by an earlier boot is continued from where it stopped.
#[test]
fn partial_from_an_earlier_run_is_continued() {
    let data = payload(2 << 20);
    let s = site(&[("p/0", &data)]);
    let e = expect_of(&data);
    std::fs::create_dir_all(&s.cache).unwrap();
    let half = data.len() / 2;
    std::fs::write(
        s.cache
            .join(format!("{}.partial", atomup_ostree::hex::encode(&e.sha256))),
        &data[..half],
    )
    .unwrap();
    let f = Fetcher::new(&s.nginx.url(), &s.cache, quick()).unwrap();
    let path = f.fetch_verified("p/0", e, &mut no_progress()).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), data);
    assert_eq!(
        s.nginx.requests(),
        vec![format!("206 \"bytes={half}-\" {} /p/0", data.len() - half)]
    );
}

/// A damaged partial file is caught by the digest, discarded, and the next try succeeds.
#[test]
fn damaged_partial_is_discarded_on_digest_mismatch() {
    let data = payload(1 << 20);
    let s = site(&[("p/1", &data)]);
    let e = expect_of(&data);
    std::fs::create_dir_all(&s.cache).unwrap();
    let partial = s
        .cache
        .join(format!("{}.partial", atomup_ostree::hex::encode(&e.sha256)));
    std::fs::write(&partial, vec![0u8; 1000]).unwrap();
    let f = Fetcher::new(&s.nginx.url(), &s.cache, quick()).unwrap();
    let err = f.fetch_verified("p/1", e, &mut no_progress()).unwrap_err();
    assert!(matches!(err, FetchError::Digest { .. }), "{err}");
    assert!(files_in(&s.cache).is_empty(), "{:?}", files_in(&s.cache));
    let path = f.fetch_verified("p/1", e, &mut no_progress()).unwrap();
    assert_eq!(std::fs::read(path).unwrap(), data);
}

/// A server sending more than the signed size is cut off at the cap and nothing is kept.
#[test]
fn oversized_answer_is_refused_at_the_cap() {
    let data = payload(1 << 20);
    let s = site(&[("big", &data)]);
    let small = Expect {
        size: 1000,
        sha256: Sha256::digest(&data[..1000]).into(),
    };
    let f = Fetcher::new(&s.nginx.url(), &s.cache, quick()).unwrap();
    let err = f
        .fetch_verified("big", small, &mut no_progress())
        .unwrap_err();
    assert!(
        matches!(err, FetchError::Oversized { cap: 1000, .. }),
        "{err}"
    );
    assert!(files_in(&s.cache).is_empty());
}

/// Content that does not hash to the signed digest is never handed out.
#[test]
fn wrong_content_is_refused() {
    let data = payload(100_000);
    let s = site(&[("x", &data)]);
    let mut e = expect_of(&data);
    e.sha256[0] ^= 1;
    let f = Fetcher::new(&s.nginx.url(), &s.cache, quick()).unwrap();
    let err = f.fetch_verified("x", e, &mut no_progress()).unwrap_err();
    assert!(err.to_string().contains("sha256 mismatch"), "{err}");
    assert!(files_in(&s.cache).is_empty());
}

/// A missing file is a clear error at once, without retries.
#[test]
fn missing_file_fails_once_with_the_status() {
    let s = site(&[]);
    let f = Fetcher::new(&s.nginx.url(), &s.cache, quick()).unwrap();
    let err = f.fetch_small("atomup/stable/release", 65536).unwrap_err();
    assert!(
        matches!(err, FetchError::Status { status: 404, .. }),
        "{err}"
    );
    assert_eq!(s.nginx.requests().len(), 1);
}

/// Small documents over their cap are refused.
#[test]
fn small_document_over_cap_is_refused() {
    let s = site(&[("release", &[b'a'; 5000])]);
    let f = Fetcher::new(&s.nginx.url(), &s.cache, quick()).unwrap();
    assert_eq!(f.fetch_small("release", 5000).unwrap().len(), 5000);
    let err = f.fetch_small("release", 4999).unwrap_err();
    assert!(matches!(err, FetchError::Oversized { .. }), "{err}");
}

/// A finished download is re-hashed and reused without touching the network.
#[test]
fn cached_payload_is_reused_offline() {
    let data = payload(500_000);
    let s = site(&[("c", &data)]);
    let f = Fetcher::new(&s.nginx.url(), &s.cache, quick()).unwrap();
    f.fetch_verified("c", expect_of(&data), &mut no_progress())
        .unwrap();
    std::fs::remove_file(s.root.join("c")).unwrap();
    f.fetch_verified("c", expect_of(&data), &mut no_progress())
        .unwrap();
    assert_eq!(s.nginx.requests().len(), 1);
}

/// Paths that could escape the repository are refused before any request.
#[test]
fn traversal_paths_are_refused_before_the_network() {
    let s = site(&[]);
    let f = Fetcher::new(&s.nginx.url(), &s.cache, quick()).unwrap();
    for p in [
        "../etc/passwd",
        "a/../../b",
        "/abs",
        "a//b",
        "a/%2e%2e/b",
        "",
    ] {
        assert!(
            matches!(f.fetch_small(p, 10), Err(FetchError::BadPath(_))),
            "{p}"
        );
    }
    assert!(s.nginx.requests().is_empty());
}

/// A FIFO planted in the cache (as a finished or a partial download) is
/// refused by type at once, never waited on.
#[test]
fn fifo_in_the_cache_is_refused_without_blocking() {
    let data = payload(10_000);
    let s = site(&[("f", &data)]);
    let e = expect_of(&data);
    std::fs::create_dir_all(&s.cache).unwrap();
    let name = atomup_ostree::hex::encode(&e.sha256);
    for planted in [name.clone(), format!("{name}.partial")] {
        let fifo = s.cache.join(&planted);
        atomup_tests::device::mkfifo(&fifo);
        let (url, cache) = (s.nginx.url(), s.cache.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let f = Fetcher::new(&url, &cache, quick()).unwrap();
            let _ = tx.send(
                f.fetch_verified("f", e, &mut no_progress())
                    .map_err(|e| format!("{e}: {}", std::error::Error::source(&e).unwrap())),
            );
        });
        let got = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("fetch blocked on a FIFO in the cache");
        let err = got.unwrap_err();
        assert!(err.contains("a FIFO, not a regular file"), "{err}");
        std::fs::remove_file(&fifo).unwrap();
    }
}

fn link_opts(idle: Duration, deadline: Option<Duration>, attempts: u32) -> Options {
    Options {
        attempts,
        backoff: Duration::from_millis(10),
        connect_timeout: Duration::from_secs(5),
        idle_timeout: idle,
        attempt_deadline: deadline,
        low_speed: None,
        ..Options::default()
    }
}

/// Runs a download on its own thread and fails the test if it does not end
/// within 30 s (a regression must not hang CI).
fn fetch_bounded(
    url: String,
    cache: std::path::PathBuf,
    opts: Options,
    e: Expect,
) -> Result<(), String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let f = Fetcher::new(&url, &cache, opts).unwrap();
        let _ = tx.send(
            f.fetch_verified("p", e, &mut no_progress())
                .map(|_| ())
                .map_err(|e| format!("{e}")),
        );
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("the download did not end within 30 s")
}

/// Regression (issue 11.7): the body timeout was a deadline for the whole
/// body where the README promises an idle one, so a slow link that keeps
/// delivering (here 3 s for a body, a piece every 150 ms) was cut at 1 s.
#[test]
fn a_slow_link_that_keeps_delivering_is_not_cut_by_the_idle_timeout() {
    let data = payload(2000);
    let server = Trickle::start(data.clone(), 100, Duration::from_millis(150));
    let tmp = ScratchDir::new("fetch-slow");
    let opts = link_opts(Duration::from_secs(1), None, 1);
    let got = fetch_bounded(server.url(), tmp.join("cache"), opts, expect_of(&data));
    assert_eq!(got, Ok(()));
}

/// A server that stalls after its headers is cut after the idle timeout and
/// retried, then given up on: the download fails in bounded time.
#[test]
fn a_stalled_server_is_cut_after_the_idle_timeout_and_given_up_on() {
    let data = payload(1000);
    let server = Trickle::start(data.clone(), 10, Duration::from_secs(3600));
    let tmp = ScratchDir::new("fetch-stall");
    let opts = link_opts(Duration::from_secs(1), None, 2);
    let err = fetch_bounded(server.url(), tmp.join("cache"), opts, expect_of(&data)).unwrap_err();
    assert!(err.contains("gave up after 2 attempts"), "{err}");
}

/// A trickle fast enough to beat the idle timeout is cut by the attempt's
/// overall deadline.
#[test]
fn a_trickle_that_beats_the_idle_timeout_is_cut_by_the_attempt_deadline() {
    let data = payload(200);
    let server = Trickle::start(data.clone(), 1, Duration::from_millis(100));
    let tmp = ScratchDir::new("fetch-trickle");
    let opts = link_opts(Duration::from_secs(1), Some(Duration::from_secs(1)), 1);
    let err = fetch_bounded(server.url(), tmp.join("cache"), opts, expect_of(&data)).unwrap_err();
    assert!(err.contains("gave up after 1 attempts"), "{err}");
}

/// The bandwidth cap holds across resumes: through a link that cuts every
/// 256 KiB, the steady rate stays within 10 % of the cap (one token bucket
/// per fetcher: a reconnect gets no fresh allowance), and every byte arrives once.
#[test]
fn bandwidth_cap_holds_across_resumes_within_ten_percent() {
    let data = payload(3 << 20);
    let s = site(&[("capped/0", &data)]);
    let proxy = atomup_tests::nginx::FlakyProxy::with_faults(
        s.nginx.port,
        atomup_tests::nginx::Faults {
            cut_after: Some(256 * 1024),
            ..Default::default()
        },
    );
    let cap = 1 << 20;
    let opts = Options {
        bandwidth: Some(cap),
        ..quick()
    };
    let f = Fetcher::new(&proxy.url(), &s.cache, opts).unwrap();
    let path = f
        .fetch_verified("capped/0", expect_of(&data), &mut no_progress())
        .unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), data);
    let resumes = s
        .nginx
        .requests()
        .iter()
        .filter(|l| l.starts_with("206 "))
        .count();
    assert!(resumes >= 10, "{resumes} resumes");
    // The first 256 KiB may land in socket buffers at once; after that the
    // rate is the cap's.
    let rate = proxy.rate_after(256 * 1024);
    let ratio = rate / cap as f64;
    eprintln!("steady rate {rate:.0} B/s = {ratio:.3} of the {cap} B/s cap, {resumes} resumes");
    assert!(
        (0.9..=1.1).contains(&ratio),
        "rate {rate:.0} B/s, cap {cap} B/s"
    );
    assert!(
        proxy.forwarded() - (data.len() as u64) < 16 * 1024,
        "{} bytes over the wire for {}",
        proxy.forwarded(),
        data.len()
    );
}

/// The window scale a fetcher's connection offers in its SYN, as the server
/// sees it (`TCP_INFO` of the accepted socket), after one `fetch_small`.
fn offered_window_scale(opts: Options) -> u8 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        let info = atomup_tests::nginx::tcp_info(&c).expect("TCP_INFO of the accepted socket");
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && c.read(&mut b).unwrap() == 1 {
            head.push(b[0]);
        }
        c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            .unwrap();
        // The low 4 bits: the peer's (the fetcher's) window scale.
        info.tcpi_snd_rcv_wscale & 0x0f
    });
    let cache = ScratchDir::new("fetch-wscale");
    let f = Fetcher::new(&format!("http://127.0.0.1:{port}"), &cache.join("c"), opts).unwrap();
    assert_eq!(f.fetch_small("doc", 100).unwrap(), b"ok");
    server.join().unwrap()
}

/// With a bandwidth cap the receive buffer is bounded before connect: the
/// SYN offers the window scale of the small buffer (0: a 64 KiB cap needs
/// 16 KiB, under the 64 KiB an unscaled window covers), not the large one
/// an autotuned buffer offers (a kill then loses at most that buffer).
#[test]
fn a_capped_fetcher_offers_the_window_of_its_bounded_receive_buffer() {
    let capped = offered_window_scale(Options {
        bandwidth: Some(64 * 1024),
        ..quick()
    });
    let uncapped = offered_window_scale(quick());
    assert_eq!(capped, 0, "capped: window scale {capped}");
    assert!(uncapped > 0, "uncapped: window scale {uncapped}");
}

/// A trickle below the low-speed limit is cut after the window and, once the
/// attempts are spent, given up on with a message naming the limit.
#[test]
fn a_trickle_below_the_low_speed_limit_is_cut_and_given_up_on() {
    let data = payload(5000);
    let server = Trickle::start(data.clone(), 20, Duration::from_millis(100));
    let tmp = ScratchDir::new("fetch-lowspeed");
    let opts = Options {
        low_speed: Some(atomup_fetch::LowSpeedLimit {
            limit: 1000,
            window: Duration::from_secs(1),
        }),
        ..link_opts(Duration::from_secs(5), None, 2)
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let cache = tmp.join("cache");
    std::thread::spawn(move || {
        let f = Fetcher::new(&server.url(), &cache, opts).unwrap();
        let r = f.fetch_verified("p", expect_of(&data), &mut no_progress());
        let _ = tx.send(r.map(|_| ()).map_err(|e| chain(&e)));
    });
    let err = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("a trickle kept the download alive")
        .unwrap_err();
    assert!(
        err.contains("gave up after 2 attempts")
            && err.contains("slower than 1000 bytes/s for 1 s"),
        "{err}"
    );
}

/// The error and its sources on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out += &format!(" -> {s}");
        src = s.source();
    }
    out
}

static CANCEL: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The cancel flag (what SIGTERM sets in the daemon) ends a download at its
/// next read, the partial file synced and kept; the next fetcher continues
/// it with a Range request from the bytes on disk.
#[test]
fn cancel_stops_a_download_and_the_next_run_continues_it() {
    let data = payload(2 << 20);
    let s = site(&[("slow/0", &data)]);
    let opts = Options {
        bandwidth: Some(512 * 1024),
        cancel: Some(&CANCEL),
        ..quick()
    };
    let e = expect_of(&data);
    let (url, cache) = (s.nginx.url(), s.cache.clone());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let f = Fetcher::new(&url, &cache, opts).unwrap();
        let _ = tx.send(
            f.fetch_verified("slow/0", e, &mut no_progress())
                .map(|_| ()),
        );
    });
    std::thread::sleep(Duration::from_millis(1500));
    CANCEL.store(true, std::sync::atomic::Ordering::SeqCst);
    let err = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the cancel flag did not stop the download")
        .unwrap_err();
    assert!(matches!(err, FetchError::Cancelled { .. }), "{err}");
    let partial = s
        .cache
        .join(format!("{}.partial", atomup_ostree::hex::encode(&e.sha256)));
    let have = std::fs::metadata(&partial).unwrap().len();
    assert!(have > 0 && have < data.len() as u64, "{have}");
    let f = Fetcher::new(&s.nginx.url(), &s.cache, quick()).unwrap();
    f.fetch_verified("slow/0", e, &mut no_progress()).unwrap();
    let log = s.nginx.requests();
    assert_eq!(
        log.last().unwrap(),
        &format!("206 \"bytes={have}-\" {} /slow/0", data.len() as u64 - have),
        "{log:#?}"
    );
}

/// A file on the server shorter than its signed size is a clear error
/// naming both sizes, not an endless resume.
#[test]
fn a_file_truncated_on_the_server_is_a_clear_error() {
    let data = payload(300_000);
    let s = site(&[("t/0", &data[..200_000])]);
    let f = Fetcher::new(&s.nginx.url(), &s.cache, quick()).unwrap();
    let err = f
        .fetch_verified("t/0", expect_of(&data), &mut no_progress())
        .unwrap_err();
    assert!(
        err.to_string()
            .ends_with("the server's file ends after 200000 bytes, the signed size is 300000"),
        "{err}"
    );
}
