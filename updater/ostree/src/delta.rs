//! Static delta formats: the superblock (signed or not), part files, the
//! decompressed part payload and its op stream. All pure: the payload layout is
//! computed from the payload's length and its last few bytes, so the I/O side
//! can keep a large payload in a file and read only the ranges it needs.

use crate::error::{Error, Result};
use crate::gvariant::{self as gv, Endian, Member, VarArray};
use crate::object::{Commit, ObjectId, ObjectType};

/// Magic of a signed superblock `(taya{sv})`, stored big-endian: "OSTSGNDT".
pub const SIGNED_MAGIC: [u8; 8] = *b"OSTSGNDT";

/// Largest metadata object accepted (OSTree's own OSTREE_MAX_METADATA_SIZE).
pub const MAX_METADATA_SIZE: u64 = 10 << 20;

/// One entry of the superblock's part list `(uayttay)`.
#[derive(Clone, Debug)]
pub struct PartInfo<'a> {
    pub version: u32,
    pub checksum: ObjectId,
    pub size: u64,
    pub usize: u64,
    /// n × 33 bytes: object type, raw checksum.
    pub objects: &'a [u8],
}

impl<'a> PartInfo<'a> {
    pub fn objects(&self) -> impl Iterator<Item = Result<(ObjectType, ObjectId)>> + 'a {
        self.objects.chunks_exact(33).map(|c| {
            Ok((
                ObjectType::from_u8(c[0])?,
                ObjectId::from_slice(&c[1..], "part objects")?,
            ))
        })
    }

    pub fn object_count(&self) -> usize {
        self.objects.len() / 33
    }
}

/// A fallback object `(yaytt)`: fetched whole instead of built from parts.
#[derive(Clone, Copy, Debug)]
pub struct Fallback {
    pub objtype: ObjectType,
    pub id: ObjectId,
    pub size: u64,
    pub usize: u64,
}

/// A parsed (unsigned) superblock.
#[derive(Clone, Debug)]
pub struct Superblock<'a> {
    pub metadata: &'a [u8],
    pub endian: Endian,
    pub timestamp: u64,
    pub from: Option<ObjectId>,
    pub to: ObjectId,
    /// The serialized to-commit; sha256 of it equals `to` (checked by `parse`).
    pub commit_bytes: &'a [u8],
    pub commit: Commit<'a>,
    pub parts: Vec<PartInfo<'a>>,
    pub fallbacks: Vec<Fallback>,
}

impl<'a> Superblock<'a> {
    pub fn parse(data: &'a [u8]) -> Result<Self> {
        let w = "superblock";
        let [metadata, ts, from, to, commit, _empty, parts, fallbacks] = gv::tuple(
            data,
            &[
                Member::VAR8,
                Member::U64,
                Member::VAR1,
                Member::VAR1,
                Member::VAR8,
                Member::VAR1,
                Member::VAR8,
                Member::VAR8,
            ],
            w,
        )?;
        let endian = match gv::lookup(metadata, "ostree.endianness", w)? {
            None | Some((b"l", "y")) => Endian::Little,
            Some((b"B", "y")) => Endian::Big,
            Some(_) => return Err(Error::malformed(w, "unknown ostree.endianness")),
        };
        let from = if from.is_empty() {
            None
        } else {
            Some(ObjectId::from_slice(from, w)?)
        };
        let to = ObjectId::from_slice(to, w)?;
        let actual = ObjectId::of(commit);
        if actual != to {
            return Err(Error::ChecksumMismatch {
                what: "superblock to-commit",
                expected: to,
                actual,
            });
        }
        let commit_parsed = Commit::parse(commit)?;
        let mut part_list = Vec::new();
        for e in VarArray::parse(parts, 8, w)?.iter() {
            let [version, csum, size, usize, objects] = gv::tuple(
                e,
                &[
                    Member::U32,
                    Member::VAR1,
                    Member::U64,
                    Member::U64,
                    Member::VAR1,
                ],
                w,
            )?;
            if objects.len() % 33 != 0 {
                return Err(Error::malformed(
                    w,
                    "part object list is not a multiple of 33 bytes",
                ));
            }
            let p = PartInfo {
                version: endian.u32(version, w)?,
                checksum: ObjectId::from_slice(csum, w)?,
                size: endian.u64(size, w)?,
                usize: endian.u64(usize, w)?,
                objects,
            };
            if p.version != 0 {
                return Err(Error::Unsupported {
                    what: "delta part version",
                    value: u64::from(p.version),
                });
            }
            for o in p.objects() {
                o?;
            }
            part_list.push(p);
        }
        let mut fb = Vec::new();
        for e in VarArray::parse(fallbacks, 8, w)?.iter() {
            let [ty, csum, size, usize] = gv::tuple(
                e,
                &[Member::BYTE, Member::VAR1, Member::U64, Member::U64],
                w,
            )?;
            fb.push(Fallback {
                objtype: ObjectType::from_u8(ty[0])?,
                id: ObjectId::from_slice(csum, w)?,
                size: endian.u64(size, w)?,
                usize: endian.u64(usize, w)?,
            });
        }
        Ok(Superblock {
            metadata,
            endian,
            timestamp: gv::be_u64(ts, w)?,
            from,
            to,
            commit_bytes: commit,
            commit: commit_parsed,
            parts: part_list,
            fallbacks: fb,
        })
    }

    /// The delta's relative directory, `deltas/xx/rest[-to]`.
    pub fn delta_path(&self) -> String {
        delta_path(self.from.as_ref(), &self.to)
    }

    /// An inline part's bytes (a `(yay)` part file), if the part is inline.
    pub fn inline_part(&self, index: usize) -> Result<Option<&'a [u8]>> {
        let key = format!("{}/{}", self.delta_path(), index);
        match gv::lookup(self.metadata, &key, "superblock metadata")? {
            None => Ok(None),
            Some((child, "(yay)")) => Ok(Some(child)),
            Some(_) => Err(Error::malformed(
                "superblock metadata",
                "inline part has the wrong type",
            )),
        }
    }

    /// The longest text a `G` op of this delta rebuilds, as the publisher
    /// recorded it (`None`: no `G` op, or a publisher that did not say).
    pub fn gzip_text_max(&self) -> Result<Option<u64>> {
        match gv::lookup(self.metadata, GZIP_TEXT_MAX_KEY, "superblock metadata")? {
            None => Ok(None),
            Some((v, "t")) => v
                .try_into()
                .map(|b| Some(u64::from_le_bytes(b)))
                .map_err(|_| {
                    Error::malformed("superblock metadata", "gzip text max is not 8 bytes")
                }),
            Some(_) => Err(Error::malformed(
                "superblock metadata",
                "gzip text max has the wrong type",
            )),
        }
    }

    /// Detached metadata of the to-commit carried in the superblock, if any.
    pub fn commitmeta(&self) -> Result<Option<&'a [u8]>> {
        let key = format!("{}/commitmeta", self.delta_path());
        match gv::lookup(self.metadata, &key, "superblock metadata")? {
            None => Ok(None),
            Some((child, "a{sv}")) => Ok(Some(child)),
            Some(_) => Err(Error::malformed(
                "superblock metadata",
                "commitmeta has the wrong type",
            )),
        }
    }
}

/// Superblock metadata key (`t`, little-endian) that marks a delta using
/// atomup's `G` op and says the longest text one rebuilds: the publisher's
/// RAM check reads it; upstream ignores unknown keys (and refuses the op).
pub const GZIP_TEXT_MAX_KEY: &str = "atomup.gzip-text-max";

/// `deltas/<F[0:2]>/<F[2:]>-<T>` or `deltas/<T[0:2]>/<T[2:]>` from scratch.
pub fn delta_path(from: Option<&ObjectId>, to: &ObjectId) -> String {
    let t = to.to_modified_base64();
    match from {
        Some(f) => {
            let f = f.to_modified_base64();
            format!("deltas/{}/{}-{}", &f[..2], &f[2..], t)
        }
        None => format!("deltas/{}/{}", &t[..2], &t[2..]),
    }
}

/// A superblock file: possibly wrapped in the signed `(taya{sv})` envelope.
#[derive(Clone, Copy, Debug)]
pub struct SuperblockFile<'a> {
    /// The unsigned superblock bytes (what signatures cover).
    pub unsigned: &'a [u8],
    /// The signed envelope's `a{sv}`, if the file was signed.
    pub signatures: Option<&'a [u8]>,
}

impl<'a> SuperblockFile<'a> {
    pub fn parse(data: &'a [u8]) -> Result<Self> {
        if data.starts_with(&SIGNED_MAGIC) {
            let [_magic, unsigned, meta] = gv::tuple(
                data,
                &[Member::U64, Member::VAR1, Member::VAR8],
                "signed superblock",
            )?;
            VarArray::parse(meta, 8, "signed superblock")?;
            Ok(SuperblockFile {
                unsigned,
                signatures: Some(meta),
            })
        } else {
            Ok(SuperblockFile {
                unsigned: data,
                signatures: None,
            })
        }
    }
}

/// Part compression, the first byte of a part file `(yay)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Xz,
}

/// Splits a part file into its compression and (compressed) payload.
pub fn part_header(data: &[u8]) -> Result<(Compression, &[u8])> {
    let (c, rest) = data
        .split_first()
        .ok_or(Error::malformed("delta part", "empty part"))?;
    Ok((compression(*c)?, rest))
}

pub fn compression(byte: u8) -> Result<Compression> {
    match byte {
        0 => Ok(Compression::None),
        b'x' => Ok(Compression::Xz),
        other => Err(Error::Unsupported {
            what: "part compression",
            value: u64::from(other),
        }),
    }
}

/// Where the members of a decompressed payload `(a(uuu)aa(ayay)ayay)` live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PayloadLayout {
    pub modes: (u64, u64),
    pub xattrs: (u64, u64),
    pub blob: (u64, u64),
    pub ops: (u64, u64),
}

impl PayloadLayout {
    /// Bytes at the end of a payload of `total` bytes that hold the offsets.
    pub fn tail_len(total: u64) -> u64 {
        3 * gv::offset_width(usize::try_from(total).unwrap_or(usize::MAX)) as u64
    }

    /// Computes the layout from the payload's length and its last
    /// [`tail_len`](Self::tail_len) bytes.
    pub fn from_tail(total: u64, tail: &[u8]) -> Result<Self> {
        let w = "part payload";
        let width =
            gv::offset_width(usize::try_from(total).map_err(|_| Error::malformed(w, "too large"))?);
        if tail.len() != 3 * width || total < tail.len() as u64 {
            return Err(Error::malformed(w, "truncated offset table"));
        }
        let off = |i: usize| -> u64 {
            // Offsets are stored last-member-first at the very end.
            let at = tail.len() - (i + 1) * width;
            let mut v = 0u64;
            for (k, b) in tail[at..at + width].iter().enumerate() {
                v |= u64::from(*b) << (8 * k);
            }
            v
        };
        let limit = total - tail.len() as u64;
        let (a, b, c) = (off(0), off(1), off(2));
        if !(a <= b && b <= c && c <= limit) || a % 12 != 0 {
            return Err(Error::malformed(w, "member offsets out of order"));
        }
        Ok(PayloadLayout {
            modes: (0, a),
            xattrs: (a, b),
            blob: (b, c),
            ops: (c, limit),
        })
    }
}

/// The op code of [`Op::GzipRebuild`], atomup's one extension op. Upstream's
/// applier refuses it as an unknown opcode, so the publisher writes it only
/// when asked (`--gzip-rebuild`).
pub const OP_GZIP_REBUILD: u8 = b'G';

/// One delta op with its decoded arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    SpliceMeta {
        size: u64,
        offset: u64,
    },
    SpliceContent {
        mode: u64,
        xattr: u64,
        size: u64,
        offset: u64,
    },
    Open {
        mode: u64,
        xattr: u64,
        size: u64,
    },
    Write {
        size: u64,
        offset: u64,
    },
    SetReadSource {
        offset: u64,
    },
    UnsetReadSource,
    Close,
    Bspatch {
        offset: u64,
        length: u64,
    },
    /// atomup's extension (not upstream's): the open file is a gzip file
    /// rebuilt from its text (`gzip.rs`). The record (header, corrections)
    /// is at `record`; the text is at `data` in the blob, or, with a read
    /// source set, `data` is a bsdiff patch against the old gzip file's text.
    GzipRebuild {
        record_offset: u64,
        record_len: u64,
        data_offset: u64,
        data_len: u64,
    },
}

/// Decodes the op stream. `S` takes different arguments for metadata and
/// content objects, so the caller says which kind the next object is.
#[derive(Clone, Debug)]
pub struct OpReader<'a> {
    ops: &'a [u8],
    pos: usize,
}

impl<'a> OpReader<'a> {
    pub fn new(ops: &'a [u8]) -> Self {
        OpReader { ops, pos: 0 }
    }

    pub fn next_op(&mut self, next_is_meta: bool) -> Result<Option<Op>> {
        let Some(&code) = self.ops.get(self.pos) else {
            return Ok(None);
        };
        self.pos += 1;
        let op = match code {
            b'S' if next_is_meta => Op::SpliceMeta {
                size: self.varint()?,
                offset: self.varint()?,
            },
            b'S' => Op::SpliceContent {
                mode: self.varint()?,
                xattr: self.varint()?,
                size: self.varint()?,
                offset: self.varint()?,
            },
            b'o' => Op::Open {
                mode: self.varint()?,
                xattr: self.varint()?,
                size: self.varint()?,
            },
            b'w' => Op::Write {
                size: self.varint()?,
                offset: self.varint()?,
            },
            b'r' => Op::SetReadSource {
                offset: self.varint()?,
            },
            b'R' => Op::UnsetReadSource,
            b'c' => Op::Close,
            b'B' => Op::Bspatch {
                offset: self.varint()?,
                length: self.varint()?,
            },
            OP_GZIP_REBUILD => Op::GzipRebuild {
                record_offset: self.varint()?,
                record_len: self.varint()?,
                data_offset: self.varint()?,
                data_len: self.varint()?,
            },
            other => {
                return Err(Error::Unsupported {
                    what: "delta opcode",
                    value: u64::from(other),
                })
            }
        };
        Ok(Some(op))
    }

    fn varint(&mut self) -> Result<u64> {
        let (v, n) = read_varint(self.ops.get(self.pos..).unwrap_or(&[]))?;
        self.pos += n;
        Ok(v)
    }
}

/// Unsigned LEB128, at most 10 bytes, no overflow past 64 bits.
pub fn read_varint(data: &[u8]) -> Result<(u64, usize)> {
    let w = "delta op varint";
    let mut v: u64 = 0;
    for i in 0..10 {
        let b = *data.get(i).ok_or(Error::malformed(w, "truncated"))?;
        let bits = u64::from(b & 0x7f);
        if i == 9 && bits > 1 {
            return Err(Error::malformed(w, "overflows 64 bits"));
        }
        v |= bits << (7 * i);
        if b & 0x80 == 0 {
            return Ok((v, i + 1));
        }
    }
    Err(Error::malformed(w, "longer than 10 bytes"))
}

#[cfg(any(test, feature = "encode"))]
pub fn write_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Varints round-trip at the edges; 11-byte and overflowing ones are refused.
    #[test]
    fn varints() {
        for v in [0u64, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            let mut b = Vec::new();
            write_varint(&mut b, v);
            assert_eq!(read_varint(&b).unwrap(), (v, b.len()));
        }
        assert!(read_varint(&[0x80; 11]).is_err());
        assert!(
            read_varint(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02]).is_err()
        );
        assert!(read_varint(&[0x80]).is_err());
    }

    /// Unknown opcodes and truncated arguments are errors, not panics.
    #[test]
    fn op_reader_errors() {
        assert!(OpReader::new(b"Z").next_op(false).is_err());
        assert!(OpReader::new(b"o\x01").next_op(false).is_err());
        let mut r = OpReader::new(b"S\x05\x00c");
        assert_eq!(
            r.next_op(true).unwrap(),
            Some(Op::SpliceMeta { size: 5, offset: 0 })
        );
        assert_eq!(r.next_op(false).unwrap(), Some(Op::Close));
        assert_eq!(r.next_op(false).unwrap(), None);
    }
}
