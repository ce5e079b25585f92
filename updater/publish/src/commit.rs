//! `atomup-publish commit`: turns a root tree (a directory or a tarball) into
//! OSTree objects in the archive repo, byte for byte as `ostree commit` would
//! write them, so commit ids are reproducible with upstream tools and a
//! vendor can cross-check a release with `ostree` alone. Tarballs matter
//! because a non-root build user cannot create a root-owned tree on disk, but
//! a tarball carries owners, modes, symlinks and xattrs in its headers.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use atomup_ostree::encode::{commit_metadata, filez_header};
use atomup_ostree::object::{
    encode_xattrs, finish_id, Commit, DirEntry, DirMeta, DirTree, FileEntry, FileHeader, ObjectId,
    ObjectType, SafeName, Xattrs, S_IFDIR, S_IFLNK, S_IFREG,
};
use sha2::Digest;

use crate::progress::{human, Progress};
use crate::repo::{Repo, RepoError};

/// What to do with device nodes, FIFOs and sockets, which OSTree content
/// objects cannot represent (the header's rdev is always 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Devices {
    /// Fail naming the file, as `ostree commit` does.
    Refuse,
    /// Leave them out and count them in the summary.
    Skip,
}

#[derive(Clone, Debug)]
pub struct Options {
    pub branch: String,
    pub subject: String,
    pub body: String,
    pub timestamp: u64,
    /// Force these owners on every entry (`--owner-uid/--owner-gid`).
    pub owner_uid: Option<u32>,
    pub owner_gid: Option<u32>,
    pub devices: Devices,
    pub progress: bool,
}

pub enum Source<'a> {
    Tree(&'a Path),
    Tarball(&'a Path),
}

#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: device, FIFO or socket files cannot be stored in OSTree (use --no-devices to leave them out)")]
    Device { path: String },
    #[error("{path}: file name is not valid UTF-8 or not a valid tree entry name")]
    BadName { path: String },
    #[error("{path}: tarball entry escapes the tree root or names the root as a file")]
    UnsafePath { path: String },
    #[error("{path}: unsupported tarball entry type {kind}")]
    TarType { path: String, kind: u8 },
    #[error("{path}: hard link to {target}, which is not an earlier regular file in the tarball")]
    HardLink { path: String, target: String },
    #[error("{path}: owner/group id out of range")]
    Owner { path: String },
    #[error("{path}: file changed size while being read")]
    Changed { path: String },
    #[error("symlink {path} has an empty or over-long target")]
    Symlink { path: String },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CommitError + 'a {
    move |source| CommitError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// What a commit run did.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub id: Option<ObjectId>,
    pub parent: Option<ObjectId>,
    pub files: u64,
    pub symlinks: u64,
    pub dirs: u64,
    pub bytes_in: u64,
    pub new_objects: u64,
    pub reused_objects: u64,
    pub bytes_written: u64,
    pub skipped_devices: u64,
}

#[derive(Clone, Debug, Default)]
struct DirInfo {
    uid: u32,
    gid: u32,
    mode: u32,
    xattrs: Vec<u8>,
}

#[derive(Debug, Default)]
struct MDir {
    meta: DirInfo,
    files: BTreeMap<String, ObjectId>,
    dirs: BTreeMap<String, MDir>,
}

struct Writer<'r> {
    repo: &'r Repo,
    opts: &'r Options,
    summary: Summary,
    progress: Progress,
}

impl Writer<'_> {
    fn owners(&self, uid: u64, gid: u64, path: &str) -> Result<(u32, u32), CommitError> {
        let bad = || CommitError::Owner {
            path: path.to_owned(),
        };
        let uid = match self.opts.owner_uid {
            Some(u) => u,
            None => u32::try_from(uid).map_err(|_| bad())?,
        };
        let gid = match self.opts.owner_gid {
            Some(g) => g,
            None => u32::try_from(gid).map_err(|_| bad())?,
        };
        Ok((uid, gid))
    }

    /// Streams one regular file's data through the content hash and the
    /// deflate compressor into a temp file; installs it unless the object
    /// already exists (dedupe: existing objects are never rewritten).
    fn write_file_stream(
        &mut self,
        header: &FileHeader<'_>,
        size: u64,
        mut data: impl Read,
        path: &str,
    ) -> Result<ObjectId, CommitError> {
        let tmp = self.repo.tmp_path();
        let result = (|| {
            let file = File::create(&tmp).map_err(io_err("creating", &tmp))?;
            let mut out = io::BufWriter::new(file);
            out.write_all(&filez_header(size, header))
                .map_err(io_err("writing", &tmp))?;
            let mut hasher = header.content_hasher();
            let mut enc = flate2::write::DeflateEncoder::new(out, flate2::Compression::new(6));
            let mut buf = vec![0u8; 128 * 1024];
            let mut total = 0u64;
            loop {
                let n = data
                    .read(&mut buf)
                    .map_err(io_err("reading", Path::new(path)))?;
                if n == 0 {
                    break;
                }
                total += n as u64;
                hasher.update(&buf[..n]);
                enc.write_all(&buf[..n]).map_err(io_err("writing", &tmp))?;
            }
            if total != size {
                return Err(CommitError::Changed {
                    path: path.to_owned(),
                });
            }
            let out = enc.finish().map_err(io_err("writing", &tmp))?;
            let file = out.into_inner().map_err(|e| CommitError::Io {
                what: "writing",
                path: tmp.clone(),
                source: e.into_error(),
            })?;
            let written = file.metadata().map(|m| m.len()).unwrap_or(0);
            Ok((finish_id(hasher), written))
        })();
        let (id, written) = match result {
            Ok(v) => v,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        };
        if self.repo.has_object(&id, ObjectType::File) {
            let _ = fs::remove_file(&tmp);
            self.summary.reused_objects += 1;
        } else {
            self.repo
                .install(&tmp, &Repo::object_rel(&id, ObjectType::File))?;
            self.summary.new_objects += 1;
            self.summary.bytes_written += written;
        }
        self.summary.files += 1;
        self.summary.bytes_in += size;
        self.progress.tick(size);
        Ok(id)
    }

    fn write_symlink(
        &mut self,
        header: &FileHeader<'_>,
        path: &str,
    ) -> Result<ObjectId, CommitError> {
        if header.symlink.is_empty() || header.symlink.len() > atomup_ostree::object::MAX_SYMLINK {
            return Err(CommitError::Symlink {
                path: path.to_owned(),
            });
        }
        let id = finish_id(header.content_hasher());
        let rel = Repo::object_rel(&id, ObjectType::File);
        if self.repo.has_object(&id, ObjectType::File) {
            self.summary.reused_objects += 1;
        } else {
            let bytes = filez_header(0, header);
            self.repo.write_atomic(&rel, &bytes)?;
            self.summary.new_objects += 1;
            self.summary.bytes_written += bytes.len() as u64;
        }
        self.summary.symlinks += 1;
        self.progress.tick(0);
        Ok(id)
    }

    /// Writes the dirtree/dirmeta objects of `dir` bottom-up.
    fn write_tree(&mut self, dir: &MDir) -> Result<(ObjectId, ObjectId), CommitError> {
        let mut sub = Vec::with_capacity(dir.dirs.len());
        for (name, d) in &dir.dirs {
            let (t, m) = self.write_tree(d)?;
            sub.push((name.as_str(), t, m));
        }
        let bad = |n: &str| CommitError::BadName { path: n.to_owned() };
        let mut tree = DirTree::default();
        for (name, id) in &dir.files {
            tree.files.push(FileEntry {
                name: SafeName::new(name).map_err(|_| bad(name))?,
                id: *id,
            });
        }
        for (name, t, m) in sub {
            tree.dirs.push(DirEntry {
                name: SafeName::new(name).map_err(|_| bad(name))?,
                tree: t,
                meta: m,
            });
        }
        let xattrs = Xattrs::parse(&dir.meta.xattrs).map_err(|_| bad("<xattrs>"))?;
        let meta = DirMeta {
            uid: dir.meta.uid,
            gid: dir.meta.gid,
            mode: dir.meta.mode,
            xattrs,
        };
        let (t, tnew) = self.repo.write_meta(ObjectType::DirTree, &tree.encode())?;
        let (m, mnew) = self.repo.write_meta(ObjectType::DirMeta, &meta.encode())?;
        for new in [tnew, mnew] {
            if new {
                self.summary.new_objects += 1;
            } else {
                self.summary.reused_objects += 1;
            }
        }
        self.summary.dirs += 1;
        Ok((t, m))
    }
}

/// Reads all extended attributes of `path` (without following symlinks),
/// serialized as `ostree commit` hashes them: sorted by name (libglnx
/// sorts the `listxattr` names before reading them, in 2022.7 as in
/// 2025.x) and without attributes whose value is empty (libglnx skips a
/// zero-length value), so a tree with such an attribute gets upstream's id.
fn read_xattrs(path: &Path) -> Result<Vec<u8>, CommitError> {
    let err = io_err("reading xattrs of", path);
    let size = match rustix::fs::llistxattr_query(path) {
        Ok(n) => n,
        Err(e) if e == rustix::io::Errno::NOTSUP || e == rustix::io::Errno::NOSYS => {
            return Ok(Vec::new())
        }
        Err(e) => return Err(err(e.into())),
    };
    if size == 0 {
        return Ok(Vec::new());
    }
    let mut names = vec![0u8; size];
    let n = rustix::fs::llistxattr(path, &mut names[..]).map_err(|e| err(e.into()))?;
    names.truncate(n);
    let mut attrs = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name_os = std::ffi::OsStr::from_bytes(name);
        let vlen = rustix::fs::lgetxattr_query(path, name_os)
            .map_err(|e| io_err("reading xattrs of", path)(e.into()))?;
        let mut value = vec![0u8; vlen];
        let got = rustix::fs::lgetxattr(path, name_os, &mut value[..])
            .map_err(|e| io_err("reading xattrs of", path)(e.into()))?;
        value.truncate(got);
        if !value.is_empty() {
            attrs.push((name.to_vec(), value));
        }
    }
    Ok(encode_xattrs(attrs))
}

fn utf8_name(name: &std::ffi::OsStr, parent: &str) -> Result<String, CommitError> {
    let s = name.to_str().ok_or_else(|| CommitError::BadName {
        path: format!("{parent}/{}", name.to_string_lossy()),
    })?;
    SafeName::new(s).map_err(|_| CommitError::BadName {
        path: format!("{parent}/{s}"),
    })?;
    Ok(s.to_owned())
}

/// Walks a directory tree: files first become content objects, then the tree
/// is written bottom-up.
fn scan_dir(
    w: &mut Writer<'_>,
    path: &Path,
    rel: &str,
    hardlinks: &mut HashMap<(u64, u64), ObjectId>,
) -> Result<MDir, CommitError> {
    let md = fs::symlink_metadata(path).map_err(io_err("inspecting", path))?;
    let (uid, gid) = w.owners(u64::from(md.uid()), u64::from(md.gid()), rel)?;
    let mut dir = MDir {
        meta: DirInfo {
            uid,
            gid,
            mode: md.mode(),
            xattrs: read_xattrs(path)?,
        },
        ..Default::default()
    };
    let mut entries: Vec<_> = fs::read_dir(path)
        .map_err(io_err("listing", path))?
        .collect::<Result<_, _>>()
        .map_err(io_err("listing", path))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = utf8_name(&entry.file_name(), rel)?;
        let child = entry.path();
        let child_rel = format!("{rel}/{name}");
        let md = fs::symlink_metadata(&child).map_err(io_err("inspecting", &child))?;
        let ft = md.file_type();
        if ft.is_dir() {
            let sub = scan_dir(w, &child, &child_rel, hardlinks)?;
            dir.dirs.insert(name, sub);
        } else if ft.is_file() || ft.is_symlink() {
            let (uid, gid) = w.owners(u64::from(md.uid()), u64::from(md.gid()), &child_rel)?;
            let xattrs = read_xattrs(&child)?;
            let x = Xattrs::parse(&xattrs).map_err(|_| CommitError::BadName {
                path: child_rel.clone(),
            })?;
            let id = if ft.is_symlink() {
                let target = fs::read_link(&child).map_err(io_err("reading link", &child))?;
                let target = target.to_str().ok_or_else(|| CommitError::Symlink {
                    path: child_rel.clone(),
                })?;
                let h = FileHeader {
                    uid,
                    gid,
                    mode: md.mode(),
                    symlink: target,
                    xattrs: x,
                };
                w.write_symlink(&h, &child_rel)?
            } else {
                let key = (md.dev(), md.ino());
                if let Some(id) = (md.nlink() > 1).then(|| hardlinks.get(&key)).flatten() {
                    w.summary.files += 1;
                    w.summary.reused_objects += 1;
                    *id
                } else {
                    let h = FileHeader {
                        uid,
                        gid,
                        mode: md.mode(),
                        symlink: "",
                        xattrs: x,
                    };
                    let id = hash_then_write(w, &h, &child, md.len(), &child_rel)?;
                    if md.nlink() > 1 {
                        hardlinks.insert(key, id);
                    }
                    id
                }
            };
            dir.files.insert(name, id);
        } else if ft.is_block_device() || ft.is_char_device() || ft.is_fifo() || ft.is_socket() {
            match w.opts.devices {
                Devices::Refuse => return Err(CommitError::Device { path: child_rel }),
                Devices::Skip => w.summary.skipped_devices += 1,
            }
        }
    }
    Ok(dir)
}

/// For files on disk: hash first and compress only if the object is new, so
/// re-committing a mostly unchanged tree costs reads, not compression.
fn hash_then_write(
    w: &mut Writer<'_>,
    h: &FileHeader<'_>,
    path: &Path,
    size: u64,
    rel: &str,
) -> Result<ObjectId, CommitError> {
    let mut f = File::open(path).map_err(io_err("opening", path))?;
    let mut hasher = h.content_hasher();
    let n = io::copy(&mut (&mut f).take(size + 1), &mut HashWriter(&mut hasher))
        .map_err(io_err("reading", path))?;
    if n != size {
        return Err(CommitError::Changed {
            path: rel.to_owned(),
        });
    }
    let id = finish_id(hasher);
    if w.repo.has_object(&id, ObjectType::File) {
        w.summary.reused_objects += 1;
        w.summary.files += 1;
        w.summary.bytes_in += size;
        w.progress.tick(size);
        return Ok(id);
    }
    let f = File::open(path).map_err(io_err("opening", path))?;
    let id2 = w.write_file_stream(h, size, BufReader::new(f), rel)?;
    if id2 != id {
        return Err(CommitError::Changed {
            path: rel.to_owned(),
        });
    }
    Ok(id)
}

struct HashWriter<'a>(&'a mut sha2::Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Opens a tarball, transparently decompressing gzip or xz (by magic bytes).
fn open_tarball(path: &Path) -> Result<Box<dyn Read>, CommitError> {
    let mut f = BufReader::new(File::open(path).map_err(io_err("opening", path))?);
    let mut magic = [0u8; 6];
    let head = {
        use std::io::BufRead;
        let b = f.fill_buf().map_err(io_err("reading", path))?;
        let n = b.len().min(6);
        magic[..n].copy_from_slice(&b[..n]);
        n
    };
    Ok(if head >= 2 && magic[..2] == [0x1f, 0x8b] {
        Box::new(flate2::read::MultiGzDecoder::new(f))
    } else if head == 6 && magic == [0xfd, b'7', b'z', b'X', b'Z', 0] {
        Box::new(liblzma::read::XzDecoder::new_multi_decoder(f))
    } else {
        Box::new(f)
    })
}

/// Splits a tar path into safe components; `./` and empty parts vanish.
fn tar_components(raw: &[u8]) -> Result<Vec<String>, CommitError> {
    let shown = String::from_utf8_lossy(raw).into_owned();
    let mut out = Vec::new();
    for part in raw.split(|b| *b == b'/') {
        match part {
            b"" | b"." => continue,
            b".." => return Err(CommitError::UnsafePath { path: shown }),
            p => {
                let s = std::str::from_utf8(p).map_err(|_| CommitError::BadName {
                    path: shown.clone(),
                })?;
                SafeName::new(s).map_err(|_| CommitError::BadName {
                    path: shown.clone(),
                })?;
                out.push(s.to_owned());
            }
        }
    }
    Ok(out)
}

fn default_dir(w: &Writer<'_>) -> MDir {
    MDir {
        meta: DirInfo {
            uid: w.opts.owner_uid.unwrap_or(0),
            gid: w.opts.owner_gid.unwrap_or(0),
            mode: S_IFDIR | 0o755,
            xattrs: Vec::new(),
        },
        ..Default::default()
    }
}

/// The directory at `parts`, creating missing parents with default metadata
/// (root-owned 0755 unless owners are forced) and replacing files in the way.
fn dir_at<'m>(root: &'m mut MDir, parts: &[String], template: &MDir) -> &'m mut MDir {
    let mut cur = root;
    for p in parts {
        cur.files.remove(p);
        cur = cur.dirs.entry(p.clone()).or_insert_with(|| MDir {
            meta: template.meta.clone(),
            ..Default::default()
        });
    }
    cur
}

fn scan_tar(w: &mut Writer<'_>, path: &Path) -> Result<MDir, CommitError> {
    let template = default_dir(w);
    let mut root = default_dir(w);
    let mut by_path: HashMap<Vec<String>, ObjectId> = HashMap::new();
    let mut archive = tar::Archive::new(open_tarball(path)?);
    let entries = archive.entries().map_err(io_err("reading tarball", path))?;
    for entry in entries {
        let mut entry = entry.map_err(io_err("reading tarball", path))?;
        let raw_path = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw_path).into_owned();
        let parts = tar_components(&raw_path)?;
        let mut xattrs = Vec::new();
        if let Some(exts) = entry
            .pax_extensions()
            .map_err(io_err("reading tarball", path))?
        {
            for ext in exts {
                let ext = ext.map_err(io_err("reading tarball", path))?;
                // Empty values are dropped as for a directory (see read_xattrs).
                if let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                    if !ext.value_bytes().is_empty() {
                        xattrs.push((name.to_vec(), ext.value_bytes().to_vec()));
                    }
                }
            }
        }
        let xattrs = encode_xattrs(xattrs);
        let hdr = entry.header();
        let kind = hdr.entry_type();
        let perm = hdr.mode().map_err(io_err("reading tarball", path))? & 0o7777;
        let uid = hdr.uid().map_err(io_err("reading tarball", path))?;
        let gid = hdr.gid().map_err(io_err("reading tarball", path))?;
        let (uid, gid) = w.owners(uid, gid, &shown)?;
        let Some((name, parent)) = parts.split_last() else {
            // The root itself: only a directory entry makes sense.
            if kind.is_dir() {
                root.meta = DirInfo {
                    uid,
                    gid,
                    mode: S_IFDIR | perm,
                    xattrs,
                };
                continue;
            }
            return Err(CommitError::UnsafePath { path: shown });
        };
        let x = Xattrs::parse(&xattrs).map_err(|_| CommitError::BadName {
            path: shown.clone(),
        })?;
        let id = match kind {
            tar::EntryType::Directory => {
                let d = dir_at(&mut root, parent, &template);
                d.files.remove(name);
                let sub = d.dirs.entry(name.clone()).or_default();
                sub.meta = DirInfo {
                    uid,
                    gid,
                    mode: S_IFDIR | perm,
                    xattrs,
                };
                continue;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry.size();
                let h = FileHeader {
                    uid,
                    gid,
                    mode: S_IFREG | perm,
                    symlink: "",
                    xattrs: x,
                };
                w.write_file_stream(&h, size, &mut entry, &shown)?
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                let target = String::from_utf8(target).map_err(|_| CommitError::Symlink {
                    path: shown.clone(),
                })?;
                // Linux symlinks are always 0777; OSTree records the lstat mode.
                let h = FileHeader {
                    uid,
                    gid,
                    mode: S_IFLNK | 0o777,
                    symlink: &target,
                    xattrs: x,
                };
                w.write_symlink(&h, &shown)?
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                let tparts = tar_components(&target)?;
                let id = by_path
                    .get(&tparts)
                    .copied()
                    .ok_or_else(|| CommitError::HardLink {
                        path: shown.clone(),
                        target: String::from_utf8_lossy(&target).into_owned(),
                    })?;
                w.summary.files += 1;
                w.summary.reused_objects += 1;
                id
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                match w.opts.devices {
                    Devices::Refuse => return Err(CommitError::Device { path: shown }),
                    Devices::Skip => {
                        w.summary.skipped_devices += 1;
                        continue;
                    }
                }
            }
            other => {
                return Err(CommitError::TarType {
                    path: shown,
                    kind: other.as_byte(),
                })
            }
        };
        let d = dir_at(&mut root, parent, &template);
        d.dirs.remove(name);
        d.files.insert(name.clone(), id);
        by_path.insert(parts, id);
    }
    Ok(root)
}

/// Commits `source` onto `opts.branch`; the previous ref value becomes the parent.
pub fn commit(repo: &Repo, source: Source<'_>, opts: &Options) -> Result<Summary, CommitError> {
    let parent = repo.read_ref(&opts.branch)?;
    let mut w = Writer {
        repo,
        opts,
        summary: Summary::default(),
        progress: Progress::new("commit", opts.progress),
    };
    let root = match source {
        Source::Tree(dir) => {
            let md = fs::metadata(dir).map_err(io_err("inspecting", dir))?;
            if !md.is_dir() {
                return Err(CommitError::Io {
                    what: "not a directory:",
                    path: dir.to_path_buf(),
                    source: io::Error::other("not a directory"),
                });
            }
            scan_dir(&mut w, dir, "", &mut HashMap::new())?
        }
        Source::Tarball(file) => scan_tar(&mut w, file)?,
    };
    let (tree, meta) = w.write_tree(&root)?;
    let metadata = commit_metadata(&[opts.branch.as_str()]);
    let bytes = Commit {
        metadata: &metadata,
        parent,
        subject: &opts.subject,
        body: &opts.body,
        timestamp: opts.timestamp,
        root_tree: tree,
        root_meta: meta,
    }
    .encode();
    let (id, new) = repo.write_meta(ObjectType::Commit, &bytes)?;
    if new {
        w.summary.new_objects += 1;
    } else {
        w.summary.reused_objects += 1;
    }
    repo.write_ref(&opts.branch, &id)?;
    w.summary.id = Some(id);
    w.summary.parent = parent;
    Ok(w.summary)
}

impl Summary {
    pub fn line(&self, secs: f64) -> String {
        format!(
            "committed {} files, {} symlinks, {} dirs ({} of file data) in {secs:.1}s: {} new objects ({} written), {} already present{}",
            self.files,
            self.symlinks,
            self.dirs,
            human(self.bytes_in),
            self.new_objects,
            human(self.bytes_written),
            self.reused_objects,
            if self.skipped_devices > 0 { format!(", {} device files skipped", self.skipped_devices) } else { String::new() }
        )
    }
}

/// Parses `--timestamp`: seconds since the epoch, or RFC 3339
/// (`2024-01-01T00:00:00Z`, fractional seconds and `+HH:MM` offsets allowed).
pub fn parse_timestamp(s: &str) -> Option<u64> {
    if let Ok(n) = s.parse::<u64>() {
        return Some(n);
    }
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        if t.bytes().all(|c| c.is_ascii_digit()) {
            t.parse().ok()
        } else {
            None
        }
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (y, mo, d, h, mi, sec) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6
            && (rest.starts_with('+') || rest.starts_with('-'))
            && rest.as_bytes().get(3) == Some(&b':') =>
        {
            let oh: i64 = rest.get(1..3)?.parse().ok()?;
            let om: i64 = rest.get(4..6)?.parse().ok()?;
            let v = oh * 3600 + om * 60;
            if rest.starts_with('-') {
                -v
            } else {
                v
            }
        }
        _ => return None,
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let yy = if mo <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let t = days * 86_400 + h * 3600 + mi * 60 + sec - offset;
    u64::try_from(t).ok()
}

/// `atomup-publish commit ...`; prints the new commit id on stdout.
pub fn run(args: &mut lexopt::Parser) -> Result<(), Box<dyn std::error::Error>> {
    use lexopt::prelude::*;
    let (mut repo, mut tree, mut tarball, mut branch) = (None, None, None, None);
    let mut subject = String::new();
    let mut body = String::new();
    let mut timestamp = None;
    let (mut owner_uid, mut owner_gid) = (None, None);
    let mut devices = Devices::Refuse;
    let mut progress = true;
    while let Some(arg) = args.next()? {
        match arg {
            Long("repo") => repo = Some(PathBuf::from(args.value()?)),
            Long("tree") => tree = Some(PathBuf::from(args.value()?)),
            Long("tarball") => tarball = Some(PathBuf::from(args.value()?)),
            Long("branch") | Short('b') => branch = Some(args.value()?.string()?),
            Long("subject") | Short('s') => subject = args.value()?.string()?,
            Long("body") => body = args.value()?.string()?,
            Long("timestamp") => {
                let v = args.value()?.string()?;
                timestamp = Some(parse_timestamp(&v).ok_or(format!(
                    "invalid --timestamp {v:?} (RFC 3339 or unix seconds)"
                ))?);
            }
            Long("owner-uid") => owner_uid = Some(args.value()?.parse::<u32>()?),
            Long("owner-gid") => owner_gid = Some(args.value()?.parse::<u32>()?),
            Long("no-devices") => devices = Devices::Skip,
            Long("quiet") | Short('q') => progress = false,
            other => return Err(other.unexpected().into()),
        }
    }
    let repo = Repo::open(&repo.ok_or("commit needs --repo DIR")?)?;
    let branch = branch.ok_or("commit needs --branch REF")?;
    crate::repo::validate_ref(&branch)?;
    let timestamp = match timestamp {
        Some(t) => t,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    let opts = Options {
        branch,
        subject,
        body,
        timestamp,
        owner_uid,
        owner_gid,
        devices,
        progress,
    };
    let start = std::time::Instant::now();
    let summary = match (&tree, &tarball) {
        (Some(t), None) => commit(&repo, Source::Tree(t), &opts)?,
        (None, Some(t)) => commit(&repo, Source::Tarball(t), &opts)?,
        _ => return Err("commit needs exactly one of --tree DIR or --tarball FILE".into()),
    };
    eprintln!("{}", summary.line(start.elapsed().as_secs_f64()));
    if let Some(id) = summary.id {
        println!("{id}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 3339 and unix forms parse to the same instant; junk is refused.
    #[test]
    fn timestamps() {
        assert_eq!(parse_timestamp("2024-01-01T00:00:00Z"), Some(1_704_067_200));
        assert_eq!(parse_timestamp("1704067200"), Some(1_704_067_200));
        assert_eq!(
            parse_timestamp("2024-01-01T01:30:00.25+01:30"),
            Some(1_704_067_200)
        );
        assert_eq!(parse_timestamp("2000-02-29T12:00:00Z"), Some(951_825_600));
        for bad in [
            "",
            "2024-13-01T00:00:00Z",
            "2024-01-01T00:00:00",
            "2024-01-01T00:00:00+0100",
            "x024-01-01T00:00:00Z",
        ] {
            assert_eq!(parse_timestamp(bad), None, "{bad}");
        }
    }

    /// Arbitrary input (multi-byte UTF-8 at every offset included) never
    /// panics the small parsers: fuzz-style sweep over generated strings.
    #[test]
    fn parsers_never_panic() {
        let base = "2024-01-01T00:00:00.5+01:30";
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for i in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut v: Vec<char> = base.chars().collect();
            let at = (x as usize) % (v.len() + 1);
            let c = ['é', '+', ':', '.', '9', 'Z', '\u{10FFFF}', '/', '\0'][(x >> 8) as usize % 9];
            match i % 3 {
                0 => v.insert(at, c),
                1 if at < v.len() => v[at] = c,
                _ => v.truncate(at),
            }
            let s: String = v.into_iter().collect();
            let _ = parse_timestamp(&s);
            let _ = tar_components(s.as_bytes());
        }
    }

    /// Tar paths cannot climb out of the root; `./` prefixes disappear.
    #[test]
    fn tar_paths() {
        assert_eq!(tar_components(b"./usr/bin/").unwrap(), ["usr", "bin"]);
        assert!(tar_components(b"./").unwrap().is_empty());
        assert!(tar_components(b"a/../../etc").is_err());
        assert!(tar_components(b"\xff").is_err());
    }
}
