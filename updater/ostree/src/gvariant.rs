//! A small, bounded GVariant decoder (and the few encoders the device needs to
//! re-serialize trees for verification). OSTree stores every object as a
//! GVariant, so this is the front door for all untrusted bytes: it never
//! recurses, never allocates in proportion to attacker-chosen counts before
//! checking them against the input length, and never relies on the buffer
//! being aligned in memory (only positions relative to the value's start are
//! checked, which is what the GVariant spec defines).
//!
//! Decoding is schema-driven: callers describe a tuple with [`Member`]s and get
//! back byte slices for each member, so there is no generic value tree and no
//! recursion depth to bound.

use crate::error::{Error, Result};

/// Width in bytes of framing offsets for a container whose total serialized
/// size (offsets included) is `total`.
pub const fn offset_width(total: usize) -> usize {
    if total <= 0xFF {
        1
    } else if total <= 0xFFFF {
        2
    } else if total <= 0xFFFF_FFFF {
        4
    } else {
        8
    }
}

/// Reads one little-endian framing offset of `width` bytes at `at`.
fn read_offset(data: &[u8], at: usize, width: usize, what: &'static str) -> Result<usize> {
    let end = at
        .checked_add(width)
        .ok_or(Error::malformed(what, "offset overflow"))?;
    let bytes = data
        .get(at..end)
        .ok_or(Error::malformed(what, "framing offset out of range"))?;
    let mut v: u64 = 0;
    for (i, b) in bytes.iter().enumerate() {
        v |= u64::from(*b) << (8 * i);
    }
    usize::try_from(v).map_err(|_| Error::malformed(what, "framing offset too large"))
}

fn align_up(pos: usize, align: usize, what: &'static str) -> Result<usize> {
    debug_assert!(align.is_power_of_two());
    pos.checked_add(align - 1)
        .map(|p| p & !(align - 1))
        .ok_or(Error::malformed(what, "alignment overflow"))
}

/// Checks that `data[from..to]` (alignment padding) is all zeros, as canonical
/// GVariant requires; non-canonical encodings would let two byte strings mean
/// the same object, which breaks content addressing.
fn check_padding(data: &[u8], from: usize, to: usize, what: &'static str) -> Result<()> {
    let pad = data
        .get(from..to)
        .ok_or(Error::malformed(what, "padding out of range"))?;
    if pad.iter().any(|b| *b != 0) {
        return Err(Error::malformed(what, "non-zero padding"));
    }
    Ok(())
}

/// Shape of one tuple member: its alignment and, if fixed-size, its size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    pub align: usize,
    pub fixed: Option<usize>,
}

impl Member {
    pub const BYTE: Member = Member {
        align: 1,
        fixed: Some(1),
    };
    pub const U32: Member = Member {
        align: 4,
        fixed: Some(4),
    };
    pub const U64: Member = Member {
        align: 8,
        fixed: Some(8),
    };
    /// `s`, `ay`, `a(...)` of byte-aligned elements, `(say)` and friends.
    pub const VAR1: Member = Member {
        align: 1,
        fixed: None,
    };
    /// `a{sv}`, `v` and other 8-aligned variable-size values.
    pub const VAR8: Member = Member {
        align: 8,
        fixed: None,
    };
    /// `a(uuu)`: array of 4-aligned fixed elements.
    pub const VAR4: Member = Member {
        align: 4,
        fixed: None,
    };
}

/// Splits a serialized tuple into its members. Rejects trailing bytes,
/// out-of-order or overlapping offsets and non-zero padding.
pub fn tuple<'a, const N: usize>(
    data: &'a [u8],
    members: &[Member; N],
    what: &'static str,
) -> Result<[&'a [u8]; N]> {
    let mut out: [&'a [u8]; N] = [&[]; N];
    let all_fixed = members.iter().all(|m| m.fixed.is_some());
    let len = data.len();
    if all_fixed {
        let mut pos = 0usize;
        let mut max_align = 1;
        for (i, m) in members.iter().enumerate() {
            max_align = max_align.max(m.align);
            let start = align_up(pos, m.align, what)?;
            check_padding(data, pos, start, what)?;
            let size = m.fixed.unwrap_or(0);
            let end = start
                .checked_add(size)
                .ok_or(Error::malformed(what, "size overflow"))?;
            out[i] = data
                .get(start..end)
                .ok_or(Error::malformed(what, "truncated fixed tuple"))?;
            pos = end;
        }
        let total = align_up(pos.max(1), max_align, what)?;
        if total != len {
            return Err(Error::malformed(what, "fixed tuple has wrong size"));
        }
        check_padding(data, pos, len, what)?;
        return Ok(out);
    }
    let width = offset_width(len);
    let n_offsets = members
        .iter()
        .enumerate()
        .filter(|(i, m)| m.fixed.is_none() && *i + 1 != N)
        .count();
    let table = n_offsets
        .checked_mul(width)
        .ok_or(Error::malformed(what, "offset table overflow"))?;
    let limit = len.checked_sub(table).ok_or(Error::malformed(
        what,
        "truncated: no room for framing offsets",
    ))?;
    let mut pos = 0usize;
    let mut next_offset = 0usize;
    for (i, m) in members.iter().enumerate() {
        let start = align_up(pos, m.align, what)?;
        if start > limit {
            return Err(Error::malformed(what, "member starts past the end"));
        }
        check_padding(data, pos, start, what)?;
        let end = match m.fixed {
            Some(size) => start
                .checked_add(size)
                .ok_or(Error::malformed(what, "size overflow"))?,
            None if i + 1 == N => limit,
            None => {
                next_offset += 1;
                let at = len - next_offset * width;
                read_offset(data, at, width, what)?
            }
        };
        if end < start || end > limit {
            return Err(Error::malformed(
                what,
                "member offset out of order or past the end",
            ));
        }
        out[i] = &data[start..end];
        pos = end;
    }
    if pos != limit {
        return Err(Error::malformed(
            what,
            "trailing bytes after the last member",
        ));
    }
    Ok(out)
}

/// Splits an array of fixed-size elements.
pub fn fixed_array<'a>(
    data: &'a [u8],
    elem_size: usize,
    what: &'static str,
) -> Result<std::slice::ChunksExact<'a, u8>> {
    if elem_size == 0 || !data.len().is_multiple_of(elem_size) {
        return Err(Error::malformed(
            what,
            "array length is not a multiple of the element size",
        ));
    }
    Ok(data.chunks_exact(elem_size))
}

/// An array of variable-size elements: a validated view that yields elements
/// without allocating.
#[derive(Clone, Debug)]
pub struct VarArray<'a> {
    data: &'a [u8],
    table_start: usize,
    width: usize,
    count: usize,
    align: usize,
    what: &'static str,
}

impl<'a> VarArray<'a> {
    pub fn parse(data: &'a [u8], align: usize, what: &'static str) -> Result<Self> {
        if data.is_empty() {
            return Ok(VarArray {
                data,
                table_start: 0,
                width: 1,
                count: 0,
                align,
                what,
            });
        }
        let width = offset_width(data.len());
        let last_at = data
            .len()
            .checked_sub(width)
            .ok_or(Error::malformed(what, "truncated array"))?;
        let table_start = read_offset(data, last_at, width, what)?;
        if table_start > last_at || !(data.len() - table_start).is_multiple_of(width) {
            return Err(Error::malformed(what, "array offset table out of range"));
        }
        let count = (data.len() - table_start) / width;
        let arr = VarArray {
            data,
            table_start,
            width,
            count,
            align,
            what,
        };
        // Validate every offset once up front so iteration and `get` are cheap
        // and element slices never overlap.
        let mut prev = 0usize;
        for i in 0..count {
            let start = align_up(prev, align, what)?;
            let end = arr.end_of(i)?;
            if start > end || end > table_start {
                return Err(Error::malformed(what, "array element offsets out of order"));
            }
            check_padding(data, prev, start, what)?;
            prev = end;
        }
        if prev != table_start {
            return Err(Error::malformed(what, "gap before the array offset table"));
        }
        Ok(arr)
    }

    fn end_of(&self, i: usize) -> Result<usize> {
        read_offset(
            self.data,
            self.table_start + i * self.width,
            self.width,
            self.what,
        )
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Element `i`, or `None` past the end.
    pub fn get(&self, i: usize) -> Option<&'a [u8]> {
        if i >= self.count {
            return None;
        }
        let prev = if i == 0 { 0 } else { self.end_of(i - 1).ok()? };
        let start = align_up(prev, self.align, self.what).ok()?;
        let end = self.end_of(i).ok()?;
        self.data.get(start..end)
    }

    pub fn iter(&self) -> impl Iterator<Item = &'a [u8]> + '_ {
        (0..self.count).filter_map(move |i| self.get(i))
    }
}

/// A GVariant string `s`: UTF-8, NUL-terminated, no interior NUL.
pub fn string<'a>(data: &'a [u8], what: &'static str) -> Result<&'a str> {
    let (last, body) = data
        .split_last()
        .ok_or(Error::malformed(what, "empty string value"))?;
    if *last != 0 || body.contains(&0) {
        return Err(Error::malformed(
            what,
            "string not NUL-terminated or has interior NUL",
        ));
    }
    std::str::from_utf8(body).map_err(|_| Error::malformed(what, "string is not UTF-8"))
}

/// A variant `v`: returns (child bytes, type string).
pub fn variant<'a>(data: &'a [u8], what: &'static str) -> Result<(&'a [u8], &'a str)> {
    let nul = data
        .iter()
        .rposition(|b| *b == 0)
        .ok_or(Error::malformed(what, "variant without type"))?;
    let ty = std::str::from_utf8(&data[nul + 1..])
        .map_err(|_| Error::malformed(what, "bad variant type"))?;
    if ty.is_empty() || !ty.is_ascii() {
        return Err(Error::malformed(what, "bad variant type"));
    }
    Ok((&data[..nul], ty))
}

/// A maybe `m`: `None` for Nothing. Variable-size children carry a trailing 0.
pub fn maybe<'a>(
    data: &'a [u8],
    fixed: Option<usize>,
    what: &'static str,
) -> Result<Option<&'a [u8]>> {
    if data.is_empty() {
        return Ok(None);
    }
    match fixed {
        Some(size) if data.len() == size => Ok(Some(data)),
        Some(_) => Err(Error::malformed(
            what,
            "maybe of fixed element has wrong size",
        )),
        None => match data.split_last() {
            Some((0, body)) => Ok(Some(body)),
            _ => Err(Error::malformed(what, "maybe without trailing zero")),
        },
    }
}

/// Reads a u32 that OSTree stores big-endian inside a GVariant.
pub fn be_u32(data: &[u8], what: &'static str) -> Result<u32> {
    let b: [u8; 4] = data
        .try_into()
        .map_err(|_| Error::malformed(what, "expected 4 bytes"))?;
    Ok(u32::from_be_bytes(b))
}

pub fn be_u64(data: &[u8], what: &'static str) -> Result<u64> {
    let b: [u8; 8] = data
        .try_into()
        .map_err(|_| Error::malformed(what, "expected 8 bytes"))?;
    Ok(u64::from_be_bytes(b))
}

/// Byte order of a static delta's numeric fields (`ostree.endianness`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endian {
    Little,
    Big,
}

impl Endian {
    pub fn u32(self, data: &[u8], what: &'static str) -> Result<u32> {
        let b: [u8; 4] = data
            .try_into()
            .map_err(|_| Error::malformed(what, "expected 4 bytes"))?;
        Ok(match self {
            Endian::Little => u32::from_le_bytes(b),
            Endian::Big => u32::from_be_bytes(b),
        })
    }
    pub fn u64(self, data: &[u8], what: &'static str) -> Result<u64> {
        let b: [u8; 8] = data
            .try_into()
            .map_err(|_| Error::malformed(what, "expected 8 bytes"))?;
        Ok(match self {
            Endian::Little => u64::from_le_bytes(b),
            Endian::Big => u64::from_be_bytes(b),
        })
    }
}

/// Looks `key` up in an `a{sv}` dictionary; returns the variant's (child, type).
pub fn lookup<'a>(
    dict: &'a [u8],
    key: &str,
    what: &'static str,
) -> Result<Option<(&'a [u8], &'a str)>> {
    for entry in VarArray::parse(dict, 8, what)?.iter() {
        let [k, v] = tuple(entry, &[Member::VAR1, Member::VAR8], what)?;
        if string(k, what)? == key {
            return variant(v, what).map(Some);
        }
    }
    Ok(None)
}

// ---------------------------------------------------------------------------
// Encoding. The device needs these to re-serialize dirtree/dirmeta/file headers
// when it verifies a written tree, so they are always compiled; the publisher's
// higher-level encoders live behind the `encode` feature.

fn push_offset(out: &mut Vec<u8>, value: usize, width: usize) {
    let v = value as u64;
    out.extend_from_slice(&v.to_le_bytes()[..width]);
}

/// The framing width GLib picks for a body of `body` bytes with `n` offsets.
fn width_for(body: usize, n: usize) -> usize {
    for w in [1usize, 2, 4] {
        let max = match w {
            1 => 0xFF,
            2 => 0xFFFF,
            _ => 0xFFFF_FFFF,
        };
        if body + n * w <= max {
            return w;
        }
    }
    8
}

fn pad_to(out: &mut Vec<u8>, align: usize) {
    while !out.len().is_multiple_of(align) {
        out.push(0);
    }
}

/// Serializes a tuple from already-serialized members.
pub fn enc_tuple(members: &[(&[u8], Member)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut ends = Vec::new();
    let all_fixed = members.iter().all(|(_, m)| m.fixed.is_some());
    let mut max_align = 1;
    for (i, (bytes, m)) in members.iter().enumerate() {
        max_align = max_align.max(m.align);
        pad_to(&mut out, m.align);
        out.extend_from_slice(bytes);
        if m.fixed.is_none() && i + 1 != members.len() {
            ends.push(out.len());
        }
    }
    if all_fixed {
        if out.is_empty() {
            out.push(0);
        }
        pad_to(&mut out, max_align);
        return out;
    }
    let w = width_for(out.len(), ends.len());
    for end in ends.iter().rev() {
        push_offset(&mut out, *end, w);
    }
    out
}

/// Serializes an array of variable-size elements.
pub fn enc_var_array<I, B>(elems: I, align: usize) -> Vec<u8>
where
    I: IntoIterator<Item = B>,
    B: AsRef<[u8]>,
{
    let mut out = Vec::new();
    let mut ends = Vec::new();
    for e in elems {
        pad_to(&mut out, align);
        out.extend_from_slice(e.as_ref());
        ends.push(out.len());
    }
    if ends.is_empty() {
        return out;
    }
    let w = width_for(out.len(), ends.len());
    for end in ends {
        push_offset(&mut out, end, w);
    }
    out
}

/// Serializes a string `s`.
pub fn enc_str(s: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(s.len() + 1);
    v.extend_from_slice(s.as_bytes());
    v.push(0);
    v
}

/// Serializes a variant `v` from a child value and its type string.
pub fn enc_variant(child: &[u8], ty: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(child.len() + ty.len() + 1);
    v.extend_from_slice(child);
    v.push(0);
    v.extend_from_slice(ty.as_bytes());
    v
}

/// Serializes an `a{sv}` from (key, serialized child, type) triples; keys must
/// already be sorted (GLib's `a{sv}` builder keeps insertion order; OSTree
/// sorts where it matters, and so do we for determinism).
pub fn enc_asv(entries: &[(&str, Vec<u8>, &str)]) -> Vec<u8> {
    let items: Vec<Vec<u8>> = entries
        .iter()
        .map(|(k, child, ty)| {
            let key = enc_str(k);
            let val = enc_variant(child, ty);
            enc_tuple(&[(&key, Member::VAR1), (&val, Member::VAR8)])
        })
        .collect();
    enc_var_array(items, 8)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Round trip of `(say)` arrays and tuples including a multi-byte offset table.
    #[test]
    fn tuple_and_array_round_trip() {
        let names = ["a", "bb", "ccc"];
        let elems: Vec<Vec<u8>> = names
            .iter()
            .map(|n| enc_tuple(&[(&enc_str(n), Member::VAR1), (&[7u8; 32][..], Member::VAR1)]))
            .collect();
        let arr = enc_var_array(&elems, 1);
        let parsed = VarArray::parse(&arr, 1, "t").unwrap();
        assert_eq!(parsed.len(), 3);
        for (i, e) in parsed.iter().enumerate() {
            let [s, ay] = tuple(e, &[Member::VAR1, Member::VAR1], "t").unwrap();
            assert_eq!(string(s, "t").unwrap(), names[i]);
            assert_eq!(ay, &[7u8; 32]);
        }
        assert_eq!(enc_var_array(parsed.iter(), 1), arr);
        // 2-byte offsets.
        let big: Vec<Vec<u8>> = (0..40).map(|i| vec![i as u8; 10]).collect();
        let enc = enc_var_array(&big, 1);
        assert!(enc.len() > 255);
        let p = VarArray::parse(&enc, 1, "t").unwrap();
        assert_eq!(p.iter().map(<[u8]>::to_vec).collect::<Vec<_>>(), big);
    }

    /// Fixed tuples are padded to their alignment and `()` is one byte.
    #[test]
    fn fixed_tuple_sizes() {
        let t = enc_tuple(&[(&[1], Member::BYTE), (&[2, 0, 0, 0], Member::U32)]);
        assert_eq!(t, vec![1, 0, 0, 0, 2, 0, 0, 0]);
        let [a, b] = tuple(&t, &[Member::BYTE, Member::U32], "t").unwrap();
        assert_eq!((a, b), (&[1u8][..], &[2u8, 0, 0, 0][..]));
        assert!(tuple(&t[..7], &[Member::BYTE, Member::U32], "t").is_err());
        assert_eq!(enc_tuple(&[]), vec![0]);
    }

    /// Non-canonical or hostile encodings are refused, not misread.
    #[test]
    fn rejects_bad_framing() {
        // Offset pointing past the end.
        assert!(VarArray::parse(&[1, 2, 9], 1, "t").is_err());
        // Offsets out of order: elements end at 2 then 1.
        assert!(VarArray::parse(&[1, 2, 2, 1], 1, "t").is_err());
        // Non-zero padding before an 8-aligned element.
        let mut a = enc_asv(&[("k", vec![1], "y"), ("kk", vec![2], "y")]);
        assert!(VarArray::parse(&a, 8, "t").is_ok());
        a[5] = 0xff;
        assert!(VarArray::parse(&a, 8, "t").is_err() || lookup(&a, "kk", "t").is_err());
        // Trailing byte after a tuple's last fixed member.
        assert!(tuple(&[b'a', 0, 1, 2, 1], &[Member::VAR1, Member::BYTE], "t").is_err());
        assert!(string(b"ab", "t").is_err());
        assert!(string(b"a\0b\0", "t").is_err());
        assert!(variant(b"abc", "t").is_err());
    }

    /// `a{sv}` lookups find keys and report the variant type.
    #[test]
    fn asv_lookup() {
        let d = enc_asv(&[
            ("ostree.endianness", vec![b'l'], "y"),
            ("x", enc_str("hi"), "s"),
        ]);
        assert_eq!(
            lookup(&d, "ostree.endianness", "t").unwrap(),
            Some((&b"l"[..], "y"))
        );
        let (v, ty) = lookup(&d, "x", "t").unwrap().unwrap();
        assert_eq!((string(v, "t").unwrap(), ty), ("hi", "s"));
        assert_eq!(lookup(&d, "nope", "t").unwrap(), None);
        assert_eq!(lookup(&[], "nope", "t").unwrap(), None);
    }

    /// Maybe values: Nothing, Just(fixed), Just(variable).
    #[test]
    fn maybes() {
        assert_eq!(maybe(&[], None, "t").unwrap(), None);
        assert_eq!(maybe(&[5], Some(1), "t").unwrap(), Some(&[5u8][..]));
        assert_eq!(maybe(b"hi\0\0", None, "t").unwrap(), Some(&b"hi\0"[..]));
        assert!(maybe(b"hi", None, "t").is_err());
    }
}
