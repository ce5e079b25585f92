//! Trial-boot health checks a vendor can rely on (greenboot's model): the
//! vendor's and the site's `required.d`/`wanted.d` checks and the built-in
//! ones, in a defined order, each within its time limit, with its output
//! captured; a failing required check fails the trial, a failing wanted one
//! is recorded and reported but does not.
//!
//! - [`plan`]: which checks run, in which order, with which limit;
//! - [`builtin`]: the built-in checks;
//! - [`run`]: one check as a process (or a thread, for a built-in), bounded;
//! - [`record`]: the health record, pure format;
//! - [`Store`] and [`run_all`]: the run, written to the state directory as it
//!   goes (`health/last` before each check and after it, each check's output
//!   in `health/output/`), so a reset in the middle leaves a record that
//!   names the check that hung.
//!
//! The agent decides what a verdict means for the env (`atomup health`); this
//! crate never touches the env or the slot records.

pub mod builtin;
pub mod plan;
pub mod record;
pub mod run;

use atomup_policy::Slot;
use record::{CheckRecord, Kind, Outcome, Record, Verdict};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where a device keeps its checks: the vendor's, in the image.
pub const VENDOR_ROOT: &str = "/usr/lib/atomup/health.d";
/// The site's or device's own.
pub const SITE_ROOT: &str = "/etc/atomup/health.d";
/// Largest output file shown back (`atomup status`).
pub const MAX_OUTPUT: u64 = (run::HEAD + run::TAIL + 64) as u64;

/// `<state dir>/health`: the record of the last run and the checks' output.
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn new(state_dir: &Path) -> Store {
        Store {
            dir: state_dir.join("health"),
        }
    }

    pub fn record_path(&self) -> PathBuf {
        self.dir.join("last")
    }

    /// The output file of one check.
    pub fn output_path(&self, kind: Kind, name: &str) -> PathBuf {
        self.dir
            .join("output")
            .join(format!("{}.{}.log", kind.name(), name.replace(':', "=")))
    }

    /// The last run's record; `Ok(None)` when no run was recorded.
    pub fn read(&self) -> Result<Option<Record>, String> {
        let path = self.record_path();
        match atomup_fsio::read_capped_opt(&path, record::MAX_RECORD) {
            Ok(None) => Ok(None),
            Ok(Some(b)) => record::parse(&b)
                .map(Some)
                .map_err(|e| format!("{}: {e}", path.display())),
            Err(e) => Err(format!("reading {}: {e}", path.display())),
        }
    }

    /// One check's captured output, if kept.
    pub fn output(&self, kind: Kind, name: &str) -> Option<Vec<u8>> {
        atomup_fsio::read_capped_opt(&self.output_path(kind, name), MAX_OUTPUT)
            .ok()
            .flatten()
    }

    fn write(&self, r: &Record) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        atomup_fsio::replace(&self.record_path(), record::serialize(r).as_bytes())
    }

    /// Removes the previous run's output files (only `*.log` files).
    fn clear_output(&self) -> std::io::Result<()> {
        let dir = self.dir.join("output");
        std::fs::create_dir_all(&dir)?;
        for e in std::fs::read_dir(&dir)? {
            let e = e?;
            if e.file_name().as_encoded_bytes().ends_with(b".log")
                && e.file_type().is_ok_and(|t| t.is_file())
            {
                std::fs::remove_file(e.path())?;
            }
        }
        Ok(())
    }
}

/// What a run decided, for the agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub verdict: Verdict,
    /// Why the trial failed (the first failed required check), in words.
    pub reason: Option<String>,
    /// The record as written last.
    pub record: Record,
}

impl Summary {
    pub fn checks_run(&self) -> usize {
        self.record
            .checks
            .iter()
            .filter(|c| !matches!(c.outcome, Outcome::Pending | Outcome::Skipped))
            .count()
    }
}

/// The reason text of a failed required check: `required check NAME failed:
/// DETAIL` (or `did not finish ...`).
pub fn reason_of(c: &CheckRecord) -> String {
    match c.outcome {
        Outcome::TimedOut => format!("required check {} {}", c.name, c.detail),
        _ => format!("required check {} failed: {}", c.name, c.detail),
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Runs the plan (or records why there is none: a plan error fails the trial,
/// health fails closed), writing the record before and after each check.
/// `tick` runs while a check is within its limit (feed the watchdog there).
/// A required check that fails ends the run: the rest are `skipped`, and the
/// slot goes back sooner. Record writes that fail are logged, never fatal:
/// the verdict does not depend on the data partition (whose own check fails
/// the trial when it is broken).
pub fn run_all(
    plan: Result<Vec<plan::Check>, String>,
    slot: Slot,
    version: Option<u64>,
    store: &Store,
    tick: &mut dyn FnMut(),
    on_check: &mut dyn FnMut(&CheckRecord),
) -> Summary {
    let mut rec = Record {
        slot,
        version,
        started: now(),
        finished: None,
        verdict: Verdict::Running,
        checks: Vec::new(),
    };
    let save = |rec: &Record| {
        if let Err(e) = store.write(rec) {
            log::warn!(
                "health: cannot write {}: {e}",
                store.record_path().display()
            );
        }
    };
    if let Err(e) = store.clear_output() {
        log::warn!(
            "health: cannot clear the old output in {}: {e}",
            store.dir.display()
        );
    }
    let plan = match plan {
        Ok(p) => p,
        Err(why) => {
            rec.checks.push(CheckRecord {
                kind: Kind::Required,
                name: "atomup:checks".into(),
                outcome: Outcome::Failed,
                millis: 0,
                detail: why.clone(),
            });
            rec.verdict = Verdict::Failed;
            rec.finished = Some(now());
            save(&rec);
            on_check(&rec.checks[0]);
            return Summary {
                verdict: Verdict::Failed,
                reason: Some(format!("the checks cannot run: {why}")),
                record: rec,
            };
        }
    };
    rec.checks = plan
        .iter()
        .map(|c| CheckRecord::pending(c.kind, &c.name))
        .collect();
    let mut failed: Option<usize> = None;
    for (i, check) in plan.iter().enumerate() {
        if failed.is_some() {
            rec.checks[i].outcome = Outcome::Skipped;
            continue;
        }
        rec.checks[i].outcome = Outcome::Running;
        save(&rec);
        let ran = match &check.program {
            plan::Program::Builtin(b) => run::builtin(b, check.timeout, tick),
            plan::Program::Script(path) => run::script(path, check.timeout, tick),
        };
        let out = store.output_path(check.kind, &check.name);
        if let Err(e) = atomup_fsio::replace(&out, &ran.output) {
            log::warn!("health: cannot keep the output of {}: {e}", check.name);
        }
        rec.checks[i] = CheckRecord {
            kind: check.kind,
            name: check.name.clone(),
            outcome: ran.outcome,
            millis: ran.millis,
            detail: record::one_line(&ran.detail, record::MAX_DETAIL),
        };
        on_check(&rec.checks[i]);
        if check.kind == Kind::Required && ran.outcome.is_failure() {
            failed = Some(i);
        }
    }
    rec.verdict = if failed.is_some() {
        Verdict::Failed
    } else {
        Verdict::Passed
    };
    rec.finished = Some(now());
    save(&rec);
    Summary {
        verdict: rec.verdict,
        reason: failed.map(|i| reason_of(&rec.checks[i])),
        record: rec,
    }
}

/// The checks of a device: `vendor` and `site` roots, the built-ins, the
/// default limit.
pub fn plan_for(
    vendor: &Path,
    site: &Path,
    builtins: &[builtin::Builtin],
    default_timeout: Duration,
) -> Result<Vec<plan::Check>, String> {
    plan::plan(vendor, site, builtins, default_timeout)
}
