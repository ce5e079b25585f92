//! An ordered list of environment variables shared by the U-Boot and GRUB
//! formats. Names and values are kept as bytes so an env written by someone
//! else (any encoding) survives our read-modify-write unchanged.
//!
//! Memory: the variables live in ONE buffer, exactly as U-Boot stores them
//! (`name=value\0` after each other), so an env costs its own size once and
//! nothing per variable; a U-Boot copy is parsed in place in the buffer it
//! was read into ([`Vars::from_uboot_data`]). Lookups scan the buffer: the
//! agent reads and writes three or four variables per transition.

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum VarsError {
    #[error("env data has no terminating empty entry (`\\0\\0`)")]
    Unterminated,
    #[error("variable name {0:?} is empty or contains `=`, NUL or a newline")]
    BadName(String),
    #[error("value of variable {0:?} contains NUL")]
    BadValue(String),
    #[error("env data is larger than 4 GiB")]
    TooLarge,
}

/// Variables in file order; setting an existing name keeps its position.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Vars {
    /// `name=value\0` per variable: names non-empty, without `=` or NUL,
    /// unique; values without NUL.
    buf: Vec<u8>,
}

/// Splits one `name=value` entry (no NUL) at its first `=`.
fn split(entry: &[u8]) -> Option<(&[u8], &[u8])> {
    let eq = entry.iter().position(|&b| b == b'=')?;
    Some((&entry[..eq], &entry[eq + 1..]))
}

impl Vars {
    /// Parses U-Boot env data (`k=v\0...\0\0`); bytes after the terminator
    /// are padding and ignored. Entries without `=` (or with an empty name)
    /// are skipped and a repeated name keeps its first position and its last
    /// value, as libubootenv reads them.
    pub fn parse_uboot(data: &[u8]) -> Result<Vars, VarsError> {
        let end = Self::terminator(data)?;
        // Up to and including the empty entry's NUL: only the padding stays.
        Self::from_uboot_data(data[..=end].to_vec())
    }

    /// [`Vars::parse_uboot`] in place: `data` (the data area as read, with
    /// its padding) becomes the variables' buffer. Peak memory is `data`
    /// plus, only when the env repeats a name, a second buffer and 4 bytes
    /// per variable.
    pub fn from_uboot_data(mut data: Vec<u8>) -> Result<Vars, VarsError> {
        let end = Self::terminator(&data)?;
        data.truncate(end);
        if u32::try_from(data.len()).is_err() {
            return Err(VarsError::TooLarge);
        }
        // Drop entries that are not `name=value` with a non-empty name,
        // compacting in place.
        let (mut read, mut write) = (0, 0);
        while read < data.len() {
            let len = data[read..]
                .iter()
                .position(|&b| b == 0)
                .unwrap_or(data.len() - read);
            let keep = split(&data[read..read + len]).is_some_and(|(name, _)| !name.is_empty());
            if keep {
                data.copy_within(read..read + len + 1, write);
                write += len + 1;
            }
            read += len + 1;
        }
        data.truncate(write);
        Ok(Vars {
            buf: Self::dedupe(data),
        })
    }

    /// Offset just past the last entry (before the empty one that ends the
    /// list).
    fn terminator(data: &[u8]) -> Result<usize, VarsError> {
        let mut at = 0;
        loop {
            let len = data[at..]
                .iter()
                .position(|&b| b == 0)
                .ok_or(VarsError::Unterminated)?;
            if len == 0 {
                return Ok(at);
            }
            at += len + 1;
        }
    }

    /// Entry start offsets of a compacted buffer.
    fn starts(buf: &[u8]) -> Vec<u32> {
        // Exactly sized: a growing vector would briefly hold twice as much.
        let mut out = Vec::with_capacity(buf.iter().filter(|&&b| b == 0).count());
        let mut at = 0;
        while at < buf.len() {
            out.push(at as u32);
            at += buf[at..]
                .iter()
                .position(|&b| b == 0)
                .unwrap_or(buf.len() - at)
                + 1;
        }
        out
    }

    fn entry_at(buf: &[u8], start: u32) -> &[u8] {
        let rest = &buf[start as usize..];
        &rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())]
    }

    /// Resolves repeated names: first position, last value. Envs that repeat
    /// no name (all that U-Boot and we write) come back unchanged.
    fn dedupe(buf: Vec<u8>) -> Vec<u8> {
        let mut by_name = Self::starts(&buf);
        let name = |s: u32| split(Self::entry_at(&buf, s)).map_or(&[][..], |(n, _)| n);
        by_name.sort_unstable_by(|&a, &b| name(a).cmp(name(b)).then(a.cmp(&b)));
        // For each repeated name: (first start, last start); later ones drop.
        let mut firsts: Vec<(u32, u32)> = Vec::new();
        let mut drops: Vec<u32> = Vec::new();
        let mut i = 0;
        while i < by_name.len() {
            let mut j = i + 1;
            while j < by_name.len() && name(by_name[j]) == name(by_name[i]) {
                drops.push(by_name[j]);
                j += 1;
            }
            if j > i + 1 {
                firsts.push((by_name[i], by_name[j - 1]));
            }
            i = j;
        }
        drop(by_name);
        if firsts.is_empty() {
            return buf;
        }
        firsts.sort_unstable();
        drops.sort_unstable();
        let mut out = Vec::with_capacity(buf.len());
        for start in Self::starts(&buf) {
            if drops.binary_search(&start).is_ok() {
                continue;
            }
            let entry = Self::entry_at(&buf, start);
            match firsts.binary_search_by_key(&start, |&(f, _)| f) {
                Ok(k) => {
                    let (n, _) = split(entry).unwrap_or((entry, &[]));
                    let (_, v) = split(Self::entry_at(&buf, firsts[k].1)).unwrap_or((&[], &[]));
                    out.extend_from_slice(n);
                    out.push(b'=');
                    out.extend_from_slice(v);
                }
                Err(_) => out.extend_from_slice(entry),
            }
            out.push(0);
        }
        out
    }

    /// The entries as U-Boot stores them, without the final empty entry.
    pub fn uboot_entries(&self) -> &[u8] {
        &self.buf
    }

    /// U-Boot env data without padding: every `k=v\0`, then the final `\0`.
    pub fn serialize_uboot(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.buf.len() + 1);
        out.extend_from_slice(&self.buf);
        out.push(0);
        out
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.get_bytes(name.as_bytes())
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    pub fn get_bytes(&self, name: &[u8]) -> Option<&[u8]> {
        self.iter().find(|(k, _)| *k == name).map(|(_, v)| v)
    }

    /// Sets a variable after checking that both formats can store it.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), VarsError> {
        if name.is_empty() || name.bytes().any(|b| matches!(b, b'=' | 0 | b'\n')) {
            return Err(VarsError::BadName(name.to_owned()));
        }
        if value.bytes().any(|b| b == 0) {
            return Err(VarsError::BadValue(name.to_owned()));
        }
        self.set_bytes(name.as_bytes(), value.as_bytes());
        Ok(())
    }

    /// Where the entry named `name` lies in the buffer (including its NUL).
    fn find(&self, name: &[u8]) -> Option<std::ops::Range<usize>> {
        let mut at = 0;
        while at < self.buf.len() {
            let len = self.buf[at..].iter().position(|&b| b == 0)?;
            if split(&self.buf[at..at + len]).is_some_and(|(k, _)| k == name) {
                return Some(at..at + len + 1);
            }
            at += len + 1;
        }
        None
    }

    /// Callers guarantee a non-empty name without `=` or NUL and a value
    /// without NUL (the formats' parsers and [`Vars::set`]).
    pub(crate) fn set_bytes(&mut self, name: &[u8], value: &[u8]) {
        let mut entry = Vec::with_capacity(name.len() + value.len() + 2);
        entry.extend_from_slice(name);
        entry.push(b'=');
        entry.extend_from_slice(value);
        entry.push(0);
        match self.find(name) {
            Some(range) => {
                self.buf.splice(range, entry);
            }
            None => self.buf.extend_from_slice(&entry),
        }
    }

    pub fn remove(&mut self, name: &str) {
        if let Some(range) = self.find(name.as_bytes()) {
            self.buf.drain(range);
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.buf
            .split(|&b| b == 0)
            .filter(|e| !e.is_empty())
            .filter_map(split)
    }

    pub fn len(&self) -> usize {
        self.iter().count()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uboot_data_round_trips_and_ignores_padding() {
        let data = b"a=1\0b=two words\0c=\0\0\xff\xff\x00";
        let v = Vars::parse_uboot(data).unwrap();
        assert_eq!(v.get("b"), Some("two words"));
        assert_eq!(v.get("c"), Some(""));
        assert_eq!(v.serialize_uboot(), &data[..data.len() - 3]);
    }

    #[test]
    fn empty_env_and_unterminated_data() {
        assert!(Vars::parse_uboot(b"\0").unwrap().is_empty());
        assert_eq!(Vars::parse_uboot(b"a=1\0b=2"), Err(VarsError::Unterminated));
        assert_eq!(Vars::parse_uboot(b""), Err(VarsError::Unterminated));
    }

    #[test]
    fn entries_without_equals_are_skipped_and_last_duplicate_wins() {
        let v = Vars::parse_uboot(b"junk\0a=1\0a=2\0=x\0\0").unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!(v.get("a"), Some("2"));
    }

    /// A repeated name keeps its first position and its last value, and the
    /// other names their order, whatever the interleaving.
    #[test]
    fn repeated_names_keep_the_first_position_and_the_last_value() {
        let v = Vars::parse_uboot(b"b=1\0a=1\0b=2\0c=1\0a=2\0b=3\0\0").unwrap();
        let got: Vec<(&[u8], &[u8])> = v.iter().collect();
        assert_eq!(
            got,
            vec![(&b"b"[..], &b"3"[..]), (b"a", b"2"), (b"c", b"1")]
        );
        assert_eq!(v.serialize_uboot(), b"b=3\0a=2\0c=1\0\0");
    }

    /// Set replaces in place (position kept), appends new names; remove.
    #[test]
    fn set_keeps_positions_and_remove_drops_one_entry() {
        let mut v = Vars::parse_uboot(b"x=1\0y=22\0z=3\0\0").unwrap();
        v.set("y", "a=b").unwrap();
        v.set("w", "").unwrap();
        v.remove("x");
        v.remove("missing");
        assert_eq!(v.serialize_uboot(), b"y=a=b\0z=3\0w=\0\0");
        assert_eq!(v.get("y"), Some("a=b"));
    }

    /// The one-buffer parser reads every input as the straightforward
    /// list-of-pairs reading does (first position, last value, entries
    /// without a name or `=` skipped): 20000 pseudo-random inputs over a
    /// small alphabet, so names repeat and entries break in every way.
    #[test]
    fn parsing_matches_the_list_of_pairs_reading_on_random_inputs() {
        fn reference(data: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
            let mut out: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
            let mut rest = data;
            loop {
                let end = rest.iter().position(|&b| b == 0)?;
                let entry = &rest[..end];
                if entry.is_empty() {
                    return Some(out);
                }
                if let Some((k, v)) = split(entry).filter(|(k, _)| !k.is_empty()) {
                    match out.iter_mut().find(|(n, _)| n == k) {
                        Some(e) => e.1 = v.to_vec(),
                        None => out.push((k.to_vec(), v.to_vec())),
                    }
                }
                rest = &rest[end + 1..];
            }
        }
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            let len = (seed % 40) as usize;
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    b"ab=\0\0c"[(seed % 6) as usize]
                })
                .collect();
            let got = Vars::parse_uboot(&data).ok().map(|v| {
                v.iter()
                    .map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .collect::<Vec<_>>()
            });
            assert_eq!(got, reference(&data), "{data:?}");
        }
    }

    #[test]
    fn names_that_no_format_can_hold_are_refused() {
        let mut v = Vars::default();
        assert!(v.set("", "x").is_err());
        assert!(v.set("a=b", "x").is_err());
        assert!(v.set("a\nb", "x").is_err());
        assert!(v.set("a", "x\0").is_err());
    }
}
