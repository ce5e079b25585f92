//! The agent's per-slot records under the state dir (default
//! `/var/lib/atomup`): which commit and version each slot holds, and the
//! releases that rolled back (never retried). The env only knows slot
//! letters; these files give them names for `atomup status`.
//!
//! | file | format (UTF-8 lines) |
//! |---|---|
//! | `slots/A`, `slots/B` | `format=1`, then `commit=<hex>`, `version=<text>`, `timestamp=<RFC 3339>`, `status=installing` (only between install start and done); unknown keys ignored, missing = unknown |
//! | `rollbacks` | `format=1`, then one `<unix-seconds> <slot> <commit or -> <version or ->` line per detected rollback |
//!
//! A `format` above 1 is refused rather than misread; a file without
//! `format` is read as version 1 (the only one so far).

use crate::io::io_err;
use crate::BootctlError;
use atomup_policy::Slot;
use std::path::{Path, PathBuf};

pub const FORMAT: u32 = 1;
/// Largest slot record read (a few short lines).
pub const MAX_RECORD: u64 = 4096;
/// Largest rollback list read: about ten thousand rollbacks.
pub const MAX_ROLLBACKS: u64 = 1 << 20;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("record is not UTF-8")]
    NotUtf8,
    #[error("record format {0} is newer than this agent understands ({FORMAT})")]
    Format(String),
    #[error("record line {0} is malformed")]
    Line(usize),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotInfo {
    pub commit: Option<String>,
    pub version: Option<String>,
    pub timestamp: Option<String>,
    /// `installing` between install start and install done.
    pub status: Option<String>,
}

fn check_format(v: &str) -> Result<(), RecordError> {
    if v == "1" {
        Ok(())
    } else {
        Err(RecordError::Format(v.to_owned()))
    }
}

fn clean(v: &str) -> bool {
    !v.is_empty() && !v.chars().any(char::is_control)
}

/// Parses a `slots/X` record; fuzz entry point.
pub fn parse_slot_info(bytes: &[u8]) -> Result<SlotInfo, RecordError> {
    let text = std::str::from_utf8(bytes).map_err(|_| RecordError::NotUtf8)?;
    let mut info = SlotInfo::default();
    for (i, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        let (k, v) = line.split_once('=').ok_or(RecordError::Line(i + 1))?;
        if !clean(v) {
            return Err(RecordError::Line(i + 1));
        }
        match k {
            "format" => check_format(v)?,
            "commit" => info.commit = Some(v.to_owned()),
            "version" => info.version = Some(v.to_owned()),
            "timestamp" => info.timestamp = Some(v.to_owned()),
            "status" => info.status = Some(v.to_owned()),
            _ => {}
        }
    }
    Ok(info)
}

pub fn serialize_slot_info(info: &SlotInfo) -> String {
    let mut out = format!("format={FORMAT}\n");
    for (k, v) in [
        ("commit", &info.commit),
        ("version", &info.version),
        ("timestamp", &info.timestamp),
        ("status", &info.status),
    ] {
        if let Some(v) = v.as_deref().filter(|v| clean(v)) {
            out.push_str(&format!("{k}={v}\n"));
        }
    }
    out
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollbackRecord {
    pub at: u64,
    pub slot: Slot,
    pub commit: Option<String>,
    pub version: Option<String>,
}

/// Parses the `rollbacks` file; fuzz entry point.
pub fn parse_rollbacks(bytes: &[u8]) -> Result<Vec<RollbackRecord>, RecordError> {
    let text = std::str::from_utf8(bytes).map_err(|_| RecordError::NotUtf8)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        if let Some(v) = line.strip_prefix("format=") {
            check_format(v)?;
            continue;
        }
        let f: Vec<&str> = line.split(' ').collect();
        let [at, slot, commit, version] = f.as_slice() else {
            return Err(RecordError::Line(i + 1));
        };
        let opt = |s: &str| (s != "-").then(|| s.to_owned());
        out.push(RollbackRecord {
            at: at.parse().map_err(|_| RecordError::Line(i + 1))?,
            slot: Slot::parse(slot).ok_or(RecordError::Line(i + 1))?,
            commit: opt(commit),
            version: opt(version),
        });
    }
    Ok(out)
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

    fn slot_path(&self, slot: Slot) -> PathBuf {
        self.root.join("slots").join(slot.letter())
    }

    fn rollbacks_path(&self) -> PathBuf {
        self.root.join("rollbacks")
    }

    /// The slot's record; `Ok(None)` when there is none yet.
    pub fn slot_info(&self, slot: Slot) -> Result<Option<SlotInfo>, BootctlError> {
        let path = self.slot_path(slot);
        match atomup_fsio::read_capped_opt(&path, MAX_RECORD) {
            Ok(Some(b)) => parse_slot_info(&b)
                .map(Some)
                .map_err(|source| BootctlError::Record { path, source }),
            Ok(None) => Ok(None),
            Err(e) => Err(io_err(&path, "reading the slot record")(e)),
        }
    }

    pub fn write_slot_info(&self, slot: Slot, info: &SlotInfo) -> Result<(), BootctlError> {
        let path = self.slot_path(slot);
        let dir = self.root.join("slots");
        std::fs::create_dir_all(&dir).map_err(io_err(&dir, "creating the slot record dir"))?;
        atomup_fsio::replace(&path, serialize_slot_info(info).as_bytes())
            .map_err(io_err(&path, "writing the slot record"))
    }

    pub fn rollbacks(&self) -> Result<Vec<RollbackRecord>, BootctlError> {
        let path = self.rollbacks_path();
        match atomup_fsio::read_capped_opt(&path, MAX_ROLLBACKS) {
            Ok(Some(b)) => {
                parse_rollbacks(&b).map_err(|source| BootctlError::Record { path, source })
            }
            Ok(None) => Ok(Vec::new()),
            Err(e) => Err(io_err(&path, "reading the rollback records")(e)),
        }
    }

    /// Adds one rollback record: the whole list is rewritten with
    /// `atomup_fsio::replace`, so a power cut leaves the old list or the new
    /// one, never a torn line that would make the list unreadable.
    pub fn record_rollback(&self, r: &RollbackRecord) -> Result<(), BootctlError> {
        let path = self.rollbacks_path();
        let mut text = match atomup_fsio::read_capped_opt(&path, MAX_ROLLBACKS) {
            Ok(Some(b)) => {
                // Refuse to extend a list we cannot read (it fails closed).
                parse_rollbacks(&b).map_err(|source| BootctlError::Record {
                    path: path.clone(),
                    source,
                })?;
                String::from_utf8(b).map_err(|_| BootctlError::Record {
                    path: path.clone(),
                    source: RecordError::NotUtf8,
                })?
            }
            Ok(None) => String::new(),
            Err(e) => return Err(io_err(&path, "reading the rollback records")(e)),
        };
        std::fs::create_dir_all(&self.root)
            .map_err(io_err(&self.root, "creating the state dir"))?;
        let word = |v: &Option<String>| {
            v.as_deref()
                .filter(|v| clean(v) && !v.contains(' '))
                .unwrap_or("-")
                .to_owned()
        };
        if text.is_empty() {
            text.push_str(&format!("format={FORMAT}\n"));
        } else if !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&format!(
            "{} {} {} {}\n",
            r.at,
            r.slot,
            word(&r.commit),
            word(&r.version)
        ));
        atomup_fsio::replace(&path, text.as_bytes())
            .map_err(io_err(&path, "writing the rollback records"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_record_round_trips_and_ignores_unknown_keys() {
        let info = SlotInfo {
            commit: Some("ab".repeat(32)),
            version: Some("1.2.3".into()),
            timestamp: Some("2026-11-22T02:00:00Z".into()),
            status: None,
        };
        let text = serialize_slot_info(&info);
        assert_eq!(parse_slot_info(text.as_bytes()).unwrap(), info);
        let more = format!("{text}future=thing\n");
        assert_eq!(parse_slot_info(more.as_bytes()).unwrap(), info);
        assert_eq!(
            parse_slot_info(b"format=2\n"),
            Err(RecordError::Format("2".into()))
        );
        assert_eq!(
            parse_slot_info(b"format=1\nnoequals\n"),
            Err(RecordError::Line(2))
        );
    }

    #[test]
    fn rollback_records_parse() {
        let r = parse_rollbacks(b"format=1\n1700000000 B abc 2.0\n1700000001 A - -\n").unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].version.as_deref(), Some("2.0"));
        assert_eq!(r[1].commit, None);
        assert!(parse_rollbacks(b"1 C x y\n").is_err());
        assert!(parse_rollbacks(b"1 A x\n").is_err());
    }
}
