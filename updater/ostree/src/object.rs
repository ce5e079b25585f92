//! OSTree objects and their checksums: the content-addressed vocabulary the
//! rest of the updater speaks. Parsers validate everything a writer will later
//! trust: names are [`SafeName`]s, dirtree entries are strictly sorted (which
//! is also how duplicate names are refused), checksums are [`ObjectId`]s.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::gvariant::{self as gv, Member, VarArray};

/// A sha256 object checksum.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId(pub [u8; 32]);

impl ObjectId {
    pub fn from_slice(bytes: &[u8], what: &'static str) -> Result<Self> {
        let a: [u8; 32] = bytes
            .try_into()
            .map_err(|_| Error::malformed(what, "checksum is not 32 bytes"))?;
        Ok(ObjectId(a))
    }

    pub fn of(bytes: &[u8]) -> Self {
        ObjectId(Sha256::digest(bytes).into())
    }

    pub fn from_hex(s: &str) -> Result<Self> {
        let mut out = [0u8; 32];
        crate::hex::decode(s, &mut out)
            .ok_or(Error::malformed("checksum", "expected 64 hex digits"))?;
        Ok(ObjectId(out))
    }

    pub fn to_hex(&self) -> String {
        crate::hex::encode(&self.0)
    }

    /// OSTree's "modified base64" used in delta names: standard alphabet,
    /// `/` replaced by `_`, no padding (43 characters).
    pub fn to_modified_base64(&self) -> String {
        crate::base64::encode(&self.0)
            .trim_end_matches('=')
            .replace('/', "_")
    }

    /// Loose object path inside a repo: `objects/xx/rest.<ext>`.
    pub fn object_path(&self, ty: ObjectType) -> String {
        let h = self.to_hex();
        format!("objects/{}/{}.{}", &h[..2], &h[2..], ty.extension())
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectId({})", self.to_hex())
    }
}

/// OSTree object types as numbered in delta object lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ObjectType {
    File,
    DirTree,
    DirMeta,
    Commit,
    CommitMeta,
}

impl ObjectType {
    pub fn from_u8(v: u8) -> Result<Self> {
        Ok(match v {
            1 => ObjectType::File,
            2 => ObjectType::DirTree,
            3 => ObjectType::DirMeta,
            4 => ObjectType::Commit,
            6 => ObjectType::CommitMeta,
            other => {
                return Err(Error::Unsupported {
                    what: "object type",
                    value: u64::from(other),
                })
            }
        })
    }

    pub fn is_meta(self) -> bool {
        !matches!(self, ObjectType::File)
    }

    pub fn extension(self) -> &'static str {
        match self {
            ObjectType::File => "file",
            ObjectType::DirTree => "dirtree",
            ObjectType::DirMeta => "dirmeta",
            ObjectType::Commit => "commit",
            ObjectType::CommitMeta => "commitmeta",
        }
    }
}

/// A validated tree entry name: not empty, not `.` or `..`, no `/`, no NUL.
/// Writers only ever join a `SafeName` onto a directory handle, so a tree can
/// never name a path outside its root.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SafeName<'a>(&'a str);

impl<'a> SafeName<'a> {
    pub fn new(name: &'a str) -> Result<Self> {
        // Rule: tree entry names must be a single path component (DESIGN "Trust").
        if name.is_empty()
            || name == "."
            || name == ".."
            || name.contains('/')
            || name.contains('\0')
        {
            return Err(Error::BadName { what: "dirtree" });
        }
        Ok(SafeName(name))
    }

    pub fn as_str(&self) -> &'a str {
        self.0
    }
}

impl fmt::Display for SafeName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// Extended attributes `a(ayay)` kept as validated raw bytes; names include
/// their trailing NUL as OSTree stores them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Xattrs<'a>(&'a [u8]);

impl<'a> Xattrs<'a> {
    pub const EMPTY: Xattrs<'static> = Xattrs(&[]);

    pub fn parse(data: &'a [u8]) -> Result<Self> {
        let x = Xattrs(data);
        for r in x.iter()? {
            r?;
        }
        Ok(x)
    }

    pub fn bytes(&self) -> &'a [u8] {
        self.0
    }

    /// Iterates (name without NUL, value).
    pub fn iter(&self) -> Result<impl Iterator<Item = Result<(&'a [u8], &'a [u8])>> + 'a> {
        let arr = VarArray::parse(self.0, 1, "xattrs")?;
        Ok((0..arr.len()).map(move |i| {
            let e = arr
                .get(i)
                .ok_or(Error::malformed("xattrs", "bad element"))?;
            let [name, value] = gv::tuple(e, &[Member::VAR1, Member::VAR1], "xattrs")?;
            match name.split_last() {
                Some((0, n)) if !n.is_empty() && !n.contains(&0) => Ok((n, value)),
                _ => Err(Error::malformed("xattrs", "xattr name not NUL-terminated")),
            }
        }))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Serializes xattrs (names given without NUL) sorted by name, as OSTree 2025.2+
/// hashes them.
pub fn encode_xattrs(mut attrs: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<u8> {
    attrs.sort();
    encode_xattrs_in_order(&attrs)
}

/// Serializes xattrs in the given order: OSTree before 2025.2 hashed them in
/// `listxattr` order, so a verifier must be able to reproduce that too.
pub fn encode_xattrs_in_order(attrs: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let elems: Vec<Vec<u8>> = attrs
        .iter()
        .map(|(n, v)| {
            let mut name = n.clone();
            name.push(0);
            gv::enc_tuple(&[(&name, Member::VAR1), (v, Member::VAR1)])
        })
        .collect();
    gv::enc_var_array(elems, 1)
}

/// A parsed commit `(a{sv}aya(say)sstayay)`.
#[derive(Clone, Debug)]
pub struct Commit<'a> {
    pub metadata: &'a [u8],
    pub parent: Option<ObjectId>,
    pub subject: &'a str,
    pub body: &'a str,
    pub timestamp: u64,
    pub root_tree: ObjectId,
    pub root_meta: ObjectId,
}

pub const COMMIT_MEMBERS: [Member; 8] = [
    Member::VAR8,
    Member::VAR1,
    Member::VAR1,
    Member::VAR1,
    Member::VAR1,
    Member::U64,
    Member::VAR1,
    Member::VAR1,
];

impl<'a> Commit<'a> {
    pub fn parse(data: &'a [u8]) -> Result<Self> {
        let w = "commit";
        let [metadata, parent, related, subject, body, ts, tree, meta] =
            gv::tuple(data, &COMMIT_MEMBERS, w)?;
        VarArray::parse(metadata, 8, w)?;
        VarArray::parse(related, 1, w)?;
        Ok(Commit {
            metadata,
            parent: if parent.is_empty() {
                None
            } else {
                Some(ObjectId::from_slice(parent, w)?)
            },
            subject: gv::string(subject, w)?,
            body: gv::string(body, w)?,
            timestamp: gv::be_u64(ts, w)?,
            root_tree: ObjectId::from_slice(tree, w)?,
            root_meta: ObjectId::from_slice(meta, w)?,
        })
    }
}

/// A file entry of a dirtree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileEntry<'a> {
    pub name: SafeName<'a>,
    pub id: ObjectId,
}

/// A subdirectory entry of a dirtree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirEntry<'a> {
    pub name: SafeName<'a>,
    pub tree: ObjectId,
    pub meta: ObjectId,
}

/// A parsed dirtree `(a(say)a(sayay))`.
#[derive(Clone, Debug, Default)]
pub struct DirTree<'a> {
    pub files: Vec<FileEntry<'a>>,
    pub dirs: Vec<DirEntry<'a>>,
}

impl<'a> DirTree<'a> {
    pub fn parse(data: &'a [u8]) -> Result<Self> {
        let w = "dirtree";
        let [files, dirs] = gv::tuple(data, &[Member::VAR1, Member::VAR1], w)?;
        let mut out = DirTree::default();
        for e in VarArray::parse(files, 1, w)?.iter() {
            let [name, id] = gv::tuple(e, &[Member::VAR1, Member::VAR1], w)?;
            let name = SafeName::new(gv::string(name, w)?)?;
            // Rule: strictly sorted entries, so a name cannot appear twice.
            if out
                .files
                .last()
                .is_some_and(|p: &FileEntry| p.name.as_str().as_bytes() >= name.as_str().as_bytes())
            {
                return Err(Error::NotSorted {
                    what: "dirtree files",
                });
            }
            out.files.push(FileEntry {
                name,
                id: ObjectId::from_slice(id, w)?,
            });
        }
        for e in VarArray::parse(dirs, 1, w)?.iter() {
            let [name, tree, meta] = gv::tuple(e, &[Member::VAR1, Member::VAR1, Member::VAR1], w)?;
            let name = SafeName::new(gv::string(name, w)?)?;
            if out
                .dirs
                .last()
                .is_some_and(|p: &DirEntry| p.name.as_str().as_bytes() >= name.as_str().as_bytes())
            {
                return Err(Error::NotSorted {
                    what: "dirtree dirs",
                });
            }
            out.dirs.push(DirEntry {
                name,
                tree: ObjectId::from_slice(tree, w)?,
                meta: ObjectId::from_slice(meta, w)?,
            });
        }
        // Rule: a name is either a file or a directory, never both (otherwise a
        // symlink could be written and then descended into).
        let (mut i, mut j) = (0, 0);
        while i < out.files.len() && j < out.dirs.len() {
            match out.files[i]
                .name
                .as_str()
                .as_bytes()
                .cmp(out.dirs[j].name.as_str().as_bytes())
            {
                std::cmp::Ordering::Less => i += 1,
                std::cmp::Ordering::Greater => j += 1,
                std::cmp::Ordering::Equal => {
                    return Err(Error::NotSorted {
                        what: "dirtree (file and dir share a name)",
                    })
                }
            }
        }
        Ok(out)
    }

    /// The file entry called `name`, by binary search (entries are sorted,
    /// as `parse` checks and `encode` requires).
    pub fn file(&self, name: &[u8]) -> Option<&FileEntry<'a>> {
        let i = self
            .files
            .binary_search_by(|f| f.name.as_str().as_bytes().cmp(name))
            .ok()?;
        self.files.get(i)
    }

    /// The subdirectory entry called `name` (see [`DirTree::file`]).
    pub fn dir(&self, name: &[u8]) -> Option<&DirEntry<'a>> {
        let i = self
            .dirs
            .binary_search_by(|d| d.name.as_str().as_bytes().cmp(name))
            .ok()?;
        self.dirs.get(i)
    }

    /// Serializes a dirtree; entries must already be sorted.
    pub fn encode(&self) -> Vec<u8> {
        let files: Vec<Vec<u8>> = self
            .files
            .iter()
            .map(|f| {
                gv::enc_tuple(&[
                    (&gv::enc_str(f.name.as_str()), Member::VAR1),
                    (&f.id.0, Member::VAR1),
                ])
            })
            .collect();
        let dirs: Vec<Vec<u8>> = self
            .dirs
            .iter()
            .map(|d| {
                gv::enc_tuple(&[
                    (&gv::enc_str(d.name.as_str()), Member::VAR1),
                    (&d.tree.0, Member::VAR1),
                    (&d.meta.0, Member::VAR1),
                ])
            })
            .collect();
        let f = gv::enc_var_array(files, 1);
        let d = gv::enc_var_array(dirs, 1);
        gv::enc_tuple(&[(&f, Member::VAR1), (&d, Member::VAR1)])
    }
}

/// A parsed dirmeta `(uuua(ayay))`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirMeta<'a> {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub xattrs: Xattrs<'a>,
}

impl<'a> DirMeta<'a> {
    pub fn parse(data: &'a [u8]) -> Result<Self> {
        let w = "dirmeta";
        let [uid, gid, mode, x] = gv::tuple(
            data,
            &[Member::U32, Member::U32, Member::U32, Member::VAR1],
            w,
        )?;
        let mode = gv::be_u32(mode, w)?;
        if mode & S_IFMT != S_IFDIR {
            return Err(Error::malformed(w, "mode is not a directory"));
        }
        Ok(DirMeta {
            uid: gv::be_u32(uid, w)?,
            gid: gv::be_u32(gid, w)?,
            mode,
            xattrs: Xattrs::parse(x)?,
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        gv::enc_tuple(&[
            (&self.uid.to_be_bytes(), Member::U32),
            (&self.gid.to_be_bytes(), Member::U32),
            (&self.mode.to_be_bytes(), Member::U32),
            (self.xattrs.bytes(), Member::VAR1),
        ])
    }
}

pub const S_IFMT: u32 = 0o170000;
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFLNK: u32 = 0o120000;

/// Longest symlink target we accept (Linux PATH_MAX).
pub const MAX_SYMLINK: usize = 4096;

/// A content object's header `(uuuusa(ayay))`: what a file is apart from its
/// data. Only regular files and symlinks exist in OSTree trees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileHeader<'a> {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub symlink: &'a str,
    pub xattrs: Xattrs<'a>,
}

impl<'a> FileHeader<'a> {
    pub fn parse(data: &'a [u8]) -> Result<Self> {
        let w = "file header";
        let [uid, gid, mode, rdev, target, x] = gv::tuple(
            data,
            &[
                Member::U32,
                Member::U32,
                Member::U32,
                Member::U32,
                Member::VAR1,
                Member::VAR1,
            ],
            w,
        )?;
        let h = FileHeader {
            uid: gv::be_u32(uid, w)?,
            gid: gv::be_u32(gid, w)?,
            mode: gv::be_u32(mode, w)?,
            symlink: gv::string(target, w)?,
            xattrs: Xattrs::parse(x)?,
        };
        if gv::be_u32(rdev, w)? != 0 {
            return Err(Error::malformed(w, "device files are not allowed"));
        }
        h.validate()?;
        Ok(h)
    }

    /// Only regular files and symlinks with a sane target are content objects.
    pub fn validate(&self) -> Result<()> {
        let w = "file header";
        match self.mode & S_IFMT {
            S_IFREG if self.symlink.is_empty() => Ok(()),
            S_IFLNK if !self.symlink.is_empty() && self.symlink.len() <= MAX_SYMLINK => Ok(()),
            _ => Err(Error::malformed(w, "not a regular file or symlink")),
        }
    }

    pub fn is_symlink(&self) -> bool {
        self.mode & S_IFMT == S_IFLNK
    }

    pub fn encode(&self) -> Vec<u8> {
        gv::enc_tuple(&[
            (&self.uid.to_be_bytes(), Member::U32),
            (&self.gid.to_be_bytes(), Member::U32),
            (&self.mode.to_be_bytes(), Member::U32),
            (&0u32.to_be_bytes(), Member::U32),
            (&gv::enc_str(self.symlink), Member::VAR1),
            (self.xattrs.bytes(), Member::VAR1),
        ])
    }

    /// A hasher primed with the content-object prefix; feed the file data (for
    /// regular files) and finish with [`finish_id`].
    pub fn content_hasher(&self) -> Sha256 {
        let h = self.encode();
        let mut s = Sha256::new();
        s.update((h.len() as u32).to_be_bytes());
        s.update([0u8; 4]);
        s.update(&h);
        s
    }
}

pub fn finish_id(h: Sha256) -> ObjectId {
    ObjectId(h.finalize().into())
}

/// An archive repo's `.filez` header `(tuuuusa(ayay))`, framed as
/// [u32 BE header length][4 zero bytes][header]; raw deflate data follows.
#[derive(Clone, Copy, Debug)]
pub struct FilezHeader<'a> {
    pub size: u64,
    pub header: FileHeader<'a>,
    /// Offset of the compressed data in the file.
    pub data_offset: usize,
}

impl<'a> FilezHeader<'a> {
    pub fn parse(data: &'a [u8]) -> Result<Self> {
        let w = "filez header";
        let len = gv::be_u32(data.get(..4).ok_or(Error::malformed(w, "truncated"))?, w)? as usize;
        let end = len.checked_add(8).ok_or(Error::malformed(w, "overflow"))?;
        let hdr = data.get(8..end).ok_or(Error::malformed(w, "truncated"))?;
        let [size, uid, gid, mode, rdev, target, x] = gv::tuple(
            hdr,
            &[
                Member::U64,
                Member::U32,
                Member::U32,
                Member::U32,
                Member::U32,
                Member::VAR1,
                Member::VAR1,
            ],
            w,
        )?;
        if gv::be_u32(rdev, w)? != 0 {
            return Err(Error::malformed(w, "device files are not allowed"));
        }
        let header = FileHeader {
            uid: gv::be_u32(uid, w)?,
            gid: gv::be_u32(gid, w)?,
            mode: gv::be_u32(mode, w)?,
            symlink: gv::string(target, w)?,
            xattrs: Xattrs::parse(x)?,
        };
        header.validate()?;
        Ok(FilezHeader {
            size: gv::be_u64(size, w)?,
            header,
            data_offset: end,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checksum examples in the format notes: empty dirtree, root dirmeta, n.txt.
    #[test]
    fn known_checksums() {
        let empty = DirTree::default().encode();
        assert_eq!(empty, vec![0]);
        assert!(ObjectId::of(&empty).to_hex().starts_with("6e340b9c"));
        let dm = DirMeta {
            uid: 0,
            gid: 0,
            mode: 0o40755,
            xattrs: Xattrs::EMPTY,
        }
        .encode();
        assert_eq!(dm, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x41, 0xed]);
        assert!(ObjectId::of(&dm).to_hex().starts_with("446a0ef1"));
        let h = FileHeader {
            uid: 0,
            gid: 0,
            mode: 0o100644,
            symlink: "",
            xattrs: Xattrs::EMPTY,
        };
        let enc = h.encode();
        assert_eq!(
            enc,
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x81, 0xa4, 0, 0, 0, 0, 0, 0x11]
        );
        assert_eq!(FileHeader::parse(&enc).unwrap(), h);
        let mut hs = h.content_hasher();
        hs.update(b"new\n");
        assert!(finish_id(hs).to_hex().starts_with("3d333048"));
    }

    /// Names that could escape a directory are refused.
    #[test]
    fn safe_names() {
        for bad in ["", ".", "..", "a/b", "/", "a\0"] {
            assert!(SafeName::new(bad).is_err(), "{bad:?}");
        }
        assert!(SafeName::new("...").is_ok());
    }

    /// Dirtrees round-trip and refuse duplicates, disorder and bad names.
    #[test]
    fn dirtree_rules() {
        let id = ObjectId([1; 32]);
        let t = DirTree {
            files: vec![
                FileEntry {
                    name: SafeName::new("a").unwrap(),
                    id,
                },
                FileEntry {
                    name: SafeName::new("b").unwrap(),
                    id,
                },
            ],
            dirs: vec![DirEntry {
                name: SafeName::new("c").unwrap(),
                tree: id,
                meta: id,
            }],
        };
        let enc = t.encode();
        let p = DirTree::parse(&enc).unwrap();
        assert_eq!(p.encode(), enc);
        assert_eq!(p.files, t.files);
        let mut dup = t.clone();
        dup.files[1].name = SafeName::new("a").unwrap();
        assert!(matches!(
            DirTree::parse(&dup.encode()),
            Err(Error::NotSorted { .. })
        ));
        let mut both = t.clone();
        both.dirs[0].name = SafeName::new("b").unwrap();
        assert!(matches!(
            DirTree::parse(&both.encode()),
            Err(Error::NotSorted { .. })
        ));
        // `..` smuggled as raw bytes.
        let raw = gv::enc_tuple(&[(&gv::enc_str(".."), Member::VAR1), (&id.0, Member::VAR1)]);
        let bad = gv::enc_tuple(&[
            (&gv::enc_var_array([raw], 1), Member::VAR1),
            (&[], Member::VAR1),
        ]);
        assert!(matches!(DirTree::parse(&bad), Err(Error::BadName { .. })));
    }

    /// Hex and modified base64 forms of an id.
    #[test]
    fn id_forms() {
        let hex = "48b60a763182f8eb619759156bf02fc24980a472d6798adbeb466c2e31ecccf7";
        let id = ObjectId::from_hex(hex).unwrap();
        assert_eq!(id.to_hex(), hex);
        let m = id.to_modified_base64();
        assert_eq!(m.len(), 43);
        assert!(!m.contains('/') && !m.contains('='));
        assert!(ObjectId::from_hex("zz").is_err());
    }

    /// Xattrs are stored sorted with NUL-terminated names and read back.
    #[test]
    fn xattrs_round_trip() {
        let enc = encode_xattrs(vec![
            (b"user.b".to_vec(), b"2".to_vec()),
            (b"user.a".to_vec(), b"1".to_vec()),
        ]);
        let x = Xattrs::parse(&enc).unwrap();
        let v: Vec<_> = x.iter().unwrap().map(|r| r.unwrap()).collect();
        assert_eq!(
            v,
            vec![(&b"user.a"[..], &b"1"[..]), (&b"user.b"[..], &b"2"[..])]
        );
    }
}
