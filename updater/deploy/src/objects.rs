//! Where a content object comes from when reconciliation places it: staged
//! already (built from a part or a fallback), else copied from the running
//! root with its checksum re-verified while copying, else — when that copy
//! is missing, edited, or not a regular file any more — taken whole from the
//! fallback repo if one holds it. One owner for staging and the running
//! root, so the parts and reconciliation share them.

use std::io::{Read, Write};
use std::path::Path;

use atomup_ostree::execute::CHUNK;
use atomup_ostree::object::{finish_id, FileHeader, Xattrs, S_IFLNK, S_IFMT};
use atomup_ostree::ObjectId;
use rustix::fs::AtFlags;

use crate::error::{fmt, io, DeployError, Result};
use crate::meta::MetaStore;
use crate::nofollow;
use crate::oldroot::OldRoot;
use crate::staging::Staging;
use crate::stats::Stats;

pub(crate) struct Objects<'a> {
    pub staging: Staging,
    /// The running root; `None` for a from-scratch delta.
    pub old: Option<OldRoot>,
    pub meta: &'a MetaStore<'a>,
    #[cfg_attr(not(feature = "archive-fallback"), allow(dead_code))]
    pub fallback_repo: Option<&'a Path>,
}

impl Objects<'_> {
    /// Makes sure content object `id` is in staging.
    pub fn ensure_staged(&mut self, id: &ObjectId, stats: &mut Stats) -> Result<()> {
        if self.staging.contains(id) {
            return Ok(());
        }
        match self.copy_from_active(id, stats) {
            Ok(()) => Ok(()),
            // An unchanged object missing, modified or of another type in
            // the running root (say, an /etc file edited at run time) can
            // still come whole from the fallback repo, if one was given and
            // holds it; otherwise the original error stands.
            Err(
                e @ (DeployError::Corrupt { .. }
                | DeployError::MissingContent { .. }
                | DeployError::Io { .. }),
            ) => {
                if !self.fallback_holds(id) {
                    return Err(e);
                }
                log::warn!("object {id}: {e}; taking it from the fallback repo");
                self.import_fallback(*id, None, stats)
            }
            Err(e) => Err(e),
        }
    }

    #[cfg(feature = "archive-fallback")]
    fn fallback_holds(&self, id: &ObjectId) -> bool {
        self.fallback_repo
            .is_some_and(|r| crate::fallback::filez_path(r, id).is_file())
    }

    #[cfg(not(feature = "archive-fallback"))]
    fn fallback_holds(&self, _id: &ObjectId) -> bool {
        false
    }

    /// Imports content object `id` from the fallback repo (`declared`: the
    /// superblock's uncompressed size, for objects of its fallback list).
    #[cfg(feature = "archive-fallback")]
    pub fn import_fallback(
        &mut self,
        id: ObjectId,
        declared: Option<u64>,
        stats: &mut Stats,
    ) -> Result<()> {
        let repo = self
            .fallback_repo
            .ok_or(DeployError::NeedFallbackRepo { id })?;
        stats.bytes_written += crate::fallback::import(&mut self.staging, repo, id, declared)?;
        stats.objects_written += 1;
        Ok(())
    }

    #[cfg(not(feature = "archive-fallback"))]
    pub fn import_fallback(
        &mut self,
        _id: ObjectId,
        _declared: Option<u64>,
        _stats: &mut Stats,
    ) -> Result<()> {
        Err(DeployError::NoFallbackSupport)
    }

    /// Copies content object `id` from the running root into staging,
    /// re-verifying its checksum while copying.
    fn copy_from_active(&mut self, id: &ObjectId, stats: &mut Stats) -> Result<()> {
        let old = self
            .old
            .as_mut()
            .ok_or(DeployError::MissingContent { id: *id })?;
        let (dir, name, path) = old.entry(self.meta, id)?;
        let cname = nofollow::cname(&name);
        let stt = rustix::fs::statat(&dir, cname.as_c_str(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| io("stat", &path)(e.into()))?;
        if stt.st_mode & S_IFMT == S_IFLNK {
            let (actual, target, x) = nofollow::hash_symlink(&dir, &cname, &path, Some(id))?;
            if actual != *id {
                return Err(DeployError::Corrupt {
                    what: "old object",
                    id: *id,
                    path,
                    actual,
                });
            }
            let header = FileHeader {
                uid: stt.st_uid,
                gid: stt.st_gid,
                mode: stt.st_mode,
                symlink: &target,
                xattrs: Xattrs::parse(&x).map_err(fmt("xattrs"))?,
            };
            self.staging.symlink(id, &header)?;
            stats.objects_reused += 1;
            return Ok(());
        }
        // Not a symlink: it must be a regular file, refused by type (a FIFO,
        // a device) without blocking otherwise.
        let mut src = nofollow::open_regular_at(&dir, &name).map_err(io("open", &path))?;
        let s = rustix::fs::fstat(&src).map_err(|e| io("stat", &path)(e.into()))?;
        let cands = nofollow::xattr_candidates(
            nofollow::fd_xattr_list(&src).map_err(io("read xattrs of", &path))?,
        );
        let mut hashers = Vec::new();
        for x in &cands {
            let header = FileHeader {
                uid: s.st_uid,
                gid: s.st_gid,
                mode: s.st_mode,
                symlink: "",
                xattrs: Xattrs::parse(x).map_err(fmt("xattrs"))?,
            };
            hashers.push(header.content_hasher());
        }
        let mut out = self.staging.create_file(id)?;
        let mut buf = vec![0u8; CHUNK];
        let mut total = 0u64;
        loop {
            let n = src.read(&mut buf).map_err(io("read", &path))?;
            if n == 0 {
                break;
            }
            for h in &mut hashers {
                sha2::Digest::update(h, &buf[..n]);
            }
            out.write_all(&buf[..n])
                .map_err(io("write into staging", &path))?;
            total += n as u64;
        }
        let ids = hashers.into_iter().map(finish_id).zip(cands).collect();
        let (actual, x) = nofollow::pick(ids, Some(id)).unwrap_or_default();
        if actual != *id {
            self.staging.discard_file(id);
            return Err(DeployError::Corrupt {
                what: "old object",
                id: *id,
                path,
                actual,
            });
        }
        let header = FileHeader {
            uid: s.st_uid,
            gid: s.st_gid,
            mode: s.st_mode,
            symlink: "",
            xattrs: Xattrs::parse(&x).map_err(fmt("xattrs"))?,
        };
        self.staging.finish_file(out, id, &header)?;
        stats.bytes_reused += total;
        stats.objects_reused += 1;
        Ok(())
    }
}
