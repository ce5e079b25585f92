//! A slot's overlay layer on the data partition, written whole and swapped
//! in at once:
//!
//! ```text
//! <state dir>/etc/<slot>/upper   the device's side of the slot's /etc
//! <state dir>/etc/<slot>/work    overlayfs work directory (fresh, empty)
//! <state dir>/etc/<slot>/merge   the merge record (crate::record)
//! ```
//!
//! **Durable transitions** (the crash argument of the README, step by step).
//! The caller runs [`install`] while the slot is out of the boot order
//! (after the install-start env write) and makes it bootable only after it
//! returns (the install-done env write). What is on disk at each step:
//!
//! 1. A leftover `<slot>.new` (an earlier run cut short) is removed. Before
//!    and after: `<slot>` is the slot's previous layer, or absent.
//! 2. `<slot>.new/` is built: `upper/` holds every entry of the plan, each
//!    file written, owned, moded, xattr'd and fsynced, each symlink and
//!    whiteout created, then each directory given its merged metadata and
//!    fsynced (children first, so read-only directories can be filled);
//!    every entry is hashed back from disk and compared with the merge's
//!    identity (a file the device changed meanwhile fails the update, it is
//!    never carried half-old). Then `work/` and the record, fsynced, and
//!    `<slot>.new/` and `<state dir>/etc/` fsynced. A cut anywhere here
//!    leaves `<slot>` as it was; the slot is not bootable anyway.
//! 3. `renameat2(RENAME_EXCHANGE)` swaps `<slot>.new` and `<slot>` (a plain
//!    rename when there is no `<slot>`), and `<state dir>/etc/` is fsynced:
//!    the one step that changes which layer is the slot's. Before it the
//!    old layer, after it the complete new one, never a mixture.
//! 4. The old layer, now at `<slot>.new`, is removed (step 1 of the next
//!    run does it if a cut comes first).
//!
//! The running slot's layer is never opened for writing: only
//! `<state dir>/etc/<target>` and `<target>.new` are.

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use atomup_deploy::identity::{dirmeta_id, identity_at, link_xattrs_of, xattrs_of, Identity};
use atomup_fsio::Want;
use atomup_ostree::ObjectId;
use atomup_policy::Slot;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, XattrFlags};
use rustix::io::Errno;

use crate::error::{deploy, errno, io, EtcError, Result};
use crate::failpoint::hit;
use crate::fsutil;
use crate::merge::{Kind, Tree, Upper};
use crate::record::{MergeRecord, RECORD_NAME};
use crate::tree::{DirAttrs, MetaStore};

pub const UPPER: &str = "upper";
pub const WORK: &str = "work";

/// `<state dir>/etc`, where the layers live.
pub fn layers_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("etc")
}

/// `<state dir>/etc/<slot>`: the slot's layer.
pub fn layer_dir(state_dir: &Path, slot: Slot) -> PathBuf {
    layers_dir(state_dir).join(slot.letter())
}

/// The merge record of `slot`'s layer: `None` when the slot has no layer or
/// its layer was created empty (at boot, with no merge).
pub fn read_record(state_dir: &Path, slot: Slot) -> Result<Option<MergeRecord>> {
    let path = layer_dir(state_dir, slot).join(RECORD_NAME);
    match atomup_fsio::read_capped_opt(&path, crate::record::MAX_RECORD_SIZE) {
        Ok(None) => Ok(None),
        Ok(Some(b)) => MergeRecord::parse(&b)
            .map(Some)
            .map_err(|why| EtcError::Record { path, why }),
        Err(e) => Err(io("read", path)(e)),
    }
}

/// What the new slot's layer holds, from the merge.
pub struct Plan<'a> {
    /// The running `/etc` (the overlay's merged view): source of every copy.
    pub current: &'a Path,
    /// The merged tree (identities every copy must hash to).
    pub merged: &'a Tree,
    /// The upper-layer plan of the merge.
    pub upper: &'a Upper,
    /// The new defaults (directories the plan needs but does not copy take
    /// their metadata from these dirmetas).
    pub new: &'a Tree,
    /// Dirmeta of the new commit's `/etc` itself: the layer's top directory.
    pub top: Option<ObjectId>,
    pub meta: MetaStore<'a>,
    pub record: &'a MergeRecord,
}

/// Writes `slot`'s layer from `plan` and swaps it in (see the module docs).
pub fn install(state_dir: &Path, slot: Slot, plan: &Plan<'_>) -> Result<()> {
    let top = match plan.top {
        Some(id) => plan.meta.dirmeta(&id)?,
        None => DirAttrs {
            uid: 0,
            gid: 0,
            mode: 0o040755,
            xattrs: Vec::new(),
        },
    };
    let record = plan.record.serialize();
    write_layer(state_dir, slot, &top, Some(record.as_bytes()), |w| {
        w.fill(plan)
    })
}

/// Creates an empty layer for `slot` (the vendor defaults as they are),
/// its top directory with the metadata of `lower` (the slot's own `/etc`);
/// nothing is done when the slot has a layer already. Same steps as
/// [`install`].
pub fn ensure_empty(state_dir: &Path, slot: Slot, lower: &Path) -> Result<()> {
    let dir = layer_dir(state_dir, slot);
    match rustix::fs::lstat(&dir) {
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => return Ok(()),
        Ok(_) | Err(Errno::NOENT) => {}
        Err(e) => return Err(errno("stat", &dir)(e)),
    }
    let fd = atomup_fsio::open(lower, Want::Directory).map_err(io("open directory", lower))?;
    let st = rustix::fs::fstat(&fd).map_err(errno("stat", lower))?;
    let top = DirAttrs {
        uid: st.st_uid,
        gid: st.st_gid,
        mode: st.st_mode,
        xattrs: xattrs_of(&fd).map_err(io("read xattrs of", lower))?,
    };
    write_layer(state_dir, slot, &top, None, |_| Ok(()))
}

fn write_layer(
    state_dir: &Path,
    slot: Slot,
    top: &DirAttrs,
    record: Option<&[u8]>,
    fill: impl FnOnce(&mut Writer) -> Result<()>,
) -> Result<()> {
    let layers = layers_dir(state_dir);
    if !layers.is_dir() {
        hit("create the layers directory")?;
        std::fs::create_dir_all(&layers).map_err(io("create", &layers))?;
        hit("sync the state directory")?;
        atomup_fsio::sync_parent(&layers).map_err(io("sync", state_dir))?;
    }
    let layers_fd: OwnedFd = atomup_fsio::open(&layers, Want::Directory)
        .map_err(io("open directory", &layers))?
        .into();
    let name = slot.letter();
    let new_name = format!("{name}.new");
    let new_path = layers.join(&new_name);

    // 1. A leftover of an earlier run goes.
    hit("remove a leftover new layer")?;
    fsutil::remove_all(&layers_fd, &new_name, &new_path)?;

    // 2. The new layer, complete and durable.
    hit("create the new layer")?;
    mkdir(&layers_fd, &new_name, &new_path)?;
    let new_fd = fsutil::open_dir_at(&layers_fd, &new_name).map_err(errno("open", &new_path))?;
    let upper_path = new_path.join(UPPER);
    let work_path = new_path.join(WORK);
    hit("create upper")?;
    mkdir(&new_fd, UPPER, &upper_path)?;
    hit("create work")?;
    mkdir(&new_fd, WORK, &work_path)?;
    let upper_fd = fsutil::open_dir_at(&new_fd, UPPER).map_err(errno("open", &upper_path))?;
    let mut w = Writer {
        upper: upper_fd,
        upper_path: upper_path.clone(),
        current: None,
        dirs: Vec::new(),
        created: HashMap::new(),
        metas: HashMap::new(),
    };
    fill(&mut w)?;
    w.finish_dirs()?;
    set_attrs(&w.upper, top, &upper_path)?;
    hit("sync upper")?;
    fsutil::fsync(&w.upper, &upper_path)?;
    let work_fd = fsutil::open_dir_at(&new_fd, WORK).map_err(errno("open", &work_path))?;
    hit("sync work")?;
    fsutil::fsync(&work_fd, &work_path)?;
    if let Some(bytes) = record {
        write_file(&new_fd, RECORD_NAME, bytes, &new_path.join(RECORD_NAME))?;
    }
    hit("sync the new layer")?;
    fsutil::fsync(&new_fd, &new_path)?;
    hit("sync the layers directory")?;
    fsutil::fsync(&layers_fd, &layers)?;

    // 3. The swap: the one step that changes which layer is the slot's.
    let dest = layers.join(name);
    let exists = match rustix::fs::statat(&layers_fd, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(_) => true,
        Err(Errno::NOENT) => false,
        Err(e) => return Err(errno("stat", &dest)(e)),
    };
    hit("swap the layer in")?;
    if exists {
        rustix::fs::renameat_with(
            &layers_fd,
            new_name.as_str(),
            &layers_fd,
            name,
            RenameFlags::EXCHANGE,
        )
        .map_err(errno("swap in (renameat2 RENAME_EXCHANGE)", &dest))?;
    } else {
        rustix::fs::renameat(&layers_fd, new_name.as_str(), &layers_fd, name)
            .map_err(errno("rename into place", &dest))?;
    }
    hit("sync the layers directory after the swap")?;
    fsutil::fsync(&layers_fd, &layers)?;

    // 4. The old layer goes.
    if exists {
        hit("remove the old layer")?;
        fsutil::remove_all(&layers_fd, &new_name, &new_path)?;
        hit("sync the layers directory after the removal")?;
        fsutil::fsync(&layers_fd, &layers)?;
    }
    Ok(())
}

/// Where a directory of the upper layer gets its metadata from.
enum DirSource {
    /// The same directory in the running `/etc` (a directory the merge
    /// copies): its path relative to it, and the full path for messages.
    Current(String, PathBuf),
    /// A dirmeta of the new defaults (a directory the plan only passes through).
    Meta(ObjectId),
}

struct Writer {
    upper: OwnedFd,
    upper_path: PathBuf,
    /// The running `/etc`, once [`Writer::fill`] opened it.
    current: Option<OwnedFd>,
    /// Directories created, in creation order (parents first), with the
    /// identity their metadata must hash to.
    dirs: Vec<(String, DirSource, ObjectId)>,
    /// Paths created so far in the upper.
    created: HashMap<String, Kind>,
    metas: HashMap<ObjectId, DirAttrs>,
}

impl Writer {
    fn fill(&mut self, plan: &Plan<'_>) -> Result<()> {
        let cur: OwnedFd = atomup_fsio::open(plan.current, Want::Directory)
            .map_err(io("open directory", plan.current))?
            .into();
        for p in &plan.upper.copy {
            self.parents(p, plan)?;
            let want = plan.merged.get(p).ok_or_else(|| EtcError::Changed {
                path: plan.current.join(p),
            })?;
            self.copy(&cur, plan.current, p, want.kind, want.id)?;
        }
        self.current = Some(cur);
        for p in &plan.upper.whiteout {
            self.parents(p, plan)?;
            let (dir, name) = fsutil::walk_parent(&self.upper, p)
                .map_err(errno("open", self.upper_path.join(p)))?;
            hit("create a whiteout")?;
            // overlayfs's whiteout: a character device 0:0.
            rustix::fs::mknodat(&dir, name, FileType::CharacterDevice, Mode::empty(), 0)
                .map_err(errno("create whiteout", self.upper_path.join(p)))?;
        }
        Ok(())
    }

    /// Creates the ancestors of `p` the upper does not have yet, with the
    /// new defaults' metadata (the merge guarantees they equal the merged
    /// tree's there: a directory whose metadata differs is a copy of its own).
    fn parents(&mut self, p: &str, plan: &Plan<'_>) -> Result<()> {
        let mut chain = Vec::new();
        let mut q = p;
        while let Some((d, _)) = q.rsplit_once('/') {
            if self.created.contains_key(d) {
                break;
            }
            chain.push(d);
            q = d;
        }
        for d in chain.into_iter().rev() {
            let Some(e) = plan.new.get(d).filter(|e| e.kind == Kind::Dir) else {
                return Err(EtcError::Changed {
                    path: plan.current.join(d),
                });
            };
            let (dir, name) = fsutil::walk_parent(&self.upper, d)
                .map_err(errno("open", self.upper_path.join(d)))?;
            hit("create a directory")?;
            mkdir(&dir, name, &self.upper_path.join(d))?;
            self.dirs.push((d.to_owned(), DirSource::Meta(e.id), e.id));
            self.created.insert(d.to_owned(), Kind::Dir);
            let _ = self.attrs_of_meta(&plan.meta, &e.id)?;
        }
        Ok(())
    }

    fn attrs_of_meta(&mut self, meta: &MetaStore<'_>, id: &ObjectId) -> Result<&DirAttrs> {
        if !self.metas.contains_key(id) {
            let a = meta.dirmeta(id)?;
            self.metas.insert(*id, a);
        }
        Ok(&self.metas[id])
    }

    /// Copies entry `p` of the running `/etc` into the upper, exactly.
    fn copy(
        &mut self,
        cur: &OwnedFd,
        cur_path: &Path,
        p: &str,
        kind: Kind,
        id: ObjectId,
    ) -> Result<()> {
        let src_path = cur_path.join(p);
        let dst_path = self.upper_path.join(p);
        let changed = || EtcError::Changed {
            path: src_path.clone(),
        };
        let (sdir, name) = fsutil::walk_parent(cur, p).map_err(errno("open", &src_path))?;
        let (ddir, _) = fsutil::walk_parent(&self.upper, p).map_err(errno("open", &dst_path))?;
        let st = rustix::fs::statat(&sdir, name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(errno("stat", &src_path))?;
        let ft = FileType::from_raw_mode(st.st_mode);
        match (kind, ft) {
            (Kind::Dir, FileType::Directory) => {
                hit("create a directory")?;
                mkdir(&ddir, name, &dst_path)?;
                self.dirs.push((
                    p.to_owned(),
                    DirSource::Current(p.to_owned(), src_path.clone()),
                    id,
                ));
                self.created.insert(p.to_owned(), Kind::Dir);
                return Ok(());
            }
            (Kind::File, FileType::RegularFile) => {
                let mut src = atomup_fsio::open_at(&sdir, name, Want::Regular)
                    .map_err(io("open", &src_path))?;
                let sst = rustix::fs::fstat(&src).map_err(errno("stat", &src_path))?;
                let xattrs = xattrs_of(&src).map_err(io("read xattrs of", &src_path))?;
                hit("create a file")?;
                let fd = rustix::fs::openat(
                    &ddir,
                    name,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(errno("create", &dst_path))?;
                let mut dst = std::fs::File::from(fd);
                hit("write a file")?;
                std::io::copy(&mut src, &mut dst).map_err(io("copy into", &dst_path))?;
                hit("set a file's owner and mode")?;
                owner_mode(&dst, sst.st_uid, sst.st_gid, sst.st_mode, &dst_path)?;
                hit("set a file's xattrs")?;
                for (k, v) in &xattrs {
                    rustix::fs::fsetxattr(&dst, k.as_slice(), v, XattrFlags::empty())
                        .map_err(errno("set xattrs on", &dst_path))?;
                }
                hit("sync a file")?;
                fsutil::fsync(&dst, &dst_path)?;
            }
            (Kind::File, FileType::Symlink) => {
                let target = rustix::fs::readlinkat(&sdir, name, Vec::new())
                    .map_err(errno("read link", &src_path))?;
                let xattrs = link_xattrs_of(&src_path).map_err(io("read xattrs of", &src_path))?;
                hit("create a symlink")?;
                rustix::fs::symlinkat(target.as_c_str(), &ddir, name)
                    .map_err(errno("create symlink", &dst_path))?;
                hit("set a symlink's owner")?;
                rustix::fs::chownat(
                    &ddir,
                    name,
                    Some(uid(st.st_uid, &dst_path)?),
                    Some(gid(st.st_gid, &dst_path)?),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(errno("chown", &dst_path))?;
                hit("set a symlink's xattrs")?;
                for (k, v) in &xattrs {
                    rustix::fs::lsetxattr(&dst_path, k.as_slice(), v, XattrFlags::empty())
                        .map_err(errno("set xattrs on", &dst_path))?;
                }
            }
            _ => return Err(changed()),
        }
        self.created.insert(p.to_owned(), Kind::File);
        // Rule: the layer holds exactly what the merge decided: hashed back.
        match identity_at(&ddir, name, &dst_path, Some(&id)).map_err(deploy("the new layer"))? {
            Identity::File(got) | Identity::Symlink(got) if got == id => Ok(()),
            _ => Err(changed()),
        }
    }

    /// Gives every directory created its metadata, children before parents,
    /// checks it hashes to the merge's identity, and fsyncs it.
    fn finish_dirs(&mut self) -> Result<()> {
        let dirs = std::mem::take(&mut self.dirs);
        for (rel, source, id) in dirs.iter().rev() {
            let path = self.upper_path.join(rel);
            let attrs = match source {
                DirSource::Meta(m) => self
                    .metas
                    .get(m)
                    .cloned()
                    .ok_or_else(|| EtcError::Changed { path: path.clone() })?,
                DirSource::Current(rel, src) => {
                    // Read without following a symlink, as the walk did.
                    let cur = self
                        .current
                        .as_ref()
                        .ok_or_else(|| EtcError::Changed { path: src.clone() })?;
                    let fd = fsutil::walk_dir(cur, rel).map_err(errno("open directory", src))?;
                    let st = rustix::fs::fstat(&fd).map_err(errno("stat", src))?;
                    DirAttrs {
                        uid: st.st_uid,
                        gid: st.st_gid,
                        mode: st.st_mode,
                        xattrs: xattrs_of(&fd).map_err(io("read xattrs of", src))?,
                    }
                }
            };
            let fd = fsutil::walk_dir(&self.upper, rel).map_err(errno("open", &path))?;
            set_attrs(&fd, &attrs, &path)?;
            let got = dirmeta_id(&fd, &path, Some(id)).map_err(deploy("the new layer"))?;
            if got != *id {
                return Err(EtcError::Changed {
                    path: match source {
                        DirSource::Current(_, src) => src.clone(),
                        DirSource::Meta(_) => path,
                    },
                });
            }
            hit("sync a directory")?;
            fsutil::fsync(&fd, &self.upper_path.join(rel))?;
        }
        Ok(())
    }
}

fn set_attrs(fd: &OwnedFd, a: &DirAttrs, path: &Path) -> Result<()> {
    hit("set a directory's owner and mode")?;
    owner_mode(fd, a.uid, a.gid, a.mode, path)?;
    hit("set a directory's xattrs")?;
    for (k, v) in &a.xattrs {
        rustix::fs::fsetxattr(fd, k.as_slice(), v, XattrFlags::empty())
            .map_err(errno("set xattrs on", path))?;
    }
    Ok(())
}

fn uid(u: u32, path: &Path) -> Result<rustix::fs::Uid> {
    // Rule: -1 means "unchanged" to chown(2): never an owner to copy.
    if u == u32::MAX {
        return Err(EtcError::Changed { path: path.into() });
    }
    Ok(rustix::fs::Uid::from_raw_unchecked(u))
}

fn gid(g: u32, path: &Path) -> Result<rustix::fs::Gid> {
    if g == u32::MAX {
        return Err(EtcError::Changed { path: path.into() });
    }
    Ok(rustix::fs::Gid::from_raw_unchecked(g))
}

/// Owner, then mode (a setuid bit survives only if set after chown).
fn owner_mode(fd: impl AsFd, u: u32, g: u32, mode: u32, path: &Path) -> Result<()> {
    rustix::fs::fchown(&fd, Some(uid(u, path)?), Some(gid(g, path)?))
        .map_err(errno("chown", path))?;
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode & 0o7777)).map_err(errno("chmod", path))
}

fn mkdir(dir: impl AsFd, name: &str, path: &Path) -> Result<()> {
    rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700))
        .map_err(errno("create directory", path))
}

/// A new file `name` in `dir` holding `bytes`, fsynced.
fn write_file(dir: impl AsFd, name: &str, bytes: &[u8], path: &Path) -> Result<()> {
    hit("write the merge record")?;
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )
    .map_err(errno("create", path))?;
    let mut f = std::fs::File::from(fd);
    f.write_all(bytes).map_err(io("write", path))?;
    hit("sync the merge record")?;
    f.sync_all().map_err(io("sync", path))
}
