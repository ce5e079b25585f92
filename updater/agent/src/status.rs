//! `atomup status [--json]`, like `atomic host status`: per slot the booted
//! marker, state (good, trial, installing, bad), commit, version, release
//! timestamp and attempts left; the recorded rollbacks, each "rolled back
//! from version V (reason)"; and the last health run, check by check, with
//! the output of the checks that failed. The JSON form (`format` 2) is
//! written by hand to keep serde out of the device binary; the tests read it
//! back with a real JSON parser.

use crate::bootopts::{BootOpts, OPTIONS};
use crate::error::Result;
use crate::transitions::rolled_back_line;
use atomup_bootctl::cmdline;
use atomup_bootctl::statedir::{rfc3339, RollbackRecord, SlotRecord};
use atomup_health::record::{Outcome, Record};
use atomup_policy::{BootOutcome, BootState, Slot};

pub const USAGE: &str = "\
  status [--json]      each slot: booted marker, commit, version, state, attempts
";

struct SlotRow {
    slot: Slot,
    booted: bool,
    state: &'static str,
    attempts: Option<u8>,
    info: SlotRecord,
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
            })
        })
        .collect::<Result<_>>()?;
    let fallback_pending = b
        .slot
        .map(|s| matches!(state.after_boot(s), BootOutcome::Fallback { .. }))
        .unwrap_or(false);
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
                &health,
                &store
            )
        );
        return Ok(());
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

fn print_health(h: &Record, store: &atomup_health::Store) {
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

fn json_str(v: Option<&str>) -> String {
    let Some(v) = v else { return "null".into() };
    let mut out = String::from("\"");
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_num(v: Option<u64>) -> String {
    v.map_or("null".into(), |v| v.to_string())
}

/// Most output bytes per check in the JSON form (the end of it).
const JSON_OUTPUT: usize = 2048;

fn health_json(
    h: &std::result::Result<Option<Record>, String>,
    store: &atomup_health::Store,
) -> String {
    let h = match h {
        Ok(Some(h)) => h,
        Ok(None) => return "null".into(),
        Err(e) => return format!("{{\"error\":{}}}", json_str(Some(e))),
    };
    let checks: Vec<String> = h
        .checks
        .iter()
        .map(|c| {
            let output = store.output(c.kind, &c.name).map(|o| {
                let cut = o.len().saturating_sub(JSON_OUTPUT);
                String::from_utf8_lossy(&o[cut..]).into_owned()
            });
            format!(
                "{{\"kind\":{},\"name\":{},\"outcome\":{},\"millis\":{},\"detail\":{},\"output\":{}}}",
                json_str(Some(c.kind.name())),
                json_str(Some(&c.name)),
                json_str(Some(c.outcome.name())),
                c.millis,
                json_str(Some(&c.detail)),
                json_str(output.as_deref())
            )
        })
        .collect();
    format!(
        "{{\"slot\":\"{}\",\"version\":{},\"started\":{},\"finished\":{},\"verdict\":{},\"checks\":[{}]}}",
        h.slot,
        json_num(h.version),
        h.started,
        json_num(h.finished),
        json_str(Some(h.verdict.name())),
        checks.join(",")
    )
}

#[allow(clippy::too_many_arguments)]
fn status_json(
    b: &cmdline::Booted,
    env_valid: bool,
    state: &BootState,
    rows: &[SlotRow],
    fallback_pending: bool,
    rollbacks: &[RollbackRecord],
    health: &std::result::Result<Option<Record>, String>,
    store: &atomup_health::Store,
) -> String {
    let order: Vec<String> = state
        .order
        .iter()
        .map(|s| json_str(Some(s.letter())))
        .collect();
    let slots: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{{\"slot\":\"{}\",\"booted\":{},\"state\":{},\"commit\":{},\"version\":{},\"timestamp\":{},\"attempts_left\":{}}}",
                r.slot,
                r.booted,
                json_str(Some(r.state)),
                json_str(r.info.commit().map(|c| c.to_hex()).as_deref()),
                json_num(r.info.version()),
                json_num(r.info.timestamp),
                r.attempts.map_or("null".into(), |a| a.to_string())
            )
        })
        .collect();
    let rb: Vec<String> = rollbacks
        .iter()
        .map(|r| {
            format!(
                "{{\"slot\":\"{}\",\"commit\":{},\"version\":{},\"at\":{},\"reason\":{}}}",
                r.slot,
                json_str(r.commit.map(|c| c.to_hex()).as_deref()),
                json_num(r.version),
                r.at,
                json_str(r.reason.as_deref())
            )
        })
        .collect();
    format!(
        "{{\"format\":2,\"booted\":{},\"trial_boot\":{},\"fallback_boot\":{},\"env_valid\":{},\"order\":[{}],\"trial\":{},\"attempts_left\":{},\"fallback_pending\":{},\"slots\":[{}],\"rollbacks\":[{}],\"health\":{}}}\n",
        json_str(b.slot.map(|s| s.letter())),
        b.trial,
        b.fallback,
        env_valid,
        order.join(","),
        json_str(state.trial.map(|s| s.letter())),
        state.left,
        fallback_pending,
        slots.join(","),
        rb.join(","),
        health_json(health, store)
    )
}
