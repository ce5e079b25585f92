//! The torn-write-safe A/B scheme on top of two grubenv blocks.
//!
//! GRUB rewrites a grubenv in place and has neither checksums nor
//! arithmetic, so one block cannot survive a power cut in the middle of a
//! write. Two blocks can: every write goes to the block that is NOT current,
//! and a block counts only if its last variable, `ATOMUP_SEAL`, repeats all
//! state values (`SEQ:ORDER:TRIAL:LEFT`). A half-written block mixes old and
//! new bytes and its values then disagree with its seal, because every write
//! changes SEQ (agent) or LEFT (GRUB) relative to the block's previous
//! content. The newer of two sealed blocks has the higher `ATOMUP_SEQ`
//! (agent writes bump it), or on equal SEQ the lower `ATOMUP_LEFT` (GRUB only
//! decrements and copies SEQ). The whole argument is in the crate README; the
//! tests below tear every write at every byte and every sector subset.

use crate::grub::{self, GrubError};
use crate::vars::Vars;

pub use crate::names::{LEFT, ORDER, SEAL, SEQ, TRIAL};

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SchemeError {
    #[error("grubenv block is not valid")]
    Block(#[source] GrubError),
    #[error("grubenv block lacks {0}")]
    Missing(&'static str),
    #[error("grubenv block has a malformed {0}")]
    Malformed(&'static str),
    #[error("grubenv block seal does not match its values (torn or foreign write)")]
    SealMismatch,
}

/// A block whose seal matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub seq: u64,
    pub left: u64,
    /// All variables except `ATOMUP_SEQ` and `ATOMUP_SEAL`.
    pub vars: Vars,
}

/// `SEQ:ORDER:TRIAL:LEFT`, exactly what the GRUB script rebuilds to compare.
pub fn seal(seq: &str, order: &str, trial: &str, left: &str) -> String {
    format!("{seq}:{order}:{trial}:{left}")
}

/// Decimal without sign or leading zeros, the only form GRUB's `-gt` and our
/// writer agree on.
fn canonical_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || (s.len() > 1 && s.starts_with('0')) || !s.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    s.parse().ok()
}

/// Parses one block and checks its seal; fuzz entry point.
pub fn parse_sealed(block: &[u8]) -> Result<Sealed, SchemeError> {
    let mut vars = grub::parse(block).map_err(SchemeError::Block)?;
    let get = |name: &'static str| vars.get(name).ok_or(SchemeError::Missing(name));
    let seq_s = get(SEQ)?;
    let order = get(ORDER)?;
    let trial = get(TRIAL)?;
    let left_s = get(LEFT)?;
    if get(SEAL)? != seal(seq_s, order, trial, left_s) {
        return Err(SchemeError::SealMismatch);
    }
    let seq = canonical_decimal(seq_s).ok_or(SchemeError::Malformed(SEQ))?;
    let left = canonical_decimal(left_s).ok_or(SchemeError::Malformed(LEFT))?;
    vars.remove(SEQ);
    vars.remove(SEAL);
    Ok(Sealed { seq, left, vars })
}

/// Serializes a sealed block: SEQ first, then the state variables and any
/// others, the seal last.
pub fn serialize_sealed(vars: &Vars, seq: u64) -> Result<Vec<u8>, SchemeError> {
    let mut out = Vars::default();
    let seq_s = seq.to_string();
    let field = |name: &str| vars.get(name).unwrap_or("").to_owned();
    let (order, trial, left) = (field(ORDER), field(TRIAL), field(LEFT));
    let set =
        |out: &mut Vars, k: &str, v: &str| out.set(k, v).map_err(|_| SchemeError::Malformed(SEAL));
    set(&mut out, SEQ, &seq_s)?;
    set(&mut out, ORDER, &order)?;
    set(&mut out, TRIAL, &trial)?;
    set(&mut out, LEFT, &left)?;
    for (k, v) in vars.iter() {
        if k != SEQ.as_bytes() && k != SEAL.as_bytes() && out.get_bytes(k).is_none() {
            out.set_bytes(k, v);
        }
    }
    set(&mut out, SEAL, &seal(&seq_s, &order, &trial, &left))?;
    grub::serialize(&out).map_err(SchemeError::Block)
}

/// Both blocks and which one is current.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    pub files: [Result<Sealed, SchemeError>; 2],
    pub current: Option<usize>,
}

impl Pair {
    pub fn parse(a: &[u8], b: &[u8]) -> Pair {
        let files = [parse_sealed(a), parse_sealed(b)];
        let current = match (&files[0], &files[1]) {
            (Err(_), Err(_)) => None,
            (Ok(_), Err(_)) => Some(0),
            (Err(_), Ok(_)) => Some(1),
            (Ok(x), Ok(y)) => {
                if y.seq > x.seq || (y.seq == x.seq && y.left < x.left) {
                    Some(1)
                } else {
                    Some(0)
                }
            }
        };
        Pair { files, current }
    }

    pub fn current(&self) -> Option<&Sealed> {
        self.files.get(self.current?)?.as_ref().ok()
    }

    /// Which block the agent writes next and with which SEQ: never the
    /// current block; SEQ above every valid block's.
    pub fn next_write(&self) -> (usize, u64) {
        let max = self
            .files
            .iter()
            .filter_map(|f| f.as_ref().ok())
            .map(|s| s.seq)
            .max();
        let seq = max.map_or(1, |m| m.saturating_add(1));
        match self.current {
            Some(c) => (1 - c, seq),
            None => (0, seq),
        }
    }
}

/// Fuzz entry point for a pair: the input split in half.
pub fn parse_pair(bytes: &[u8]) -> Pair {
    let (a, b) = bytes.split_at(bytes.len() / 2);
    Pair::parse(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(order: &str, trial: &str, left: &str) -> Vars {
        let mut v = Vars::default();
        v.set(ORDER, order).unwrap();
        v.set(TRIAL, trial).unwrap();
        v.set(LEFT, left).unwrap();
        v
    }

    /// GRUB's `save_env` on the non-current block: parse it, set the five
    /// variables in place (existing lines keep their position), rewrite.
    fn grub_save_env(target: &[u8], cur: &Sealed) -> Vec<u8> {
        let mut v = grub::parse(target).unwrap_or_default();
        let left = cur.left.checked_sub(1).unwrap().to_string();
        let seq = cur.seq.to_string();
        let order = cur.vars.get(ORDER).unwrap().to_owned();
        let trial = cur.vars.get(TRIAL).unwrap().to_owned();
        v.set(SEQ, &seq).unwrap();
        v.set(ORDER, &order).unwrap();
        v.set(TRIAL, &trial).unwrap();
        v.set(LEFT, &left).unwrap();
        v.set(SEAL, &seal(&seq, &order, &trial, &left)).unwrap();
        grub::serialize(&v).unwrap()
    }

    fn state_of(p: &Pair) -> Option<(String, String, String)> {
        p.current().map(|s| {
            let g = |k| s.vars.get(k).unwrap_or("").to_owned();
            (g(ORDER), g(TRIAL), g(LEFT))
        })
    }

    /// Every way a power cut can leave the target block: any byte prefix of
    /// the new content over the old, and any subset of 512-byte sectors.
    fn torn_variants(old: &[u8], new: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for k in 0..=new.len() {
            let mut m = old.to_vec();
            m[..k].copy_from_slice(&new[..k]);
            out.push(m);
            // Sector-reordered devices: the later sector landed, the earlier
            // one only up to byte k.
            if k < 512 {
                let mut m = old.to_vec();
                m[..k].copy_from_slice(&new[..k]);
                m[512..].copy_from_slice(&new[512..]);
                out.push(m);
            }
        }
        out
    }

    #[test]
    fn a_torn_write_at_any_byte_leaves_the_old_or_the_new_state() {
        // A sequence of agent and GRUB writes, each torn in every way.
        let mut files = [
            serialize_sealed(&state("A B", "", "0"), 1).unwrap(),
            serialize_sealed(&state("A B", "", "0"), 0).unwrap(),
        ];
        let steps: Vec<Option<Vars>> = vec![
            Some(state("A", "", "0")),    // install start into B
            Some(state("B A", "B", "3")), // install done
            None,                         // GRUB trial boot: 3 -> 2
            None,                         // 2 -> 1
            Some(state("B A", "", "0")),  // health passed
            Some(state("B", "", "0")),    // install start into A
            Some(state("A B", "A", "9")), // install done with 9 attempts
            None,
        ];
        let mut injected = 0;
        for step in steps {
            let pair = Pair::parse(&files[0], &files[1]);
            let before = state_of(&pair).unwrap();
            let (target, new) = match &step {
                Some(v) => {
                    let (t, seq) = pair.next_write();
                    (t, serialize_sealed(v, seq).unwrap())
                }
                None => {
                    let t = 1 - pair.current.unwrap();
                    (t, grub_save_env(&files[t], pair.current().unwrap()))
                }
            };
            let mut after_files = files.clone();
            after_files[target] = new.clone();
            let after = state_of(&Pair::parse(&after_files[0], &after_files[1])).unwrap();
            assert_ne!(before, after);
            for torn in torn_variants(&files[target], &new) {
                let mut f = files.clone();
                f[target] = torn;
                let got = state_of(&Pair::parse(&f[0], &f[1]));
                assert!(
                    got.as_ref() == Some(&before) || got.as_ref() == Some(&after),
                    "{got:?}"
                );
                injected += 1;
            }
            files = after_files;
        }
        assert!(injected > 8 * 1024);
    }

    #[test]
    fn equal_seq_lower_left_is_newer_and_no_valid_block_means_no_state() {
        let a = serialize_sealed(&state("B A", "B", "3"), 4).unwrap();
        let mut bv = grub::parse(&a).unwrap();
        bv.set(LEFT, "2").unwrap();
        bv.set(SEAL, &seal("4", "B A", "B", "2")).unwrap();
        let b = grub::serialize(&bv).unwrap();
        let p = Pair::parse(&a, &b);
        assert_eq!(p.current, Some(1));
        assert_eq!(p.next_write(), (0, 5));
        let p = Pair::parse(b"junk", &[0; 1024]);
        assert_eq!(p.current, None);
        assert_eq!(p.next_write(), (0, 1));
    }

    #[test]
    fn sealed_block_round_trips_and_keeps_foreign_variables() {
        let mut v = state("A B", "", "0");
        v.set("saved_entry", "1").unwrap();
        let block = serialize_sealed(&v, 7).unwrap();
        let s = parse_sealed(&block).unwrap();
        assert_eq!((s.seq, s.left), (7, 0));
        assert_eq!(s.vars, v);
        assert_eq!(serialize_sealed(&s.vars, 7).unwrap(), block);
    }

    #[test]
    fn seal_mismatch_and_leading_zero_seq_are_rejected() {
        let block = b"# GRUB Environment Block\nATOMUP_SEQ=1\nATOMUP_ORDER=A\nATOMUP_TRIAL=\nATOMUP_LEFT=0\nATOMUP_SEAL=1:A B::0\n";
        assert_eq!(parse_sealed(block), Err(SchemeError::SealMismatch));
        let block = b"# GRUB Environment Block\nATOMUP_SEQ=01\nATOMUP_ORDER=A\nATOMUP_TRIAL=\nATOMUP_LEFT=0\nATOMUP_SEAL=01:A::0\n";
        assert_eq!(parse_sealed(block), Err(SchemeError::Malformed(SEQ)));
    }
}
