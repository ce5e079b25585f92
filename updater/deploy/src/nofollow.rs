//! The no-follow file layer: file-system primitives that never follow a
//! symlink and never leave the directory handle they start from, and never
//! block on what they open: every path is walked one [`SafeName`]
//! component at a time with `openat(O_NOFOLLOW)`, so a symlink planted in a
//! target or source tree cannot redirect a write or a read (DESIGN "Trust":
//! writes never leave the target slot). Also reads a file's OSTree identity
//! (mode, owner, xattrs) from disk for checksumming.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;

use atomup_fsio::Want;
use atomup_ostree::object::{
    encode_xattrs, encode_xattrs_in_order, finish_id, FileHeader, Xattrs, S_IFDIR, S_IFLNK, S_IFMT,
    S_IFREG,
};
use atomup_ostree::ObjectId;
use rustix::fs::{AtFlags, Mode, OFlags, XattrFlags};
use rustix::io::Errno;
use sha2::Digest;

use crate::error::{io, DeployError, Result};

/// Opens directory `name` under `dir`, never following a symlink and never
/// blocking (a FIFO or device is refused by type; see `atomup-fsio`).
pub(crate) fn open_dir_at(dir: impl AsFd, name: &str) -> std::io::Result<OwnedFd> {
    atomup_fsio::open_at(dir, name, Want::Directory).map(OwnedFd::from)
}

/// Opens regular file `name` under `dir` for reading, never following a
/// symlink and never blocking: a FIFO, socket, device or directory there is
/// refused by its type (`InvalidInput`, "a FIFO, not a regular file") and
/// never read as content.
pub(crate) fn open_regular_at(dir: impl AsFd, name: &str) -> std::io::Result<File> {
    atomup_fsio::open_at(dir, name, Want::Regular)
}

/// Reads a regular file of at most `limit` bytes, by path (a device-side
/// path the caller chose: symlinks in it are followed, as an operator would
/// expect). Opened so that it cannot block: a FIFO, device or socket is
/// refused by type (see `atomup-fsio`).
pub(crate) fn read_capped(path: &Path, limit: u64, what: &'static str) -> Result<Vec<u8>> {
    let f = atomup_fsio::open(path, Want::Regular).map_err(io("open", path))?;
    let len = f.metadata().map_err(io("stat", path))?.len();
    if len > limit {
        return Err(DeployError::TooLarge { what, limit });
    }
    let mut buf = Vec::with_capacity(len as usize);
    std::io::Read::read_to_end(&mut std::io::Read::take(f, limit + 1), &mut buf)
        .map_err(io("read", path))?;
    if buf.len() as u64 > limit {
        return Err(DeployError::TooLarge { what, limit });
    }
    Ok(buf)
}

pub(crate) fn open_root(path: &Path) -> Result<OwnedFd> {
    atomup_fsio::open(path, Want::Directory)
        .map(OwnedFd::from)
        .map_err(io("open directory", path))
}

/// Opens directory `rel` (components separated by `/`) under `root` without
/// following any symlink.
pub(crate) fn walk_dir(root: &OwnedFd, rel: &str) -> std::io::Result<OwnedFd> {
    let mut dir = rustix::io::dup(root)?;
    for part in rel.split('/').filter(|p| !p.is_empty()) {
        dir = open_dir_at(&dir, part)?;
    }
    Ok(dir)
}

/// Opens `rel` (components separated by `/`, each a safe name) under `root`
/// without following any symlink. Returns the parent directory and final name.
pub(crate) fn walk_parent<'a>(root: &OwnedFd, rel: &'a str) -> std::io::Result<(OwnedFd, &'a str)> {
    match rel.rsplit_once('/') {
        Some((parent, name)) => Ok((walk_dir(root, parent)?, name)),
        None => Ok((rustix::io::dup(root)?, rel)),
    }
}

/// `rel/name`, or `name` at the top (`rel` empty).
pub(crate) fn child_rel(rel: &str, name: &str) -> String {
    if rel.is_empty() {
        name.to_owned()
    } else {
        format!("{rel}/{name}")
    }
}

/// Makes `name` under `dir` a directory (mode 0700; its metadata is set
/// later), replacing whatever else is there, never following a symlink.
/// Returns whether it was created (an existing directory is kept as is).
pub(crate) fn make_dir(dir: &OwnedFd, name: &CStr, path: &Path) -> Result<bool> {
    let mkdir = || {
        rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700))
            .map_err(|e| io("create directory", path)(e.into()))
    };
    match rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700)) {
        Ok(()) => Ok(true),
        Err(Errno::EXIST) => match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(s) if s.st_mode & S_IFMT == S_IFDIR => Ok(false),
            _ => {
                remove_entry(dir, name, path)?;
                mkdir().map(|()| true)
            }
        },
        Err(e) => Err(io("create directory", path)(e.into())),
    }
}

/// Xattrs of an open file or directory as (name, value), in `listxattr` order.
pub(crate) fn fd_xattr_list(fd: impl AsFd) -> std::io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let fd = fd.as_fd();
    let names = match list(|buf| rustix::fs::flistxattr(fd, buf)) {
        Ok(n) => n,
        Err(e) if e == Errno::OPNOTSUPP => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut attrs = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let c = CString::new(name)
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidData))?;
        let value = list(|buf| rustix::fs::fgetxattr(fd, c.as_c_str(), buf))?;
        attrs.push((name.to_vec(), value));
    }
    Ok(attrs)
}

/// Xattrs of a symlink itself (by path, since a symlink cannot be opened).
pub(crate) fn link_xattr_list(path: &Path) -> std::io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let names = match list(|buf| rustix::fs::llistxattr(path, buf)) {
        Ok(n) => n,
        Err(e) if e == Errno::OPNOTSUPP || e == Errno::PERM => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut attrs = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let c = CString::new(name)
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidData))?;
        let value = list(|buf| rustix::fs::lgetxattr(path, c.as_c_str(), buf))?;
        attrs.push((name.to_vec(), value));
    }
    Ok(attrs)
}

/// The xattr encodings a commit may have used for these attributes: sorted by
/// name (OSTree 2025.2+) and, if different, `listxattr` order (older OSTree,
/// e.g. Debian bookworm's 2022.7). Sorted comes first.
pub(crate) fn xattr_candidates(attrs: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<Vec<u8>> {
    if attrs.is_empty() {
        return vec![Vec::new()];
    }
    let raw = encode_xattrs_in_order(&attrs);
    let sorted = encode_xattrs(attrs);
    if raw == sorted {
        vec![sorted]
    } else {
        vec![sorted, raw]
    }
}

/// Picks the candidate whose id equals `expected`, else the first.
pub(crate) fn pick<T>(
    cands: Vec<(ObjectId, T)>,
    expected: Option<&ObjectId>,
) -> Option<(ObjectId, T)> {
    let idx = expected
        .and_then(|e| cands.iter().position(|(id, _)| id == e))
        .unwrap_or(0);
    cands.into_iter().nth(idx)
}

/// Calls a size-probing xattr syscall with a growing buffer.
fn list(mut f: impl FnMut(&mut [u8]) -> rustix::io::Result<usize>) -> rustix::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    loop {
        match f(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(e) if e == Errno::RANGE && buf.len() < (1 << 20) => buf.resize(buf.len() * 4, 0),
            Err(e) => return Err(e),
        }
    }
}

/// Sets the xattrs OSTree recorded on an open file or directory, removing any
/// others. A filesystem without xattr support is an error only if the tree
/// actually needs xattrs (verification would fail anyway; this names the cause).
pub(crate) fn set_fd_xattrs(fd: impl AsFd, xattrs: &Xattrs<'_>, path: &Path) -> Result<()> {
    let fd = fd.as_fd();
    let wanted: Vec<(&[u8], &[u8])> = xattrs
        .iter()
        .map_err(crate::error::fmt("xattrs"))?
        .collect::<Result<_, _>>()
        .map_err(crate::error::fmt("xattrs"))?;
    if let Ok(existing) = list(|buf| rustix::fs::flistxattr(fd, buf)) {
        for name in existing.split(|b| *b == 0).filter(|n| !n.is_empty()) {
            if !wanted.iter().any(|(n, _)| *n == name) {
                if let Ok(c) = CString::new(name) {
                    let _ = rustix::fs::fremovexattr(fd, c.as_c_str());
                }
            }
        }
    }
    for (name, value) in wanted {
        let c = cstr(name)?;
        rustix::fs::fsetxattr(fd, c.as_c_str(), value, XattrFlags::empty())
            .map_err(|e| io("set xattrs on", path)(e.into()))?;
    }
    Ok(())
}

pub(crate) fn set_link_xattrs(path: &Path, xattrs: &Xattrs<'_>) -> Result<()> {
    for r in xattrs.iter().map_err(crate::error::fmt("xattrs"))? {
        let (name, value) = r.map_err(crate::error::fmt("xattrs"))?;
        let c = cstr(name)?;
        rustix::fs::lsetxattr(path, c.as_c_str(), value, XattrFlags::empty())
            .map_err(|e| io("set xattrs on", path)(e.into()))?;
    }
    Ok(())
}

fn cstr(name: &[u8]) -> Result<CString> {
    CString::new(name).map_err(|_| DeployError::Format {
        what: "xattr name",
        source: atomup_ostree::Error::Malformed {
            what: "xattrs",
            why: "interior NUL",
        },
    })
}

pub(crate) fn owner(uid: u32, gid: u32) -> Result<(rustix::fs::Uid, rustix::fs::Gid)> {
    // Rule: -1 means "unchanged" to chown(2); an object must name a real owner.
    if uid == u32::MAX || gid == u32::MAX {
        return Err(DeployError::BadOwner);
    }
    Ok((
        rustix::fs::Uid::from_raw_unchecked(uid),
        rustix::fs::Gid::from_raw_unchecked(gid),
    ))
}

/// Applies owner then mode (setuid/setgid survive only if set after chown).
pub(crate) fn set_owner_mode(
    fd: impl AsFd,
    uid: u32,
    gid: u32,
    mode: u32,
    path: &Path,
) -> Result<()> {
    let (u, g) = owner(uid, gid)?;
    rustix::fs::fchown(fd.as_fd(), Some(u), Some(g)).map_err(|e| io("chown", path)(e.into()))?;
    rustix::fs::fchmod(fd.as_fd(), Mode::from_raw_mode(mode & 0o7777))
        .map_err(|e| io("chmod", path)(e.into()))?;
    Ok(())
}

/// Removes `name` under `dir`, recursively if it is a directory, never
/// following symlinks.
pub(crate) fn remove_entry(dir: &OwnedFd, name: &CStr, path: &Path) -> Result<()> {
    let st = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(io("stat", path)(e.into())),
    };
    if st.st_mode & S_IFMT == S_IFDIR {
        let sub = rustix::fs::openat(
            dir,
            name,
            OFlags::RDONLY
                | OFlags::DIRECTORY
                | OFlags::NOFOLLOW
                | OFlags::NONBLOCK
                | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io("open directory", path)(e.into()))?;
        let names = dir_names(&sub, path)?;
        for n in names {
            remove_entry(&sub, &n, &path.join(n.to_string_lossy().as_ref()))?;
        }
        rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)
            .map_err(|e| io("remove directory", path)(e.into()))?;
    } else {
        rustix::fs::unlinkat(dir, name, AtFlags::empty())
            .map_err(|e| io("remove", path)(e.into()))?;
    }
    Ok(())
}

/// Entry names of a directory (without `.` and `..`).
pub(crate) fn dir_names(dir: &OwnedFd, path: &Path) -> Result<Vec<CString>> {
    let d = rustix::fs::Dir::read_from(dir).map_err(|e| io("read directory", path)(e.into()))?;
    let mut out = Vec::new();
    for e in d {
        let e = e.map_err(|e| io("read directory", path)(e.into()))?;
        let n = e.file_name();
        if n.to_bytes() == b"." || n.to_bytes() == b".." {
            continue;
        }
        out.push(n.to_owned());
    }
    Ok(out)
}

/// Content checksum of a regular file from an open fd: header from fstat and
/// xattrs, then the data. With `expected`, an older OSTree's xattr order is
/// also tried. Returns the id, the data size and the xattr encoding used.
pub(crate) fn hash_regular(
    file: &File,
    path: &Path,
    expected: Option<&ObjectId>,
) -> Result<(ObjectId, u64, Vec<u8>)> {
    let (id, total, x, _) = hash_regular_stat(file, path, expected)?;
    Ok((id, total, x))
}

/// As [`hash_regular`], also returning the file's stat taken before reading;
/// reads the size that stat reported.
pub(crate) fn hash_regular_stat(
    file: &File,
    path: &Path,
    expected: Option<&ObjectId>,
) -> Result<(ObjectId, u64, Vec<u8>, rustix::fs::Stat)> {
    let st = rustix::fs::fstat(file).map_err(|e| io("stat", path)(e.into()))?;
    if st.st_mode & S_IFMT != S_IFREG {
        return Err(DeployError::BadFileType {
            path: path.to_owned(),
        });
    }
    let cands = xattr_candidates(fd_xattr_list(file).map_err(io("read xattrs of", path))?);
    let mut hashers = Vec::new();
    for x in &cands {
        let header = FileHeader {
            uid: st.st_uid,
            gid: st.st_gid,
            mode: st.st_mode,
            symlink: "",
            xattrs: Xattrs::parse(x).map_err(crate::error::fmt("xattrs"))?,
        };
        hashers.push(header.content_hasher());
    }
    // Exactly the size fstat reported, by offset (the file position does not
    // matter, and no extra read is spent to see the end).
    let size = st.st_size as u64;
    let mut buf = vec![0u8; (size as usize).clamp(1, 64 * 1024)];
    let mut total = 0u64;
    while total < size {
        let want = ((size - total) as usize).min(buf.len());
        let n = file
            .read_at(&mut buf[..want], total)
            .map_err(io("read", path))?;
        if n == 0 {
            break;
        }
        for h in &mut hashers {
            h.update(&buf[..n]);
        }
        total += n as u64;
    }
    let ids: Vec<(ObjectId, Vec<u8>)> = hashers.into_iter().map(finish_id).zip(cands).collect();
    let (id, x) = pick(ids, expected).ok_or(DeployError::BadFileType {
        path: path.to_owned(),
    })?;
    Ok((id, total, x, st))
}

/// Content checksum of a symlink `name` in `dir` (full `path` for xattrs).
/// Returns the id, the target and the xattr encoding used.
pub(crate) fn hash_symlink(
    dir: impl AsFd,
    name: &CStr,
    path: &Path,
    expected: Option<&ObjectId>,
) -> Result<(ObjectId, String, Vec<u8>)> {
    let dir = dir.as_fd();
    let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| io("stat", path)(e.into()))?;
    if st.st_mode & S_IFMT != S_IFLNK {
        return Err(DeployError::BadFileType {
            path: path.to_owned(),
        });
    }
    let target = rustix::fs::readlinkat(dir, name, Vec::new())
        .map_err(|e| io("read link", path)(e.into()))?;
    let target = target.into_string().map_err(|_| DeployError::BadFileType {
        path: path.to_owned(),
    })?;
    let mut ids = Vec::new();
    for x in xattr_candidates(link_xattr_list(path).map_err(io("read xattrs of", path))?) {
        let header = FileHeader {
            uid: st.st_uid,
            gid: st.st_gid,
            mode: st.st_mode,
            symlink: &target,
            xattrs: Xattrs::parse(&x).map_err(crate::error::fmt("xattrs"))?,
        };
        ids.push((finish_id(header.content_hasher()), x));
    }
    let (id, x) = pick(ids, expected).ok_or(DeployError::BadFileType {
        path: path.to_owned(),
    })?;
    Ok((id, target, x))
}

pub(crate) fn cname(name: &str) -> CString {
    // SafeName guarantees no NUL.
    CString::new(name).unwrap_or_default()
}
