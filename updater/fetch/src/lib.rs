//! Downloads for a device on a slow, flaky, metered link. Every download has a
//! size cap and, for payloads, a sha256 that must match before the file is
//! handed to anyone (tough's `fetch_max_size` + `DigestAdapter` rule). A cut
//! connection resumes with an HTTP Range request from what is already on disk,
//! so bytes that arrived once are never paid for twice. Memory is one buffer.

use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

const BUF: usize = 64 * 1024;

/// What a payload must be: exact size and sha256 (from signed metadata).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expect {
    pub size: u64,
    pub sha256: [u8; 32],
}

#[derive(Clone, Debug)]
pub struct Options {
    /// Attempts per download, counting the first (a cut connection uses one).
    pub attempts: u32,
    /// Pause before the n-th retry is `backoff * n`.
    pub backoff: Duration,
    pub connect_timeout: Duration,
    /// Idle timeout: a connection that delivers nothing for this long (while
    /// waiting for the response or between two reads of its body) counts as
    /// cut; a slow link that keeps delivering is never cut by it.
    pub idle_timeout: Duration,
    /// Overall cap on one attempt's body: a server that trickles a byte
    /// just often enough to defeat the idle timeout is cut here, and the
    /// next attempt resumes from what arrived. `None`: no cap.
    pub attempt_deadline: Option<Duration>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            attempts: 8,
            backoff: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            attempt_deadline: Some(Duration::from_secs(3600)),
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
    #[error("{url}: sha256 mismatch: the download was discarded")]
    Digest { url: String },
    #[error("{url}: gave up after {attempts} attempts")]
    GaveUp {
        url: String,
        attempts: u32,
        #[source]
        last: Box<FetchError>,
    },
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
            FetchError::Transfer { .. } | FetchError::Short { .. } => true,
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
}

impl Fetcher {
    /// `base` is the repository URL (`http://host/repo`); `cache` keeps partial
    /// and finished payloads across reboots (on the data partition).
    pub fn new(base: &str, cache: &Path, opts: Options) -> Result<Self, FetchError> {
        fs::create_dir_all(cache).map_err(io_err("creating cache directory", cache))?;
        // ureq's recv_body timeout is a deadline for the whole body (the
        // README promised an idle one): idleness is per_read, and the whole
        // body gets only the attempt's overall cap.
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(opts.connect_timeout))
            .timeout_per_read(Some(opts.idle_timeout))
            .timeout_recv_response(Some(opts.idle_timeout))
            .timeout_recv_body(opts.attempt_deadline)
            .build()
            .new_agent();
        Ok(Fetcher {
            agent,
            base: base.trim_end_matches('/').to_owned(),
            cache: cache.to_owned(),
            opts,
        })
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
            reader
                .read_to_end(&mut out)
                .map_err(|e| transfer_io(&url, e))?;
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

    fn with_retries<T>(
        &self,
        url: &str,
        mut attempt: impl FnMut() -> Result<T, FetchError>,
    ) -> Result<T, FetchError> {
        let mut n = 0;
        loop {
            n += 1;
            match attempt() {
                Ok(v) => return Ok(v),
                Err(e) if e.is_transient() && n < self.opts.attempts => {
                    log::warn!("{url}: attempt {n} failed ({e}); retrying");
                    std::thread::sleep(self.opts.backoff * n);
                }
                Err(e) if e.is_transient() => {
                    return Err(FetchError::GaveUp {
                        url: url.to_owned(),
                        attempts: n,
                        last: Box::new(e),
                    })
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
            loop {
                let n = match body.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) => {
                        // Keep what arrived for the next attempt.
                        file.sync_data()
                            .map_err(io_err("syncing partial download", partial))?;
                        return Err(transfer_io(url, e));
                    }
                };
                // Size cap before writing: a server may not push more than promised.
                if have + n as u64 > expect.size {
                    return Err(FetchError::Oversized {
                        url: url.to_owned(),
                        cap: expect.size,
                    });
                }
                if let Some(at) = cut_at.filter(|&at| have + n as u64 >= at) {
                    let keep = at.saturating_sub(have) as usize;
                    file.write_all(&buf[..keep])
                        .and_then(|()| file.sync_data())
                        .map_err(io_err("writing partial download", partial))?;
                    atomup_faults::cut("fetch.download");
                    return Err(FetchError::Io {
                        what: "injected power cut in",
                        path: partial.to_owned(),
                        source: atomup_faults::injected("fetch.download", keep),
                    });
                }
                file.write_all(&buf[..n])
                    .map_err(io_err("writing partial download", partial))?;
                hasher.update(&buf[..n]);
                have += n as u64;
                progress(have, expect.size);
            }
            file.sync_data()
                .map_err(io_err("syncing partial download", partial))?;
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
