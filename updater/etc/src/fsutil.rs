//! The few no-follow primitives the layer code needs on top of
//! `atomup-fsio` and `atomup-deploy`: directories opened one component at a
//! time with `O_NOFOLLOW`, their entry names, and recursive removal that
//! never leaves the directory it starts from.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::AtFlags;
use rustix::io::Errno;

use crate::error::{errno, Result};

/// Opens directory `name` under `dir`, never following a symlink and never
/// blocking (a FIFO or device is refused by type before it is read; see
/// `atomup-fsio`).
pub(crate) fn open_dir_at(
    dir: impl AsFd,
    name: impl rustix::path::Arg,
) -> rustix::io::Result<OwnedFd> {
    atomup_fsio::open_at(dir, name, atomup_fsio::Want::Directory)
        .map(OwnedFd::from)
        .map_err(|e| Errno::from_io_error(&e).unwrap_or(Errno::NOTDIR))
}

/// Opens directory `rel` (components separated by `/`) under `root`, never
/// following a symlink.
pub(crate) fn walk_dir(root: impl AsFd, rel: &str) -> rustix::io::Result<OwnedFd> {
    let mut dir = rustix::io::dup(root.as_fd())?;
    for part in rel.split('/').filter(|p| !p.is_empty()) {
        dir = open_dir_at(&dir, part)?;
    }
    Ok(dir)
}

/// `rel`'s parent directory under `root` (opened no-follow) and its name.
pub(crate) fn walk_parent(root: impl AsFd, rel: &str) -> rustix::io::Result<(OwnedFd, &str)> {
    match rel.rsplit_once('/') {
        Some((parent, name)) => Ok((walk_dir(root, parent)?, name)),
        None => Ok((rustix::io::dup(root.as_fd())?, rel)),
    }
}

/// Entry names of an open directory, without `.` and `..`, as raw bytes.
pub(crate) fn names(dir: impl AsFd, path: &Path) -> Result<Vec<CString>> {
    let d = rustix::fs::Dir::read_from(dir).map_err(errno("read directory", path))?;
    let mut out = Vec::new();
    for e in d {
        let e = e.map_err(errno("read directory", path))?;
        let n = e.file_name();
        if n.to_bytes() != b"." && n.to_bytes() != b".." {
            out.push(n.to_owned());
        }
    }
    out.sort();
    Ok(out)
}

/// Removes `name` under `dir`, recursively, never following a symlink; a
/// missing entry is not an error.
pub(crate) fn remove_all(dir: impl AsFd, name: &str, path: &Path) -> Result<()> {
    remove_c(dir.as_fd(), &CString::new(name).unwrap_or_default(), path)
}

fn remove_c(dir: std::os::fd::BorrowedFd<'_>, name: &CStr, path: &Path) -> Result<()> {
    let st = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(errno("stat", path)(e)),
    };
    if rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory {
        let sub = open_dir_at(dir, name).map_err(errno("open directory", path))?;
        for n in names(&sub, path)? {
            let p = path.join(n.to_string_lossy().as_ref());
            remove_c(sub.as_fd(), &n, &p)?;
        }
        rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)
            .map_err(errno("remove directory", path))?;
    } else {
        rustix::fs::unlinkat(dir, name, AtFlags::empty()).map_err(errno("remove", path))?;
    }
    Ok(())
}

/// Fsyncs an open directory (or file).
pub(crate) fn fsync(fd: impl AsFd, path: &Path) -> Result<()> {
    rustix::fs::fsync(fd).map_err(errno("sync", path))
}
