//! The vendor's update repository on disk: an OSTree **archive** repo (so the
//! real `ostree` CLI and any static web server can use it as is) plus an
//! `atomup/` directory for release metadata. Every file is written to `tmp/`
//! first and renamed into place, so a crash never leaves a half-written
//! object under its final name, and existing objects are never rewritten
//! (content addressing makes them immutable).

use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use atomup_ostree::object::{FilezHeader, ObjectId, ObjectType};

/// What `ostree init --mode=archive` writes; `archive-z2` is the on-disk name.
const CONFIG: &str = "[core]\nrepo_version=1\nmode=archive-z2\n";

/// Largest metadata object we load (OSTree's own limit).
pub const MAX_METADATA: u64 = 10 << 20;

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not an atomup/OSTree archive repository (config must say mode=archive-z2)")]
    NotArchive { path: PathBuf },
    #[error("{path} already holds a repository")]
    Exists { path: PathBuf },
    #[error("invalid ref name {name:?} (letters, digits, `-._`, `/`-separated, no empty or dot-leading parts)")]
    BadRef { name: String },
    #[error("ref or commit {rev:?} not found in the repository")]
    UnknownRev { rev: String },
    #[error("object {id} ({what}) is corrupt or unreadable")]
    BadObject {
        what: &'static str,
        id: ObjectId,
        #[source]
        source: Box<atomup_ostree::Error>,
    },
    #[error("object {id} ({what}) does not hash to its name")]
    Checksum { what: &'static str, id: ObjectId },
    #[error("metadata object {id} exceeds {MAX_METADATA} bytes")]
    TooLarge { id: ObjectId },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> RepoError + 'a {
    move |source| RepoError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// An open archive repository.
#[derive(Debug)]
pub struct Repo {
    root: PathBuf,
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

impl Repo {
    /// Creates the repository layout; refuses to touch an existing repo.
    pub fn init(root: &Path) -> Result<Repo, RepoError> {
        if root.join("config").exists() {
            return Err(RepoError::Exists {
                path: root.to_path_buf(),
            });
        }
        for dir in [
            "objects",
            "refs/heads",
            "refs/mirrors",
            "refs/remotes",
            "deltas",
            "tmp/cache",
            "state",
            "extensions",
            "atomup",
        ] {
            let p = root.join(dir);
            fs::create_dir_all(&p).map_err(io("creating", &p))?;
        }
        let repo = Repo {
            root: root.to_path_buf(),
        };
        // Config last: its presence is what marks a finished repository.
        repo.write_atomic(Path::new("config"), CONFIG.as_bytes())?;
        Ok(repo)
    }

    pub fn open(root: &Path) -> Result<Repo, RepoError> {
        let cfg_path = root.join("config");
        let cfg = fs::read_to_string(&cfg_path)
            .map_err(io("reading the repository config", &cfg_path))?;
        let archive = cfg.lines().any(|l| {
            let l: String = l.chars().filter(|c| !c.is_whitespace()).collect();
            l == "mode=archive-z2" || l == "mode=archive"
        });
        if !archive {
            return Err(RepoError::NotArchive {
                path: root.to_path_buf(),
            });
        }
        Ok(Repo {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.root.join(rel)
    }

    /// A fresh temporary file path inside the repo (same filesystem as every
    /// final location, so `rename` is atomic).
    pub fn tmp_path(&self) -> PathBuf {
        let n = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
        self.root
            .join("tmp")
            .join(format!("atomup-{}-{n}.tmp", std::process::id()))
    }

    /// Moves a finished temporary file to `rel` (creating parent directories).
    pub fn install(&self, tmp: &Path, rel: &Path) -> Result<(), RepoError> {
        let dest = self.root.join(rel);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(io("creating", parent))?;
        }
        fs::rename(tmp, &dest).map_err(io("renaming into place", &dest))
    }

    /// Writes `data` to `rel` with `atomup_fsio::replace` (temp file in the
    /// same directory, fsync, rename, fsync the directory): after a power cut
    /// `rel` holds its old content or all of `data`, and once this returns
    /// the new content is durable, so a ref or release written after the
    /// objects it names never outlives them.
    pub fn write_atomic(&self, rel: &Path, data: &[u8]) -> Result<(), RepoError> {
        let dest = self.root.join(rel);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(io("creating", parent))?;
        }
        atomup_fsio::replace(&dest, data).map_err(io("replacing", &dest))
    }

    pub fn object_rel(id: &ObjectId, ty: ObjectType) -> PathBuf {
        let mut p = PathBuf::from(id.object_path(ty));
        if ty == ObjectType::File {
            // Archive repos store content as `.filez` (header + raw deflate).
            p.set_extension("filez");
        }
        p
    }

    pub fn has_object(&self, id: &ObjectId, ty: ObjectType) -> bool {
        self.root.join(Self::object_rel(id, ty)).exists()
    }

    /// Stores a metadata object unless it exists; returns whether it was new.
    pub fn write_meta(&self, ty: ObjectType, data: &[u8]) -> Result<(ObjectId, bool), RepoError> {
        let id = ObjectId::of(data);
        if self.has_object(&id, ty) {
            return Ok((id, false));
        }
        self.write_atomic(&Self::object_rel(&id, ty), data)?;
        Ok((id, true))
    }

    /// Loads a metadata object and checks that it hashes to its name.
    pub fn read_meta(&self, id: &ObjectId, ty: ObjectType) -> Result<Vec<u8>, RepoError> {
        let path = self.root.join(Self::object_rel(id, ty));
        let f = File::open(&path).map_err(io("opening object", &path))?;
        let mut data = Vec::new();
        f.take(MAX_METADATA + 1)
            .read_to_end(&mut data)
            .map_err(io("reading object", &path))?;
        if data.len() as u64 > MAX_METADATA {
            return Err(RepoError::TooLarge { id: *id });
        }
        if ObjectId::of(&data) != *id {
            return Err(RepoError::Checksum {
                what: ty.extension(),
                id: *id,
            });
        }
        Ok(data)
    }

    /// Detached commit metadata (`.commitmeta`), if present.
    pub fn read_commitmeta(&self, id: &ObjectId) -> Result<Option<Vec<u8>>, RepoError> {
        let path = self.root.join(Self::object_rel(id, ObjectType::CommitMeta));
        match fs::read(&path) {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(RepoError::Io {
                what: "reading",
                path,
                source: e,
            }),
        }
    }

    /// The raw `.filez` file of a content object.
    pub fn read_filez(&self, id: &ObjectId) -> Result<Vec<u8>, RepoError> {
        let path = self.root.join(Self::object_rel(id, ObjectType::File));
        fs::read(&path).map_err(io("reading content object", &path))
    }

    /// Size of an object's file in the repository (what a fallback download costs).
    pub fn object_size(&self, id: &ObjectId, ty: ObjectType) -> Result<u64, RepoError> {
        let path = self.root.join(Self::object_rel(id, ty));
        Ok(fs::metadata(&path)
            .map_err(io("inspecting object", &path))?
            .len())
    }

    /// Reads a ref (`refs/heads/NAME`); `None` if it does not exist.
    pub fn read_ref(&self, name: &str) -> Result<Option<ObjectId>, RepoError> {
        validate_ref(name)?;
        let path = self.root.join("refs/heads").join(name);
        match fs::read_to_string(&path) {
            Ok(s) => ObjectId::from_hex(s.trim())
                .map(Some)
                .map_err(|_| RepoError::UnknownRev {
                    rev: name.to_owned(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(RepoError::Io {
                what: "reading ref",
                path,
                source: e,
            }),
        }
    }

    pub fn write_ref(&self, name: &str, id: &ObjectId) -> Result<(), RepoError> {
        validate_ref(name)?;
        let rel = Path::new("refs/heads").join(name);
        self.write_atomic(&rel, format!("{id}\n").as_bytes())
    }

    /// Resolves a 64-hex commit id or a ref name to a commit present here.
    pub fn resolve(&self, rev: &str) -> Result<ObjectId, RepoError> {
        let id = if rev.len() == 64 && rev.bytes().all(|b| b.is_ascii_hexdigit()) {
            ObjectId::from_hex(rev).map_err(|_| RepoError::UnknownRev {
                rev: rev.to_owned(),
            })?
        } else {
            self.read_ref(rev)?.ok_or_else(|| RepoError::UnknownRev {
                rev: rev.to_owned(),
            })?
        };
        if !self.has_object(&id, ObjectType::Commit) {
            return Err(RepoError::UnknownRev {
                rev: rev.to_owned(),
            });
        }
        Ok(id)
    }

    /// Loads a content object: its header and (for regular files) its data.
    pub fn read_content(&self, id: &ObjectId) -> Result<Content, RepoError> {
        let raw = self.read_filez(id)?;
        let bad = |source: atomup_ostree::Error| RepoError::BadObject {
            what: "content",
            id: *id,
            source: Box::new(source),
        };
        let h = FilezHeader::parse(&raw).map_err(bad)?;
        let mut data = Vec::new();
        if !h.header.is_symlink() {
            let compressed = raw.get(h.data_offset..).unwrap_or(&[]);
            let mut dec =
                flate2::read::DeflateDecoder::new(compressed).take(h.size.saturating_add(1));
            dec.read_to_end(&mut data)
                .map_err(io("inflating content object", &self.root))?;
        }
        if data.len() as u64 != if h.header.is_symlink() { 0 } else { h.size } {
            return Err(RepoError::Checksum {
                what: "content (size)",
                id: *id,
            });
        }
        let mut hasher = h.header.content_hasher();
        sha2::Digest::update(&mut hasher, &data);
        if atomup_ostree::object::finish_id(hasher) != *id {
            return Err(RepoError::Checksum {
                what: "content",
                id: *id,
            });
        }
        Ok(Content { data })
    }

    /// Only the header and data size of a content object (no inflation).
    pub fn content_header(&self, id: &ObjectId) -> Result<(OwnedHeader, u64), RepoError> {
        let path = self.root.join(Self::object_rel(id, ObjectType::File));
        let mut f = File::open(&path).map_err(io("opening content object", &path))?;
        let mut head = vec![0u8; 8];
        f.read_exact(&mut head)
            .map_err(io("reading content object", &path))?;
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        if len as u64 > MAX_METADATA {
            return Err(RepoError::TooLarge { id: *id });
        }
        head.resize(8 + len, 0);
        f.read_exact(&mut head[8..])
            .map_err(io("reading content object", &path))?;
        let h = FilezHeader::parse(&head).map_err(|source| RepoError::BadObject {
            what: "content",
            id: *id,
            source: Box::new(source),
        })?;
        Ok((OwnedHeader::from(&h.header), h.size))
    }
}

/// A content object's header with owned strings.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct OwnedHeader {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub symlink: String,
    /// Serialized `a(ayay)`.
    pub xattrs: Vec<u8>,
}

impl From<&atomup_ostree::object::FileHeader<'_>> for OwnedHeader {
    fn from(h: &atomup_ostree::object::FileHeader<'_>) -> Self {
        OwnedHeader {
            uid: h.uid,
            gid: h.gid,
            mode: h.mode,
            symlink: h.symlink.to_owned(),
            xattrs: h.xattrs.bytes().to_vec(),
        }
    }
}

impl OwnedHeader {
    pub fn is_symlink(&self) -> bool {
        self.mode & atomup_ostree::object::S_IFMT == atomup_ostree::object::S_IFLNK
    }
}

/// A loaded content object (its data; symlinks have none).
#[derive(Debug)]
pub struct Content {
    pub data: Vec<u8>,
}

/// OSTree's ref grammar: `[\w\d][-._\w\d]*` parts joined by `/`.
pub fn validate_ref(name: &str) -> Result<(), RepoError> {
    let ok = !name.is_empty()
        && name.split('/').all(|part| {
            let mut chars = part.chars();
            matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        });
    if ok {
        Ok(())
    } else {
        Err(RepoError::BadRef {
            name: name.to_owned(),
        })
    }
}

/// `atomup-publish init --repo DIR`.
pub fn run_init(args: &mut lexopt::Parser) -> Result<(), Box<dyn std::error::Error>> {
    use lexopt::prelude::*;
    let mut repo = None;
    while let Some(arg) = args.next()? {
        match arg {
            Long("repo") => repo = Some(PathBuf::from(args.value()?)),
            other => return Err(other.unexpected().into()),
        }
    }
    let root = repo.ok_or("init needs --repo DIR")?;
    Repo::init(&root)?;
    eprintln!("initialized archive repository {}", root.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ref names that could escape `refs/heads/` or that OSTree refuses are rejected.
    #[test]
    fn ref_names() {
        for good in ["os/main", "a", "board-1/stable_2.0"] {
            assert!(validate_ref(good).is_ok(), "{good}");
        }
        for bad in [
            "", "/a", "a/", "a//b", "../x", "a/../b", ".x", "-x", "a b", "a/.b",
        ] {
            assert!(validate_ref(bad).is_err(), "{bad}");
        }
    }
}
