//! Builds one delta part: the payload `(a(uuu)aa(ayay)ayay)` with its op
//! stream, then the xz-compressed part file. Kept apart from planning so the
//! op encoding (what upstream's applier and ours execute) lives in one place.
//!
//! The blob is laid out in **regions**, one per [`Kind`]: metadata first,
//! then text, code, tables... Each region becomes its own xz block (see
//! `compress`). A file's bytes may come from several regions: its ranges
//! ([`Piece`]s) are written by one `w` op each, in file order, between `o`
//! and `c`. Ops refer to regions symbolically while the part grows and are
//! encoded once the regions' final offsets are known.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use atomup_ostree::delta::{write_varint, Compression, OP_GZIP_REBUILD};
use atomup_ostree::encode::{part_file, part_payload, payload_layout, ModeEntry, NewPartInfo};
use atomup_ostree::object::{ObjectId, ObjectType};

use super::classify::{Kind, Piece};
use super::compress::{compress_payload, BlockCache, KindStats, XzOpts};

/// Op codes of the static delta op stream.
const OP_SPLICE: u8 = b'S';
const OP_OPEN: u8 = b'o';
const OP_WRITE: u8 = b'w';
const OP_SET_READ_SOURCE: u8 = b'r';
const OP_UNSET_READ_SOURCE: u8 = b'R';
const OP_CLOSE: u8 = b'c';
const OP_BSPATCH: u8 = b'B';

/// A position in a region, resolved to a blob offset at `finish`.
#[derive(Clone, Copy, Debug)]
struct Loc {
    kind: Kind,
    offset: u64,
}

#[derive(Debug)]
enum Op {
    SpliceMeta {
        size: u64,
        at: Loc,
    },
    Splice {
        mode: u64,
        xattr: u64,
        size: u64,
        at: Loc,
    },
    Open {
        mode: u64,
        xattr: u64,
        size: u64,
    },
    Write {
        size: u64,
        at: Loc,
    },
    WriteSource {
        size: u64,
        offset: u64,
    },
    SetSource {
        at: Loc,
    },
    UnsetSource,
    Close,
    Bspatch {
        at: Loc,
        len: u64,
    },
    /// atomup's `G` (gzip rebuilt from its text): record, then text or patch.
    Gzip {
        record: Loc,
        record_len: u64,
        data: Loc,
        data_len: u64,
    },
}

#[derive(Default)]
struct Region {
    data: Vec<u8>,
    /// Identical byte runs (same data, different owner/mode, equal pieces,
    /// equal bsdiff sources) are stored once: ops may share an offset.
    seen: HashMap<[u8; 32], u64>,
}

#[derive(Default)]
pub struct PartBuilder {
    modes: Vec<ModeEntry>,
    mode_idx: HashMap<ModeEntry, u64>,
    xattrs: Vec<Vec<u8>>,
    xattr_idx: HashMap<Vec<u8>, u64>,
    regions: BTreeMap<Kind, Region>,
    ops: Vec<Op>,
    objects: Vec<(ObjectType, ObjectId)>,
    usize: u64,
    /// Blob bytes so far (all regions), for the part-size budget.
    blob_len: u64,
}

/// What one finished part holds (for the summary).
#[derive(Clone, Debug, Default)]
pub struct PartStats {
    pub payload: u64,
    pub max_dict: u32,
    pub kinds: KindStats,
}

impl PartBuilder {
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// Bytes of uncompressed payload so far (the part-size budget); ops
    /// are counted at a few bytes each.
    pub fn payload_len(&self) -> u64 {
        self.blob_len + self.ops.len() as u64 * 4
    }

    fn put(&mut self, kind: Kind, data: &[u8]) -> Loc {
        let key: [u8; 32] = ObjectId::of(data).0;
        let region = self.regions.entry(kind).or_default();
        if let Some(off) = region.seen.get(&key) {
            return Loc { kind, offset: *off };
        }
        let align = kind.align() as usize;
        while !region.data.len().is_multiple_of(align) {
            region.data.push(0);
            self.blob_len += 1;
        }
        let off = region.data.len() as u64;
        region.data.extend_from_slice(data);
        region.seen.insert(key, off);
        self.blob_len += data.len() as u64;
        Loc { kind, offset: off }
    }

    fn mode(&mut self, m: ModeEntry) -> u64 {
        let next = self.modes.len() as u64;
        *self.mode_idx.entry(m).or_insert_with(|| {
            self.modes.push(m);
            next
        })
    }

    fn xattr(&mut self, x: &[u8]) -> u64 {
        if let Some(i) = self.xattr_idx.get(x) {
            return *i;
        }
        let i = self.xattrs.len() as u64;
        self.xattrs.push(x.to_vec());
        self.xattr_idx.insert(x.to_vec(), i);
        i
    }

    /// A metadata object spliced whole from the blob.
    pub fn add_meta(&mut self, ty: ObjectType, id: ObjectId, data: &[u8]) {
        let at = self.put(Kind::Meta, data);
        self.ops.push(Op::SpliceMeta {
            size: data.len() as u64,
            at,
        });
        self.objects.push((ty, id));
        self.usize += data.len() as u64;
    }

    /// A content object whose data (or symlink target) is in the blob, in
    /// the regions its `pieces` name (one piece: a single `S` op).
    pub fn add_literal(
        &mut self,
        id: ObjectId,
        mode: ModeEntry,
        xattrs: &[u8],
        data: &[u8],
        pieces: &[Piece],
    ) {
        let m = self.mode(mode);
        let x = self.xattr(xattrs);
        let size = data.len() as u64;
        if pieces.len() <= 1 {
            let kind = pieces.first().map(|p| p.kind).unwrap_or(Kind::Text);
            let at = self.put(kind, data);
            self.ops.push(Op::Splice {
                mode: m,
                xattr: x,
                size,
                at,
            });
        } else {
            self.ops.push(Op::Open {
                mode: m,
                xattr: x,
                size,
            });
            for p in pieces {
                let at = self.put(p.kind, &data[p.start..p.end]);
                self.ops.push(Op::Write {
                    size: (p.end - p.start) as u64,
                    at,
                });
            }
            self.ops.push(Op::Close);
        }
        self.objects.push((ObjectType::File, id));
        self.usize += size;
    }

    /// A content object rebuilt from an old object by a bsdiff patch; op
    /// order as upstream's generator writes it: r, o, B, c, R.
    pub fn add_bsdiff(
        &mut self,
        id: ObjectId,
        mode: ModeEntry,
        xattrs: &[u8],
        size: u64,
        source: &ObjectId,
        patch: &[u8],
    ) {
        let m = self.mode(mode);
        let x = self.xattr(xattrs);
        let src = self.put(Kind::Meta, &source.0);
        let at = self.put(Kind::Patch, patch);
        self.ops.push(Op::SetSource { at: src });
        self.ops.push(Op::Open {
            mode: m,
            xattr: x,
            size,
        });
        self.ops.push(Op::Bspatch {
            at,
            len: patch.len() as u64,
        });
        self.ops.push(Op::Close);
        self.ops.push(Op::UnsetSource);
        self.objects.push((ObjectType::File, id));
        self.usize += size;
    }

    /// A content object whose bytes equal an old object's (moved, or only
    /// its owner, mode or xattrs changed): r, o, w (from the old object), c, R.
    pub fn add_copy(
        &mut self,
        id: ObjectId,
        mode: ModeEntry,
        xattrs: &[u8],
        size: u64,
        source: &ObjectId,
    ) {
        let m = self.mode(mode);
        let x = self.xattr(xattrs);
        let src = self.put(Kind::Meta, &source.0);
        self.ops.push(Op::SetSource { at: src });
        self.ops.push(Op::Open {
            mode: m,
            xattr: x,
            size,
        });
        if size > 0 {
            self.ops.push(Op::WriteSource { size, offset: 0 });
        }
        self.ops.push(Op::Close);
        self.ops.push(Op::UnsetSource);
        self.objects.push((ObjectType::File, id));
        self.usize += size;
    }

    /// A gzip file rebuilt on the device from its text (atomup's `G` op,
    /// which upstream's applier refuses): with `source`, `data` is a bsdiff
    /// patch against the old gzip file's text (r, o, G, c, R); without, it is
    /// the text itself (o, G, c), kept in the text region where xz sees it.
    #[allow(clippy::too_many_arguments)]
    pub fn add_gzip(
        &mut self,
        id: ObjectId,
        mode: ModeEntry,
        xattrs: &[u8],
        size: u64,
        source: Option<&ObjectId>,
        record: &[u8],
        data: &[u8],
    ) {
        let m = self.mode(mode);
        let x = self.xattr(xattrs);
        if let Some(source) = source {
            let src = self.put(Kind::Meta, &source.0);
            self.ops.push(Op::SetSource { at: src });
        }
        let rec = self.put(Kind::Stored, record);
        let kind = if source.is_some() {
            Kind::Patch
        } else {
            Kind::Text
        };
        let at = self.put(kind, data);
        self.ops.push(Op::Open {
            mode: m,
            xattr: x,
            size,
        });
        self.ops.push(Op::Gzip {
            record: rec,
            record_len: record.len() as u64,
            data: at,
            data_len: data.len() as u64,
        });
        self.ops.push(Op::Close);
        if source.is_some() {
            self.ops.push(Op::UnsetSource);
        }
        self.objects.push((ObjectType::File, id));
        self.usize += size;
    }

    /// Serializes and compresses the part; returns the part file, its
    /// superblock entry and what it holds.
    pub fn finish(
        self,
        xz: &XzOpts,
        cache: &BlockCache,
    ) -> Result<(Vec<u8>, NewPartInfo, PartStats), std::io::Error> {
        // Region offsets in the blob. Every region is its own xz block, so
        // alignment is relative to the region start.
        let mut starts: HashMap<Kind, u64> = HashMap::new();
        let mut blob = Vec::with_capacity(self.blob_len as usize);
        let mut spans: Vec<(Range<usize>, Kind)> = Vec::new();
        for (kind, region) in &self.regions {
            starts.insert(*kind, blob.len() as u64);
            let s = blob.len();
            blob.extend_from_slice(&region.data);
            spans.push((s..blob.len(), *kind));
        }
        let at = |l: &Loc| starts.get(&l.kind).copied().unwrap_or(0) + l.offset;
        let mut ops = Vec::with_capacity(self.ops.len() * 5);
        let v = |ops: &mut Vec<u8>, code: u8, args: &[u64]| {
            ops.push(code);
            for a in args {
                write_varint(ops, *a);
            }
        };
        for op in &self.ops {
            match op {
                Op::SpliceMeta { size, at: l } => v(&mut ops, OP_SPLICE, &[*size, at(l)]),
                Op::Splice {
                    mode,
                    xattr,
                    size,
                    at: l,
                } => v(&mut ops, OP_SPLICE, &[*mode, *xattr, *size, at(l)]),
                Op::Open { mode, xattr, size } => v(&mut ops, OP_OPEN, &[*mode, *xattr, *size]),
                Op::Write { size, at: l } => v(&mut ops, OP_WRITE, &[*size, at(l)]),
                Op::WriteSource { size, offset } => v(&mut ops, OP_WRITE, &[*size, *offset]),
                Op::SetSource { at: l } => v(&mut ops, OP_SET_READ_SOURCE, &[at(l)]),
                Op::UnsetSource => v(&mut ops, OP_UNSET_READ_SOURCE, &[]),
                Op::Close => v(&mut ops, OP_CLOSE, &[]),
                // Upstream's argument order: offset, then length.
                Op::Bspatch { at: l, len } => v(&mut ops, OP_BSPATCH, &[at(l), *len]),
                Op::Gzip {
                    record,
                    record_len,
                    data,
                    data_len,
                } => v(
                    &mut ops,
                    OP_GZIP_REBUILD,
                    &[at(record), *record_len, at(data), *data_len],
                ),
            }
        }
        let payload = part_payload(&self.modes, &self.xattrs, &blob, &ops);
        let layout = payload_layout(&payload)
            .map_err(|_| std::io::Error::other("built a payload the device cannot read"))?;
        let blob_at = layout.blob.0 as usize;
        // Blocks: the tables and the metadata region, then one per region,
        // then the ops and the payload's framing.
        let mut blocks: Vec<(Range<usize>, Kind)> = Vec::new();
        let mut head_end = blob_at;
        let mut rest = spans.as_slice();
        if let Some(((r, Kind::Meta), tail)) = rest.split_first() {
            head_end = blob_at + r.end;
            rest = tail;
        }
        blocks.push((0..head_end, Kind::Meta));
        for (r, kind) in rest {
            blocks.push((blob_at + r.start..blob_at + r.end, *kind));
        }
        let ops_at = layout.blob.1 as usize;
        blocks.push((ops_at..payload.len(), Kind::Generic));
        let (compressed, max_dict, kinds) = compress_payload(&payload, &blocks, xz, cache)?;
        let file = part_file(Compression::Xz, &compressed);
        let info = NewPartInfo {
            checksum: ObjectId::of(&file),
            size: file.len() as u64,
            usize: self.usize,
            objects: self.objects,
        };
        Ok((
            file,
            info,
            PartStats {
                payload: payload.len() as u64,
                max_dict,
                kinds,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deltagen::classify::{self, tests::synthetic_elf};

    fn opts() -> XzOpts {
        XzOpts {
            dict: 1 << 20,
            preset: 6,
            best: false,
            max_block: 8 << 20,
            jobs: 2,
        }
    }

    /// A built part (text, symlink, section-split ELF, copy of an old
    /// object) decompresses with the device's decoder to a payload whose
    /// ops the device executor runs, rebuilding every object.
    #[test]
    fn part_executes_on_device_engine() {
        use atomup_ostree::execute::{execute_part, MemorySink};
        use atomup_ostree::object::{finish_id, FileHeader, Xattrs};
        let mode = ModeEntry {
            uid: 0,
            gid: 0,
            mode: 0o100644,
        };
        let id_of = |data: &[u8], mode: u32, link: &str| {
            let h = FileHeader {
                uid: 0,
                gid: 0,
                mode,
                symlink: link,
                xattrs: Xattrs::EMPTY,
            };
            let mut hs = h.content_hasher();
            sha2::Digest::update(&mut hs, data);
            finish_id(hs)
        };
        let text = b"hello delta\n".repeat(10);
        let elf = synthetic_elf(183, 7);
        let elf_pieces = classify::pieces(&elf);
        assert!(elf_pieces.len() > 2, "{elf_pieces:?}");
        let old = b"an old file moved elsewhere and chmod'ed\n".repeat(5);
        let old_id = id_of(&old, 0o100644, "");
        let mut p = PartBuilder::default();
        p.add_literal(
            id_of(&text, 0o100644, ""),
            mode,
            &[],
            &text,
            &classify::pieces(&text),
        );
        p.add_literal(
            id_of(b"", 0o120777, "target"),
            ModeEntry {
                uid: 0,
                gid: 0,
                mode: 0o120777,
            },
            &[],
            b"target",
            &[],
        );
        p.add_literal(
            id_of(&elf, 0o100755, ""),
            ModeEntry {
                mode: 0o100755,
                ..mode
            },
            &[],
            &elf,
            &elf_pieces,
        );
        p.add_copy(
            id_of(&old, 0o100600, ""),
            ModeEntry {
                mode: 0o100600,
                ..mode
            },
            &[],
            old.len() as u64,
            &old_id,
        );
        let objects = p.objects.clone();
        let (file, info, stats) = p.finish(&opts(), &BlockCache::default()).unwrap();
        assert_eq!(info.checksum, ObjectId::of(&file));
        assert!(stats.max_dict <= 1 << 20);
        let (c, body) = atomup_ostree::delta::part_header(&file).unwrap();
        let mut payload = Vec::new();
        atomup_ostree::xz::decompress(c, body, &mut payload, 1 << 22).unwrap();
        let l = payload_layout(&payload).unwrap();
        let r = |(a, b): (u64, u64)| &payload[a as usize..b as usize];
        let mut raw = Vec::new();
        for (ty, id) in &objects {
            raw.push(if *ty == ObjectType::File { 1 } else { 2 });
            raw.extend_from_slice(&id.0);
        }
        let mut sink = MemorySink::new(r(l.blob));
        sink.old.push((old_id, old.clone()));
        let stats = execute_part(
            &mut sink,
            &raw,
            r(l.modes),
            r(l.xattrs),
            l.blob.1 - l.blob.0,
            r(l.ops),
        )
        .unwrap();
        assert_eq!(stats.content_objects, 4);
    }
}
