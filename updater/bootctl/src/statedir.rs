//! The agent's records under the state dir (default `/var/lib/atomup`):
//! which commit and version each slot holds, the releases that rolled back
//! (never retried), and the highest version this device ever accepted
//! (downgrade protection that survives a slot being rewritten). The env only
//! knows slot letters; these files give them names.
//!
//! | file | format 2 (UTF-8 `key=value` lines, first line `format=2`) |
//! |---|---|
//! | `slots/A`, `slots/B` | `commit=<64 hex>` and `version=<u64>` (both or neither), `timestamp=<unix seconds>`, `status=installing` (only between install start and done); unknown keys ignored |
//! | `rollbacks` | then one `<unix seconds> <slot> <commit hex or -> <version or ->` line per detected rollback |
//! | `rollback-reasons` | then one `<unix seconds> <slot> <reason text>` line per rollback of `rollbacks` that has a reason (same time and slot) |
//! | `accepted` | `version=<u64>`: the highest release version ever installed here |
//!
//! Records parse strictly and typed: a version that is not an unsigned
//! integer, a commit that is not 64 lower-case hex digits, a timestamp that is
//! not an integer, a repeated key or a commit without a version is an error,
//! and every reader fails closed on it (a record that read as "version 0"
//! silently disabled downgrade protection). A `format` above 2 is refused
//! rather than misread.
//!
//! Upgrade (bootupd's `upconvert`): files without `format` or with `format=1`
//! (written by earlier agents and by image builders) are read with the same
//! types, except that a slot record's `timestamp` may be RFC 3339 (`…Z` or
//! `…±HH:MM`), which format 1 documented; they are rewritten as format 2 the
//! next time they are written. A format-1 value that does not fit its type is
//! an error as in format 2: there is no safe guess for it.
//!
//! Why the reasons of rollbacks have a file of their own: right after a
//! rollback the device runs the OTHER slot's agent, an older release, and it
//! reads `rollbacks` on every `update` and `status`. Format 2 readers refuse a
//! line with a fifth field and a format above 2, so a reason inside
//! `rollbacks` would leave the fallback slot unable to update ever again.
//! `rollback-reasons` is a file they do not know, so they never read it.

use crate::io::io_err;
use crate::BootctlError;
use atomup_ostree::ObjectId;
use atomup_policy::Slot;
use std::path::{Path, PathBuf};

/// The format this agent writes.
pub const FORMAT: u32 = 2;
/// Largest slot or accepted-version record read (a few short lines).
pub const MAX_RECORD: u64 = 4096;
/// Largest rollback list read: about ten thousand rollbacks.
pub const MAX_ROLLBACKS: u64 = 1 << 20;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("record is not UTF-8")]
    NotUtf8,
    #[error("record format {0} is not one this agent understands (1 or {FORMAT})")]
    Format(String),
    #[error("record line {0} is malformed")]
    Line(usize),
    #[error("record line {line}: `{key}` is not {expected}")]
    Value {
        line: usize,
        key: &'static str,
        expected: &'static str,
    },
    #[error("record line {0}: key given twice")]
    Duplicate(usize),
    #[error("record names a commit without a version, or a version without a commit")]
    Incomplete,
}

/// What a slot holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SlotRecord {
    /// The installed commit and its release version (both or neither).
    pub installed: Option<Installed>,
    /// The release's timestamp (unix seconds).
    pub timestamp: Option<u64>,
    /// Between install start and install done.
    pub installing: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Installed {
    pub commit: ObjectId,
    pub version: u64,
}

impl SlotRecord {
    /// The record of a slot being written.
    pub fn installing() -> SlotRecord {
        SlotRecord {
            installing: true,
            ..Default::default()
        }
    }

    pub fn installed(commit: ObjectId, version: u64, timestamp: Option<u64>) -> SlotRecord {
        SlotRecord {
            installed: Some(Installed { commit, version }),
            timestamp,
            installing: false,
        }
    }

    pub fn commit(&self) -> Option<ObjectId> {
        self.installed.map(|i| i.commit)
    }

    pub fn version(&self) -> Option<u64> {
        self.installed.map(|i| i.version)
    }
}

/// Which format a file declares; a missing `format` line is format 1.
fn format_of(v: &str) -> Result<u32, RecordError> {
    match v {
        "1" => Ok(1),
        "2" => Ok(2),
        other => Err(RecordError::Format(other.to_owned())),
    }
}

/// An unsigned decimal without sign or leading zeros.
pub fn parse_u64(s: &str) -> Option<u64> {
    if s.is_empty() || (s.len() > 1 && s.starts_with('0')) || !s.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    s.parse().ok()
}

/// A commit id: exactly 64 lower-case hex digits.
pub fn parse_commit(s: &str) -> Option<ObjectId> {
    let mut id = ObjectId::default();
    atomup_ostree::hex::decode_lower(s, &mut id.0)?;
    Some(id)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DDTHH:MM:SS` then `Z` or `±HH:MM` (fractions refused), as unix
/// seconds; format-1 records documented their timestamps so.
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let month_days = [
        31,
        28 + i64::from(y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)),
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&mo)
        || d < 1
        || d > month_days[(mo - 1) as usize]
        || h > 23
        || mi > 59
        || sec > 60
    {
        return None;
    }
    let offset = match &s[19..] {
        "Z" | "z" => 0,
        tz if tz.len() == 6
            && matches!(tz.as_bytes()[0], b'+' | b'-')
            && tz.as_bytes()[3] == b':' =>
        {
            let (oh, om) = (num(20..22)?, num(23..25)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let o = oh * 3600 + om * 60;
            if tz.starts_with('-') {
                -o
            } else {
                o
            }
        }
        _ => return None,
    };
    let t = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec - offset;
    u64::try_from(t).ok()
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ`, for people (`atomup status`).
pub fn rfc3339(t: u64) -> String {
    let days = (t / 86_400) as i64;
    let rem = t % 86_400;
    // civil_from_days (Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// One `key=value` line: its number, key and value.
type Line<'a> = (usize, &'a str, &'a str);

/// The `key=value` lines of a record after its `format` line, with the
/// format they were written in; repeated keys refused.
fn lines(bytes: &[u8]) -> Result<(u32, Vec<Line<'_>>), RecordError> {
    let text = std::str::from_utf8(bytes).map_err(|_| RecordError::NotUtf8)?;
    let mut format = 1;
    let mut out: Vec<Line<'_>> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.is_empty() {
            continue;
        }
        let (k, v) = line.split_once('=').ok_or(RecordError::Line(n))?;
        if v.is_empty() || v.chars().any(char::is_control) {
            return Err(RecordError::Line(n));
        }
        if k == "format" {
            if !out.is_empty() || n != 1 {
                return Err(RecordError::Line(n));
            }
            format = format_of(v)?;
            continue;
        }
        if out.iter().any(|(_, seen, _)| *seen == k) {
            return Err(RecordError::Duplicate(n));
        }
        out.push((n, k, v));
    }
    Ok((format, out))
}

/// Parses a `slots/X` record (format 1 or 2); fuzz entry point.
pub fn parse_slot_record(bytes: &[u8]) -> Result<SlotRecord, RecordError> {
    let (format, lines) = lines(bytes)?;
    let (mut commit, mut version, mut rec) = (None, None, SlotRecord::default());
    for (line, k, v) in lines {
        let bad = |key, expected| RecordError::Value {
            line,
            key,
            expected,
        };
        match k {
            "commit" => {
                commit = Some(parse_commit(v).ok_or(bad("commit", "64 lower-case hex digits"))?)
            }
            "version" => version = Some(parse_u64(v).ok_or(bad("version", "an unsigned integer"))?),
            "timestamp" => {
                let t = parse_u64(v).or_else(|| (format == 1).then(|| parse_rfc3339(v)).flatten());
                rec.timestamp = Some(t.ok_or(bad("timestamp", "unix seconds"))?);
            }
            "status" if v == "installing" => rec.installing = true,
            "status" => return Err(bad("status", "`installing`")),
            _ => {}
        }
    }
    rec.installed = match (commit, version) {
        (Some(commit), Some(version)) => Some(Installed { commit, version }),
        (None, None) => None,
        _ => return Err(RecordError::Incomplete),
    };
    Ok(rec)
}

pub fn serialize_slot_record(r: &SlotRecord) -> String {
    let mut out = format!("format={FORMAT}\n");
    if let Some(i) = r.installed {
        out.push_str(&format!(
            "commit={}\nversion={}\n",
            i.commit.to_hex(),
            i.version
        ));
    }
    if let Some(t) = r.timestamp {
        out.push_str(&format!("timestamp={t}\n"));
    }
    if r.installing {
        out.push_str("status=installing\n");
    }
    out
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollbackRecord {
    /// When the rollback was detected (unix seconds).
    pub at: u64,
    pub slot: Slot,
    pub commit: Option<ObjectId>,
    pub version: Option<u64>,
    /// Why the slot was given up (a failed required check, attempts spent),
    /// one line of at most [`MAX_REASON`] bytes; `None` from older agents.
    pub reason: Option<String>,
}

/// Longest rollback reason kept.
pub const MAX_REASON: usize = 300;

/// A reason as it is stored: control characters (newlines) become spaces,
/// cut at [`MAX_REASON`] bytes on a character boundary.
pub fn clean_reason(reason: &str) -> String {
    let mut out = String::new();
    for c in reason.trim().chars() {
        if out.len() + c.len_utf8() > MAX_REASON {
            break;
        }
        out.push(if c.is_control() { ' ' } else { c });
    }
    out
}

/// Parses `rollback-reasons`: `(at, slot, reason)` lines after `format=1`.
pub fn parse_rollback_reasons(bytes: &[u8]) -> Result<Vec<(u64, Slot, String)>, RecordError> {
    let text = std::str::from_utf8(bytes).map_err(|_| RecordError::NotUtf8)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.is_empty() {
            continue;
        }
        if let Some(v) = line.strip_prefix("format=") {
            if n != 1 || v != "1" {
                return Err(RecordError::Format(v.to_owned()));
            }
            continue;
        }
        let mut f = line.splitn(3, ' ');
        let (Some(at), Some(slot), Some(reason)) = (f.next(), f.next(), f.next()) else {
            return Err(RecordError::Line(n));
        };
        let bad = |key, expected| RecordError::Value {
            line: n,
            key,
            expected,
        };
        if reason.is_empty() || reason.chars().any(char::is_control) {
            return Err(RecordError::Line(n));
        }
        out.push((
            parse_u64(at).ok_or(bad("time", "unix seconds"))?,
            Slot::parse(slot).ok_or(bad("slot", "A or B"))?,
            reason.to_owned(),
        ));
    }
    Ok(out)
}

pub fn serialize_rollback_reasons(list: &[RollbackRecord]) -> String {
    let mut out = String::from("format=1\n");
    for r in list {
        if let Some(reason) = r
            .reason
            .as_deref()
            .map(clean_reason)
            .filter(|r| !r.is_empty())
        {
            out.push_str(&format!("{} {} {reason}\n", r.at, r.slot));
        }
    }
    out
}

/// Parses the `rollbacks` file (format 1 or 2); fuzz entry point.
pub fn parse_rollbacks(bytes: &[u8]) -> Result<Vec<RollbackRecord>, RecordError> {
    let text = std::str::from_utf8(bytes).map_err(|_| RecordError::NotUtf8)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.is_empty() {
            continue;
        }
        if let Some(v) = line.strip_prefix("format=") {
            if n != 1 {
                return Err(RecordError::Line(n));
            }
            format_of(v)?;
            continue;
        }
        let f: Vec<&str> = line.split(' ').collect();
        let [at, slot, commit, version] = f.as_slice() else {
            return Err(RecordError::Line(n));
        };
        let bad = |key, expected| RecordError::Value {
            line: n,
            key,
            expected,
        };
        out.push(RollbackRecord {
            at: parse_u64(at).ok_or(bad("time", "unix seconds"))?,
            slot: Slot::parse(slot).ok_or(bad("slot", "A or B"))?,
            commit: match *commit {
                "-" => None,
                c => Some(parse_commit(c).ok_or(bad("commit", "64 lower-case hex digits"))?),
            },
            version: match *version {
                "-" => None,
                v => Some(parse_u64(v).ok_or(bad("version", "an unsigned integer"))?),
            },
            reason: None,
        });
    }
    Ok(out)
}

pub fn serialize_rollbacks(list: &[RollbackRecord]) -> String {
    let mut out = format!("format={FORMAT}\n");
    for r in list {
        out.push_str(&format!(
            "{} {} {} {}\n",
            r.at,
            r.slot,
            r.commit.map_or("-".into(), |c| c.to_hex()),
            r.version.map_or("-".into(), |v| v.to_string())
        ));
    }
    out
}

/// Parses the `accepted` record.
pub fn parse_accepted(bytes: &[u8]) -> Result<u64, RecordError> {
    let (_, lines) = lines(bytes)?;
    let mut version = None;
    for (line, k, v) in lines {
        if k == "version" {
            version = Some(parse_u64(v).ok_or(RecordError::Value {
                line,
                key: "version",
                expected: "an unsigned integer",
            })?);
        }
    }
    version.ok_or(RecordError::Incomplete)
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(root: &Path) -> StateDir {
        StateDir {
            root: root.to_path_buf(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn slot_path(&self, slot: Slot) -> PathBuf {
        self.root.join("slots").join(slot.letter())
    }

    fn read(
        &self,
        path: &Path,
        cap: u64,
        what: &'static str,
    ) -> Result<Option<Vec<u8>>, BootctlError> {
        atomup_fsio::read_capped_opt(path, cap).map_err(io_err(what, path))
    }

    fn record<T>(path: PathBuf, r: Result<T, RecordError>) -> Result<T, BootctlError> {
        r.map_err(|source| BootctlError::Record { path, source })
    }

    /// The slot's record; `Ok(None)` when there is none yet.
    pub fn slot_record(&self, slot: Slot) -> Result<Option<SlotRecord>, BootctlError> {
        let path = self.slot_path(slot);
        match self.read(&path, MAX_RECORD, "reading the slot record")? {
            Some(b) => Self::record(path, parse_slot_record(&b)).map(Some),
            None => Ok(None),
        }
    }

    /// Replaces the slot's record (`atomup_fsio::replace`: old or new after a
    /// power cut, durable once this returns).
    pub fn write_slot_record(&self, slot: Slot, r: &SlotRecord) -> Result<(), BootctlError> {
        let path = self.slot_path(slot);
        let dir = self.root.join("slots");
        std::fs::create_dir_all(&dir).map_err(io_err("creating the slot record dir", &dir))?;
        atomup_fsio::replace(&path, serialize_slot_record(r).as_bytes())
            .map_err(io_err("writing the slot record", &path))
    }

    /// The rollback records, each with its reason when one was recorded.
    /// An unreadable reasons file fails like the list does: status and
    /// reports never show a guess.
    pub fn rollbacks(&self) -> Result<Vec<RollbackRecord>, BootctlError> {
        let path = self.root.join("rollbacks");
        let mut list = match self.read(&path, MAX_ROLLBACKS, "reading the rollback records")? {
            Some(b) => Self::record(path, parse_rollbacks(&b))?,
            None => return Ok(Vec::new()),
        };
        let path = self.root.join("rollback-reasons");
        if let Some(b) = self.read(&path, MAX_ROLLBACKS, "reading the rollback reasons")? {
            for (at, slot, reason) in Self::record(path, parse_rollback_reasons(&b))? {
                if let Some(r) = list.iter_mut().find(|r| (r.at, r.slot) == (at, slot)) {
                    r.reason = Some(reason);
                }
            }
        }
        Ok(list)
    }

    /// Adds one rollback record (unless it repeats the last one): the whole
    /// list is rewritten with `atomup_fsio::replace`, so a power cut leaves
    /// the old list or the new one, never a torn line that would make the
    /// list unreadable. A list that cannot be read is not extended (it fails
    /// closed). The reasons file is written first: a cut between the two
    /// leaves a reason no rollback line matches (ignored, dropped by the next
    /// write), never a rollback whose reason was lost.
    pub fn record_rollback(&self, r: &RollbackRecord) -> Result<(), BootctlError> {
        let mut list = self.rollbacks()?;
        // The same rollback seen again (a power cut came between its record
        // and the env write that clears it) is recorded once.
        if list
            .last()
            .is_some_and(|l| (l.slot, l.commit, l.version) == (r.slot, r.commit, r.version))
        {
            return Ok(());
        }
        list.push(r.clone());
        std::fs::create_dir_all(&self.root)
            .map_err(io_err("creating the state dir", &self.root))?;
        let path = self.root.join("rollback-reasons");
        atomup_fsio::replace(&path, serialize_rollback_reasons(&list).as_bytes())
            .map_err(io_err("writing the rollback reasons", &path))?;
        let path = self.root.join("rollbacks");
        atomup_fsio::replace(&path, serialize_rollbacks(&list).as_bytes())
            .map_err(io_err("writing the rollback records", &path))
    }

    /// The highest release version this device has ever accepted: the
    /// `accepted` record, and every version the other records name (devices
    /// that predate the record, or a record not yet updated).
    pub fn highest_version(&self) -> Result<u64, BootctlError> {
        let path = self.root.join("accepted");
        let mut highest = match self.read(&path, MAX_RECORD, "reading the accepted version")? {
            Some(b) => Self::record(path, parse_accepted(&b))?,
            None => 0,
        };
        for slot in Slot::ALL {
            if let Some(v) = self.slot_record(slot)?.and_then(|r| r.version()) {
                highest = highest.max(v);
            }
        }
        for r in self.rollbacks()? {
            highest = highest.max(r.version.unwrap_or(0));
        }
        Ok(highest)
    }

    /// Raises the accepted version to `version` (never lowers it).
    pub fn accept_version(&self, version: u64) -> Result<(), BootctlError> {
        let highest = self.highest_version()?.max(version);
        let path = self.root.join("accepted");
        atomup_fsio::replace(
            &path,
            format!("format={FORMAT}\nversion={highest}\n").as_bytes(),
        )
        .map_err(io_err("writing the accepted version", &path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(b: u8) -> ObjectId {
        ObjectId([b; 32])
    }

    /// A record survives serialize → parse; unknown keys are ignored.
    #[test]
    fn slot_record_round_trips_and_ignores_unknown_keys() {
        let r = SlotRecord::installed(id(0xab), 7, Some(1_795_305_600));
        let text = serialize_slot_record(&r);
        assert_eq!(parse_slot_record(text.as_bytes()).unwrap(), r);
        let more = format!("{text}future=thing\n");
        assert_eq!(parse_slot_record(more.as_bytes()).unwrap(), r);
        let i = SlotRecord::installing();
        assert_eq!(
            parse_slot_record(serialize_slot_record(&i).as_bytes()).unwrap(),
            i
        );
        assert_eq!(
            parse_slot_record(b"format=3\n"),
            Err(RecordError::Format("3".into()))
        );
    }

    /// Regression (issue 11.4c): `version=2.0` or a missing version read as 0
    /// and disabled downgrade protection; now they are errors.
    #[test]
    fn a_version_that_is_not_a_number_or_missing_fails_closed() {
        let c = id(0xab).to_hex();
        for text in [
            format!("format=1\ncommit={c}\nversion=2.0\n"),
            format!("format=2\ncommit={c}\nversion=-1\n"),
            format!("format=2\ncommit={c}\nversion=07\n"),
            format!("commit={c}\n"),
            "format=2\nversion=3\n".to_owned(),
            format!("format=2\ncommit={}\nversion=3\n", c.to_uppercase()),
            format!("format=2\ncommit={c}ab\nversion=3\n"),
            format!("format=2\ncommit={c}\nversion=3\nversion=4\n"),
            format!("format=2\ncommit={c}\nversion=3\ntimestamp=2026-11-22T00:00:00Z\n"),
            format!("format=2\ncommit={c}\nversion=3\nstatus=weird\n"),
            format!("commit={c}\nformat=2\nversion=3\n"),
        ] {
            assert!(
                parse_slot_record(text.as_bytes()).is_err(),
                "accepted {text:?}"
            );
        }
    }

    /// Format-1 files (earlier agents, image builders) upgrade: the same
    /// types, RFC 3339 timestamps converted.
    #[test]
    fn format_1_records_upconvert() {
        let c = id(0x11).to_hex();
        let r = parse_slot_record(format!("commit={c}\nversion=1\n").as_bytes()).unwrap();
        assert_eq!(r, SlotRecord::installed(id(0x11), 1, None));
        let r = parse_slot_record(
            format!("format=1\ncommit={c}\nversion=2\ntimestamp=2026-11-22T00:00:00Z\n").as_bytes(),
        )
        .unwrap();
        assert_eq!(r.timestamp, Some(1_795_305_600));
        let r = parse_slot_record(b"format=1\ntimestamp=1795305600\nstatus=installing\n").unwrap();
        assert_eq!(
            r,
            SlotRecord {
                installed: None,
                timestamp: Some(1_795_305_600),
                installing: true
            }
        );
        let list =
            parse_rollbacks(format!("format=1\n1700000000 B {c} 2\n1700000001 A - -\n").as_bytes())
                .unwrap();
        assert_eq!(list[0].version, Some(2));
        assert_eq!(list[1].commit, None);
        assert_eq!(
            parse_rollbacks(serialize_rollbacks(&list).as_bytes()).unwrap(),
            list
        );
    }

    /// Rollback lines are typed too.
    #[test]
    fn malformed_rollback_lines_fail_closed() {
        let c = id(0x11).to_hex();
        for text in [
            format!("1 C {c} 1\n"),
            format!("1 A {c}\n"),
            format!("1 A {c} 3.0\n"),
            "1 A c0ffee 3\n".to_owned(),
            format!("x A {c} 3\n"),
            format!("1 A {c} 3\nformat=2\n"),
        ] {
            assert!(
                parse_rollbacks(text.as_bytes()).is_err(),
                "accepted {text:?}"
            );
        }
    }

    /// A rollback's reason is stored beside the list and read back with its
    /// rollback; `rollbacks` itself stays format 2, line for line what a
    /// format-2 reader (the agent in the fallback slot) accepts.
    #[test]
    fn rollback_reasons_live_beside_a_format_2_list() {
        let d = std::env::temp_dir().join(format!("atomup-reasons-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let sd = StateDir::new(&d);
        let r = RollbackRecord {
            at: 1_700_000_000,
            slot: Slot::B,
            commit: Some(id(3)),
            version: Some(3),
            reason: Some("required check 20-app failed:\nexit status 1".into()),
        };
        sd.record_rollback(&r).unwrap();
        sd.record_rollback(&RollbackRecord {
            at: 1_700_000_500,
            slot: Slot::A,
            commit: None,
            version: None,
            reason: None,
        })
        .unwrap();
        let list = sd.rollbacks().unwrap();
        assert_eq!(
            list[0].reason.as_deref(),
            Some("required check 20-app failed: exit status 1")
        );
        assert_eq!(list[1].reason, None);
        let plain = std::fs::read(d.join("rollbacks")).unwrap();
        let old_reader = parse_rollbacks(&plain).unwrap();
        assert_eq!(old_reader.len(), 2);
        assert!(plain.starts_with(b"format=2\n"));
        // A reason no rollback line matches (a cut between the two writes) is ignored.
        std::fs::write(
            d.join("rollback-reasons"),
            "format=1\n1700000000 B health\n42 A orphan\n",
        )
        .unwrap();
        assert_eq!(sd.rollbacks().unwrap()[0].reason.as_deref(), Some("health"));
        std::fs::write(d.join("rollback-reasons"), "format=1\n1700000000 C x\n").unwrap();
        assert!(
            sd.rollbacks().is_err(),
            "a malformed reasons file fails closed"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// Reasons are one bounded line.
    #[test]
    fn reasons_are_cleaned_and_bounded() {
        assert_eq!(clean_reason(" a\tb\nc "), "a b c");
        let long = "é".repeat(400);
        let c = clean_reason(&long);
        assert!(
            c.len() <= MAX_REASON && c.len() >= MAX_REASON - 1,
            "{}",
            c.len()
        );
        assert_eq!(
            parse_rollback_reasons(b"format=1\n1 A one two  three\n").unwrap(),
            vec![(1, Slot::A, "one two  three".to_owned())]
        );
        assert!(parse_rollback_reasons(b"format=2\n").is_err());
        assert!(parse_rollback_reasons(b"format=1\n1 A\n").is_err());
    }

    /// RFC 3339 in both directions, offsets applied, nonsense refused.
    #[test]
    fn rfc3339_round_trips_and_refuses_nonsense() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339("2026-11-22T02:00:00+02:00"),
            Some(1_795_305_600)
        );
        assert_eq!(parse_rfc3339("2000-02-29T12:34:56Z"), Some(951_827_696));
        for t in [0, 951_827_696, 1_795_305_600, 4_102_444_800] {
            assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t));
        }
        for bad in [
            "2026-13-01T00:00:00Z",
            "2025-02-29T00:00:00Z",
            "2026-11-22 00:00:00Z",
            "2026-11-22T00:00:00",
            "2026-11-22T00:00:00.5Z",
            "1969-12-31T23:59:59Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    /// The accepted version is the highest of the record and what the slot
    /// and rollback records name, and never goes down.
    #[test]
    fn the_accepted_version_only_goes_up() {
        let d = std::env::temp_dir().join(format!("atomup-statedir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let sd = StateDir::new(&d);
        assert_eq!(sd.highest_version().unwrap(), 0);
        sd.write_slot_record(Slot::A, &SlotRecord::installed(id(1), 4, None))
            .unwrap();
        assert_eq!(sd.highest_version().unwrap(), 4);
        sd.record_rollback(&RollbackRecord {
            at: 1,
            slot: Slot::B,
            commit: Some(id(2)),
            version: Some(6),
            reason: None,
        })
        .unwrap();
        assert_eq!(sd.highest_version().unwrap(), 6);
        sd.accept_version(9).unwrap();
        sd.accept_version(5).unwrap();
        assert_eq!(sd.highest_version().unwrap(), 9);
        std::fs::write(d.join("accepted"), "format=2\nversion=x\n").unwrap();
        assert!(sd.highest_version().is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
