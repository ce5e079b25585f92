//! U-Boot environment copies as libubootenv and U-Boot itself store them.
//! Parsing and serializing live here, without I/O, so that the choice of the
//! current copy (the only thing that decides what the bootloader sees after a
//! power cut) is a pure function that tests and fuzzers can hammer.

use crate::vars::{Vars, VarsError};

/// Bytes before the data in a single-copy env: CRC-32 (LE).
pub const SINGLE_HEADER: usize = 4;
/// Bytes before the data in a redundant-copy env: CRC-32 (LE) then flags.
pub const REDUNDANT_HEADER: usize = 5;
/// Smallest copy we accept: header plus the `\0\0` of an empty env.
pub const MIN_COPY_SIZE: usize = REDUNDANT_HEADER + 2;

/// Where the copies live: one copy, or two copies with a flags byte each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Single,
    Redundant,
}

impl Layout {
    fn header(self) -> usize {
        match self {
            Layout::Single => SINGLE_HEADER,
            Layout::Redundant => REDUNDANT_HEADER,
        }
    }
}

/// How the flags byte of a redundant env says which copy is current.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagScheme {
    /// Block devices, NAND and files: the newer copy has the higher counter,
    /// 0xff -> 0x00 wraps.
    Incremental,
    /// NOR flash: the current copy is "active" (1) and the old one is
    /// cleared to "obsolete" (0) in place, which NOR can do without an erase.
    Boolean,
}

/// Flags value of the active copy in the boolean (NOR) scheme.
pub const FLAG_ACTIVE: u8 = 1;
/// Flags value an obsolete copy is cleared to in the boolean (NOR) scheme.
pub const FLAG_OBSOLETE: u8 = 0;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum UbootError {
    #[error("U-Boot env copy is {size} bytes, smaller than the minimum of {min}")]
    TooSmall { size: usize, min: usize },
    #[error("U-Boot env copy CRC mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Crc { stored: u32, computed: u32 },
    #[error("U-Boot env copy data is not valid")]
    Data(#[source] VarsError),
    #[error(
        "U-Boot env does not fit: {needed} bytes of variables for {available} bytes of data area"
    )]
    TooBig { needed: usize, available: usize },
}

/// One parsed, CRC-valid copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvCopy {
    pub vars: Vars,
    /// The flags byte; `None` for single-copy envs.
    pub flags: Option<u8>,
}

fn crc32(data: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(data);
    h.finalize()
}

/// [`parse_copy`] on a copy read into `bytes`, parsed in place: the
/// variables end up in the same allocation (no second copy of the env).
pub fn parse_copy_owned(mut bytes: Vec<u8>, layout: Layout) -> Result<EnvCopy, UbootError> {
    let header = check_crc(&bytes, layout)?;
    let flags = (layout == Layout::Redundant).then(|| bytes[4]);
    bytes.drain(..header);
    let vars = Vars::from_uboot_data(bytes).map_err(UbootError::Data)?;
    Ok(EnvCopy { vars, flags })
}

/// Checks a whole copy's CRC; returns the header length.
fn check_crc(bytes: &[u8], layout: Layout) -> Result<usize, UbootError> {
    if bytes.len() < MIN_COPY_SIZE {
        return Err(UbootError::TooSmall {
            size: bytes.len(),
            min: MIN_COPY_SIZE,
        });
    }
    let mut c = CopyCheck::new(layout);
    c.update(bytes);
    c.finish().map(|_| layout.header())
}

/// A copy's CRC and flags byte, checked from pieces streamed through
/// [`CopyCheck::update`]: the current copy of a redundant env is chosen
/// without holding either copy in memory, then only that one is read whole.
#[derive(Clone, Debug)]
pub struct CopyCheck {
    layout: Layout,
    header: [u8; REDUNDANT_HEADER],
    seen: usize,
    crc: crc32fast::Hasher,
}

impl CopyCheck {
    pub fn new(layout: Layout) -> CopyCheck {
        CopyCheck {
            layout,
            header: [0; REDUNDANT_HEADER],
            seen: 0,
            crc: crc32fast::Hasher::new(),
        }
    }

    /// The next bytes of the copy, in order.
    pub fn update(&mut self, mut chunk: &[u8]) {
        let h = self.layout.header();
        if self.seen < h {
            let n = (h - self.seen).min(chunk.len());
            self.header[self.seen..self.seen + n].copy_from_slice(&chunk[..n]);
            self.seen += n;
            chunk = &chunk[n..];
        }
        self.crc.update(chunk);
        self.seen += chunk.len();
    }

    /// The copy's flags byte (`None` for single copies) if its CRC holds.
    pub fn finish(self) -> Result<Option<u8>, UbootError> {
        if self.seen < MIN_COPY_SIZE {
            return Err(UbootError::TooSmall {
                size: self.seen,
                min: MIN_COPY_SIZE,
            });
        }
        let h = &self.header;
        let stored = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let computed = self.crc.finalize();
        if computed != stored {
            return Err(UbootError::Crc { stored, computed });
        }
        Ok((self.layout == Layout::Redundant).then_some(h[4]))
    }
}

/// Parses one copy (the whole `size` bytes of it) and checks its CRC.
pub fn parse_copy(bytes: &[u8], layout: Layout) -> Result<EnvCopy, UbootError> {
    if bytes.len() < MIN_COPY_SIZE {
        return Err(UbootError::TooSmall {
            size: bytes.len(),
            min: MIN_COPY_SIZE,
        });
    }
    let (crc_bytes, rest) = bytes.split_at(4);
    let stored = u32::from_le_bytes([crc_bytes[0], crc_bytes[1], crc_bytes[2], crc_bytes[3]]);
    let (flags, data) = match layout {
        Layout::Single => (None, rest),
        Layout::Redundant => match rest.split_first() {
            Some((f, d)) => (Some(*f), d),
            None => {
                return Err(UbootError::TooSmall {
                    size: bytes.len(),
                    min: MIN_COPY_SIZE,
                })
            }
        },
    };
    let computed = crc32(data);
    if computed != stored {
        return Err(UbootError::Crc { stored, computed });
    }
    let vars = Vars::parse_uboot(data).map_err(UbootError::Data)?;
    Ok(EnvCopy { vars, flags })
}

/// Serializes one copy of exactly `size` bytes (data zero-padded), CRC over
/// the whole data area as U-Boot and libubootenv compute it.
pub fn serialize_copy(
    vars: &Vars,
    layout: Layout,
    size: usize,
    flags: u8,
) -> Result<Vec<u8>, UbootError> {
    let header = layout.header();
    if size < MIN_COPY_SIZE {
        return Err(UbootError::TooSmall {
            size,
            min: MIN_COPY_SIZE,
        });
    }
    let available = size - header;
    // The entries, then the empty entry (the zero padding supplies its NUL).
    let data = vars.uboot_entries();
    if data.len() + 1 > available {
        return Err(UbootError::TooBig {
            needed: data.len() + 1,
            available,
        });
    }
    let mut out = vec![0u8; size];
    out[header..header + data.len()].copy_from_slice(data);
    let crc = crc32(&out[header..]);
    out[..4].copy_from_slice(&crc.to_le_bytes());
    if layout == Layout::Redundant {
        out[4] = flags;
    }
    Ok(out)
}

/// Which of the two copies is current, by libubootenv's rules (which match
/// U-Boot's `env_import_redund`): a copy with a bad CRC loses; if both are
/// valid the flags decide.
pub fn current_index(a: Option<u8>, b: Option<u8>, scheme: FlagScheme) -> Option<usize> {
    match (a, b) {
        (None, None) => None,
        (Some(_), None) => Some(0),
        (None, Some(_)) => Some(1),
        (Some(fa), Some(fb)) => {
            let mut cur = if fb > fa { 1 } else { 0 };
            match scheme {
                FlagScheme::Incremental => {
                    // The counter wraps: 0 after 0xff is newer.
                    if fa == 0xff && fb == 0 {
                        cur = 1;
                    } else if fb == 0xff && fa == 0 {
                        cur = 0;
                    }
                }
                FlagScheme::Boolean => {
                    // An erased (0xff) flag byte counts as freshly written.
                    if fb == 0xff {
                        cur = 1;
                    } else if fa == 0xff {
                        cur = 0;
                    }
                }
            }
            Some(cur)
        }
    }
}

/// A redundant env read from its two copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redundant {
    /// Each copy's parse result; a corrupt copy keeps its error for reporting.
    pub copies: [Result<EnvCopy, UbootError>; 2],
    /// Index of the current copy; `None` when neither copy is valid.
    pub current: Option<usize>,
}

impl Redundant {
    pub fn parse(a: &[u8], b: &[u8], scheme: FlagScheme) -> Redundant {
        let copies = [
            parse_copy(a, Layout::Redundant),
            parse_copy(b, Layout::Redundant),
        ];
        let flag = |c: &Result<EnvCopy, UbootError>| c.as_ref().ok().and_then(|c| c.flags);
        let current = current_index(flag(&copies[0]), flag(&copies[1]), scheme);
        Redundant { copies, current }
    }

    /// Variables of the current copy, if any copy is valid.
    pub fn vars(&self) -> Option<&Vars> {
        let i = self.current?;
        self.copies.get(i)?.as_ref().ok().map(|c| &c.vars)
    }

    /// The next write: which copy index to overwrite and its flags byte.
    /// Always the non-current copy, so the current one survives a power cut.
    pub fn next_write(&self, scheme: FlagScheme) -> (usize, u8) {
        let cur = self.current.map(|cur| {
            let flags = self
                .copies
                .get(cur)
                .and_then(|c| c.as_ref().ok())
                .and_then(|c| c.flags)
                .unwrap_or(0);
            (cur, flags)
        });
        next_write(cur, scheme)
    }
}

/// The next write after the current copy `(index, flags)`: the other copy,
/// with the flags that make it current.
pub fn next_write(current: Option<(usize, u8)>, scheme: FlagScheme) -> (usize, u8) {
    match current {
        Some((cur, flags)) => {
            let next = match scheme {
                FlagScheme::Incremental => flags.wrapping_add(1),
                FlagScheme::Boolean => FLAG_ACTIVE,
            };
            (1 - cur.min(1), next)
        }
        // Nothing valid: libubootenv writes copy 2 with copy 1's flags + 1;
        // we start clean at copy 1 so the result does not depend on garbage.
        None => (0, 1),
    }
}

/// Parses a redundant env from both copies; fuzz entry point (the input is
/// split in half).
pub fn parse_redundant_pair(bytes: &[u8]) -> Redundant {
    let half = bytes.len() / 2;
    let (a, b) = bytes.split_at(half);
    Redundant::parse(a, b, FlagScheme::Incremental)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vars {
        let mut v = Vars::default();
        for (k, val) in pairs {
            v.set(k, val).unwrap();
        }
        v
    }

    #[test]
    fn redundant_copy_round_trips_byte_for_byte() {
        let v = vars(&[
            ("ATOMUP_ORDER", "A B"),
            ("ATOMUP_TRIAL", ""),
            ("ATOMUP_LEFT", "0"),
        ]);
        let bytes = serialize_copy(&v, Layout::Redundant, 0x4000, 7).unwrap();
        let copy = parse_copy(&bytes, Layout::Redundant).unwrap();
        assert_eq!(copy.flags, Some(7));
        assert_eq!(copy.vars, v);
        assert_eq!(
            serialize_copy(&copy.vars, Layout::Redundant, 0x4000, 7).unwrap(),
            bytes
        );
    }

    #[test]
    fn single_copy_round_trips_and_detects_a_flipped_bit() {
        let v = vars(&[("bootdelay", "0")]);
        let mut bytes = serialize_copy(&v, Layout::Single, 256, 0).unwrap();
        assert_eq!(parse_copy(&bytes, Layout::Single).unwrap().vars, v);
        bytes[10] ^= 1;
        assert!(matches!(
            parse_copy(&bytes, Layout::Single),
            Err(UbootError::Crc { .. })
        ));
    }

    #[test]
    fn newer_copy_wins_including_the_0xff_to_0x00_wrap() {
        use FlagScheme::Incremental as I;
        assert_eq!(current_index(Some(1), Some(2), I), Some(1));
        assert_eq!(current_index(Some(3), Some(2), I), Some(0));
        assert_eq!(current_index(Some(0xff), Some(0), I), Some(1));
        assert_eq!(current_index(Some(0), Some(0xff), I), Some(0));
        assert_eq!(current_index(Some(5), Some(5), I), Some(0));
        assert_eq!(current_index(None, Some(5), I), Some(1));
        assert_eq!(current_index(None, None, I), None);
    }

    #[test]
    fn boolean_scheme_prefers_the_active_copy() {
        use FlagScheme::Boolean as B;
        assert_eq!(
            current_index(Some(FLAG_OBSOLETE), Some(FLAG_ACTIVE), B),
            Some(1)
        );
        assert_eq!(
            current_index(Some(FLAG_ACTIVE), Some(FLAG_OBSOLETE), B),
            Some(0)
        );
        assert_eq!(current_index(Some(FLAG_OBSOLETE), Some(0xff), B), Some(1));
    }

    #[test]
    fn corrupt_newer_copy_falls_back_to_the_older_valid_copy() {
        let old = serialize_copy(&vars(&[("x", "old")]), Layout::Redundant, 64, 4).unwrap();
        let mut new = serialize_copy(&vars(&[("x", "new")]), Layout::Redundant, 64, 5).unwrap();
        let r = Redundant::parse(&old, &new, FlagScheme::Incremental);
        assert_eq!(r.vars().unwrap().get("x"), Some("new"));
        assert_eq!(r.next_write(FlagScheme::Incremental), (0, 6));
        new[20] ^= 0x40;
        let r = Redundant::parse(&old, &new, FlagScheme::Incremental);
        assert_eq!(r.current, Some(0));
        assert_eq!(r.vars().unwrap().get("x"), Some("old"));
        assert_eq!(r.next_write(FlagScheme::Incremental), (1, 5));
    }

    /// A write torn at every byte of the copy (prefix written, rest old), for
    /// a sequence of writes that also wraps the flags: the pair always reads
    /// as the state before or after the write.
    #[test]
    fn a_torn_copy_write_at_any_byte_reads_as_before_or_after() {
        const SIZE: usize = 0x400;
        let scheme = FlagScheme::Incremental;
        let mut copies = [
            serialize_copy(&vars(&[("n", "0")]), Layout::Redundant, SIZE, 0xfd).unwrap(),
            serialize_copy(&vars(&[("n", "old")]), Layout::Redundant, SIZE, 0xfc).unwrap(),
        ];
        let mut injected = 0;
        for step in 1..=5 {
            let r = Redundant::parse(&copies[0], &copies[1], scheme);
            let before = r.vars().unwrap().clone();
            let (target, flags) = r.next_write(scheme);
            let after = vars(&[("n", &"x".repeat(step * 7))]);
            let new = serialize_copy(&after, Layout::Redundant, SIZE, flags).unwrap();
            for k in 0..=SIZE {
                let mut torn = copies.clone();
                torn[target][..k].copy_from_slice(&new[..k]);
                let got = Redundant::parse(&torn[0], &torn[1], scheme);
                let v = got.vars().expect("one copy is always valid");
                assert!(v == &before || v == &after, "step {step} cut at {k}");
                injected += 1;
            }
            copies[target] = new;
        }
        // The flags went 0xfd -> 0xfe -> 0xff -> 0x00 -> 0x01 -> 0x02.
        let r = Redundant::parse(&copies[0], &copies[1], scheme);
        assert_eq!(
            r.copies[r.current.unwrap()].as_ref().unwrap().flags,
            Some(0x02)
        );
        assert_eq!(injected, 5 * (SIZE + 1));
    }

    /// The streamed check agrees with the whole-copy parse, however the copy
    /// is cut into pieces, and the in-place parse gives the same variables.
    #[test]
    fn streamed_crc_check_and_in_place_parse_agree_with_parse_copy() {
        let v = vars(&[("a", "1"), ("bb", "two")]);
        let good = serialize_copy(&v, Layout::Redundant, 64, 9).unwrap();
        let mut bad = good.clone();
        bad[30] ^= 1;
        for bytes in [&good, &bad] {
            for piece in [1, 3, 5, 7, 64] {
                let mut c = CopyCheck::new(Layout::Redundant);
                for chunk in bytes.chunks(piece) {
                    c.update(chunk);
                }
                let whole = parse_copy(bytes, Layout::Redundant);
                assert_eq!(c.finish().ok(), whole.as_ref().ok().map(|c| c.flags));
            }
            assert_eq!(
                parse_copy_owned(bytes.to_vec(), Layout::Redundant),
                parse_copy(bytes, Layout::Redundant)
            );
        }
        let single = serialize_copy(&v, Layout::Single, 32, 0).unwrap();
        let mut c = CopyCheck::new(Layout::Single);
        c.update(&single);
        assert_eq!(c.finish(), Ok(None));
    }

    #[test]
    fn env_that_does_not_fit_is_refused() {
        let v = vars(&[("k", &"v".repeat(100))]);
        assert!(matches!(
            serialize_copy(&v, Layout::Redundant, 64, 0),
            Err(UbootError::TooBig { .. })
        ));
    }

    #[test]
    fn tiny_or_empty_inputs_are_errors_not_panics() {
        for n in 0..MIN_COPY_SIZE {
            assert!(parse_copy(&vec![0; n], Layout::Redundant).is_err());
            assert!(parse_copy(&vec![0; n], Layout::Single).is_err());
        }
        let r = parse_redundant_pair(&[]);
        assert_eq!(r.current, None);
    }
}
