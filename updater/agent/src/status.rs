//! `atomup status [--json]`, like `atomic host status`: per slot the booted
//! marker, state (good, trial, installing, bad), commit, version, release
//! timestamp and attempts left, the counts of the last /etc merge into the
//! slot's layer (`etc_merge`, with its conflict list); the recorded
//! rollbacks, each "rolled back from version V (reason)"; the last health
//! run, check by check, with the output of the checks that failed; and an
//! update in progress (`update` or the daemon writing
//! `<state dir>/progress`). The JSON form (`format` 2) is written with
//! `atomup_report::json`, a writer only, to keep serde out of the device
//! binary; the tests read it back with a real JSON parser.

use crate::bootopts::{BootOpts, OPTIONS};
use crate::error::Result;
use crate::progress::{self, Record};
use crate::transitions::rolled_back_line;
use atomup_bootctl::cmdline;
use atomup_bootctl::statedir::{rfc3339, RollbackRecord, SlotRecord};
use atomup_health::record::{Outcome, Record as HealthRecord};
use atomup_policy::{BootOutcome, BootState, Slot};
use atomup_report::json::{array, Object, Value};

pub const USAGE: &str = "\
  status [--json]      each slot: booted marker, commit, version, state, attempts
";

struct SlotRow {
    slot: Slot,
    booted: bool,
    state: &'static str,
    attempts: Option<u8>,
    info: SlotRecord,
    /// The merge record of the slot's /etc layer (the last merge into it).
    etc: Option<atomup_etc::record::MergeRecord>,
}

pub fn run(args: &mut lexopt::Parser) -> Result {
    use lexopt::prelude::*;
    let (mut boot, mut json) = (BootOpts::default(), false);
    while let Some(arg) = args.next()? {
        match arg {
            Long("json") => json = true,
            Long("help") | Short('h') => {
                print!("Usage: atomup status [--json] [options]\n\n{USAGE}\n{OPTIONS}");
                std::process::exit(0);
            }
            Long(name) => {
                let name = name.to_owned();
                if !boot.take(&name, args)? {
                    return Err(format!("invalid option '--{name}'").into());
                }
            }
            other => return Err(other.unexpected().into()),
        }
    }
    let board = boot.board()?;
    let mut bl = boot.open_env(board.as_ref())?;
    let b = boot.booted()?;
    // Read only: the snapshot (and its lock) goes at once.
    let (env_valid, state) = {
        let snap = atomup_bootctl::load(bl.as_mut())?;
        (snap.vars.is_some(), snap.state()?)
    };
    let sd = boot.state();
    let rollbacks = sd.rollbacks()?;
    // An unreadable record fails the command: status never shows a guess.
    let rows: Vec<SlotRow> = Slot::ALL
        .iter()
        .map(|&s| -> Result<SlotRow> {
            let info = sd.slot_record(s)?;
            let (st, attempts) = if state.trial == Some(s) && state.order.contains(&s) {
                ("trial", Some(state.left))
            } else if state.order.contains(&s) {
                ("good", None)
            } else if info.as_ref().is_some_and(|i| i.installing) {
                ("installing", None)
            } else if info.is_some()
                || state.trial == Some(s)
                || rollbacks.iter().any(|r| r.slot == s)
            {
                ("bad", None)
            } else {
                ("-", None)
            };
            Ok(SlotRow {
                slot: s,
                booted: b.slot == Some(s),
                state: st,
                attempts,
                info: info.unwrap_or_default(),
                etc: crate::etc::last_merge(&boot.state_dir, s)?,
            })
        })
        .collect::<Result<_>>()?;
    let fallback_pending = b
        .slot
        .map(|s| matches!(state.after_boot(s), BootOutcome::Fallback { .. }))
        .unwrap_or(false);
    let running = progress::live_record(&boot.state_dir);
    // The health record is informational: an unreadable one is said, not fatal.
    let store = atomup_health::Store::new(&boot.state_dir);
    let health = store.read();
    if json {
        print!(
            "{}",
            status_json(
                &b,
                env_valid,
                &state,
                &rows,
                fallback_pending,
                &rollbacks,
                running.as_ref(),
                &health,
                &store
            )
        );
        return Ok(());
    }
    if let Some(r) = &running {
        println!("{}", update_line(r));
    }
    let order: Vec<&str> = state.order.iter().map(|s| s.letter()).collect();
    println!(
        "Env: {}{}",
        bl.describe(),
        if env_valid {
            ""
        } else {
            " (NO VALID ENV: bootloader falls back to A)"
        }
    );
    println!(
        "Boot order: {}",
        if order.is_empty() {
            "-".to_owned()
        } else {
            order.join(" ")
        }
    );
    for r in &rows {
        let dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        println!("{} {}", if r.booted { "●" } else { " " }, r.slot);
        println!("        State: {}", r.state);
        println!(
            "       Commit: {}",
            dash(r.info.commit().map(|c| c.to_hex()))
        );
        println!(
            "      Version: {}",
            dash(r.info.version().map(|v| v.to_string()))
        );
        println!("    Timestamp: {}", dash(r.info.timestamp.map(rfc3339)));
        println!(
            "     Attempts: {}",
            r.attempts.map_or("-".into(), |a| a.to_string())
        );
        if let Some(e) = &r.etc {
            println!("         /etc: {}", e.summary());
            for c in &e.conflicts {
                println!("               conflict (kept the device's): {c}");
            }
        }
    }
    if fallback_pending {
        println!(
            "Fallback: the trial slot ran out of attempts; `atomup mark-good` records the rollback"
        );
    }
    if b.fallback {
        println!("Booted by the bootloader's last-resort fallback (no valid slot in the env)");
    }
    for r in &rollbacks {
        println!(
            "Rollback: {}; slot {}, commit {}, at {}",
            rolled_back_line(r),
            r.slot,
            r.commit.map_or("-".into(), |c| c.to_hex()),
            rfc3339(r.at)
        );
    }
    match &health {
        Ok(Some(h)) => print_health(h, &store),
        Ok(None) => {}
        Err(e) => println!("Health: the record cannot be read: {e}"),
    }
    Ok(())
}

/// Lines of output shown per failed check.
const OUTPUT_LINES: usize = 5;

fn outcome_word(o: Outcome) -> &'static str {
    match o {
        Outcome::Passed => "passed",
        Outcome::Failed => "FAILED",
        Outcome::TimedOut => "TIMED OUT",
        Outcome::Running => "RUNNING",
        Outcome::Pending => "pending",
        Outcome::Skipped => "skipped",
    }
}

fn print_health(h: &HealthRecord, store: &atomup_health::Store) {
    let verdict = match (h.verdict, h.interrupted_in()) {
        (atomup_health::record::Verdict::Running, Some(c)) => {
            format!(
                "no verdict (cut short in {} check {})",
                c.kind.name(),
                c.name
            )
        }
        (v, _) => v.name().to_owned(),
    };
    let wanted = h.failed_wanted().count();
    println!(
        "Health: slot {}{}, started {}: {verdict}{}",
        h.slot,
        h.version.map_or(String::new(), |v| format!(" version {v}")),
        rfc3339(h.started),
        if wanted > 0 {
            format!(" ({wanted} wanted check(s) failed)")
        } else {
            String::new()
        }
    );
    let width = h.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    for c in &h.checks {
        println!(
            "  {:<8} {:<width$}  {:<9} {:>6} ms  {}",
            c.kind.name(),
            c.name,
            outcome_word(c.outcome),
            c.millis,
            c.detail
        );
        if c.outcome.is_failure() {
            if let Some(out) = store.output(c.kind, &c.name) {
                let text = String::from_utf8_lossy(&out);
                let lines: Vec<&str> = text.lines().collect();
                for l in &lines[lines.len().saturating_sub(OUTPUT_LINES)..] {
                    println!("  {:<8} | {l}", "");
                }
            }
            println!(
                "  {:<8}   output: {}",
                "",
                store.output_path(c.kind, &c.name).display()
            );
        }
    }
}

/// `Update in progress: receiving 71% (2 of 3 parts) of version 7 for slot B (pid 42)`.
fn update_line(r: &Record) -> String {
    let mut line = format!("Update in progress: {}", r.phase);
    if let Some(p) = r.percent() {
        line += &format!(" {p}%");
    }
    if r.parts_total > 0 {
        line += &format!(" ({} of {} parts)", r.parts_done, r.parts_total);
    }
    if let Some(v) = r.version {
        line += &format!(" of version {v}");
    }
    if let Some(s) = r.slot {
        line += &format!(" for slot {s}");
    }
    line + &format!(" (pid {})", r.pid)
}

/// The counts of a slot's last /etc merge, and its conflict list.
fn etc_json(r: Option<&atomup_etc::record::MergeRecord>) -> Option<String> {
    let r = r?;
    let conflicts = array(r.conflicts.iter().map(|p| {
        let mut o = String::new();
        atomup_report::json::push_str(&mut o, p);
        o
    }));
    Some(
        Object::new()
            .field("to", r.to.map(|id| id.to_hex()).as_deref())
            .field("modified", r.modified)
            .field("removed", r.removed)
            .field("added", r.added)
            .field("conflicts", r.conflicts.len() as u64)
            .field("forced", r.forced.len() as u64)
            .field("skipped", r.skipped.len() as u64)
            .field("conflict_paths", Value::Raw(&conflicts))
            .finish(),
    )
}

/// Most output bytes per check in the JSON form (the end of it).
const JSON_OUTPUT: usize = 2048;

fn health_json(
    h: &std::result::Result<Option<HealthRecord>, String>,
    store: &atomup_health::Store,
) -> String {
    let h = match h {
        Ok(Some(h)) => h,
        Ok(None) => return "null".into(),
        Err(e) => return Object::new().field("error", e.as_str()).finish(),
    };
    let checks = array(h.checks.iter().map(|c| {
        let output = store.output(c.kind, &c.name).map(|o| {
            let cut = o.len().saturating_sub(JSON_OUTPUT);
            String::from_utf8_lossy(&o[cut..]).into_owned()
        });
        Object::new()
            .field("kind", c.kind.name())
            .field("name", c.name.as_str())
            .field("outcome", c.outcome.name())
            .field("millis", c.millis)
            .field("detail", c.detail.as_str())
            .field("output", output.as_deref())
            .finish()
    }));
    Object::new()
        .field("slot", h.slot.letter())
        .field("version", h.version)
        .field("started", h.started)
        .field("finished", h.finished)
        .field("verdict", h.verdict.name())
        .field("checks", Value::Raw(&checks))
        .finish()
}

#[allow(clippy::too_many_arguments)]
fn status_json(
    b: &cmdline::Booted,
    env_valid: bool,
    state: &BootState,
    rows: &[SlotRow],
    fallback_pending: bool,
    rollbacks: &[RollbackRecord],
    running: Option<&Record>,
    health: &std::result::Result<Option<HealthRecord>, String>,
    store: &atomup_health::Store,
) -> String {
    let order = array(state.order.iter().map(|s| {
        let mut o = String::new();
        atomup_report::json::push_str(&mut o, s.letter());
        o
    }));
    let slots = array(rows.iter().map(|r| {
        Object::new()
            .field("slot", r.slot.letter())
            .field("booted", r.booted)
            .field("state", r.state)
            .field("commit", r.info.commit().map(|c| c.to_hex()).as_deref())
            .field("version", r.info.version())
            .field("timestamp", r.info.timestamp)
            .field("attempts_left", r.attempts.map(u64::from))
            .field(
                "etc_merge",
                etc_json(r.etc.as_ref())
                    .as_deref()
                    .map_or(Value::Null, Value::Raw),
            )
            .finish()
    }));
    let rb = array(rollbacks.iter().map(|r| {
        Object::new()
            .field("slot", r.slot.letter())
            .field("commit", r.commit.map(|c| c.to_hex()).as_deref())
            .field("version", r.version)
            .field("at", r.at)
            .field("reason", r.reason.as_deref())
            .finish()
    }));
    let update = running.map(|r| {
        Object::new()
            .field("phase", r.phase.as_str())
            .field("percent", r.percent())
            .field("bytes_done", r.bytes_done)
            .field("bytes_total", r.bytes_total)
            .field("parts_done", r.parts_done)
            .field("parts_total", r.parts_total)
            .field("version", r.version)
            .field("slot", r.slot.map(String::from).as_deref())
            .field("pid", u64::from(r.pid))
            .finish()
    });
    Object::new()
        .field("format", 2u64)
        .field("booted", b.slot.map(|s| s.letter()))
        .field("trial_boot", b.trial)
        .field("fallback_boot", b.fallback)
        .field("env_valid", env_valid)
        .field("order", Value::Raw(&order))
        .field("trial", state.trial.map(|s| s.letter()))
        .field("attempts_left", u64::from(state.left))
        .field("fallback_pending", fallback_pending)
        .field("slots", Value::Raw(&slots))
        .field("rollbacks", Value::Raw(&rb))
        .field("update", update.as_deref().map_or(Value::Null, Value::Raw))
        .field("health", Value::Raw(&health_json(health, store)))
        .finish()
        + "\n"
}
