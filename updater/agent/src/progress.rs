//! Where an update's progress goes (`atomup_report::progress` renders it):
//! a live line on a terminal, plain rate-limited log lines otherwise, one
//! JSON event per line on stdout with `--json`, and the progress record
//! `<state dir>/progress` that `atomup status` reads while the daemon works.
//!
//! The record is informational: written (atomically, at most every two
//! seconds and on each phase change) while an update runs and removed when
//! it ends. It names the process and the boot it belongs to, so `status`
//! ignores one left behind by a kill or a power cut.

use atomup_report::progress::{Phase, Progress, Throttle};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// stderr is a terminal: one line, redrawn.
    Tty,
    /// Plain log lines (`info:`), at most one every five seconds per phase.
    Plain,
    /// One JSON event per line on stdout; human messages go to stderr.
    Json,
}

impl Mode {
    pub fn detect(json: bool) -> Mode {
        use std::io::IsTerminal;
        if json {
            Mode::Json
        } else if std::io::stderr().is_terminal() {
            Mode::Tty
        } else {
            Mode::Plain
        }
    }
}

const PLAIN_EVERY_MS: u64 = 5_000;
const TTY_EVERY_MS: u64 = 200;
const JSON_EVERY_MS: u64 = 1_000;
const RECORD_EVERY_MS: u64 = 2_000;

/// One update's progress and its outputs.
pub struct Reporter {
    mode: Mode,
    pub p: Progress,
    epoch: Instant,
    lines: Throttle,
    record_at: Option<u64>,
    record: Option<PathBuf>,
    version: Option<u64>,
    drawn: bool,
}

impl Reporter {
    /// `state_dir`: where the progress record goes (`None`: nowhere).
    pub fn new(mode: Mode, state_dir: Option<&Path>) -> Reporter {
        Reporter {
            mode,
            p: Progress::new(Phase::Checking),
            epoch: Instant::now(),
            lines: Throttle::new(match mode {
                Mode::Tty => TTY_EVERY_MS,
                Mode::Plain => PLAIN_EVERY_MS,
                Mode::Json => JSON_EVERY_MS,
            }),
            record_at: None,
            record: state_dir.map(|d| d.join("progress")),
            version: None,
            drawn: false,
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// A human message (the outcome of a poll): stdout, or stderr when stdout
    /// carries JSON events; a live line is ended first.
    pub fn say(&mut self, text: &str) {
        self.end_line();
        if self.mode == Mode::Json {
            eprintln!("{text}");
        } else {
            println!("{text}");
        }
    }

    pub fn version(&mut self, v: u64) {
        self.version = Some(v);
    }

    pub fn phase(&mut self, phase: Phase, slot: Option<char>) {
        self.p.phase = phase;
        if slot.is_some() {
            self.p.slot = slot;
        }
        self.show(true, None);
    }

    /// `bytes_done` of the update's bytes have arrived.
    pub fn received(&mut self, bytes_done: u64) {
        let now = self.now_ms();
        self.p.received(now, bytes_done);
        self.show(false, None);
    }

    /// The update failed: the failure is shown (and the record removed).
    pub fn failed(&mut self, error: &str) {
        self.p.phase = Phase::Failed;
        self.show(true, Some(error));
        self.end_line();
        self.remove_record();
    }

    /// The update ended (installed, or nothing to do).
    pub fn done(&mut self) {
        if self.p.phase != Phase::Checking {
            self.p.phase = Phase::Done;
            self.show(true, None);
        }
        self.end_line();
        self.remove_record();
    }

    fn show(&mut self, force: bool, error: Option<&str>) {
        let now = self.now_ms();
        let due = self.lines.due(now, self.p.phase) || force;
        if due {
            match self.mode {
                Mode::Tty => {
                    let mut err = std::io::stderr().lock();
                    let _ = write!(err, "\r{}\x1b[K", self.p.tty_line());
                    let _ = err.flush();
                    self.drawn = true;
                }
                Mode::Plain if self.p.phase != Phase::Failed => {
                    log::info!("{}", self.p.tty_line())
                }
                Mode::Plain => {}
                Mode::Json => {
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "{}", self.p.json_event(error));
                    let _ = out.flush();
                }
            }
        }
        if self.record.is_some()
            && (force || self.record_at.is_none_or(|t| now >= t + RECORD_EVERY_MS))
            && !matches!(self.p.phase, Phase::Done | Phase::Failed)
        {
            self.record_at = Some(now);
            self.write_record();
        }
    }

    fn end_line(&mut self) {
        if self.drawn {
            eprintln!();
            self.drawn = false;
        }
    }

    fn write_record(&self) {
        let Some(path) = &self.record else { return };
        let text = record_text(&Record {
            pid: std::process::id(),
            boot_id: boot_id(),
            phase: self.p.phase.name().to_owned(),
            slot: self.p.slot,
            version: self.version,
            bytes_done: self.p.bytes_done,
            bytes_total: self.p.bytes_total,
            parts_done: self.p.parts_done,
            parts_total: self.p.parts_total,
        });
        // Informational: a failed write only loses what `status` would show.
        if let Err(e) = atomup_fsio::replace(path, text.as_bytes()) {
            log::debug!("writing {}: {e}", path.display());
        }
    }

    fn remove_record(&self) {
        if let Some(path) = &self.record {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The progress record `atomup status` shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub pid: u32,
    pub boot_id: String,
    pub phase: String,
    pub slot: Option<char>,
    pub version: Option<u64>,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub parts_done: u64,
    pub parts_total: u64,
}

impl Record {
    pub fn percent(&self) -> Option<u64> {
        (self.bytes_total > 0)
            .then(|| self.bytes_done.min(self.bytes_total) * 100 / self.bytes_total)
    }
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`), empty when unknown.
pub fn boot_id() -> String {
    atomup_fsio::read_text_capped(Path::new("/proc/sys/kernel/random/boot_id"), 128)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// `key=value` lines, `format=1` first.
pub fn record_text(r: &Record) -> String {
    let opt = |v: Option<String>| v.unwrap_or_default();
    format!(
        "format=1\npid={}\nboot_id={}\nphase={}\nslot={}\nversion={}\nbytes_done={}\nbytes_total={}\nparts_done={}\nparts_total={}\n",
        r.pid,
        r.boot_id,
        r.phase,
        opt(r.slot.map(String::from)),
        opt(r.version.map(|v| v.to_string())),
        r.bytes_done,
        r.bytes_total,
        r.parts_done,
        r.parts_total
    )
}

/// Parses a record; `None` for anything that is not one (it is only shown,
/// never acted on).
pub fn parse_record(text: &str) -> Option<Record> {
    let mut kv = std::collections::BTreeMap::new();
    for line in text.lines() {
        let (k, v) = line.split_once('=')?;
        if kv.insert(k, v).is_some() {
            return None;
        }
    }
    if kv.get("format") != Some(&"1") {
        return None;
    }
    let num = |k: &str| kv.get(k)?.parse::<u64>().ok();
    let phase = kv.get("phase")?;
    if phase.is_empty() || !phase.bytes().all(|b| b.is_ascii_lowercase()) {
        return None;
    }
    let slot = match *kv.get("slot")? {
        "" => None,
        "A" => Some('A'),
        "B" => Some('B'),
        _ => return None,
    };
    let version = match *kv.get("version")? {
        "" => None,
        v => Some(v.parse().ok()?),
    };
    Some(Record {
        pid: kv.get("pid")?.parse().ok()?,
        boot_id: kv.get("boot_id")?.to_string(),
        phase: phase.to_string(),
        slot,
        version,
        bytes_done: num("bytes_done")?,
        bytes_total: num("bytes_total")?,
        parts_done: num("parts_done")?,
        parts_total: num("parts_total")?,
    })
}

/// The record of an update running now: the file parses, and its process
/// is alive in this boot.
pub fn live_record(state_dir: &Path) -> Option<Record> {
    let text = atomup_fsio::read_text_capped(&state_dir.join("progress"), 4096).ok()?;
    let r = parse_record(&text)?;
    let alive = rustix::process::Pid::from_raw(r.pid as i32)
        .is_some_and(|pid| rustix::process::test_kill_process(pid).is_ok());
    (alive && r.boot_id == boot_id()).then_some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record round-trips; damaged ones are not shown.
    #[test]
    fn record_round_trips_and_damage_is_ignored() {
        let r = Record {
            pid: 42,
            boot_id: "0b4c-77".into(),
            phase: "receiving".into(),
            slot: Some('B'),
            version: Some(7),
            bytes_done: 71,
            bytes_total: 100,
            parts_done: 2,
            parts_total: 3,
        };
        assert_eq!(parse_record(&record_text(&r)), Some(r.clone()));
        assert_eq!(r.percent(), Some(71));
        let blank = Record {
            slot: None,
            version: None,
            ..r.clone()
        };
        assert_eq!(parse_record(&record_text(&blank)), Some(blank));
        let text = record_text(&r);
        for bad in [
            text.replace("format=1", "format=2"),
            text.replace("slot=B", "slot=C"),
            text.replace("pid=42", "pid=x"),
            text.replace("phase=receiving", "phase=Rec eiving"),
            text.clone() + "pid=43\n",
            text.replace("bytes_total=100\n", ""),
            "garbage".into(),
        ] {
            assert_eq!(parse_record(&bad), None, "{bad}");
        }
    }
}
