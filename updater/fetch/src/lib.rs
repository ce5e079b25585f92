//! Downloads for a device on a slow, flaky, metered link. Every download has a
//! size cap and, for payloads, a sha256 that must match before the file is
//! handed to anyone (tough's `fetch_max_size` + `DigestAdapter` rule). A cut
//! connection resumes with an HTTP Range request from what is already on disk,
//! so bytes that arrived once are never paid for twice. Memory is one buffer.
//!
//! The link rules are `atomup-link`'s pure decisions, carried out here: one
//! token bucket per fetcher (the bandwidth cap holds across retries and
//! resumes), the low-speed abort per attempt, exponential backoff with full
//! jitter between retries. A cancel flag (set by the daemon's signal
//! handler) ends a transfer at its next read, keeping the partial file.

use atomup_link::rate::TokenBucket;
use atomup_link::speed::LowSpeed;
use sha2::{Digest, Sha256};
use std::cell::{Cell, RefCell};
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

mod tcp;

const BUF: usize = 64 * 1024;
/// ureq's buffers per connection (its default is 128 KiB each, written
/// whole on the first request): the input one holds a response's head (so
/// no head may be longer) and what the socket delivered ahead of our reads,
/// which a kill loses; the output one a request's head.
const CONN_BUF: usize = 16 * 1024;
/// Longest single sleep (backoff, bandwidth cap) between two looks at the
/// cancel flag.
const SLICE: Duration = Duration::from_millis(100);

/// What a payload must be: exact size and sha256 (the type is
/// `atomup-fsio`'s, shared with the other reader of verified files).
pub use atomup_fsio::Expect;

#[derive(Clone, Debug)]
pub struct Options {
    /// Failed attempts in a row before a download is given up on (the first
    /// attempt counts). An attempt that brought bytes before the link cut
    /// starts the count again; a low-speed cut always counts.
    pub attempts: u32,
    /// Base of the backoff: the pause before retry n is uniform in
    /// `[backoff/2, min(backoff_max, backoff·2^(n-1))]` (`atomup_link::backoff`).
    pub backoff: Duration,
    /// Cap of the backoff.
    pub backoff_max: Duration,
    pub connect_timeout: Duration,
    /// Idle timeout: a connection that delivers nothing for this long (while
    /// waiting for the response or between two reads of its body) counts as
    /// cut; a slow link that keeps delivering is never cut by it.
    pub idle_timeout: Duration,
    /// Overall cap on one attempt's body: a server that trickles a byte
    /// just often enough to defeat the idle timeout is cut here, and the
    /// next attempt resumes from what arrived. `None`: no cap.
    pub attempt_deadline: Option<Duration>,
    /// Bandwidth cap in bytes per second over everything this fetcher
    /// receives (one token bucket: retries and resumes get no fresh
    /// allowance). `None`: no cap.
    pub bandwidth: Option<u64>,
    /// Low-speed abort: an attempt averaging below `limit` bytes/s over a
    /// whole `window` is cut (and retried, resuming), as OSTree does.
    pub low_speed: Option<LowSpeedLimit>,
    /// PEM bundle of the CAs trusted for HTTPS, instead of the built-in web
    /// roots (a private CA). Needs feature `tls`.
    pub ca_pem: Option<Vec<u8>>,
    /// A partial download is fsynced after every this many bytes (and on
    /// every interruption), so a power cut loses at most this much of it.
    pub sync_every: u64,
    /// Set by someone else (a signal handler) to stop: a transfer ends at its
    /// next read with [`FetchError::Cancelled`], its partial file kept and
    /// synced; backoff and bandwidth waits end within 100 ms.
    pub cancel: Option<&'static AtomicBool>,
}

/// See [`Options::low_speed`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LowSpeedLimit {
    pub limit: u64,
    pub window: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            attempts: 8,
            backoff: Duration::from_secs(2),
            backoff_max: Duration::from_secs(3600),
            connect_timeout: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            attempt_deadline: Some(Duration::from_secs(3600)),
            bandwidth: None,
            low_speed: Some(LowSpeedLimit {
                limit: 1000,
                window: Duration::from_secs(30),
            }),
            ca_pem: None,
            sync_every: 1 << 20,
            cancel: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("invalid download path `{0}` (must be repository-relative, no `.`/`..`)")]
    BadPath(String),
    #[error("{url}: server answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: more than {cap} bytes: refused")]
    Oversized { url: String, cap: u64 },
    #[error("{url}: ended after {got} of {want} bytes")]
    Short { url: String, got: u64, want: u64 },
    #[error("{url}: the server's file ends after {got} bytes, the signed size is {want}")]
    ServerShort { url: String, got: u64, want: u64 },
    #[error("{url}: sha256 mismatch: the download was discarded")]
    Digest { url: String },
    #[error("{url}: gave up after {attempts} attempts")]
    GaveUp {
        url: String,
        attempts: u32,
        #[source]
        last: Box<FetchError>,
    },
    #[error("{url}: slower than {limit} bytes/s for {window_s} s ({rate} bytes/s): cut")]
    TooSlow {
        url: String,
        rate: u64,
        limit: u64,
        window_s: u64,
    },
    #[error("{url}: stopped (the partial download is kept)")]
    Cancelled { url: String },
    #[error("CA bundle: {0}")]
    CaBundle(String),
    #[error("{url}: transfer failed")]
    Transfer {
        url: String,
        #[source]
        source: ureq::Error,
    },
    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl FetchError {
    /// Errors worth another attempt: the link, not the content, failed.
    fn is_transient(&self) -> bool {
        match self {
            FetchError::Transfer { .. } | FetchError::Short { .. } | FetchError::TooSlow { .. } => {
                true
            }
            FetchError::Status { status, .. } => *status >= 500 || *status == 408 || *status == 429,
            _ => false,
        }
    }
}

/// The workspace's one I/O error convention (as `atomup-bootctl`'s): what was
/// being done and to which path, the `io::Error` as the source.
fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FetchError + 'a {
    move |source| FetchError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// Downloads from one update server into one cache directory.
pub struct Fetcher {
    agent: ureq::Agent,
    base: String,
    cache: PathBuf,
    opts: Options,
    /// The bandwidth cap's bucket, shared by every transfer of this fetcher.
    bucket: RefCell<Option<TokenBucket>>,
    /// Origin of the monotonic millisecond clock the link rules get.
    epoch: Instant,
    /// Body bytes received from the network so far (what a metered link
    /// charges; headers aside).
    received: Cell<u64>,
}

/// A `u64` no one can predict, for backoff jitter: std's per-process random
/// SipHash keys (seeded from the OS), hashing nothing. No crate needed.
pub fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

impl Fetcher {
    /// `base` is the repository URL (`http://host/repo`); `cache` keeps partial
    /// and finished payloads across reboots (on the data partition).
    /// The cache directory is created by the first payload download, so a
    /// fetcher that only reads metadata (`update --check`) writes nothing.
    pub fn new(base: &str, cache: &Path, opts: Options) -> Result<Self, FetchError> {
        // ureq's recv_body timeout is a deadline for the whole body (the
        // README promised an idle one): idleness is per_read, and the whole
        // body gets only the attempt's overall cap.
        let builder = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(opts.connect_timeout))
            .timeout_per_read(Some(opts.idle_timeout))
            .timeout_recv_response(Some(opts.idle_timeout))
            .timeout_recv_body(opts.attempt_deadline)
            .input_buffer_size(CONN_BUF)
            .output_buffer_size(CONN_BUF)
            .max_response_header_size(CONN_BUF);
        let builder = with_ca(builder, opts.ca_pem.as_deref())?;
        let agent = tcp::agent(builder.build(), opts.bandwidth);
        let epoch = Instant::now();
        let bucket = opts.bandwidth.map(|rate| TokenBucket::for_cap(rate, 0));
        Ok(Fetcher {
            agent,
            base: base.trim_end_matches('/').to_owned(),
            cache: cache.to_owned(),
            opts,
            bucket: RefCell::new(bucket),
            epoch,
            received: Cell::new(0),
        })
    }

    /// Body bytes received from the network by this fetcher so far.
    pub fn received(&self) -> u64 {
        self.received.get()
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn cancelled(&self) -> bool {
        self.opts.cancel.is_some_and(|c| c.load(Ordering::SeqCst))
    }

    /// Sleeps `d`, looking at the cancel flag every [`SLICE`].
    fn pause(&self, url: &str, d: Duration) -> Result<(), FetchError> {
        let end = Instant::now() + d;
        loop {
            if self.cancelled() {
                return Err(FetchError::Cancelled {
                    url: url.to_owned(),
                });
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            std::thread::sleep(left.min(SLICE));
        }
    }

    /// The largest read the bandwidth cap allows at once.
    fn read_size(&self) -> usize {
        match &*self.bucket.borrow() {
            Some(b) => (b.burst() as usize).clamp(1, BUF),
            None => BUF,
        }
    }

    /// Pays for `n` bytes that arrived: waits until the bucket holds them.
    /// Reading first and paying after keeps the cap exact when the socket
    /// delivers less than was asked for; TCP flow control then slows the
    /// sender to the rate we read at.
    fn pay(&self, url: &str, n: u64) -> Result<(), FetchError> {
        let mut left = n;
        while left > 0 {
            let wait = {
                let mut guard = self.bucket.borrow_mut();
                let Some(b) = guard.as_mut() else {
                    return Ok(());
                };
                let now = self.now_ms();
                left -= b.take(now, left);
                if left == 0 {
                    return Ok(());
                }
                b.wait_ms(now, left)
            };
            self.pause(url, Duration::from_millis(wait.max(1)))?;
        }
        Ok(())
    }

    /// Reads `body` to its end through the link rules (cancel, cap,
    /// low-speed abort), handing each piece to `sink`.
    fn pump(
        &self,
        url: &str,
        body: &mut dyn Read,
        buf: &mut [u8],
        sink: &mut dyn FnMut(&[u8]) -> Result<(), FetchError>,
    ) -> Result<(), FetchError> {
        let mut slow = self.opts.low_speed.map(|l| {
            (
                l,
                LowSpeed::new(l.limit, l.window.as_millis() as u64, self.now_ms()),
            )
        });
        let mut got = 0u64;
        loop {
            if self.cancelled() {
                return Err(FetchError::Cancelled {
                    url: url.to_owned(),
                });
            }
            let max = self.read_size().min(buf.len());
            let n = match body.read(&mut buf[..max]) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(_) if self.cancelled() => {
                    return Err(FetchError::Cancelled {
                        url: url.to_owned(),
                    })
                }
                Err(e) => return Err(transfer_io(url, e)),
            };
            self.received.set(self.received.get() + n as u64);
            got += n as u64;
            sink(&buf[..n])?;
            if let Some((l, s)) = slow.as_mut() {
                if let Err(rate) = s.observe(self.now_ms(), got) {
                    return Err(FetchError::TooSlow {
                        url: url.to_owned(),
                        rate,
                        limit: l.limit,
                        window_s: l.window.as_secs(),
                    });
                }
            }
            self.pay(url, n as u64)?;
        }
    }

    fn url(&self, rel: &str) -> Result<String, FetchError> {
        let safe = !rel.is_empty()
            && rel.split('/').all(|c| {
                !c.is_empty()
                    && c != "."
                    && c != ".."
                    && c.bytes()
                        .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#' && b != b'%')
            });
        if !safe {
            return Err(FetchError::BadPath(rel.to_owned()));
        }
        Ok(format!("{}/{rel}", self.base))
    }

    /// Fetches a small document (release metadata) whole into memory, refusing
    /// more than `cap` bytes. Its authenticity is checked by the caller.
    pub fn fetch_small(&self, rel: &str, cap: u64) -> Result<Vec<u8>, FetchError> {
        let url = self.url(rel)?;
        self.with_retries(&url, || {
            let mut resp = self
                .agent
                .get(&url)
                .call()
                .map_err(|source| FetchError::Transfer {
                    url: url.clone(),
                    source,
                })?;
            let status = resp.status().as_u16();
            if status != 200 {
                return Err(FetchError::Status {
                    url: url.clone(),
                    status,
                });
            }
            let mut out = Vec::new();
            let mut reader = resp.body_mut().as_reader().take(cap + 1);
            let mut buf = vec![0u8; 16 * 1024];
            self.pump(&url, &mut reader, &mut buf, &mut |piece| {
                out.extend_from_slice(piece);
                Ok(())
            })?;
            if out.len() as u64 > cap {
                return Err(FetchError::Oversized {
                    url: url.clone(),
                    cap,
                });
            }
            Ok(out)
        })
    }

    /// Fetches a payload into the cache and returns its path once its size and
    /// sha256 match `expect`. A partial file from an earlier attempt (or boot) is
    /// resumed; a finished one is re-hashed and reused.
    pub fn fetch_verified(
        &self,
        rel: &str,
        expect: Expect,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<PathBuf, FetchError> {
        let url = self.url(rel)?;
        let name = atomup_ostree::hex::encode(&expect.sha256);
        let done = self.cache.join(&name);
        let partial = self.cache.join(format!("{name}.partial"));
        fs::create_dir_all(&self.cache).map_err(io_err("creating cache directory", &self.cache))?;
        if done.exists() {
            if hash_file(&done)? == (expect.size, expect.sha256) {
                progress(expect.size, expect.size);
                return Ok(done);
            }
            // Cache damaged on disk: download again.
            fs::remove_file(&done).map_err(io_err("removing damaged cache file", &done))?;
        }
        let result = self.with_retries(&url, || self.resume(&url, &partial, expect, progress));
        match result {
            Ok(()) => {
                fs::rename(&partial, &done).map_err(io_err("finishing download", &done))?;
                sync_dir(&self.cache)?;
                // Crash point `fetch.done`: a payload complete in the cache.
                atomup_faults::point("fetch.done");
                Ok(done)
            }
            Err(e) => {
                // Wrong content is useless to resume from; a cut link keeps what arrived.
                if matches!(e, FetchError::Digest { .. } | FetchError::Oversized { .. }) {
                    let _ = fs::remove_file(&partial);
                }
                Err(e)
            }
        }
    }

    /// Runs `attempt` until it succeeds, fails for good, or fails
    /// `attempts` times in a row. An attempt that brought bytes before the
    /// link cut starts the count again (a link that cuts every 256 KiB
    /// still finishes, resuming each time); a low-speed cut always counts,
    /// so a trickle ends in an error in bounded time.
    fn with_retries<T>(
        &self,
        url: &str,
        mut attempt: impl FnMut() -> Result<T, FetchError>,
    ) -> Result<T, FetchError> {
        let mut failures = 0;
        let mut n = 0;
        loop {
            n += 1;
            if self.cancelled() {
                return Err(FetchError::Cancelled {
                    url: url.to_owned(),
                });
            }
            let before = self.received.get();
            match attempt() {
                Ok(v) => return Ok(v),
                Err(e) if e.is_transient() => {
                    let progressed =
                        self.received.get() > before && !matches!(e, FetchError::TooSlow { .. });
                    failures = if progressed { 1 } else { failures + 1 };
                    if failures >= self.opts.attempts {
                        return Err(FetchError::GaveUp {
                            url: url.to_owned(),
                            attempts: failures,
                            last: Box::new(e),
                        });
                    }
                    let wait = atomup_link::backoff::retry_wait(
                        failures,
                        self.opts.backoff,
                        self.opts.backoff_max,
                        random_u64(),
                    );
                    log::warn!(
                        "{url}: attempt {n} failed ({e}); retrying in {:.1} s",
                        wait.as_secs_f64()
                    );
                    self.pause(url, wait)?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One attempt: continue `partial` from its current length.
    fn resume(
        &self,
        url: &str,
        partial: &Path,
        expect: Expect,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<(), FetchError> {
        // Cannot block (a FIFO planted in the cache is refused by type).
        let mut file = atomup_fsio::open_rw(partial, true)
            .map_err(io_err("opening partial download", partial))?;
        // Hash what is already there: the digest covers the whole file.
        let mut hasher = Sha256::new();
        let mut have = hash_prefix(&mut file, partial, &mut hasher)?;
        if have > expect.size {
            file.set_len(0)
                .map_err(io_err("truncating partial download", partial))?;
            hasher = Sha256::new();
            have = 0;
        }
        if have < expect.size {
            let mut req = self.agent.get(url);
            if have > 0 {
                req = req.header("Range", &format!("bytes={have}-"));
            }
            let mut resp = req.call().map_err(|source| FetchError::Transfer {
                url: url.to_owned(),
                source,
            })?;
            match resp.status().as_u16() {
                206 if content_range_start(&resp) == Some(have) => {}
                200 => {
                    // The server ignored the Range: start over from byte 0.
                    file.set_len(0)
                        .map_err(io_err("truncating partial download", partial))?;
                    file.seek(SeekFrom::Start(0))
                        .map_err(io_err("seeking", partial))?;
                    hasher = Sha256::new();
                    have = 0;
                }
                416 if have == expect.size => {}
                // We hold more than the server has: its file is shorter than
                // the signed size (truncated on the server), not a cut link.
                416 => {
                    return Err(FetchError::ServerShort {
                        url: url.to_owned(),
                        got: have,
                        want: expect.size,
                    })
                }
                status => {
                    return Err(FetchError::Status {
                        url: url.to_owned(),
                        status,
                    })
                }
            }
            let mut body = resp.body_mut().as_reader();
            let mut buf = vec![0u8; BUF];
            // Crash point `fetch.download`: a cut at byte N of the file (the
            // body is in flight; what arrived before N is on disk).
            let cut_at = atomup_faults::torn("fetch.download", Path::new(url), expect.size);
            let mut unsynced = 0u64;
            let sync_every = self.opts.sync_every.max(1);
            let pumped = self.pump(url, &mut body, &mut buf, &mut |piece| {
                // Size cap before writing: a server may not push more than promised.
                if have + piece.len() as u64 > expect.size {
                    return Err(FetchError::Oversized {
                        url: url.to_owned(),
                        cap: expect.size,
                    });
                }
                if let Some(at) = cut_at.filter(|&at| have + piece.len() as u64 >= at) {
                    let keep = at.saturating_sub(have) as usize;
                    file.write_all(&piece[..keep])
                        .and_then(|()| file.sync_data())
                        .map_err(io_err("writing partial download", partial))?;
                    atomup_faults::cut("fetch.download");
                    return Err(FetchError::Io {
                        what: "injected power cut in",
                        path: partial.to_owned(),
                        source: atomup_faults::injected("fetch.download", keep),
                    });
                }
                file.write_all(piece)
                    .map_err(io_err("writing partial download", partial))?;
                hasher.update(piece);
                have += piece.len() as u64;
                unsynced += piece.len() as u64;
                // Durable as it goes: a power cut loses at most `sync_every`
                // bytes of what arrived (a kill loses nothing: the page cache
                // survives the process).
                if unsynced >= sync_every {
                    file.sync_data()
                        .map_err(io_err("syncing partial download", partial))?;
                    unsynced = 0;
                }
                progress(have, expect.size);
                Ok(())
            });
            // Keep what arrived for the next attempt, whatever ended this one.
            let synced = file
                .sync_data()
                .map_err(io_err("syncing partial download", partial));
            pumped?;
            synced?;
            if have < expect.size {
                return Err(FetchError::Short {
                    url: url.to_owned(),
                    got: have,
                    want: expect.size,
                });
            }
        }
        if <[u8; 32]>::from(hasher.finalize()) != expect.sha256 {
            return Err(FetchError::Digest {
                url: url.to_owned(),
            });
        }
        Ok(())
    }
}

impl Fetcher {
    /// POSTs `json` to the absolute `url` (a status report): one attempt, no
    /// retries (the caller's queue retries later, in order); `Ok` only for a
    /// 2xx answer. The answer's body is read (at most 64 KiB) and dropped.
    pub fn post_json(&self, url: &str, json: &str) -> Result<(), FetchError> {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(FetchError::BadPath(url.to_owned()));
        }
        let mut resp = self
            .agent
            .post(url)
            .content_type("application/json")
            .send(json.as_bytes())
            .map_err(|source| FetchError::Transfer {
                url: url.to_owned(),
                source,
            })?;
        let status = resp.status().as_u16();
        let _ = std::io::copy(
            &mut resp.body_mut().as_reader().take(64 * 1024),
            &mut std::io::sink(),
        );
        if !(200..300).contains(&status) {
            return Err(FetchError::Status {
                url: url.to_owned(),
                status,
            });
        }
        Ok(())
    }
}

/// Trusts exactly the CAs of a PEM bundle for HTTPS (none: the built-in web roots).
#[cfg(feature = "tls")]
fn with_ca(
    builder: ureq::config::ConfigBuilder<ureq::typestate::AgentScope>,
    pem: Option<&[u8]>,
) -> Result<ureq::config::ConfigBuilder<ureq::typestate::AgentScope>, FetchError> {
    use ureq::tls::{parse_pem, PemItem, RootCerts, TlsConfig};
    let Some(pem) = pem else { return Ok(builder) };
    let mut certs = Vec::new();
    for item in parse_pem(pem) {
        match item.map_err(|e| FetchError::CaBundle(e.to_string()))? {
            PemItem::Certificate(c) => certs.push(c),
            _ => continue,
        }
    }
    if certs.is_empty() {
        return Err(FetchError::CaBundle("no PEM certificate in it".into()));
    }
    Ok(builder.tls_config(
        TlsConfig::builder()
            .root_certs(RootCerts::new_with_certs(&certs))
            .build(),
    ))
}

#[cfg(not(feature = "tls"))]
fn with_ca(
    builder: ureq::config::ConfigBuilder<ureq::typestate::AgentScope>,
    pem: Option<&[u8]>,
) -> Result<ureq::config::ConfigBuilder<ureq::typestate::AgentScope>, FetchError> {
    match pem {
        Some(_) => Err(FetchError::CaBundle(
            "this build has no TLS (feature `tls`)".into(),
        )),
        None => Ok(builder),
    }
}

/// Whether `name` is one of the cache's own files: `<64 hex>` or
/// `<64 hex>.partial`.
fn cache_entry(name: &str) -> Option<&str> {
    let sha = name.strip_suffix(".partial").unwrap_or(name);
    (sha.len() == 64 && sha.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))).then_some(sha)
}

/// The download cache's own files in `cache` and their sizes; anything else
/// there is not ours and is never counted or removed.
pub fn cache_files(cache: &Path) -> Result<Vec<(PathBuf, u64)>, FetchError> {
    let entries = match fs::read_dir(cache) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("reading cache directory", cache)(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err("reading cache directory", cache))?;
        let name = entry.file_name();
        if name.to_str().and_then(cache_entry).is_none() {
            continue;
        }
        let md = entry
            .metadata()
            .map_err(io_err("reading cache entry", &entry.path()))?;
        if md.is_file() {
            out.push((entry.path(), md.len()));
        }
    }
    Ok(out)
}

/// Removes the cache's files except those of the payloads in `keep` (by
/// sha256); returns the bytes freed. With `keep` empty it clears the cache
/// (after a successful install); with the current delta's payloads it drops
/// what an older, superseded download left, so the cache holds one delta.
pub fn prune_cache(cache: &Path, keep: &[[u8; 32]]) -> Result<u64, FetchError> {
    let keep: Vec<String> = keep.iter().map(|k| atomup_ostree::hex::encode(k)).collect();
    let mut freed = 0;
    for (path, len) in cache_files(cache)? {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if cache_entry(name).is_some_and(|sha| keep.iter().any(|k| k == sha)) {
            continue;
        }
        fs::remove_file(&path).map_err(io_err("removing cache file", &path))?;
        freed += len;
    }
    if freed > 0 {
        sync_dir(cache)?;
    }
    Ok(freed)
}

fn transfer_io(url: &str, e: io::Error) -> FetchError {
    // ureq reports transport problems inside the body reader as io errors.
    FetchError::Transfer {
        url: url.to_owned(),
        source: ureq::Error::Io(e),
    }
}

fn content_range_start(resp: &ureq::http::Response<ureq::Body>) -> Option<u64> {
    let v = resp.headers().get("content-range")?.to_str().ok()?;
    let range = v.strip_prefix("bytes ")?;
    range.split('-').next()?.parse().ok()
}

fn hash_prefix(file: &mut File, path: &Path, hasher: &mut Sha256) -> Result<u64, FetchError> {
    file.seek(SeekFrom::Start(0))
        .map_err(io_err("seeking", path))?;
    let mut buf = vec![0u8; BUF];
    let mut total = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .map_err(io_err("reading partial download", path))?;
        if n == 0 {
            return Ok(total);
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
}

fn hash_file(path: &Path) -> Result<(u64, [u8; 32]), FetchError> {
    let mut file = atomup_fsio::open(path, atomup_fsio::Want::Regular)
        .map_err(io_err("opening cached download", path))?;
    let mut hasher = Sha256::new();
    let size = hash_prefix(&mut file, path, &mut hasher)?;
    Ok((size, hasher.finalize().into()))
}

fn sync_dir(dir: &Path) -> Result<(), FetchError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing cache directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pruning removes only the cache's own files (finished and partial)
    /// outside `keep`, reports the bytes freed, and never touches anything
    /// else in the directory.
    #[test]
    fn prune_removes_only_cache_files_outside_keep() {
        let d = std::env::temp_dir().join(format!("atomup-fetch-prune-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        let (a, b) = ([0xaa; 32], [0xbb; 32]);
        let (ha, hb) = (
            atomup_ostree::hex::encode(&a),
            atomup_ostree::hex::encode(&b),
        );
        fs::write(d.join(&ha), vec![0; 100]).unwrap();
        fs::write(d.join(format!("{hb}.partial")), vec![0; 30]).unwrap();
        fs::write(d.join(&hb), vec![0; 7]).unwrap();
        fs::write(d.join("notes"), b"not ours").unwrap();
        fs::write(d.join(format!("{}.partial", &ha[..63])), b"short name").unwrap();
        assert_eq!(prune_cache(&d, &[a]).unwrap(), 37);
        let mut left: Vec<String> = fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        let mut want = vec![ha.clone(), "notes".into(), format!("{}.partial", &ha[..63])];
        want.sort();
        assert_eq!(left, want);
        assert_eq!(prune_cache(&d, &[]).unwrap(), 100);
        assert_eq!(cache_files(&d).unwrap(), vec![]);
        assert_eq!(prune_cache(&d.join("missing"), &[]).unwrap(), 0);
        fs::remove_dir_all(&d).unwrap();
    }
}
