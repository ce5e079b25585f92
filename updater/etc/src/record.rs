//! The merge record: what the merge that built a slot's layer carried, kept
//! beside that layer (`<state dir>/etc/<slot>/merge`) so it is written and
//! swapped in with it, atomically. `atomup status` reports its counts; its
//! conflict list is the one the issue asks the state directory to keep.
//!
//! | line | meaning |
//! |---|---|
//! | `format=1` | this layout; a higher one is refused rather than misread |
//! | `from=<hex>`, `to=<hex>` | the running commit merged from, the commit the layer is for |
//! | `modified=N`, `removed=N`, `added=N` | the device's changes carried (counts) |
//! | `conflict <path>` | a path both changed: the device's version kept |
//! | `forced <path>` | a vendor-owned path: the device's change dropped |
//! | `skipped <path>` | not carried: a FIFO, socket or device node, or a name that is not UTF-8 |
//!
//! Paths are relative to `/etc`; a backslash, a control character or a
//! space in them is written `\xHH`, so every record is one line. Pure (bytes
//! in, typed record or error out).

use std::fmt::Write as _;

use atomup_ostree::ObjectId;

use crate::merge::Report;

pub const FORMAT: u32 = 1;

/// Name of the record in a layer directory.
pub const RECORD_NAME: &str = "merge";

/// Largest record read.
pub const MAX_RECORD_SIZE: u64 = 4 << 20;

/// A merge record (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MergeRecord {
    pub from: Option<ObjectId>,
    pub to: Option<ObjectId>,
    pub modified: u64,
    pub removed: u64,
    pub added: u64,
    pub conflicts: Vec<String>,
    pub forced: Vec<String>,
    pub skipped: Vec<String>,
}

impl MergeRecord {
    /// The record of a merge's report.
    pub fn of(report: &Report, skipped: &[String], from: ObjectId, to: ObjectId) -> Self {
        MergeRecord {
            from: Some(from),
            to: Some(to),
            modified: report.modified.len() as u64,
            removed: report.removed.len() as u64,
            added: report.added.len() as u64,
            conflicts: report.conflicts.clone(),
            forced: report.forced.clone(),
            skipped: skipped.to_vec(),
        }
    }

    pub fn serialize(&self) -> String {
        let mut out = format!("format={FORMAT}\n");
        for (k, v) in [("from", &self.from), ("to", &self.to)] {
            if let Some(id) = v {
                let _ = writeln!(out, "{k}={}", id.to_hex());
            }
        }
        for (k, v) in [
            ("modified", self.modified),
            ("removed", self.removed),
            ("added", self.added),
        ] {
            let _ = writeln!(out, "{k}={v}");
        }
        for (k, list) in [
            ("conflict", &self.conflicts),
            ("forced", &self.forced),
            ("skipped", &self.skipped),
        ] {
            for p in list {
                let _ = writeln!(out, "{k} {}", escape(p));
            }
        }
        out
    }

    /// Parses a record; the error says which line and why.
    pub fn parse(bytes: &[u8]) -> Result<MergeRecord, String> {
        let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_owned())?;
        let mut r = MergeRecord::default();
        let mut format = None;
        for (i, line) in text.lines().enumerate() {
            let bad = |why: &str| format!("line {}: {why}", i + 1);
            if line.is_empty() {
                continue;
            }
            if let Some((k, v)) = line.split_once(' ') {
                let p = unescape(v).ok_or_else(|| bad("bad escape"))?;
                match k {
                    "conflict" => r.conflicts.push(p),
                    "forced" => r.forced.push(p),
                    "skipped" => r.skipped.push(p),
                    _ => {} // a later list this agent does not know
                }
                continue;
            }
            let (k, v) = line.split_once('=').ok_or_else(|| bad("malformed"))?;
            let id = || ObjectId::from_hex(v).map_err(|_| bad("not a checksum"));
            let n = || v.parse::<u64>().map_err(|_| bad("not a count"));
            match k {
                "format" => {
                    if v != "1" {
                        return Err(bad(&format!(
                            "format {v} is newer than this agent understands ({FORMAT})"
                        )));
                    }
                    format = Some(());
                }
                "from" => r.from = Some(id()?),
                "to" => r.to = Some(id()?),
                "modified" => r.modified = n()?,
                "removed" => r.removed = n()?,
                "added" => r.added = n()?,
                _ => {}
            }
        }
        format.ok_or("no format line")?;
        Ok(r)
    }

    /// `"2 modified, 0 removed, 1 added, 1 conflicts (kept the device's)"`.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} modified, {} removed, {} added, {} conflicts (kept the device's)",
            self.modified,
            self.removed,
            self.added,
            self.conflicts.len()
        );
        if !self.forced.is_empty() {
            let _ = write!(s, ", {} reset to the vendor's default", self.forced.len());
        }
        if !self.skipped.is_empty() {
            let _ = write!(s, ", {} not carried (special files)", self.skipped.len());
        }
        s
    }
}

/// A path as one record field: `\`, controls and spaces as `\xHH`.
pub fn escape(p: &str) -> String {
    let mut out = String::with_capacity(p.len());
    for c in p.chars() {
        if c == '\\' || c == ' ' || c.is_control() {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                let _ = write!(out, "\\x{b:02x}");
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn unescape(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            let hex = s.get(i + 2..i + 4)?;
            if b.get(i + 1) != Some(&b'x') {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record survives serialize → parse unchanged, paths with spaces,
    /// newlines and backslashes included.
    #[test]
    fn record_round_trips() {
        let r = MergeRecord {
            from: Some(ObjectId([1; 32])),
            to: Some(ObjectId([2; 32])),
            modified: 3,
            removed: 1,
            added: 7,
            conflicts: vec!["hosts".into(), "odd name\nwith\\stuff".into()],
            forced: vec!["atomup/trusted.pub".into()],
            skipped: vec!["run/fifo".into()],
        };
        let text = r.serialize();
        assert_eq!(text.lines().count(), 10, "{text}");
        assert_eq!(MergeRecord::parse(text.as_bytes()).unwrap(), r);
        assert_eq!(
            r.summary(),
            "3 modified, 1 removed, 7 added, 2 conflicts (kept the device's), \
             1 reset to the vendor's default, 1 not carried (special files)"
        );
    }

    /// A newer format, a missing format line, bad counts and bad escapes are
    /// refused, never misread.
    #[test]
    fn bad_records_are_refused() {
        for text in [
            "format=2\n",
            "modified=1\n",
            "format=1\nmodified=x\n",
            "format=1\nconflict a\\x4\n",
            "format=1\nconflict a\\q41\n",
            "format=1\nto=abc\n",
            "format=1\nnonsense\n",
        ] {
            assert!(MergeRecord::parse(text.as_bytes()).is_err(), "{text:?}");
        }
    }
}
