//! The offline update bundle: one file a technician carries on a USB stick.
//! It is a plain POSIX ustar archive, so `tar tvf` lists it and `tar xf`
//! extracts it, laid out so a device reads only what it needs:
//!
//! 1. the first member is the channel/board's signed release metadata,
//!    byte for byte as the update server serves it, under the same path
//!    (`atomup/<channel>/<board>/release`), so the device verifies it with
//!    the same keys and rules before it reads anything else;
//! 2. then the deltas the bundle carries (some of those the release lists:
//!    from several earlier releases, and usually the from-scratch one), each
//!    as its superblock and part files under the release's delta path.
//!
//! Nothing in the tar layer is trusted: the release is signed, it pins each
//! superblock's size and sha256, and the superblock pins each part's. The
//! reader only finds members: it reads 512-byte headers and seeks over their
//! data, so it never copies or hashes the parts of deltas it does not use.
//!
//! Pure where it can be ([`parse_header`], [`encode_header`]); [`scan`] and
//! [`Writer`] work over any `Read + Seek` / `Write`.

use std::io::{self, Read, Seek, SeekFrom, Write};

pub const BLOCK: usize = 512;
/// Largest member (the ustar size field holds 11 octal digits).
pub const MAX_MEMBER: u64 = 0o77777777777;
/// Most members a bundle may hold (deltas from 64 sources, their parts).
pub const MAX_MEMBERS: usize = 8192;
/// Longest member name (ustar prefix + name).
pub const MAX_NAME: usize = 255;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("not a bundle: the header at byte {offset} {why}")]
    Header { offset: u64, why: &'static str },
    #[error("bundle member `{name}` has an unsafe or unsupported name")]
    BadName { name: String },
    #[error("bundle member `{name}` is a {kind}, not a regular file")]
    NotAFile { name: String, kind: &'static str },
    #[error("bundle holds more than {MAX_MEMBERS} members")]
    TooManyMembers,
    #[error("bundle ends inside member `{name}` (truncated?)")]
    Truncated { name: String },
    #[error("bundle member `{name}` appears twice")]
    Duplicate { name: String },
    #[error("member `{name}` is {size} bytes, over the {MAX_MEMBER}-byte ustar limit")]
    TooLarge { name: String, size: u64 },
    #[error("bundle member `{name}` is refused: {why}")]
    Mismatch { name: String, why: &'static str },
    #[error("reading the bundle")]
    Io(#[from] io::Error),
}

/// One member: its name and where its data is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    /// Byte offset of the data in the bundle.
    pub offset: u64,
    pub size: u64,
}

/// What a header says, before its data is located.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Header {
    /// A regular file of `size` bytes.
    File { name: String, size: u64 },
    /// A directory entry (tar lists them; a bundle needs none, they are skipped).
    Dir { name: String },
    /// The end-of-archive marker (an all-zero block).
    End,
}

fn field(h: &[u8; BLOCK], at: usize, len: usize) -> &[u8] {
    &h[at..at + len]
}

/// An octal number field: optional leading spaces, octal digits, then NUL or
/// space padding to the end.
fn octal(f: &[u8]) -> Option<u64> {
    let start = f.iter().position(|&b| b != b' ')?;
    let digits = &f[start..];
    let end = digits
        .iter()
        .position(|&b| b == 0 || b == b' ')
        .unwrap_or(digits.len());
    if end == 0 || !digits[end..].iter().all(|&b| b == 0 || b == b' ') {
        return None;
    }
    let mut n: u64 = 0;
    for &b in &digits[..end] {
        if !(b'0'..=b'7').contains(&b) {
            return None;
        }
        n = n.checked_mul(8)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(n)
}

fn text(f: &[u8]) -> Option<&str> {
    let end = f.iter().position(|&b| b == 0).unwrap_or(f.len());
    if f[end..].iter().any(|&b| b != 0) {
        return None;
    }
    std::str::from_utf8(&f[..end]).ok()
}

/// A name a device may act on: relative, `/`-separated, no empty, `.` or
/// `..` component, printable ASCII without backslashes (a trailing `/` is
/// allowed for directories and removed).
pub fn safe_name(name: &str) -> bool {
    let name = name.strip_suffix('/').unwrap_or(name);
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
        && name.bytes().all(|b| b.is_ascii_graphic() && b != b'\\')
}

fn checksum(h: &[u8; BLOCK]) -> u64 {
    h.iter()
        .enumerate()
        .map(|(i, &b)| u64::from(if (148..156).contains(&i) { b' ' } else { b }))
        .sum()
}

/// Parses one 512-byte header; pure, the fuzz entry point. `offset` only
/// goes into messages.
pub fn parse_header(h: &[u8; BLOCK], offset: u64) -> Result<Header, BundleError> {
    let bad = |why| BundleError::Header { offset, why };
    if h.iter().all(|&b| b == 0) {
        return Ok(Header::End);
    }
    if field(h, 257, 6) != b"ustar\0" || field(h, 263, 2) != b"00" {
        return Err(bad("is not a POSIX ustar header"));
    }
    let sum = octal(field(h, 148, 8)).ok_or(bad("has a malformed checksum field"))?;
    if sum != checksum(h) {
        return Err(bad("fails its checksum"));
    }
    let name = text(field(h, 0, 100)).ok_or(bad("has a malformed name"))?;
    let prefix = text(field(h, 345, 155)).ok_or(bad("has a malformed name prefix"))?;
    let name = if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}/{name}")
    };
    if !safe_name(&name) {
        return Err(BundleError::BadName { name });
    }
    let size = octal(field(h, 124, 12)).ok_or(bad("has a malformed size field"))?;
    match h[156] {
        b'0' | 0 => Ok(Header::File { name, size }),
        b'5' => Ok(Header::Dir {
            name: name.trim_end_matches('/').to_owned(),
        }),
        t => Err(BundleError::NotAFile {
            name,
            kind: match t {
                b'1' => "hard link",
                b'2' => "symbolic link",
                b'3' | b'4' => "device node",
                b'6' => "FIFO",
                b'x' | b'g' | b'L' | b'K' => "tar extension header (pax/GNU)",
                _ => "file of unknown type",
            },
        }),
    }
}

fn put_octal(h: &mut [u8; BLOCK], at: usize, len: usize, n: u64) {
    // len-1 digits, zero-padded, then NUL.
    let s = format!("{n:0width$o}", width = len - 1);
    h[at..at + len - 1].copy_from_slice(s.as_bytes());
    h[at + len - 1] = 0;
}

/// The ustar header of a regular file: mode 0644, owner 0:0, `mtime` as given
/// (the release timestamp, so a bundle is reproducible). Long names go
/// through the prefix field, split at a `/`.
pub fn encode_header(name: &str, size: u64, mtime: u64) -> Result<[u8; BLOCK], BundleError> {
    if !safe_name(name) || name.ends_with('/') {
        return Err(BundleError::BadName { name: name.into() });
    }
    if size > MAX_MEMBER {
        return Err(BundleError::TooLarge {
            name: name.into(),
            size,
        });
    }
    let (prefix, base) = if name.len() <= 100 {
        ("", name)
    } else {
        // The longest prefix of at most 155 bytes ending before a `/`, such
        // that the rest fits in 100.
        let split = name[..name.len().min(156)]
            .rmatch_indices('/')
            .map(|(i, _)| i)
            .find(|&i| name.len() - i - 1 <= 100)
            .ok_or_else(|| BundleError::BadName { name: name.into() })?;
        (&name[..split], &name[split + 1..])
    };
    let mut h = [0u8; BLOCK];
    h[..base.len()].copy_from_slice(base.as_bytes());
    put_octal(&mut h, 100, 8, 0o644);
    put_octal(&mut h, 108, 8, 0);
    put_octal(&mut h, 116, 8, 0);
    put_octal(&mut h, 124, 12, size);
    put_octal(&mut h, 136, 12, mtime.min(MAX_MEMBER));
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
    let sum = checksum(&h);
    // Checksum: six octal digits, NUL, space (as tar writes it).
    let s = format!("{sum:06o}");
    h[148..154].copy_from_slice(s.as_bytes());
    h[154] = 0;
    h[155] = b' ';
    Ok(h)
}

fn padded(size: u64) -> u64 {
    size.div_ceil(BLOCK as u64) * BLOCK as u64
}

/// Reads the header at `offset`; `Ok(None)` at the end marker.
fn header_at<R: Read + Seek>(
    r: &mut R,
    offset: u64,
    len: u64,
) -> Result<Option<Header>, BundleError> {
    // The end marker is required: an archive that simply stops was cut short
    // (a stick pulled while the bundle was copied).
    if offset + BLOCK as u64 > len {
        return Err(BundleError::Header {
            offset,
            why: "is missing or cut short: no end marker (truncated?)",
        });
    }
    let mut h = [0u8; BLOCK];
    r.seek(SeekFrom::Start(offset))?;
    r.read_exact(&mut h)?;
    match parse_header(&h, offset)? {
        Header::End => Ok(None),
        other => Ok(Some(other)),
    }
}

/// The first member, which a bundle requires to be a regular file (the
/// signed release metadata): read before anything else is looked at.
pub fn first<R: Read + Seek>(r: &mut R) -> Result<Member, BundleError> {
    let len = r.seek(SeekFrom::End(0))?;
    match header_at(r, 0, len)? {
        Some(Header::File { name, size }) => {
            if BLOCK as u64 + padded(size) > len {
                return Err(BundleError::Truncated { name });
            }
            Ok(Member {
                name,
                offset: BLOCK as u64,
                size,
            })
        }
        Some(Header::Dir { name }) => Err(BundleError::NotAFile {
            name,
            kind: "directory",
        }),
        Some(Header::End) | None => Err(BundleError::Header {
            offset: 0,
            why: "is an empty archive",
        }),
    }
}

/// Every regular-file member, in order, found by reading headers and
/// seeking over data (directories are skipped). A member that runs past the
/// end of the file, a repeated name, or more than [`MAX_MEMBERS`] members is
/// an error.
pub fn scan<R: Read + Seek>(r: &mut R) -> Result<Vec<Member>, BundleError> {
    let len = r.seek(SeekFrom::End(0))?;
    let mut out: Vec<Member> = Vec::new();
    let mut names = std::collections::HashSet::new();
    let mut offset = 0u64;
    let mut headers = 0usize;
    while let Some(h) = header_at(r, offset, len)? {
        headers += 1;
        if headers > MAX_MEMBERS {
            return Err(BundleError::TooManyMembers);
        }
        let data = offset + BLOCK as u64;
        match h {
            Header::File { name, size } => {
                if data + padded(size) > len {
                    return Err(BundleError::Truncated { name });
                }
                if !names.insert(name.clone()) {
                    return Err(BundleError::Duplicate { name });
                }
                offset = data + padded(size);
                out.push(Member {
                    name,
                    offset: data,
                    size,
                });
            }
            Header::Dir { .. } => offset = data,
            Header::End => unreachable!("header_at maps the end marker to None"),
        }
    }
    Ok(out)
}

/// Writes a bundle member by member; [`Writer::finish`] writes the end marker.
pub struct Writer<W: Write> {
    out: W,
    mtime: u64,
    written: u64,
}

impl<W: Write> Writer<W> {
    pub fn new(out: W, mtime: u64) -> Self {
        Writer {
            out,
            mtime,
            written: 0,
        }
    }

    /// Adds a regular file of exactly `size` bytes read from `data`.
    pub fn add(&mut self, name: &str, size: u64, data: &mut dyn Read) -> Result<(), BundleError> {
        let h = encode_header(name, size, self.mtime)?;
        self.out.write_all(&h)?;
        let copied = io::copy(&mut data.take(size), &mut self.out)?;
        if copied != size {
            return Err(BundleError::Truncated { name: name.into() });
        }
        let pad = (padded(size) - size) as usize;
        self.out.write_all(&[0u8; BLOCK][..pad])?;
        self.written += BLOCK as u64 + padded(size);
        Ok(())
    }

    /// Writes the end-of-archive marker (two zero blocks) and returns the
    /// writer and the bundle's total size.
    pub fn finish(mut self) -> Result<(W, u64), BundleError> {
        self.out.write_all(&[0u8; 2 * BLOCK])?;
        self.out.flush()?;
        Ok((self.out, self.written + 2 * BLOCK as u64))
    }
}

/// What a payload must be: exact size and sha256 (the type is
/// `atomup-fsio`'s, shared with the other reader of verified files).
pub use atomup_fsio::Expect;

/// A member in the cache, verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extracted {
    pub path: std::path::PathBuf,
    /// Bytes of it that a copy cut earlier had left in its `.partial` and
    /// that were not read from the bundle again (0: copied whole, or found
    /// complete in the cache).
    pub resumed: u64,
}

/// Copies member `m` of `bundle` into `cache/<sha256 hex>` (the download
/// cache's naming, so a network update can reuse it and the reverse), if and
/// only if its size and sha256 are `expect`; returns the cached path.
///
/// Only this member is read. It streams through a `.partial` file that is
/// fsynced and renamed into place once its digest holds, so a stick pulled
/// mid-copy leaves no file that looks complete; a copy already in the cache
/// is re-hashed and reused. A `.partial` left by a copy cut by a read error
/// (a pulled stick) is resumed: its bytes are hashed, not read again, and
/// the copy goes on from the bundle where it stopped (as the downloader's
/// Range request does). The digest over the whole member still decides; a
/// resumed copy that does not hash right is copied once more from its first
/// byte before it is refused, so a damaged `.partial` costs time, never the
/// install. Memory is one 64 KiB buffer.
pub fn extract_verified<R: Read + Seek>(
    bundle: &mut R,
    m: &Member,
    expect: Expect,
    cache: &std::path::Path,
) -> Result<Extracted, BundleError> {
    use sha2::{Digest, Sha256};
    let hex: String = expect.sha256.iter().map(|b| format!("{b:02x}")).collect();
    let done = cache.join(&hex);
    let hash_of = |path: &std::path::Path| -> io::Result<(u64, [u8; 32])> {
        let mut f = atomup_fsio::open(path, atomup_fsio::Want::Regular)?;
        let mut h = Sha256::new();
        let n = io::copy(&mut f, &mut HashWriter(&mut h))?;
        Ok((n, h.finalize().into()))
    };
    if m.size != expect.size {
        return Err(BundleError::Mismatch {
            name: m.name.clone(),
            why: "its size differs from what the signed metadata says",
        });
    }
    let complete = |path| Extracted { path, resumed: 0 };
    match hash_of(&done) {
        Ok(got) if got == (expect.size, expect.sha256) => return Ok(complete(done)),
        Ok(_) => std::fs::remove_file(&done)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    std::fs::create_dir_all(cache)?;
    let partial = cache.join(format!("{hex}.partial"));
    let mut from = match std::fs::symlink_metadata(&partial) {
        Ok(md) if md.is_file() && md.len() <= m.size => md.len(),
        _ => 0,
    };
    loop {
        let mut h = Sha256::new();
        let mut out = if from > 0 {
            let mut f = atomup_fsio::open_rw(&partial, false)?;
            from = io::copy(&mut (&mut f).take(from), &mut HashWriter(&mut h))?;
            f.set_len(from)?;
            f.seek(SeekFrom::Start(from))?;
            f
        } else {
            std::fs::File::create(&partial)?
        };
        bundle.seek(SeekFrom::Start(m.offset + from))?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut left = m.size - from;
        while left > 0 {
            let want = (buf.len() as u64).min(left) as usize;
            let n = bundle.read(&mut buf[..want])?;
            if n == 0 {
                drop(out);
                let _ = std::fs::remove_file(&partial);
                return Err(BundleError::Truncated {
                    name: m.name.clone(),
                });
            }
            h.update(&buf[..n]);
            out.write_all(&buf[..n])?;
            left -= n as u64;
        }
        if <[u8; 32]>::from(h.finalize()) != expect.sha256 {
            drop(out);
            let _ = std::fs::remove_file(&partial);
            if from > 0 {
                // The kept prefix was not this member's bytes: once more, whole.
                from = 0;
                continue;
            }
            return Err(BundleError::Mismatch {
                name: m.name.clone(),
                why: "its sha256 differs from what the signed metadata says",
            });
        }
        out.sync_all()?;
        drop(out);
        std::fs::rename(&partial, &done)?;
        atomup_fsio::sync_parent(&done)?;
        return Ok(Extracted {
            path: done,
            resumed: from,
        });
    }
}

struct HashWriter<'a>(&'a mut sha2::Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        sha2::Digest::update(self.0, b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Fuzz/corpus entry point: arbitrary bytes as one header block and as a
/// whole bundle; must never panic.
pub fn fuzz(data: &[u8]) {
    let mut h = [0u8; BLOCK];
    let n = data.len().min(BLOCK);
    h[..n].copy_from_slice(&data[..n]);
    let _ = parse_header(&h, 0);
    let mut c = std::io::Cursor::new(data);
    let _ = first(&mut c);
    let _ = scan(&mut c);
}

#[cfg(test)]
mod tests;
