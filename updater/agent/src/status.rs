//! `atomup status [--json]`, like `atomic host status`: per slot the booted
//! marker, state (good, trial, installing, bad), commit, version, release
//! timestamp and attempts left, the counts of the last /etc merge into the
//! slot's layer (`etc_merge`, with its conflict list), and the recorded
//! rollbacks. The JSON form
//! (`format` 2) is written by hand to keep serde out of the device binary;
//! the tests read it back with a real JSON parser.

use crate::bootopts::{BootOpts, OPTIONS};
use crate::error::Result;
use atomup_bootctl::cmdline;
use atomup_bootctl::statedir::{rfc3339, RollbackRecord, SlotRecord};
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
    if json {
        print!(
            "{}",
            status_json(&b, env_valid, &state, &rows, fallback_pending, &rollbacks)
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
            "Rolled back: slot {} commit {} version {} (at {})",
            r.slot,
            r.commit.map_or("-".into(), |c| c.to_hex()),
            r.version.map_or("-".into(), |v| v.to_string()),
            r.at
        );
    }
    Ok(())
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

/// The counts of a slot's last /etc merge, and its conflict list.
fn etc_json(r: Option<&atomup_etc::record::MergeRecord>) -> String {
    let Some(r) = r else { return "null".into() };
    let list = |v: &[String]| {
        v.iter()
            .map(|p| json_str(Some(p)))
            .collect::<Vec<_>>()
            .join(",")
    };
    format!(
        "{{\"to\":{},\"modified\":{},\"removed\":{},\"added\":{},\"conflicts\":{},\"forced\":{},\"skipped\":{},\"conflict_paths\":[{}]}}",
        json_str(r.to.map(|id| id.to_hex()).as_deref()),
        r.modified,
        r.removed,
        r.added,
        r.conflicts.len(),
        r.forced.len(),
        r.skipped.len(),
        list(&r.conflicts)
    )
}

fn status_json(
    b: &cmdline::Booted,
    env_valid: bool,
    state: &BootState,
    rows: &[SlotRow],
    fallback_pending: bool,
    rollbacks: &[RollbackRecord],
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
                "{{\"slot\":\"{}\",\"booted\":{},\"state\":{},\"commit\":{},\"version\":{},\"timestamp\":{},\"attempts_left\":{},\"etc_merge\":{}}}",
                r.slot,
                r.booted,
                json_str(Some(r.state)),
                json_str(r.info.commit().map(|c| c.to_hex()).as_deref()),
                json_num(r.info.version()),
                json_num(r.info.timestamp),
                r.attempts.map_or("null".into(), |a| a.to_string()),
                etc_json(r.etc.as_ref())
            )
        })
        .collect();
    let rb: Vec<String> = rollbacks
        .iter()
        .map(|r| {
            format!(
                "{{\"slot\":\"{}\",\"commit\":{},\"version\":{},\"at\":{}}}",
                r.slot,
                json_str(r.commit.map(|c| c.to_hex()).as_deref()),
                json_num(r.version),
                r.at
            )
        })
        .collect();
    format!(
        "{{\"format\":2,\"booted\":{},\"trial_boot\":{},\"fallback_boot\":{},\"env_valid\":{},\"order\":[{}],\"trial\":{},\"attempts_left\":{},\"fallback_pending\":{},\"slots\":[{}],\"rollbacks\":[{}]}}\n",
        json_str(b.slot.map(|s| s.letter())),
        b.trial,
        b.fallback,
        env_valid,
        order.join(","),
        json_str(state.trial.map(|s| s.letter())),
        state.left,
        fallback_pending,
        slots.join(","),
        rb.join(",")
    )
}
