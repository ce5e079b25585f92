//! bsdiff patches, in the raw stream the `bsdiff` op applies (Matthew
//! Endsley's bsdiff 4 layout: per entry a 24-byte control, the diff bytes,
//! the extra bytes; no header, no bzip2), with the old file's suffix array
//! built by divsufsort instead of Larsson-Sadakane's qsufsort.
//!
//! The matching loop is Colin Percival's, unchanged, and a suffix array is
//! unique for its text, so the patches are the same bytes the `bsdiff`
//! crate makes (a test holds them to it). What changes is the cost: qsufsort
//! was a sixth of a publish's CPU and took 16 bytes of index per old byte;
//! divsufsort takes 4 and a fraction of the time.

use std::io;

/// The largest old file this can index (divsufsort's indices are `i32`).
pub const MAX_OLD: usize = i32::MAX as usize - 1;

/// Appends to `out` the patch that turns `old` into `new`.
pub fn diff(old: &[u8], new: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    if old.len() > MAX_OLD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("old file of {} bytes is too large to index", old.len()),
        ));
    }
    let sa = suffix_array(old);
    // The byte of `old` at `i + off`, if that is inside it.
    let old_at = |i: usize, off: isize| old.get(i.wrapping_add_signed(off)).copied();

    let (mut scan, mut len, mut pos) = (0usize, 0usize, 0usize);
    let (mut lastscan, mut lastpos, mut lastoffset) = (0usize, 0usize, 0isize);
    while scan < new.len() {
        // Find the next match that is not just the current alignment
        // continued (oldscore: bytes that agree at the last offset).
        let mut oldscore = 0isize;
        scan += len;
        let mut scsc = scan;
        while scan < new.len() {
            (pos, len) = search(&sa, old, &new[scan..]);
            while scsc < scan + len {
                if old_at(scsc, lastoffset) == Some(new[scsc]) {
                    oldscore += 1;
                }
                scsc += 1;
            }
            let l = len as isize;
            if (l == oldscore && len != 0) || l > oldscore + 8 {
                break;
            }
            if old_at(scan, lastoffset) == Some(new[scan]) {
                oldscore -= 1;
            }
            scan += 1;
        }
        if len as isize == oldscore && scan != new.len() {
            continue;
        }

        // Extend the previous match forwards and this one backwards while
        // more than half the bytes agree; split any overlap where it scores.
        let (mut s, mut best, mut lenf) = (0isize, 0isize, 0usize);
        let mut i = 0;
        while lastscan + i < scan && lastpos + i < old.len() {
            if old[lastpos + i] == new[lastscan + i] {
                s += 1;
            }
            i += 1;
            if s * 2 - i as isize > best * 2 - lenf as isize {
                best = s;
                lenf = i;
            }
        }
        let mut lenb = 0usize;
        if scan < new.len() {
            let (mut s, mut best) = (0isize, 0isize);
            let mut i = 1;
            while scan >= lastscan + i && pos >= i {
                if old[pos - i] == new[scan - i] {
                    s += 1;
                }
                if s * 2 - i as isize > best * 2 - lenb as isize {
                    best = s;
                    lenb = i;
                }
                i += 1;
            }
        }
        if lastscan + lenf > scan - lenb {
            let overlap = lastscan + lenf - (scan - lenb);
            let (mut s, mut best, mut lens) = (0isize, 0isize, 0usize);
            for i in 0..overlap {
                if new[lastscan + lenf - overlap + i] == old[lastpos + lenf - overlap + i] {
                    s += 1;
                }
                if new[scan - lenb + i] == old[pos - lenb + i] {
                    s -= 1;
                }
                if s > best {
                    best = s;
                    lens = i + 1;
                }
            }
            lenf = lenf + lens - overlap;
            lenb -= lens;
        }

        let extra_end = scan - lenb;
        put_offset(out, lenf as i64);
        put_offset(out, extra_end as i64 - (lastscan + lenf) as i64);
        put_offset(out, (pos - lenb) as i64 - (lastpos + lenf) as i64);
        out.extend(
            new[lastscan..lastscan + lenf]
                .iter()
                .zip(&old[lastpos..lastpos + lenf])
                .map(|(n, o)| n.wrapping_sub(*o)),
        );
        out.extend_from_slice(&new[lastscan + lenf..extra_end]);

        lastscan = extra_end;
        lastpos = pos - lenb;
        lastoffset = pos as isize - scan as isize;
    }
    Ok(())
}

/// The suffix array of `old` with the empty suffix first (as qsufsort
/// returns it, and as `search` expects: every text has at least one entry).
fn suffix_array(old: &[u8]) -> Vec<i32> {
    let mut sa = vec![0i32; old.len() + 1];
    sa[0] = old.len() as i32;
    divsufsort::sort_in_place(old, &mut sa[1..]);
    sa
}

/// The old position sharing the longest prefix with `new`, and its length:
/// a binary search over the suffix array down to two neighbours.
fn search(sa: &[i32], old: &[u8], new: &[u8]) -> (usize, usize) {
    let (mut lo, mut hi) = (0, sa.len() - 1);
    while hi - lo >= 2 {
        let mid = lo + (hi - lo) / 2;
        let suffix = &old[sa[mid] as usize..];
        let n = suffix.len().min(new.len());
        if suffix[..n] < new[..n] {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let (a, b) = (sa[lo] as usize, sa[hi] as usize);
    let (x, y) = (matchlen(&old[a..], new), matchlen(&old[b..], new));
    if x > y {
        (a, x)
    } else {
        (b, y)
    }
}

/// Length of the common prefix, eight bytes at a time.
fn matchlen(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let mut i = 0;
    while i + 8 <= n {
        let x = u64::from_le_bytes(a[i..i + 8].try_into().unwrap_or_default());
        let y = u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
        if x != y {
            return i + ((x ^ y).trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    i + a[i..n]
        .iter()
        .zip(&b[i..n])
        .take_while(|(x, y)| x == y)
        .count()
}

/// bsdiff's 8-byte little-endian sign-magnitude integer.
fn put_offset(out: &mut Vec<u8>, x: i64) {
    let v = if x >= 0 {
        x as u64
    } else {
        x.unsigned_abs() | 1 << 63
    };
    out.extend_from_slice(&v.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift) for test inputs.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn bytes(&mut self, n: usize, alphabet: u8) -> Vec<u8> {
            (0..n)
                .map(|_| (self.next() % alphabet as u64) as u8)
                .collect()
        }
    }

    /// `new` as an edited copy of `old`: runs kept, replaced, inserted and
    /// moved, the shapes a package update has.
    fn edited(rng: &mut Rng, old: &[u8], alphabet: u8) -> Vec<u8> {
        let mut new = Vec::new();
        let mut i = 0;
        while i < old.len() {
            let run = 1 + (rng.next() % 300) as usize;
            let end = (i + run).min(old.len());
            match rng.next() % 6 {
                0 => new.extend(rng.bytes(run / 3 + 1, alphabet)),
                1 => {
                    let at = (rng.next() as usize) % old.len();
                    new.extend_from_slice(&old[at..(at + run).min(old.len())]);
                }
                2 => new.extend(old[i..end].iter().map(|b| b.wrapping_add(1))),
                _ => new.extend_from_slice(&old[i..end]),
            }
            i = end;
        }
        new
    }

    /// The patches are byte for byte the `bsdiff` crate's (same matching,
    /// the same suffix array by another algorithm), on empty, tiny,
    /// repetitive, random and edited inputs, and apply back to `new`.
    #[test]
    fn patches_equal_the_reference_bsdiff_and_apply() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut cases: Vec<(Vec<u8>, Vec<u8>)> = vec![
            (vec![], vec![]),
            (vec![], b"new only".to_vec()),
            (b"old only".to_vec(), vec![]),
            (vec![0; 5000], vec![0; 7000]),
            (b"abcabcabc".repeat(400), b"abcabdabc".repeat(450)),
        ];
        for alphabet in [2u8, 4, 255] {
            for n in [1usize, 17, 1000, 40_000] {
                let old = rng.bytes(n, alphabet);
                let new = edited(&mut rng, &old, alphabet);
                cases.push((old.clone(), new));
                cases.push((old, rng.bytes(n / 2 + 1, alphabet)));
            }
        }
        for (old, new) in &cases {
            let mut ours = Vec::new();
            diff(old, new, &mut ours).unwrap();
            let mut reference = Vec::new();
            ::bsdiff::diff(old, new, &mut reference).unwrap();
            assert!(
                ours == reference,
                "patch differs from the reference for old {} / new {} bytes",
                old.len(),
                new.len()
            );
            let mut back = Vec::new();
            ::bsdiff::patch(old, &mut &ours[..], &mut back).unwrap();
            assert_eq!(&back, new);
        }
    }

    /// The common-prefix length agrees with a byte-by-byte count at every
    /// alignment and length.
    #[test]
    fn matchlen_counts_the_common_prefix() {
        let a: Vec<u8> = (0..40).collect();
        for cut in 0..40 {
            let mut b = a.clone();
            b[cut] = 0xff;
            for n in 0..40 {
                let want = a[..n]
                    .iter()
                    .zip(&b[..n])
                    .take_while(|(x, y)| x == y)
                    .count();
                assert_eq!(matchlen(&a[..n], &b), want);
            }
        }
    }
}
