//! What kind of bytes a file holds, and for ELF files, which byte ranges are
//! which kind. The part builder puts like with like (all machine code of a
//! part together, all string tables together, all relocation tables
//! together...), each kind in its own xz block with settings that suit it:
//! within one LZMA2 window, the code of twenty libraries compresses better
//! than twenty libraries one after another, and a BCJ filter or 8-byte
//! record settings only help the bytes they were made for. A file is
//! rebuilt on the device by `w` ops that take its ranges from those blocks
//! in file order, so nothing about the output changes.
//!
//! The ELF reader is defensive: any inconsistency (offsets past the end,
//! overlapping sections, odd sizes) falls back to "the whole file is one
//! range of generic bytes". Every range list covers the file exactly once,
//! in order.

use super::xzfmt::Bcj;

/// Where a range of bytes goes in a part. The order of the variants is the
/// order of the regions (and xz blocks) in a part: plain LZMA2 blocks
/// first, then delta-filtered ones, then BCJ ones, so a decoder switches
/// filter chains (and may reallocate its window) as few times as possible.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// dirtree / dirmeta objects.
    Meta,
    /// Text files, symlink targets.
    Text,
    /// Binary data with no better home.
    Generic,
    /// Already-compressed data (gzip, xz, zstd, images...): not worth LZMA time.
    Stored,
    /// bsdiff patches.
    Patch,
    /// String tables, notes, comments, read-only data.
    Strings,
    /// Fixed-size records: symbols, dynamic section, GOT, arrays of
    /// pointers, section headers. `wide` = 64-bit ELF (8-byte fields).
    Tables { wide: bool },
    /// Unwind tables and writable data (4-byte-aligned mixed content).
    Data,
    /// Tables of `stride`-byte records whose fields grow from one record to
    /// the next (relocations, the sorted `.eh_frame_hdr` lookup table):
    /// xz's delta filter at that distance turns them into small numbers.
    Records { stride: u8 },
    /// Executable sections, with the BCJ filter of their machine.
    Code(Bcj),
}

impl Kind {
    /// Alignment (relative to the block start) that ranges of this kind get,
    /// so instruction words and record fields line up with the LZMA2
    /// position bits and the BCJ filter's 4-byte steps.
    pub fn align(self) -> u64 {
        match self {
            Kind::Code(Bcj::Arm64) | Kind::Data => 4,
            Kind::Tables { wide: true } => 8,
            Kind::Tables { wide: false } => 4,
            Kind::Records { stride } if stride % 8 == 0 => 8,
            Kind::Records { .. } => 4,
            _ => 1,
        }
    }
}

/// A range `[start, end)` of a file and its kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    pub start: usize,
    pub end: usize,
    pub kind: Kind,
}

/// Ranges smaller than this are folded into their neighbour: a `w` op and
/// its offset cost about as much as what moving them would gain.
const MIN_PIECE: usize = 256;

/// Files below this are never split.
const MIN_SPLIT_FILE: usize = 4096;

/// Kind of a whole non-ELF file, from its first bytes and its byte statistics.
pub fn file_kind(data: &[u8]) -> Kind {
    if is_compressed(data) {
        return Kind::Stored;
    }
    let sample = &data[..data.len().min(8192)];
    let texty = sample
        .iter()
        .all(|&b| b >= 0x20 || matches!(b, b'\t' | b'\n' | b'\r' | 0x0c | 0x1b));
    if texty {
        Kind::Text
    } else {
        Kind::Generic
    }
}

/// Known compressed formats by magic, or near-random byte statistics.
fn is_compressed(d: &[u8]) -> bool {
    const MAGICS: [&[u8]; 9] = [
        b"\x1f\x8b",         // gzip
        b"\xfd7zXZ\x00",     // xz
        b"\x28\xb5\x2f\xfd", // zstd
        b"BZh",              // bzip2
        b"\x89PNG",          // png
        b"\xff\xd8\xff",     // jpeg
        b"PK\x03\x04",       // zip, jar
        b"\x04\x22\x4d\x18", // lz4
        b"\x5d\x00\x00",     // lzma alone
    ];
    if MAGICS.iter().any(|m| d.starts_with(m)) {
        return true;
    }
    // Order-0 entropy above 7.9 bits/byte over at least 4 KiB: LZMA cannot
    // do anything with it either.
    if d.len() < 4096 {
        return false;
    }
    let mut hist = [0u32; 256];
    for &b in d {
        hist[usize::from(b)] += 1;
    }
    let n = d.len() as f64;
    let h: f64 = hist
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum();
    h > 7.9
}

/// Splits a file into kind ranges: ELF files by section, anything else as
/// one range of [`file_kind`].
pub fn pieces(data: &[u8]) -> Vec<Piece> {
    if data.is_empty() {
        return Vec::new();
    }
    let whole = |kind| {
        vec![Piece {
            start: 0,
            end: data.len(),
            kind,
        }]
    };
    // A raw arm64 Linux kernel ("Image": magic "ARM\x64" at offset 56, per
    // the kernel's arm64 booting.rst) is machine code from end to end.
    if data.len() >= MIN_SPLIT_FILE && data.get(56..60) == Some(b"ARM\x64") {
        return whole(Kind::Code(Bcj::Arm64));
    }
    if data.len() < MIN_SPLIT_FILE || !data.starts_with(b"\x7fELF") {
        return whole(if data.starts_with(b"\x7fELF") {
            Kind::Generic
        } else {
            file_kind(data)
        });
    }
    match elf_pieces(data) {
        Some(p) => p,
        None => whole(Kind::Generic),
    }
}

/// ELF machine numbers that have a BCJ filter.
const EM_386: u16 = 3;
const EM_X86_64: u16 = 62;
const EM_AARCH64: u16 = 183;

const SHT_PROGBITS: u32 = 1;
const SHT_SYMTAB: u32 = 2;
const SHT_STRTAB: u32 = 3;
const SHT_RELA: u32 = 4;
const SHT_HASH: u32 = 5;
const SHT_DYNAMIC: u32 = 6;
const SHT_NOTE: u32 = 7;
const SHT_NOBITS: u32 = 8;
const SHT_REL: u32 = 9;
const SHT_DYNSYM: u32 = 11;
const SHT_INIT_ARRAY: u32 = 14;
const SHT_FINI_ARRAY: u32 = 15;
const SHT_PREINIT_ARRAY: u32 = 16;
const SHT_RELR: u32 = 19;
const SHT_GNU_VERDEF: u32 = 0x6fff_fffd;
const SHT_GNU_VERNEED: u32 = 0x6fff_fffe;

const SHF_WRITE: u64 = 1;
const SHF_ALLOC: u64 = 2;
const SHF_EXECINSTR: u64 = 4;
const SHF_STRINGS: u64 = 0x20;

struct Reader<'a> {
    d: &'a [u8],
    big: bool,
}

impl Reader<'_> {
    fn u16(&self, at: usize) -> Option<u16> {
        let b: [u8; 2] = self.d.get(at..at + 2)?.try_into().ok()?;
        Some(if self.big {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        })
    }
    fn u32(&self, at: usize) -> Option<u32> {
        let b: [u8; 4] = self.d.get(at..at + 4)?.try_into().ok()?;
        Some(if self.big {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    }
    fn u64(&self, at: usize) -> Option<u64> {
        let b: [u8; 8] = self.d.get(at..at + 8)?.try_into().ok()?;
        Some(if self.big {
            u64::from_be_bytes(b)
        } else {
            u64::from_le_bytes(b)
        })
    }
}

fn elf_pieces(d: &[u8]) -> Option<Vec<Piece>> {
    let wide = match d.get(4)? {
        1 => false,
        2 => true,
        _ => return None,
    };
    let big = match d.get(5)? {
        1 => false,
        2 => true,
        _ => return None,
    };
    let r = Reader { d, big };
    let machine = r.u16(18)?;
    let bcj = match machine {
        EM_AARCH64 if !big => Bcj::Arm64,
        EM_X86_64 | EM_386 if !big => Bcj::X86,
        _ => Bcj::None,
    };
    let (shoff, shentsize, shnum, shstrndx) = if wide {
        (r.u64(0x28)?, r.u16(0x3A)?, r.u16(0x3C)?, r.u16(0x3E)?)
    } else {
        (
            u64::from(r.u32(0x20)?),
            r.u16(0x2E)?,
            r.u16(0x30)?,
            r.u16(0x32)?,
        )
    };
    let min_ent = if wide { 64 } else { 40 };
    if shnum == 0 || usize::from(shentsize) < min_ent || shstrndx >= shnum {
        return None;
    }
    let shoff = usize::try_from(shoff).ok()?;
    let table_len = usize::from(shentsize) * usize::from(shnum);
    let table_end = shoff.checked_add(table_len)?;
    if table_end > d.len() {
        return None;
    }
    struct Sec {
        name: u32,
        ty: u32,
        flags: u64,
        off: usize,
        size: usize,
    }
    let mut secs = Vec::with_capacity(usize::from(shnum));
    for i in 0..usize::from(shnum) {
        let o = shoff + i * usize::from(shentsize);
        let s = if wide {
            Sec {
                name: r.u32(o)?,
                ty: r.u32(o + 4)?,
                flags: r.u64(o + 8)?,
                off: usize::try_from(r.u64(o + 24)?).ok()?,
                size: usize::try_from(r.u64(o + 32)?).ok()?,
            }
        } else {
            Sec {
                name: r.u32(o)?,
                ty: r.u32(o + 4)?,
                flags: u64::from(r.u32(o + 8)?),
                off: usize::try_from(r.u32(o + 16)?).ok()?,
                size: usize::try_from(r.u32(o + 20)?).ok()?,
            }
        };
        secs.push(s);
    }
    let strtab = &secs[usize::from(shstrndx)];
    let names = d.get(strtab.off..strtab.off.checked_add(strtab.size)?)?;
    let name_of = |n: u32| -> &[u8] {
        let s = names.get(n as usize..).unwrap_or(&[]);
        &s[..s.iter().position(|&b| b == 0).unwrap_or(s.len())]
    };

    let table = Kind::Tables { wide };
    let (rela, rel) = if wide { (24, 16) } else { (12, 8) };
    let mut ranges: Vec<(usize, usize, Kind)> = Vec::with_capacity(secs.len() + 1);
    for s in &secs {
        if s.ty == SHT_NOBITS || s.ty == 0 || s.size == 0 {
            continue;
        }
        let end = s.off.checked_add(s.size)?;
        if end > d.len() {
            return None;
        }
        let name = name_of(s.name);
        let kind = match s.ty {
            _ if s.flags & SHF_EXECINSTR != 0 => Kind::Code(bcj),
            SHT_STRTAB | SHT_NOTE => Kind::Strings,
            SHT_RELA => Kind::Records { stride: rela },
            SHT_REL => Kind::Records { stride: rel },
            SHT_SYMTAB | SHT_DYNSYM | SHT_RELR | SHT_DYNAMIC | SHT_INIT_ARRAY | SHT_FINI_ARRAY
            | SHT_PREINIT_ARRAY => table,
            SHT_HASH | SHT_GNU_VERDEF | SHT_GNU_VERNEED => Kind::Generic,
            SHT_PROGBITS => {
                if s.flags & SHF_STRINGS != 0 {
                    Kind::Strings
                } else if name == b".eh_frame_hdr" {
                    // Version, pointers, count, then sorted (i32, i32) pairs.
                    Kind::Records { stride: 8 }
                } else if name == b".got"
                    || name == b".got.plt"
                    || name.starts_with(b".data.rel.ro")
                {
                    table
                } else if name == b".eh_frame" || s.flags & SHF_WRITE != 0 {
                    Kind::Data
                } else if s.flags & SHF_ALLOC != 0 {
                    // .rodata and friends: mostly strings and constants.
                    Kind::Strings
                } else if name.starts_with(b".debug") {
                    Kind::Generic
                } else {
                    // .comment, .gnu_debuglink and other non-loaded notes.
                    Kind::Strings
                }
            }
            _ => Kind::Generic,
        };
        ranges.push((s.off, end, kind));
    }
    ranges.push((shoff, table_end, table));
    ranges.sort_by_key(|r| (r.0, r.1));

    // Cover the file exactly once, in order: gaps (headers, padding) are
    // generic; a range overlapping the previous one is not split out.
    let mut out: Vec<Piece> = Vec::with_capacity(ranges.len() * 2 + 1);
    let mut pos = 0usize;
    let push = |out: &mut Vec<Piece>, start: usize, end: usize, kind: Kind| {
        if start >= end {
            return;
        }
        match out.last_mut() {
            // Same kind as the previous range, or too small to move: extend it.
            Some(last) if last.kind == kind || end - start < MIN_PIECE => last.end = end,
            _ => out.push(Piece { start, end, kind }),
        }
    };
    for (start, end, kind) in ranges {
        if start < pos {
            continue;
        }
        push(&mut out, pos, start, Kind::Generic);
        push(&mut out, start, end, kind);
        pos = end;
    }
    push(&mut out, pos, d.len(), Kind::Generic);
    // A small first range was pushed before anything could absorb it: fold
    // it into the next one.
    if out.len() > 1 && out[0].end - out[0].start < MIN_PIECE {
        let first = out.remove(0);
        out[0].start = first.start;
    }
    debug_assert!(covers(&out, d.len()));
    Some(out)
}

/// The ranges cover `[0, len)` exactly, in order.
pub fn covers(p: &[Piece], len: usize) -> bool {
    let mut pos = 0;
    for x in p {
        if x.start != pos || x.end <= x.start {
            return false;
        }
        pos = x.end;
    }
    pos == len || (len == 0 && p.is_empty())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small synthetic ELF64 little-endian file for `machine`: header,
    /// .text (instruction-like words), .rodata, .rela.dyn, .dynstr, a NOBITS
    /// .bss, the section name table and the section header table at the end.
    pub(crate) fn synthetic_elf(machine: u16, seed: u32) -> Vec<u8> {
        let mut d = vec![0u8; 64];
        d[..4].copy_from_slice(b"\x7fELF");
        d[4] = 2;
        d[5] = 1;
        d[6] = 1;
        d[18..20].copy_from_slice(&machine.to_le_bytes());
        let mut secs: Vec<(u32, u32, u64, usize, usize)> = vec![(0, 0, 0, 0, 0)];
        let names = b"\0.text\0.rodata\0.rela.dyn\0.dynstr\0.bss\0.shstrtab\0";
        let name_at = |n: &[u8]| names.windows(n.len()).position(|w| w == n).unwrap_or(0) as u32;
        let mut x = seed.wrapping_mul(2_654_435_761).max(1);
        let mut rnd = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        // .text: BL instructions (0x94xxxxxx) and other words, 16-byte aligned.
        while !d.len().is_multiple_of(16) {
            d.push(0);
        }
        let start = d.len();
        for i in 0..3000u32 {
            let w = if i % 5 == 0 {
                0x9400_0000 | (rnd() & 0xFFF)
            } else {
                0xD503_201F ^ (rnd() & 0x0F0F)
            };
            d.extend_from_slice(&w.to_le_bytes());
        }
        secs.push((
            name_at(b".text"),
            SHT_PROGBITS,
            SHF_ALLOC | SHF_EXECINSTR,
            start,
            d.len() - start,
        ));
        let start = d.len();
        for i in 0..400 {
            d.extend_from_slice(format!("message number {i} from seed {seed}\0").as_bytes());
        }
        secs.push((
            name_at(b".rodata"),
            SHT_PROGBITS,
            SHF_ALLOC,
            start,
            d.len() - start,
        ));
        while !d.len().is_multiple_of(8) {
            d.push(0);
        }
        let start = d.len();
        for i in 0..300u64 {
            d.extend_from_slice(&(0x10000 + i * 8).to_le_bytes());
            d.extend_from_slice(&0x403u64.to_le_bytes());
            d.extend_from_slice(&u64::from(rnd() & 0xFFFF).to_le_bytes());
        }
        secs.push((
            name_at(b".rela.dyn"),
            SHT_RELA,
            SHF_ALLOC,
            start,
            d.len() - start,
        ));
        let start = d.len();
        for s in ["malloc", "free", "memcpy", "printf", "GLIBC_2.17"] {
            d.extend_from_slice(s.as_bytes());
            d.push(0);
        }
        secs.push((
            name_at(b".dynstr"),
            SHT_STRTAB,
            SHF_ALLOC,
            start,
            d.len() - start,
        ));
        secs.push((
            name_at(b".bss"),
            SHT_NOBITS,
            SHF_ALLOC | SHF_WRITE,
            d.len(),
            4096,
        ));
        let start = d.len();
        d.extend_from_slice(names);
        secs.push((name_at(b".shstrtab"), SHT_STRTAB, 0, start, names.len()));
        while !d.len().is_multiple_of(8) {
            d.push(0);
        }
        let shoff = d.len();
        for (name, ty, flags, off, size) in &secs {
            let mut e = [0u8; 64];
            e[0..4].copy_from_slice(&name.to_le_bytes());
            e[4..8].copy_from_slice(&ty.to_le_bytes());
            e[8..16].copy_from_slice(&flags.to_le_bytes());
            e[24..32].copy_from_slice(&(*off as u64).to_le_bytes());
            e[32..40].copy_from_slice(&(*size as u64).to_le_bytes());
            d.extend_from_slice(&e);
        }
        d[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        d[0x3A..0x3C].copy_from_slice(&64u16.to_le_bytes());
        d[0x3C..0x3E].copy_from_slice(&(secs.len() as u16).to_le_bytes());
        d[0x3E..0x40].copy_from_slice(&((secs.len() - 1) as u16).to_le_bytes());
        d
    }

    /// An ELF file is split by section kind; the ranges cover it exactly.
    #[test]
    fn elf_is_split_by_section_kind() {
        let d = synthetic_elf(EM_AARCH64, 1);
        let p = pieces(&d);
        assert!(covers(&p, d.len()), "{p:?}");
        let kinds: Vec<Kind> = p.iter().map(|x| x.kind).collect();
        assert!(kinds.contains(&Kind::Code(Bcj::Arm64)), "{kinds:?}");
        assert!(kinds.contains(&Kind::Strings), "{kinds:?}");
        assert!(kinds.contains(&Kind::Records { stride: 24 }), "{kinds:?}");
        assert!(kinds.contains(&Kind::Tables { wide: true }), "{kinds:?}");
        let x86 = pieces(&synthetic_elf(EM_X86_64, 1));
        assert!(x86.iter().any(|x| x.kind == Kind::Code(Bcj::X86)));
    }

    /// Damaged ELF headers (section table past the end, sections past the
    /// end, bad string index, truncation anywhere) never panic, and always
    /// give ranges that cover the file.
    #[test]
    fn damaged_elf_falls_back_to_one_range() {
        let good = synthetic_elf(EM_AARCH64, 2);
        let mut cases = Vec::new();
        let mut past = good.clone();
        past[0x28..0x30].copy_from_slice(&u64::MAX.to_le_bytes());
        cases.push(past);
        let mut idx = good.clone();
        idx[0x3E..0x40].copy_from_slice(&999u16.to_le_bytes());
        cases.push(idx);
        // A section whose size runs past the end of the file.
        let shoff = u64::from_le_bytes(good[0x28..0x30].try_into().unwrap()) as usize;
        let mut sec = good.clone();
        sec[shoff + 64 + 32..shoff + 64 + 40].copy_from_slice(&(1u64 << 40).to_le_bytes());
        cases.push(sec);
        for cut in (0..good.len()).step_by(97) {
            cases.push(good[..cut].to_vec());
        }
        for d in cases {
            let p = pieces(&d);
            assert!(covers(&p, d.len()), "{p:?} for {} bytes", d.len());
        }
        // Every single-byte corruption of the header and section table.
        for i in (0..64).chain(shoff..good.len()) {
            let mut d = good.clone();
            d[i] ^= 0xFF;
            let p = pieces(&d);
            assert!(covers(&p, d.len()), "flip at {i}");
        }
    }

    /// A raw arm64 kernel Image (not ELF) is code for the ARM64 BCJ filter.
    #[test]
    fn arm64_kernel_image_is_code() {
        let mut img = vec![0u8; 8192];
        img[56..60].copy_from_slice(b"ARM\x64");
        assert_eq!(
            pieces(&img),
            vec![Piece {
                start: 0,
                end: 8192,
                kind: Kind::Code(Bcj::Arm64)
            }]
        );
        img[56] = b'X';
        assert_eq!(pieces(&img)[0].kind, Kind::Generic);
    }

    /// Compressed formats are stored, text is text, other bytes generic.
    #[test]
    fn file_kinds() {
        assert_eq!(file_kind(b"\x1f\x8b\x08\x00rest"), Kind::Stored);
        assert_eq!(file_kind(b"#!/bin/sh\necho hi\n"), Kind::Text);
        assert_eq!(file_kind(b"\x00\x01\x02binary"), Kind::Generic);
        let mut x = 1u32;
        let noise: Vec<u8> = (0..65536)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (x >> 16) as u8
            })
            .collect();
        assert_eq!(file_kind(&noise), Kind::Stored);
        assert!(covers(&pieces(&[]), 0));
    }
}
