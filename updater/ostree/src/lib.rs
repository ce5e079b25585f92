//! Pure OSTree formats: bytes in, typed values or a typed error out. No files,
//! no clock, so every parser here can be fuzzed and round-trip tested. The
//! device-side applier (`atomup-deploy`) drives [`execute::execute_part`]
//! through the [`execute::ObjectSink`] trait; the publisher enables the
//! `encode` feature for signing.

pub mod base64;
pub mod delta;
#[cfg(feature = "encode")]
pub mod encode;
pub mod error;
pub mod execute;
pub mod gvariant;
pub mod gzip;
pub mod hex;
pub mod object;
pub mod sign;
pub mod xz;

pub use delta::MAX_METADATA_SIZE;
pub use error::{Error, Result};
pub use object::{ObjectId, ObjectType, SafeName};

/// Fuzz/corpus entry points: each takes arbitrary bytes and must never panic.
pub mod fuzz {
    use crate::delta::{PayloadLayout, Superblock, SuperblockFile};
    use crate::execute::{execute_part, MemorySink};
    use crate::object::{Commit, DirMeta, DirTree, FileHeader};

    /// Every object parser over the same bytes.
    pub fn gvariant(data: &[u8]) {
        let _ = Commit::parse(data);
        let _ = DirTree::parse(data);
        let _ = DirMeta::parse(data);
        let _ = FileHeader::parse(data);
        let _ = crate::gvariant::lookup(data, "ostree.endianness", "fuzz");
        let _ = crate::sign::signatures(data);
    }

    /// Superblock (signed or not) parsing.
    pub fn superblock(data: &[u8]) {
        if let Ok(f) = SuperblockFile::parse(data) {
            if let Ok(sb) = Superblock::parse(f.unsigned) {
                for i in 0..sb.parts.len() {
                    let _ = sb.inline_part(i);
                }
                let _ = sb.commitmeta();
            }
        }
    }

    /// A decompressed part payload executed against an in-memory sink; the
    /// first 33·n bytes before a `|` split are not needed: the object list is
    /// derived from the payload itself by trying each object type.
    pub fn payload(data: &[u8]) {
        let tail_len = PayloadLayout::tail_len(data.len() as u64) as usize;
        let Some(tail) = data.len().checked_sub(tail_len).map(|s| &data[s..]) else {
            return;
        };
        let Ok(l) = PayloadLayout::from_tail(data.len() as u64, tail) else {
            return;
        };
        let r = |(a, b): (u64, u64)| &data[a as usize..b as usize];
        let blob = r(l.blob);
        // Object list: take it from the front of the blob (arbitrary ids), so
        // the executor's ordering and bounds logic is exercised.
        let n = (blob.len() / 33).min(8) * 33;
        let mut sink = MemorySink::new(blob);
        let _ = execute_part(
            &mut sink,
            &blob[..n],
            r(l.modes),
            r(l.xattrs),
            blob.len() as u64,
            r(l.ops),
        );
    }
}

#[cfg(test)]
mod known_answer {
    use crate::delta::{part_header, PayloadLayout, Superblock, SuperblockFile};
    use crate::execute::{execute_part, MemorySink};
    use crate::object::{DirTree, ObjectId, ObjectType};

    const SUPERBLOCK: &[u8] = include_bytes!("../tests/data/ostree-tiny/superblock");
    const PART: &[u8] = include_bytes!("../tests/data/ostree-tiny/0");
    const PAYLOAD: &[u8] = include_bytes!("../tests/data/ostree-tiny/payload.bin");
    const A_TXT: &[u8] = include_bytes!("../tests/data/ostree-tiny/A/a.txt");
    const B_A_TXT: &[u8] = include_bytes!("../tests/data/ostree-tiny/B/a.txt");
    const B_N_TXT: &[u8] = include_bytes!("../tests/data/ostree-tiny/B/n.txt");

    fn id(h: &str) -> ObjectId {
        ObjectId::from_hex(h).unwrap()
    }

    /// The real-ostree tiny delta: superblock fields, part list, objects and ops
    /// decode as upstream wrote them, and executing the part builds tree B.
    #[test]
    fn ostree_tiny_vector() {
        let file = SuperblockFile::parse(SUPERBLOCK).unwrap();
        assert!(file.signatures.is_none());
        let sb = Superblock::parse(file.unsigned).unwrap();
        assert_eq!(
            sb.from,
            Some(id(
                "ec7284c9f7f2d9ee51e8267246c2b278fb7fd4557af06f60916136889bd998b8"
            ))
        );
        assert_eq!(
            sb.to,
            id("48b60a763182f8eb619759156bf02fc24980a472d6798adbeb466c2e31ecccf7")
        );
        assert_eq!(sb.parts.len(), 1);
        assert!(sb.fallbacks.is_empty());
        assert_eq!(sb.inline_part(0).unwrap(), None);
        let p = &sb.parts[0];
        assert_eq!(p.checksum, ObjectId::of(PART));
        assert_eq!(p.size, PART.len() as u64);
        let objs: Vec<_> = p.objects().map(|o| o.unwrap()).collect();
        assert_eq!(objs.len(), 3);
        assert_eq!(objs[0].0, ObjectType::DirTree);
        assert!(objs[0].1.to_hex().starts_with("eed0e001"));
        assert!(objs[1].1.to_hex().starts_with("e4abccc9"));
        assert!(objs[2].1.to_hex().starts_with("3d333048"));
        assert_eq!(sb.commit.root_tree, objs[0].1);

        let (_, compressed) = part_header(PART).unwrap();
        let mut payload = Vec::new();
        crate::xz::decompress(
            crate::delta::Compression::Xz,
            compressed,
            &mut payload,
            1 << 20,
        )
        .unwrap();
        assert_eq!(payload, PAYLOAD);
        let tail =
            &payload[payload.len() - PayloadLayout::tail_len(payload.len() as u64) as usize..];
        let l = PayloadLayout::from_tail(payload.len() as u64, tail).unwrap();
        let r = |(a, b): (u64, u64)| &payload[a as usize..b as usize];
        // The op stream, decoded: S(dirtree) r o B c R S(n.txt).
        use crate::delta::{Op, OpReader};
        let mut reader = OpReader::new(r(l.ops));
        let kinds = [true, false, false, false, false, false, false];
        let ops: Vec<Op> = kinds
            .iter()
            .map(|m| reader.next_op(*m).unwrap().unwrap())
            .collect();
        assert_eq!(reader.next_op(false).unwrap(), None);
        assert!(matches!(ops[0], Op::SpliceMeta { offset: 0, .. }));
        assert!(matches!(ops[1], Op::SetReadSource { .. }));
        assert!(matches!(
            ops[2],
            Op::Open {
                mode: 0,
                xattr: 0,
                size: 3
            }
        ));
        assert!(matches!(ops[3], Op::Bspatch { .. }));
        assert_eq!(&ops[4..6], &[Op::Close, Op::UnsetReadSource]);
        assert!(matches!(
            ops[6],
            Op::SpliceContent {
                mode: 0,
                xattr: 0,
                size: 4,
                ..
            }
        ));
        let mut sink = MemorySink::new(r(l.blob));
        let mut hs = crate::object::FileHeader {
            uid: 0,
            gid: 0,
            mode: 0o100644,
            symlink: "",
            xattrs: crate::object::Xattrs::EMPTY,
        }
        .content_hasher();
        sha2::Digest::update(&mut hs, A_TXT);
        let old_id = crate::object::finish_id(hs);
        assert!(old_id.to_hex().starts_with("2d459a61"));
        sink.old.push((old_id, A_TXT.to_vec()));
        let stats = execute_part(
            &mut sink,
            p.objects,
            r(l.modes),
            r(l.xattrs),
            l.blob.1 - l.blob.0,
            r(l.ops),
        )
        .unwrap();
        assert_eq!((stats.meta_objects, stats.content_objects), (1, 2));
        assert_eq!(sink.content[0].2, B_A_TXT);
        assert_eq!(sink.content[1].2, B_N_TXT);
        let tree = DirTree::parse(&sink.meta[0].2).unwrap();
        let names: Vec<_> = tree.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["a.txt", "n.txt"]);
        // A flipped bit anywhere in the blob's bsdiff or literal data is caught.
        let mut bad = r(l.blob).to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let mut sink = MemorySink::new(&bad);
        sink.old.push((old_id, A_TXT.to_vec()));
        assert!(execute_part(
            &mut sink,
            p.objects,
            r(l.modes),
            r(l.xattrs),
            bad.len() as u64,
            r(l.ops)
        )
        .is_err());
    }

    /// Fuzz entry points survive the vector and its truncations.
    #[test]
    fn fuzz_entry_points_on_truncations() {
        for n in 0..SUPERBLOCK.len() {
            crate::fuzz::superblock(&SUPERBLOCK[..n]);
            crate::fuzz::gvariant(&SUPERBLOCK[..n]);
        }
        for n in 0..PAYLOAD.len() {
            crate::fuzz::payload(&PAYLOAD[..n]);
        }
        crate::fuzz::payload(PAYLOAD);
    }
}
