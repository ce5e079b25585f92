//! Staging: `TARGET/.atomup-staging/` (mode 0700), where every content object
//! the apply builds — from a part, from the fallback repo, or copied from the
//! running root — is written once under its checksum with its final owner,
//! mode and xattrs, before reconciliation hard-links it into place. Objects
//! are written to `<hex>.tmp` and renamed to `<hex>` only once complete and
//! verified, so a name in staging is always a verified object. The
//! directory is removed when the apply ends, whatever the outcome.

use std::collections::HashSet;
use std::ffi::CStr;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use atomup_ostree::object::FileHeader;
use atomup_ostree::ObjectId;
use rustix::fs::{AtFlags, Mode, OFlags};

use crate::error::{io, Result};
use crate::nofollow;

/// The staging directory's name, reserved at the top of the target.
pub const STAGING: &str = ".atomup-staging";

pub(crate) struct Staging {
    fd: OwnedFd,
    path: PathBuf,
    staged: HashSet<ObjectId>,
}

fn tmp_name(id: &ObjectId) -> String {
    format!("{}.tmp", id.to_hex())
}

impl Staging {
    /// Creates the staging directory in the target, removing a leftover of
    /// an interrupted apply first. This is the apply's first write.
    pub fn create(target_fd: &OwnedFd, target: &Path) -> Result<Self> {
        let path = target.join(STAGING);
        Self::remove(target_fd, target)?;
        rustix::fs::mkdirat(target_fd, STAGING, Mode::from_raw_mode(0o700))
            .map_err(|e| io("create", &path)(e.into()))?;
        let fd = nofollow::open_dir_at(target_fd, STAGING).map_err(io("open", &path))?;
        Ok(Staging {
            fd,
            path,
            staged: HashSet::new(),
        })
    }

    /// Removes the staging directory of `target` (and all it holds).
    pub fn remove(target_fd: &OwnedFd, target: &Path) -> Result<()> {
        nofollow::remove_entry(target_fd, &nofollow::cname(STAGING), &target.join(STAGING))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether object `id` is staged (complete and verified).
    pub fn contains(&self, id: &ObjectId) -> bool {
        self.staged.contains(id)
    }

    /// A new scratch file, unlinked at once: it never outlives this process.
    pub fn scratch(&self) -> Result<File> {
        let path = self.path.join("payload");
        let fd = rustix::fs::openat(
            &self.fd,
            "payload",
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| io("create", &path)(e.into()))?;
        rustix::fs::unlinkat(&self.fd, "payload", AtFlags::empty())
            .map_err(|e| io("unlink", &path)(e.into()))?;
        Ok(File::from(fd))
    }

    /// Opens `<hex>.tmp` for object `id`'s data (mode 0600 until finished).
    pub fn create_file(&self, id: &ObjectId) -> Result<File> {
        let name = tmp_name(id);
        let path = self.path.join(&name);
        let fd = rustix::fs::openat(
            &self.fd,
            name.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| io("create", &path)(e.into()))?;
        Ok(File::from(fd))
    }

    /// Object `id`'s data is complete and verified: owner, then mode (so
    /// setuid survives), then xattrs, then renamed to `<hex>`.
    pub fn finish_file(
        &mut self,
        file: File,
        id: &ObjectId,
        header: &FileHeader<'_>,
    ) -> Result<()> {
        let hex = id.to_hex();
        let path = self.path.join(&hex);
        nofollow::set_owner_mode(&file, header.uid, header.gid, header.mode, &path)?;
        if !header.xattrs.is_empty() {
            nofollow::set_fd_xattrs(&file, &header.xattrs, &path)?;
        }
        drop(file);
        rustix::fs::renameat(&self.fd, tmp_name(id).as_str(), &self.fd, hex.as_str())
            .map_err(|e| io("rename into", &path)(e.into()))?;
        self.staged.insert(*id);
        Ok(())
    }

    /// Drops the unfinished `<hex>.tmp` of object `id`.
    pub fn discard_file(&self, id: &ObjectId) {
        let _ = rustix::fs::unlinkat(&self.fd, tmp_name(id).as_str(), AtFlags::empty());
    }

    /// Stages symlink object `id` (target, owner, xattrs from `header`).
    pub fn symlink(&mut self, id: &ObjectId, header: &FileHeader<'_>) -> Result<()> {
        let hex = id.to_hex();
        let path = self.path.join(&hex);
        let _ = rustix::fs::unlinkat(&self.fd, hex.as_str(), AtFlags::empty());
        rustix::fs::symlinkat(header.symlink, &self.fd, hex.as_str())
            .map_err(|e| io("create symlink", &path)(e.into()))?;
        let (u, g) = nofollow::owner(header.uid, header.gid)?;
        rustix::fs::chownat(
            &self.fd,
            hex.as_str(),
            Some(u),
            Some(g),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| io("chown", &path)(e.into()))?;
        if !header.xattrs.is_empty() {
            nofollow::set_link_xattrs(&path, &header.xattrs)?;
        }
        self.staged.insert(*id);
        Ok(())
    }

    /// Hard-links staged object `id` as `name` in `dir` (`path` for errors).
    pub fn link_into(&self, id: &ObjectId, dir: &OwnedFd, name: &CStr, path: &Path) -> Result<()> {
        rustix::fs::linkat(&self.fd, id.to_hex().as_str(), dir, name, AtFlags::empty())
            .map_err(|e| io("link", path)(e.into()))
    }
}
