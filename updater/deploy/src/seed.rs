//! Seeding: the from-commit's tree copied out of the active root into the
//! target on a second thread while the delta's parts are still being
//! decompressed. Most of a new root is unchanged, but which entries the new
//! tree keeps is only known once the parts have delivered its dirtrees;
//! copying the old tree meanwhile keeps both cores busy instead of leaving
//! the copy for after the (single-threaded) xz decoder.
//!
//! Every entry copied is hashed back from the target against the
//! from-commit, and only verified entries are reported: reconciliation
//! (`reconcile`) keeps those whose name and checksum the new tree shares, and
//! replaces or removes the rest. Anything that goes wrong here — a file
//! edited or missing in the active root, a full target — just leaves the
//! entry out; reconciliation then writes it the careful way and reports any
//! error there. Writes follow the same rules as everywhere in this crate:
//! `*at` calls on directory fds, never following a symlink.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use atomup_ostree::object::{DirTree, ObjectType, S_IFLNK, S_IFMT, S_IFREG};
use atomup_ostree::ObjectId;
use rustix::fs::{AtFlags, Mode, OFlags, XattrFlags};
use rustix::io::Errno;

use crate::limits::{MAX_DEPTH, MAX_TREE_DIRS, MAX_TREE_ENTRIES};
use crate::meta::MetaStore;
use crate::nofollow;
use crate::readback::{ctime, HashCache, Hashed};
use crate::staging::STAGING;

/// What the seed left in one target directory.
#[derive(Default, Debug)]
pub(crate) struct SeededDir {
    /// Files and symlinks written and verified, sorted by name: (name, id, bytes).
    pub files: Vec<(String, ObjectId, u64)>,
    /// Subdirectories present as directories, sorted by name.
    pub dirs: Vec<String>,
    /// The seed created this directory and it holds exactly the entries above.
    pub exact: bool,
}

impl SeededDir {
    pub fn file(&self, name: &str) -> Option<&(String, ObjectId, u64)> {
        let i = self
            .files
            .binary_search_by(|(n, _, _)| n.as_str().cmp(name))
            .ok()?;
        self.files.get(i)
    }

    pub fn has_dir(&self, name: &str) -> bool {
        self.dirs.binary_search_by(|n| n.as_str().cmp(name)).is_ok()
    }
}

/// The seed's result: per directory (relative path, `""` for the root).
#[derive(Default, Debug)]
pub(crate) struct Seeded {
    pub dirs: HashMap<String, SeededDir>,
    pub hashed: HashCache,
}

/// One directory to seed: `name` under the parents' directories (the roots
/// themselves when `parents` is `None`).
struct Job {
    parents: Option<(Arc<OwnedFd>, Arc<OwnedFd>)>,
    name: String,
    rel: String,
    tree: ObjectId,
    depth: usize,
    exact: bool,
}

#[derive(Default)]
struct Queue {
    jobs: Vec<Job>,
    /// Jobs being worked on (they may still add more).
    busy: usize,
}

/// A shared work queue of directories: the seed thread starts on it, and
/// the parts thread joins in once the parts are done.
pub(crate) struct Seeder<'a> {
    src: &'a OwnedFd,
    src_path: &'a Path,
    dst: &'a OwnedFd,
    dst_path: &'a Path,
    /// Where the from-commit's dirtrees come from.
    meta: &'a MetaStore<'a>,
    /// Set when the apply has failed elsewhere: stop copying.
    stop: &'a AtomicBool,
    queue: Mutex<Queue>,
    more: Condvar,
    out: Mutex<Seeded>,
    /// How file data moves from source to target (see [`copy_data`]).
    copy_how: AtomicU8,
    /// The process umask (read once, before any worker starts).
    umask: u32,
    /// Entries and directories the seed may still expand (the tree limits:
    /// a from-tree sharing subtrees beyond them is not copied further;
    /// reconciliation then refuses it).
    budget: Mutex<(u64, u64)>,
}

impl<'a> Seeder<'a> {
    /// A seeder for the from-commit tree `root_tree`, copied from `src` to `dst`.
    pub fn new(
        (src, src_path): (&'a OwnedFd, &'a Path),
        (dst, dst_path): (&'a OwnedFd, &'a Path),
        meta: &'a MetaStore<'a>,
        root_tree: ObjectId,
        stop: &'a AtomicBool,
    ) -> Self {
        let root = Job {
            parents: None,
            name: String::new(),
            rel: String::new(),
            tree: root_tree,
            depth: 0,
            exact: false,
        };
        Seeder {
            src,
            src_path,
            dst,
            dst_path,
            meta,
            stop,
            queue: Mutex::new(Queue {
                jobs: vec![root],
                busy: 0,
            }),
            more: Condvar::new(),
            out: Mutex::new(Seeded::default()),
            copy_how: AtomicU8::new(COPY_FILE_RANGE),
            umask: current_umask(),
            budget: Mutex::new((MAX_TREE_ENTRIES, MAX_TREE_DIRS)),
        }
    }

    /// Seeds directories until none are left; any number of threads may
    /// call this. Never fails: what could not be seeded is simply not reported.
    pub fn work(&self) {
        let mut local = Seeded::default();
        let mut buf = vec![0u8; atomup_ostree::execute::CHUNK];
        while let Some(job) = self.next_job() {
            let mut done = Done {
                seeder: self,
                children: Vec::new(),
            };
            done.children = self.dir(&mut local, &mut buf, &job);
        }
        // Merge into whichever is larger, so the maps are not copied whole.
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        if out.dirs.len() < local.dirs.len() {
            std::mem::swap(&mut out.dirs, &mut local.dirs);
        }
        out.dirs.extend(local.dirs);
        if out.hashed.len() < local.hashed.len() {
            std::mem::swap(&mut out.hashed, &mut local.hashed);
        }
        out.hashed.extend(local.hashed);
    }

    fn next_job(&self) -> Option<Job> {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return None;
            }
            if let Some(job) = q.jobs.pop() {
                q.busy += 1;
                return Some(job);
            }
            if q.busy == 0 {
                return None;
            }
            q = self.more.wait(q).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// What all workers seeded.
    pub fn finish(self) -> Seeded {
        self.out.into_inner().unwrap_or_else(|e| e.into_inner())
    }

    /// Seeds the files of one directory, creates its subdirectories and
    /// returns them as new jobs.
    fn dir(&self, out: &mut Seeded, buf: &mut [u8], job: &Job) -> Vec<Job> {
        if job.depth > MAX_DEPTH || self.stop.load(Ordering::Relaxed) {
            return Vec::new();
        }
        let opened = match &job.parents {
            None => rustix::io::dup(self.src)
                .and_then(|s| Ok((s, rustix::io::dup(self.dst)?)))
                .map_err(std::io::Error::from),
            Some((sp, dp)) => nofollow::open_dir_at(sp.as_ref(), &job.name)
                .and_then(|s| Ok((s, nofollow::open_dir_at(dp.as_ref(), &job.name)?))),
        };
        let Ok((src, dst)) = opened else {
            return Vec::new();
        };
        let Ok(bytes) = self.meta.get(&job.tree, ObjectType::DirTree) else {
            return Vec::new();
        };
        let Ok(tree) = DirTree::parse(&bytes) else {
            return Vec::new();
        };
        {
            let mut left = self.budget.lock().unwrap_or_else(|e| e.into_inner());
            let (entries, dirs) = (
                (tree.files.len() + tree.dirs.len()) as u64,
                tree.dirs.len() as u64,
            );
            if entries > left.0 || dirs > left.1 {
                return Vec::new();
            }
            *left = (left.0 - entries, left.1 - dirs);
        }
        // Who owns a file created in a directory the seed made: its owner
        // (our fsuid, and our fsgid or the setgid parent's group, as the
        // directory got them).
        let new_owner = job
            .exact
            .then(|| rustix::fs::fstat(&dst).ok())
            .flatten()
            .map(|st| (st.st_uid, st.st_gid));
        let rel = job.rel.as_str();
        let src_dir = self.src_path.join(rel);
        let dst_dir = self.dst_path.join(rel);
        let mut seeded = SeededDir {
            exact: job.exact,
            ..SeededDir::default()
        };
        for f in &tree.files {
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            let name = f.name.as_str();
            if job.depth == 0 && name == STAGING {
                continue;
            }
            let c = nofollow::cname(name);
            // Anything but a regular file or a symlink (a FIFO, a device) is
            // refused by type without blocking and left for reconciliation.
            let copied = match nofollow::open_regular_at(&src, name) {
                Ok(file) => self.regular(out, buf, file, (&dst, new_owner), &c, &dst_dir, &f.id),
                // O_NOFOLLOW on a symlink.
                Err(e) if e.raw_os_error() == Some(Errno::LOOP.raw_os_error()) => {
                    self.symlink(&src, &dst, &c, &src_dir, &dst_dir, name, &f.id)
                }
                Err(_) => Outcome::Skipped,
            };
            match copied {
                Outcome::Done(size) => {
                    seeded.files.push((name.to_owned(), f.id, size));
                    // Crash point `apply.seed`: the N-th old entry copied
                    // and read back.
                    atomup_faults::point("apply.seed");
                }
                Outcome::Skipped => {}
                Outcome::Left => seeded.exact = false,
            }
        }
        let (src, dst) = (Arc::new(src), Arc::new(dst));
        let mut children = Vec::new();
        for d in &tree.dirs {
            let name = d.name.as_str();
            if job.depth == 0 && name == STAGING {
                continue;
            }
            let Ok(fresh) = nofollow::make_dir(&dst, &nofollow::cname(name), &dst_dir.join(name))
            else {
                // Whatever stood there may still be there.
                seeded.exact = false;
                continue;
            };
            seeded.dirs.push(name.to_owned());
            children.push(Job {
                parents: Some((src.clone(), dst.clone())),
                name: name.to_owned(),
                rel: nofollow::child_rel(rel, name),
                tree: d.tree,
                depth: job.depth + 1,
                exact: fresh,
            });
        }
        out.dirs.insert(rel.to_owned(), seeded);
        // Last pushed is taken first: keep the tree's order roughly depth-first.
        children.reverse();
        children
    }

    /// Copies one regular file and reads it back.
    #[allow(clippy::too_many_arguments)]
    fn regular(
        &self,
        out: &mut Seeded,
        buf: &mut [u8],
        src: File,
        (dst, new_owner): (&OwnedFd, Option<(u32, u32)>),
        name: &std::ffi::CStr,
        dst_dir: &Path,
        id: &ObjectId,
    ) -> Outcome {
        let Ok(s) = rustix::fs::fstat(&src) else {
            return Outcome::Skipped;
        };
        if s.st_mode & S_IFMT != S_IFREG {
            return Outcome::Skipped;
        }
        let Ok(xattrs) = nofollow::fd_xattr_list(&src) else {
            return Outcome::Skipped;
        };
        let path = dst_dir.join(name.to_string_lossy().as_ref());
        let mode = s.st_mode & 0o7777;
        let Some(file) = create(dst, name, &path, mode) else {
            return Outcome::Left;
        };
        // chown and chmod only where creation did not already get them right:
        // a file made in a directory the seed created gets that directory's
        // owner, and the mode given at creation minus the umask. (The
        // read-back below would catch any misjudgement.)
        let owned = new_owner == Some((s.st_uid, s.st_gid));
        let moded = owned && mode & self.umask == 0;
        let written = copy_data(&src, &file, s.st_size as u64, buf, &self.copy_how).is_ok()
            && (owned
                || nofollow::set_owner_mode(&file, s.st_uid, s.st_gid, s.st_mode, &path).is_ok())
            && (moded || !owned || rustix::fs::fchmod(&file, Mode::from_raw_mode(mode)).is_ok())
            && xattrs.iter().all(|(n, v)| {
                std::ffi::CString::new(n.as_slice()).is_ok_and(|c| {
                    rustix::fs::fsetxattr(&file, c.as_c_str(), v, XattrFlags::empty()).is_ok()
                })
            });
        // Read back: the copy, not the source, is what must match the from-commit.
        let back = written
            .then(|| nofollow::hash_regular_stat(&file, &path, Some(id)).ok())
            .flatten();
        match back {
            Some((actual, size, _, st)) if actual == *id => {
                out.hashed.insert(
                    (st.st_dev, st.st_ino),
                    Hashed {
                        id: actual,
                        ctime: ctime(&st),
                        size,
                    },
                );
                Outcome::Done(size)
            }
            _ => discard(dst, name),
        }
    }

    /// Copies one symlink (and its xattrs) and reads it back.
    #[allow(clippy::too_many_arguments)]
    fn symlink(
        &self,
        src: &OwnedFd,
        dst: &OwnedFd,
        name: &std::ffi::CStr,
        src_dir: &Path,
        dst_dir: &Path,
        name_str: &str,
        id: &ObjectId,
    ) -> Outcome {
        let Ok(s) = rustix::fs::statat(src, name, AtFlags::SYMLINK_NOFOLLOW) else {
            return Outcome::Skipped;
        };
        if s.st_mode & S_IFMT != S_IFLNK {
            return Outcome::Skipped;
        }
        let Ok(target) = rustix::fs::readlinkat(src, name, Vec::new()) else {
            return Outcome::Skipped;
        };
        let Ok(xattrs) = nofollow::link_xattr_list(&src_dir.join(name_str)) else {
            return Outcome::Skipped;
        };
        let path = dst_dir.join(name_str);
        let mut made = rustix::fs::symlinkat(target.as_c_str(), dst, name);
        if made == Err(Errno::EXIST) {
            if nofollow::remove_entry(dst, name, &path).is_err() {
                return Outcome::Left;
            }
            made = rustix::fs::symlinkat(target.as_c_str(), dst, name);
        }
        if made.is_err() {
            return Outcome::Left;
        }
        let owned = nofollow::owner(s.st_uid, s.st_gid).is_ok_and(|(u, g)| {
            rustix::fs::chownat(dst, name, Some(u), Some(g), AtFlags::SYMLINK_NOFOLLOW).is_ok()
        }) && xattrs.iter().all(|(n, v)| {
            std::ffi::CString::new(n.as_slice()).is_ok_and(|c| {
                rustix::fs::lsetxattr(&path, c.as_c_str(), v, XattrFlags::empty()).is_ok()
            })
        });
        match owned.then(|| nofollow::hash_symlink(dst, name, &path, Some(id)).ok()) {
            Some(Some((actual, _, _))) if actual == *id => Outcome::Done(0),
            _ => discard(dst, name),
        }
    }
}

/// The process umask. umask(2) can only be read by setting it, so it is set
/// back at once; call this before any other thread creates files.
fn current_umask() -> u32 {
    let old = rustix::process::umask(Mode::from_raw_mode(0o022));
    rustix::process::umask(old);
    old.bits()
}

/// Hands a finished job's subdirectories to the queue; on drop, so that even
/// a worker unwinding from a panic cannot leave the others waiting forever.
struct Done<'s, 'a> {
    seeder: &'s Seeder<'a>,
    children: Vec<Job>,
}

impl Drop for Done<'_, '_> {
    fn drop(&mut self) {
        let mut q = self.seeder.queue.lock().unwrap_or_else(|e| e.into_inner());
        q.jobs.append(&mut self.children);
        q.busy -= 1;
        self.seeder.more.notify_all();
    }
}

/// What became of one entry.
enum Outcome {
    /// Written and verified (bytes of data).
    Done(u64),
    /// Not written (a source-side problem).
    Skipped,
    /// Something may be left in the target that the seed did not verify.
    Left,
}

/// Removes an entry the seed wrote but could not verify.
fn discard(dst: &OwnedFd, name: &std::ffi::CStr) -> Outcome {
    match rustix::fs::unlinkat(dst, name, AtFlags::empty()) {
        Ok(()) => Outcome::Skipped,
        Err(_) => Outcome::Left,
    }
}

/// Creates `name` with `mode` (read-write, for the read-back), replacing
/// whatever is there.
fn create(dst: &OwnedFd, name: &std::ffi::CStr, path: &Path, mode: u32) -> Option<File> {
    let open = || {
        rustix::fs::openat(
            dst,
            name,
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode),
        )
    };
    match open() {
        Ok(fd) => Some(File::from(fd)),
        Err(Errno::EXIST) => {
            nofollow::remove_entry(dst, name, path).ok()?;
            open().ok().map(File::from)
        }
        Err(_) => None,
    }
}

/// How [`copy_data`] moves bytes, from best to plainest (any higher value:
/// read/write through a buffer).
const COPY_FILE_RANGE: u8 = 0;
const SENDFILE: u8 = 1;

/// Copies `len` bytes (fewer if the source is shorter) from `src` to `dst` without a detour
/// through user space where the kernel can: `copy_file_range` (same file
/// system), else `sendfile` (any two files), else read/write through `buf`.
/// `how` remembers what failed, so a file system pair is probed only once.
pub(crate) fn copy_data(
    src: &File,
    dst: &File,
    len: u64,
    buf: &mut [u8],
    how: &AtomicU8,
) -> std::io::Result<u64> {
    let mut total = 0u64;
    loop {
        let method = how.load(Ordering::Relaxed);
        let want = (len.saturating_sub(total)).clamp(1 << 16, 1 << 30) as usize;
        if total >= len {
            return Ok(total);
        }
        let moved = match method {
            COPY_FILE_RANGE => {
                rustix::fs::copy_file_range(src.as_fd(), None, dst.as_fd(), None, want)
            }
            SENDFILE => rustix::fs::sendfile(dst.as_fd(), src.as_fd(), None, want),
            _ => break,
        };
        match moved {
            Ok(0) => return Ok(total),
            Ok(n) => total += n as u64,
            // Not possible between these files: use the next method, and do
            // not ask again (only if nothing moved yet: offsets stay right).
            Err(Errno::XDEV | Errno::NOSYS | Errno::OPNOTSUPP | Errno::INVAL | Errno::BADF)
                if total == 0 =>
            {
                how.store(method + 1, Ordering::Relaxed);
            }
            Err(e) => return Err(e.into()),
        }
    }
    let (mut s, mut d) = (src, dst);
    while total < len {
        let want = ((len - total) as usize).min(buf.len());
        let n = s.read(&mut buf[..want])?;
        if n == 0 {
            break;
        }
        d.write_all(&buf[..n])?;
        total += n as u64;
    }
    Ok(total)
}
