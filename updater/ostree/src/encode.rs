//! Encoders only a publisher needs: commits, archive `.filez` headers, static
//! delta superblocks, part headers, part payloads and part files. They sit on
//! the same GVariant encoder the parsers are tested against (round trips
//! below), so what the publisher writes is exactly what the device and the
//! upstream `ostree` parse. Compiled only with the `encode` feature: the
//! device binary never writes these formats.

use crate::delta::{Compression, PayloadLayout};
use crate::gvariant::{self as gv, Endian, Member};
use crate::object::{Commit, FileHeader, ObjectId, ObjectType};

/// Serializes a commit `(a{sv}aya(say)sstayay)` from the same fields the
/// parser yields; `metadata` is a serialized `a{sv}` (see [`commit_metadata`]).
impl Commit<'_> {
    pub fn encode(&self) -> Vec<u8> {
        let parent: &[u8] = match &self.parent {
            Some(p) => &p.0,
            None => &[],
        };
        gv::enc_tuple(&[
            (self.metadata, Member::VAR8),
            (parent, Member::VAR1),
            (&[], Member::VAR1),
            (&gv::enc_str(self.subject), Member::VAR1),
            (&gv::enc_str(self.body), Member::VAR1),
            (&self.timestamp.to_be_bytes(), Member::U64),
            (&self.root_tree.0, Member::VAR1),
            (&self.root_meta.0, Member::VAR1),
        ])
    }
}

/// The commit metadata `ostree commit -b REF` writes by default: the ref
/// binding `ostree.ref-binding` (`as`) that stops a server from serving this
/// commit under another branch. Matching it is what makes our commit ids equal
/// upstream's for the same tree.
pub fn commit_metadata(ref_bindings: &[&str]) -> Vec<u8> {
    if ref_bindings.is_empty() {
        return Vec::new();
    }
    let mut refs: Vec<&str> = ref_bindings.to_vec();
    refs.sort_unstable();
    refs.dedup();
    let strings = gv::enc_var_array(refs.iter().map(|r| gv::enc_str(r)), 1);
    gv::enc_asv(&[("ostree.ref-binding", strings, "as")])
}

/// The prefix of an archive repo's `.filez` file: [u32 BE header length][4
/// zero bytes][`(tuuuusa(ayay))` header]; raw deflate data follows for
/// regular files, nothing for symlinks.
pub fn filez_header(size: u64, header: &FileHeader<'_>) -> Vec<u8> {
    let h = gv::enc_tuple(&[
        (&size.to_be_bytes(), Member::U64),
        (&header.uid.to_be_bytes(), Member::U32),
        (&header.gid.to_be_bytes(), Member::U32),
        (&header.mode.to_be_bytes(), Member::U32),
        (&0u32.to_be_bytes(), Member::U32),
        (&gv::enc_str(header.symlink), Member::VAR1),
        (header.xattrs.bytes(), Member::VAR1),
    ]);
    let mut out = Vec::with_capacity(h.len() + 8);
    out.extend_from_slice(&(h.len() as u32).to_be_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&h);
    out
}

/// One part entry of a superblock `(uayttay)`.
#[derive(Clone, Debug)]
pub struct NewPartInfo {
    pub checksum: ObjectId,
    /// Length of the part file.
    pub size: u64,
    /// Sum of the uncompressed sizes of the part's objects.
    pub usize: u64,
    /// Execution order.
    pub objects: Vec<(ObjectType, ObjectId)>,
}

fn objtype_byte(ty: ObjectType) -> u8 {
    match ty {
        ObjectType::File => 1,
        ObjectType::DirTree => 2,
        ObjectType::DirMeta => 3,
        ObjectType::Commit => 4,
        ObjectType::CommitMeta => 6,
    }
}

fn u32_in(endian: Endian, v: u32) -> [u8; 4] {
    match endian {
        Endian::Little => v.to_le_bytes(),
        Endian::Big => v.to_be_bytes(),
    }
}

fn u64_in(endian: Endian, v: u64) -> [u8; 8] {
    match endian {
        Endian::Little => v.to_le_bytes(),
        Endian::Big => v.to_be_bytes(),
    }
}

impl NewPartInfo {
    pub fn encode(&self, endian: Endian) -> Vec<u8> {
        let mut objs = Vec::with_capacity(self.objects.len() * 33);
        for (ty, id) in &self.objects {
            objs.push(objtype_byte(*ty));
            objs.extend_from_slice(&id.0);
        }
        gv::enc_tuple(&[
            (&u32_in(endian, 0), Member::U32),
            (&self.checksum.0, Member::VAR1),
            (&u64_in(endian, self.size), Member::U64),
            (&u64_in(endian, self.usize), Member::U64),
            (&objs, Member::VAR1),
        ])
    }
}

/// A fallback entry `(yaytt)`.
#[derive(Clone, Copy, Debug)]
pub struct NewFallback {
    pub objtype: ObjectType,
    pub id: ObjectId,
    pub size: u64,
    pub usize: u64,
}

/// Everything an unsigned superblock `(a{sv}tayay(commit)aya(uayttay)a(yaytt))` holds.
#[derive(Clone, Debug)]
pub struct NewSuperblock<'a> {
    pub endian: Endian,
    pub timestamp: u64,
    pub from: Option<ObjectId>,
    pub to: ObjectId,
    /// The serialized to-commit.
    pub commit: &'a [u8],
    /// Detached metadata of the to-commit (signatures), if any.
    pub commitmeta: Option<&'a [u8]>,
    pub parts: &'a [NewPartInfo],
    pub fallbacks: &'a [NewFallback],
    /// The longest text a `G` op of this delta rebuilds, if it has any (the
    /// atomup extension's marker, see [`crate::delta::GZIP_TEXT_MAX_KEY`]).
    pub gzip_text_max: Option<u64>,
}

impl NewSuperblock<'_> {
    pub fn encode(&self) -> Vec<u8> {
        let endian_byte = match self.endian {
            Endian::Little => b'l',
            Endian::Big => b'B',
        };
        let mut meta: Vec<(String, Vec<u8>, &str)> =
            vec![("ostree.endianness".into(), vec![endian_byte], "y")];
        if let Some(cm) = self.commitmeta {
            let key = format!(
                "{}/commitmeta",
                crate::delta::delta_path(self.from.as_ref(), &self.to)
            );
            meta.push((key, cm.to_vec(), "a{sv}"));
        }
        if let Some(n) = self.gzip_text_max {
            meta.push((
                crate::delta::GZIP_TEXT_MAX_KEY.into(),
                n.to_le_bytes().to_vec(),
                "t",
            ));
        }
        let meta_ref: Vec<(&str, Vec<u8>, &str)> = meta
            .iter()
            .map(|(k, v, t)| (k.as_str(), v.clone(), *t))
            .collect();
        let metadata = gv::enc_asv(&meta_ref);
        let from: &[u8] = match &self.from {
            Some(f) => &f.0,
            None => &[],
        };
        let parts = gv::enc_var_array(self.parts.iter().map(|p| p.encode(self.endian)), 8);
        let fallbacks = gv::enc_var_array(
            self.fallbacks.iter().map(|f| {
                gv::enc_tuple(&[
                    (&[objtype_byte(f.objtype)], Member::BYTE),
                    (&f.id.0, Member::VAR1),
                    (&u64_in(self.endian, f.size), Member::U64),
                    (&u64_in(self.endian, f.usize), Member::U64),
                ])
            }),
            8,
        );
        gv::enc_tuple(&[
            (&metadata, Member::VAR8),
            (&self.timestamp.to_be_bytes(), Member::U64),
            (from, Member::VAR1),
            (&self.to.0, Member::VAR1),
            (self.commit, Member::VAR8),
            (&[], Member::VAR1),
            (&parts, Member::VAR8),
            (&fallbacks, Member::VAR8),
        ])
    }
}

/// One `(uuu)` entry of a payload's mode table (values as stored: host order
/// in, big-endian out, as upstream writes them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModeEntry {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

/// Serializes a part payload `(a(uuu)aa(ayay)ayay)`; `xattrs` are serialized
/// `a(ayay)` values (the empty one is zero bytes).
pub fn part_payload(modes: &[ModeEntry], xattrs: &[Vec<u8>], blob: &[u8], ops: &[u8]) -> Vec<u8> {
    let mut mode_bytes = Vec::with_capacity(modes.len() * 12);
    for m in modes {
        mode_bytes.extend_from_slice(&m.uid.to_be_bytes());
        mode_bytes.extend_from_slice(&m.gid.to_be_bytes());
        mode_bytes.extend_from_slice(&m.mode.to_be_bytes());
    }
    let xattr_bytes = gv::enc_var_array(xattrs, 1);
    gv::enc_tuple(&[
        (&mode_bytes, Member::VAR4),
        (&xattr_bytes, Member::VAR1),
        (blob, Member::VAR1),
        (ops, Member::VAR1),
    ])
}

/// A part file `(yay)`: the compression byte, then the (compressed) payload.
pub fn part_file(compression: Compression, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 1);
    out.push(match compression {
        Compression::None => 0,
        Compression::Xz => b'x',
    });
    out.extend_from_slice(data);
    out
}

/// Checks a payload's layout the way the device will read it: used by the
/// publisher's self-check before a part is written.
pub fn payload_layout(payload: &[u8]) -> crate::Result<PayloadLayout> {
    let total = payload.len() as u64;
    let tail_len = PayloadLayout::tail_len(total) as usize;
    let tail = payload
        .len()
        .checked_sub(tail_len)
        .and_then(|s| payload.get(s..))
        .ok_or(crate::Error::Malformed {
            what: "part payload",
            why: "shorter than its offset table",
        })?;
    PayloadLayout::from_tail(total, tail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::{Superblock, SuperblockFile};
    use crate::object::{Commit, FilezHeader, Xattrs};

    /// The commit upstream `ostree commit -b os/main --owner-uid=0
    /// --owner-gid=0 --timestamp=2024-01-01T00:00:00Z -s v1` made for a tree
    /// of `a` ("hi\n", 04755), symlink `l -> a` and empty dir `sub`: our
    /// encoder reproduces its id from the same fields.
    #[test]
    fn commit_matches_upstream_vector() {
        let meta = commit_metadata(&["os/main"]);
        let c = Commit {
            metadata: &meta,
            parent: None,
            subject: "v1",
            body: "",
            timestamp: 1_704_067_200,
            root_tree: ObjectId::from_hex(
                "fb10c11a1e3d6555632e0f7d2577add35a9f69e3f00388a0d16ec99e0d53fd46",
            )
            .unwrap(),
            root_meta: ObjectId::from_hex(
                "446a0ef11b7cc167f3b603e585c7eeeeb675faa412d5ec73f62988eb0b6c5488",
            )
            .unwrap(),
        };
        let bytes = c.encode();
        assert_eq!(
            ObjectId::of(&bytes).to_hex(),
            "6adda33d2b9a01120b81b40e5eb79fd90d9304bec2dd2953134b48704b23896f"
        );
        let p = Commit::parse(&bytes).unwrap();
        assert_eq!(
            (p.subject, p.timestamp, p.parent),
            ("v1", 1_704_067_200, None)
        );
    }

    /// `.filez` headers round-trip through the device-side parser and match
    /// upstream's bytes for the symlink of the vector above.
    #[test]
    fn filez_header_round_trip() {
        let h = FileHeader {
            uid: 0,
            gid: 0,
            mode: 0o120777,
            symlink: "a",
            xattrs: Xattrs::EMPTY,
        };
        let enc = filez_header(0, &h);
        let upstream = [
            0, 0, 0, 0x1b, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xa1,
            0xff, 0, 0, 0, 0, b'a', 0, 0x1a,
        ];
        assert_eq!(enc, upstream);
        let p = FilezHeader::parse(&enc).unwrap();
        assert_eq!((p.size, p.header, p.data_offset), (0, h, enc.len()));
    }

    /// A superblock with two parts and a fallback parses back field by field.
    #[test]
    fn superblock_round_trip() {
        let meta = commit_metadata(&["x"]);
        let commit = Commit {
            metadata: &meta,
            parent: None,
            subject: "s",
            body: "",
            timestamp: 7,
            root_tree: ObjectId([1; 32]),
            root_meta: ObjectId([2; 32]),
        }
        .encode();
        let to = ObjectId::of(&commit);
        let parts = vec![
            NewPartInfo {
                checksum: ObjectId([3; 32]),
                size: 300,
                usize: 1000,
                objects: vec![
                    (ObjectType::DirTree, ObjectId([4; 32])),
                    (ObjectType::File, ObjectId([5; 32])),
                ],
            },
            NewPartInfo {
                checksum: ObjectId([6; 32]),
                size: 1,
                usize: 2,
                objects: vec![],
            },
        ];
        let fb = [NewFallback {
            objtype: ObjectType::File,
            id: ObjectId([7; 32]),
            size: 9,
            usize: 10,
        }];
        let cm = gv::enc_asv(&[("k", vec![1], "y")]);
        for endian in [Endian::Little, Endian::Big] {
            let sb = NewSuperblock {
                endian,
                timestamp: 99,
                from: Some(ObjectId([8; 32])),
                to,
                commit: &commit,
                commitmeta: Some(&cm),
                parts: &parts,
                fallbacks: &fb,
                gzip_text_max: Some(300_000),
            }
            .encode();
            let f = SuperblockFile::parse(&sb).unwrap();
            let p = Superblock::parse(f.unsigned).unwrap();
            assert_eq!(
                (p.endian, p.timestamp, p.from, p.to),
                (endian, 99, Some(ObjectId([8; 32])), to)
            );
            assert_eq!(p.gzip_text_max().unwrap(), Some(300_000));
            assert_eq!(p.parts.len(), 2);
            assert_eq!(
                (p.parts[0].size, p.parts[0].usize, p.parts[0].object_count()),
                (300, 1000, 2)
            );
            let objs: Vec<_> = p.parts[0].objects().map(|o| o.unwrap()).collect();
            assert_eq!(objs, parts[0].objects);
            assert_eq!(
                (p.fallbacks[0].id, p.fallbacks[0].size, p.fallbacks[0].usize),
                (ObjectId([7; 32]), 9, 10)
            );
            assert_eq!(p.commitmeta().unwrap(), Some(&cm[..]));
        }
    }

    /// Payload tables and members are where the device's layout reader finds them.
    #[test]
    fn payload_layout_round_trip() {
        let modes = [
            ModeEntry {
                uid: 0,
                gid: 0,
                mode: 0o100644,
            },
            ModeEntry {
                uid: 1,
                gid: 2,
                mode: 0o120777,
            },
        ];
        let x = crate::object::encode_xattrs(vec![(b"user.a".to_vec(), b"1".to_vec())]);
        let xattrs = vec![Vec::new(), x];
        for blob_len in [0usize, 10, 300, 70_000] {
            let blob = vec![0xab; blob_len];
            let ops = b"S\x00\x00\x01\x00c".to_vec();
            let p = part_payload(&modes, &xattrs, &blob, &ops);
            let l = payload_layout(&p).unwrap();
            let r = |(a, b): (u64, u64)| &p[a as usize..b as usize];
            assert_eq!(r(l.modes).len(), 24);
            assert_eq!(r(l.blob), &blob[..]);
            assert_eq!(r(l.ops), &ops[..]);
            let xs = gv::VarArray::parse(r(l.xattrs), 1, "t").unwrap();
            assert_eq!(xs.len(), 2);
            assert_eq!(xs.get(1).unwrap(), &xattrs[1][..]);
        }
    }
}
