//! The health record: what the last health run did, check by check, kept in
//! the state directory (`health/last`) so `atomup status`, a later report and
//! the rollback bookkeeping can say what happened, even when the run never
//! finished (the watchdog reset the board while a check hung: the record then
//! still says `running` and names the check).
//!
//! | line | meaning |
//! |---|---|
//! | `format=1` | first line |
//! | `slot=A` or `B` | the slot the checks ran on |
//! | `version=<u64>` | its release version, when its record names one |
//! | `started=<unix seconds>`, `finished=<unix seconds>` | `finished` once there is a verdict |
//! | `verdict=running`, `passed` or `failed` | |
//! | `check=<kind> <outcome> <milliseconds> <name>[ <detail>]` | one per check, in run order; kind `required` or `wanted`; outcome `pending`, `running`, `passed`, `failed`, `timeout`, `skipped`; the detail (exit status, first error) is the rest of the line |
//!
//! Parsing is pure and strict (typed values, a repeated key refused); keys it
//! does not know are ignored so a newer agent's record still reads.

use atomup_policy::Slot;

/// The format this agent writes.
pub const FORMAT: u32 = 1;
/// Largest record read.
pub const MAX_RECORD: u64 = 64 * 1024;
/// Most checks one run records (the checks directories allow no more).
pub const MAX_CHECKS: usize = 256;
/// Longest detail kept per check.
pub const MAX_DETAIL: usize = 300;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// Must pass for the slot to be confirmed.
    Required,
    /// May fail: logged and reported, the slot is confirmed anyway.
    Wanted,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Required => "required",
            Kind::Wanted => "wanted",
        }
    }

    fn parse(s: &str) -> Option<Kind> {
        match s {
            "required" => Some(Kind::Required),
            "wanted" => Some(Kind::Wanted),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Pending,
    Running,
    Passed,
    Failed,
    /// Did not finish within its time limit (and was killed).
    TimedOut,
    /// Not run: a required check failed before it.
    Skipped,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Pending => "pending",
            Outcome::Running => "running",
            Outcome::Passed => "passed",
            Outcome::Failed => "failed",
            Outcome::TimedOut => "timeout",
            Outcome::Skipped => "skipped",
        }
    }

    fn parse(s: &str) -> Option<Outcome> {
        Some(match s {
            "pending" => Outcome::Pending,
            "running" => Outcome::Running,
            "passed" => Outcome::Passed,
            "failed" => Outcome::Failed,
            "timeout" => Outcome::TimedOut,
            "skipped" => Outcome::Skipped,
            _ => return None,
        })
    }

    /// Failed or timed out.
    pub fn is_failure(self) -> bool {
        matches!(self, Outcome::Failed | Outcome::TimedOut)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No verdict yet: the run is going on, or it was cut (a reset).
    Running,
    Passed,
    Failed,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Running => "running",
            Verdict::Passed => "passed",
            Verdict::Failed => "failed",
        }
    }
}

/// One check of a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckRecord {
    pub kind: Kind,
    /// The check's name (a file name in `required.d`/`wanted.d`, or
    /// `atomup:<built-in>`).
    pub name: String,
    pub outcome: Outcome,
    pub millis: u64,
    /// One line: the exit status, the reason, or what a built-in found.
    pub detail: String,
}

impl CheckRecord {
    /// A check not yet run.
    pub fn pending(kind: Kind, name: &str) -> CheckRecord {
        CheckRecord {
            kind,
            name: name.to_owned(),
            outcome: Outcome::Pending,
            millis: 0,
            detail: String::new(),
        }
    }
}

/// The last health run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub slot: Slot,
    pub version: Option<u64>,
    pub started: u64,
    pub finished: Option<u64>,
    pub verdict: Verdict,
    pub checks: Vec<CheckRecord>,
}

impl Record {
    /// The check that was running when the record was last written, if the
    /// run never reached a verdict.
    pub fn interrupted_in(&self) -> Option<&CheckRecord> {
        if self.verdict != Verdict::Running {
            return None;
        }
        self.checks.iter().find(|c| c.outcome == Outcome::Running)
    }

    /// The first required check that failed.
    pub fn failed_required(&self) -> Option<&CheckRecord> {
        self.checks
            .iter()
            .find(|c| c.kind == Kind::Required && c.outcome.is_failure())
    }

    /// The wanted checks that failed.
    pub fn failed_wanted(&self) -> impl Iterator<Item = &CheckRecord> {
        self.checks
            .iter()
            .filter(|c| c.kind == Kind::Wanted && c.outcome.is_failure())
    }
}

/// One line of text, as the record stores it: control characters become
/// spaces, cut at `max` bytes on a character boundary.
pub fn one_line(text: &str, max: usize) -> String {
    let mut out = String::new();
    for c in text.trim().chars() {
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(if c.is_control() { ' ' } else { c });
    }
    out
}

/// A check name fits the record (and a file system): 1-128 of
/// `A-Z a-z 0-9 . _ + @ -`, not starting with `.` or `-`; built-ins add the
/// `atomup:` prefix, which no file name can have.
pub fn is_check_name(name: &str) -> bool {
    let body = name.strip_prefix("atomup:").unwrap_or(name);
    !body.is_empty()
        && name.len() <= 128
        && !body.starts_with(['.', '-'])
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+@-".contains(&b))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordError(pub String);

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RecordError {}

fn uint(s: &str) -> Option<u64> {
    if s.is_empty() || (s.len() > 1 && s.starts_with('0')) || !s.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    s.parse().ok()
}

/// Parses a health record; fuzz entry point.
pub fn parse(bytes: &[u8]) -> Result<Record, RecordError> {
    let err = |n: usize, what: &str| RecordError(format!("health record line {n}: {what}"));
    let text =
        std::str::from_utf8(bytes).map_err(|_| RecordError("health record is not UTF-8".into()))?;
    let (mut slot, mut version, mut started, mut finished, mut verdict) =
        (None, None, None, None, None);
    let mut checks = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.is_empty() {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| err(n, "not key=value"))?;
        if v.chars().any(char::is_control) {
            return Err(err(n, "control character"));
        }
        if n == 1 {
            if k != "format" {
                return Err(err(n, "no format line"));
            }
            if v != "1" {
                return Err(RecordError(format!(
                    "health record format {v} is not one this agent understands ({FORMAT})"
                )));
            }
            continue;
        }
        if k != "check" {
            if seen.contains(&k) {
                return Err(err(n, "key given twice"));
            }
            seen.push(k);
        }
        match k {
            "slot" => slot = Some(Slot::parse(v).ok_or_else(|| err(n, "slot is not A or B"))?),
            "version" => {
                version = Some(uint(v).ok_or_else(|| err(n, "version is not an integer"))?)
            }
            "started" => {
                started = Some(uint(v).ok_or_else(|| err(n, "started is not unix seconds"))?)
            }
            "finished" => {
                finished = Some(uint(v).ok_or_else(|| err(n, "finished is not unix seconds"))?)
            }
            "verdict" => {
                verdict = Some(match v {
                    "running" => Verdict::Running,
                    "passed" => Verdict::Passed,
                    "failed" => Verdict::Failed,
                    _ => return Err(err(n, "verdict is not running, passed or failed")),
                })
            }
            "check" => {
                if checks.len() >= MAX_CHECKS {
                    return Err(err(n, "too many checks"));
                }
                let mut f = v.splitn(5, ' ');
                let (Some(kind), Some(outcome), Some(ms), Some(name)) =
                    (f.next(), f.next(), f.next(), f.next())
                else {
                    return Err(err(n, "check line needs kind, outcome, milliseconds, name"));
                };
                if !is_check_name(name) {
                    return Err(err(n, "check name is not a check name"));
                }
                checks.push(CheckRecord {
                    kind: Kind::parse(kind)
                        .ok_or_else(|| err(n, "kind is not required or wanted"))?,
                    outcome: Outcome::parse(outcome).ok_or_else(|| err(n, "unknown outcome"))?,
                    millis: uint(ms).ok_or_else(|| err(n, "milliseconds are not an integer"))?,
                    name: name.to_owned(),
                    detail: f.next().unwrap_or("").to_owned(),
                });
            }
            _ => {}
        }
    }
    let missing = |what: &str| RecordError(format!("health record has no {what}"));
    Ok(Record {
        slot: slot.ok_or_else(|| missing("slot"))?,
        version,
        started: started.ok_or_else(|| missing("start time"))?,
        finished,
        verdict: verdict.ok_or_else(|| missing("verdict"))?,
        checks,
    })
}

/// Fuzz entry point (`fuzz/fuzz_targets/health_record.rs`, replayed by
/// `tests/fuzz_corpus.rs`): parsing never panics, and what parses is
/// serialized to a stable form (one normalization: details trimmed and cut,
/// then byte for byte).
pub fn fuzz(data: &[u8]) {
    if let Ok(r) = parse(data) {
        let once = serialize(&r);
        let again = parse(once.as_bytes()).expect("a serialized record parses");
        assert_eq!(serialize(&again), once);
        let _ = (
            r.interrupted_in(),
            r.failed_required(),
            r.failed_wanted().count(),
        );
    }
}

pub fn serialize(r: &Record) -> String {
    let mut out = format!("format={FORMAT}\nslot={}\n", r.slot);
    if let Some(v) = r.version {
        out.push_str(&format!("version={v}\n"));
    }
    out.push_str(&format!("started={}\n", r.started));
    if let Some(t) = r.finished {
        out.push_str(&format!("finished={t}\n"));
    }
    out.push_str(&format!("verdict={}\n", r.verdict.name()));
    for c in &r.checks {
        out.push_str(&format!(
            "check={} {} {} {}",
            c.kind.name(),
            c.outcome.name(),
            c.millis,
            c.name
        ));
        let detail = one_line(&c.detail, MAX_DETAIL);
        if !detail.is_empty() {
            out.push(' ');
            out.push_str(&detail);
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        Record {
            slot: Slot::B,
            version: Some(3),
            started: 1_700_000_000,
            finished: Some(1_700_000_004),
            verdict: Verdict::Passed,
            checks: vec![
                CheckRecord {
                    kind: Kind::Required,
                    name: "atomup:read-only-root".into(),
                    outcome: Outcome::Passed,
                    millis: 1,
                    detail: "/ is mounted read-only".into(),
                },
                CheckRecord {
                    kind: Kind::Wanted,
                    name: "20-net".into(),
                    outcome: Outcome::Failed,
                    millis: 130,
                    detail: "exit status 1".into(),
                },
                CheckRecord::pending(Kind::Wanted, "30-x"),
            ],
        }
    }

    /// A record survives serialize → parse → serialize byte for byte.
    #[test]
    fn record_round_trips() {
        let r = sample();
        let text = serialize(&r);
        assert_eq!(parse(text.as_bytes()).unwrap(), r);
        assert_eq!(serialize(&parse(text.as_bytes()).unwrap()), text);
        assert_eq!(r.failed_wanted().count(), 1);
        assert_eq!(r.failed_required(), None);
    }

    /// A run cut by a reset names the check it was in.
    #[test]
    fn an_interrupted_run_names_its_check() {
        let mut r = sample();
        r.verdict = Verdict::Running;
        r.finished = None;
        r.checks[2].outcome = Outcome::Running;
        let back = parse(serialize(&r).as_bytes()).unwrap();
        assert_eq!(back.interrupted_in().unwrap().name, "30-x");
    }

    /// Malformed records are errors, unknown keys are not.
    #[test]
    fn malformed_records_are_refused() {
        let good = serialize(&sample());
        assert!(parse(format!("{good}future=1\n").as_bytes()).is_ok());
        for bad in [
            good.replace("format=1", "format=2"),
            good.replace("slot=B", "slot=C"),
            good.replace("verdict=passed", "verdict=maybe"),
            good.replace("130", "-1"),
            good.replace("20-net", ".20-net"),
            good.replace("check=wanted failed", "check=optional failed"),
            format!("{good}slot=A\n"),
            good.replace("format=1\n", ""),
            good.replace("started=1700000000\n", ""),
            "format=1\nslot=A\nstarted=1\nverdict=passed\ncheck=required passed 1\n".into(),
        ] {
            assert!(parse(bad.as_bytes()).is_err(), "accepted {bad:?}");
        }
        assert!(parse(b"\xff").is_err());
    }

    /// Check names are file-system and record safe; built-ins are apart.
    #[test]
    fn check_names() {
        for ok in ["10-app", "a", "x_y.sh", "v1+2@3", "atomup:free-space"] {
            assert!(is_check_name(ok), "{ok}");
        }
        for bad in [
            "",
            ".hidden",
            "-x",
            "a b",
            "é",
            "a:b",
            "atomup:",
            &"x".repeat(129),
        ] {
            assert!(!is_check_name(bad), "{bad}");
        }
        assert_eq!(one_line("a\nb\tc", 10), "a b c");
        assert_eq!(one_line("abcdef", 3), "abc");
    }
}
