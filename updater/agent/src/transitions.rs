//! The slot contract's transitions: `mark-good`, `mark-bad`, `rollback`,
//! `install-start`, `install-done`. Each loads the env once (a snapshot,
//! holding the env lock), asks `atomup-policy` what to write, writes the
//! records it needs first and then the env, in ONE store of that snapshot:
//! record first, env last, so a power cut between the two leaves a record
//! that describes an env state that has not happened yet (harmless, and
//! repeated by the next run), never an env state nobody recorded.

use crate::bootopts::{slot_arg, BootOpts, OPTIONS};
use crate::error::Result;
use atomup_bootctl::statedir::{
    parse_commit, parse_rfc3339, parse_u64, RollbackRecord, SlotRecord,
};
use atomup_bootctl::{store_state, Bootloader, Snapshot};
use atomup_policy::slot::DEFAULT_ATTEMPTS;
use atomup_policy::{BootOutcome, Slot};
use atomup_report::document::Event;

pub const USAGE: &str = "\
  mark-good            health passed on the booted slot (confirms a trial)
  mark-bad [--reason TEXT]
                       health failed on the booted slot (then reboot); TEXT is
                       recorded with the rollback (default: marked bad by hand)
  rollback             make the other slot primary (if it is confirmed good)
  install-start --slot X               take slot X out of the boot order
  install-done --slot X [--attempts N] [--commit C --version V] [--timestamp T]
                       X first in order, on trial with N attempts (default 3);
                       C is 64 hex digits, V an integer, T unix seconds or RFC 3339
";

pub fn handles(command: &str) -> bool {
    matches!(
        command,
        "mark-good" | "mark-bad" | "rollback" | "install-start" | "install-done"
    )
}

#[derive(Default)]
struct Opts {
    boot: BootOpts,
    slot: Option<Slot>,
    attempts: Option<u8>,
    commit: Option<String>,
    version: Option<String>,
    timestamp: Option<String>,
    reason: Option<String>,
}

fn parse(command: &str, args: &mut lexopt::Parser) -> Result<Opts> {
    use lexopt::prelude::*;
    let mut o = Opts::default();
    while let Some(arg) = args.next()? {
        match arg {
            Long("slot") if command.starts_with("install-") => {
                o.slot = Some(slot_arg(&args.value()?.string()?)?)
            }
            Long("attempts") if command == "install-done" => {
                o.attempts = Some(args.value()?.parse()?)
            }
            Long("commit") if command == "install-done" => o.commit = Some(args.value()?.string()?),
            Long("version") if command == "install-done" => {
                o.version = Some(args.value()?.string()?)
            }
            Long("timestamp") if command == "install-done" => {
                o.timestamp = Some(args.value()?.string()?)
            }
            Long("reason") if command == "mark-bad" => o.reason = Some(args.value()?.string()?),
            Long("help") | Short('h') => {
                print!("Usage: atomup {command} [options]\n\nCommands:\n{USAGE}\n{OPTIONS}");
                std::process::exit(0);
            }
            Long(name) => {
                let name = name.to_owned();
                if !o.boot.take(&name, args)? {
                    return Err(format!("invalid option '--{name}'").into());
                }
            }
            other => return Err(other.unexpected().into()),
        }
    }
    Ok(o)
}

pub fn run(command: &str, args: &mut lexopt::Parser) -> Result {
    let o = parse(command, args)?;
    let board = o.boot.board()?;
    let mut bl = o.boot.open_env(board.as_ref())?;
    let bl = bl.as_mut();
    match command {
        "mark-good" => mark_good(&o.boot, bl).map(|_| ()),
        "mark-bad" => {
            let reason = o
                .reason
                .as_deref()
                .unwrap_or("marked bad by hand (atomup mark-bad)");
            mark_bad(&o.boot, bl, Some(reason))?;
            println!("reboot now");
            Ok(())
        }
        "rollback" => {
            let slot = o.boot.require_booted()?;
            let mut snap = atomup_bootctl::load(bl)?;
            let next = snap.state()?.rollback(slot)?;
            store_state(bl, &mut snap, &next)?;
            println!(
                "rollback: slot {} boots next ({next}); reboot to switch",
                !slot
            );
            Ok(())
        }
        "install-start" => {
            let x = o.slot.ok_or("install-start needs --slot A|B")?;
            let mut snap = atomup_bootctl::load(bl)?;
            let next = snap.state()?.install_start(x);
            // Record first: "installing" before slot X leaves the boot order
            // (a cut in between leaves a record for a slot still in the
            // order, which status shows as good). Only where an agent state
            // dir exists (not on a build host).
            if o.boot.state_dir.exists() {
                o.boot
                    .state()
                    .write_slot_record(x, &SlotRecord::installing())?;
            }
            // Slot X leaves the boot order before anything in it changes.
            store_state(bl, &mut snap, &next)?;
            println!("install started into slot {x} ({next})");
            Ok(())
        }
        "install-done" => {
            let x = o.slot.ok_or("install-done needs --slot A|B")?;
            let mut snap = atomup_bootctl::load(bl)?;
            let next = snap
                .state()?
                .install_done(x, o.attempts.unwrap_or(DEFAULT_ATTEMPTS))?;
            if let Some(record) = install_record(&o)? {
                o.boot.state().write_slot_record(x, &record)?;
            }
            store_state(bl, &mut snap, &next)?;
            println!("install done into slot {x} ({next}); reboot to try it");
            Ok(())
        }
        other => Err(format!("unknown command `{other}`").into()),
    }
}

/// The record `install-done` writes from `--commit`, `--version` (both or
/// neither) and `--timestamp` (unix seconds or RFC 3339), typed as the
/// records are.
fn install_record(o: &Opts) -> Result<Option<SlotRecord>> {
    let timestamp =
        match o.timestamp.as_deref() {
            Some(t) => Some(parse_u64(t).or_else(|| parse_rfc3339(t)).ok_or_else(|| {
                format!("--timestamp must be unix seconds or RFC 3339, got `{t}`")
            })?),
            None => None,
        };
    match (o.commit.as_deref(), o.version.as_deref()) {
        (None, None) if timestamp.is_none() => Ok(None),
        (Some(c), Some(v)) => {
            let commit = parse_commit(c)
                .ok_or_else(|| format!("--commit must be 64 lower-case hex digits, got `{c}`"))?;
            let version = parse_u64(v)
                .ok_or_else(|| format!("--version must be an unsigned integer, got `{v}`"))?;
            Ok(Some(SlotRecord::installed(commit, version, timestamp)))
        }
        _ => Err("give --commit and --version together".into()),
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The record of `slot` for a rollback entry. An unreadable record must not
/// keep the rollback from being recorded (or the slot from leaving the
/// order): the entry is then written without commit and version, and said so.
fn rollback_of(boot: &BootOpts, slot: Slot, reason: Option<String>) -> RollbackRecord {
    let record = match boot.state().slot_record(slot) {
        Ok(r) => r.unwrap_or_default(),
        Err(e) => {
            log::warn!("slot {slot}: recording the rollback without its release: {e}");
            SlotRecord::default()
        }
    };
    RollbackRecord {
        at: now(),
        slot,
        commit: record.commit(),
        version: record.version(),
        reason,
    }
}

/// Why a trial that ran out of boot attempts failed, from the health record
/// its last boot left (if that record is of the same slot and release): a
/// run the board reset in names the check it was in; no run at all means
/// the slot never got as far as its checks.
fn exhausted_reason(boot: &BootOpts, slot: Slot, version: Option<u64>) -> String {
    use atomup_health::record::Verdict;
    let base = "ran out of boot attempts";
    let record = match atomup_health::Store::new(&boot.state_dir).read() {
        Ok(r) => r.filter(|r| r.slot == slot && (version.is_none() || r.version == version)),
        Err(e) => {
            log::warn!("rollback of slot {slot}: {e}");
            None
        }
    };
    let Some(r) = record else {
        return format!(
            "{base}: no health run of it was recorded (it crashed, hung or reset before its checks)"
        );
    };
    let at = atomup_bootctl::statedir::rfc3339(r.started);
    match (r.verdict, r.interrupted_in()) {
        (Verdict::Running, Some(c)) => format!(
            "{base}: its last health run ({at}) never finished, the board reset during {} check {} (watchdog)",
            c.kind.name(),
            c.name
        ),
        (Verdict::Running, None) => format!(
            "{base}: its last health run ({at}) never finished (the board reset between checks)"
        ),
        (Verdict::Failed, _) => format!(
            "{base}: its last health run ({at}) failed: {}",
            r.failed_required()
                .map_or_else(|| "see atomup status".into(), atomup_health::reason_of)
        ),
        (Verdict::Passed, _) => format!(
            "{base}: its last health run ({at}) passed, but the confirmation never reached the env"
        ),
    }
}

/// Health failed on the booted slot: record its release as rolled back (so
/// `update` never retries it) with `reason`, then take the slot out of the
/// boot order.
pub fn mark_bad(boot: &BootOpts, bl: &mut dyn Bootloader, reason: Option<&str>) -> Result {
    let slot = boot.require_booted()?;
    let mut snap = atomup_bootctl::load(bl)?;
    let state = snap.state()?;
    let next = state.health_failed(slot)?;
    // Rule (DESIGN "Data flow"): a release that failed its health check is
    // recorded before the env changes, so `update` never retries it whatever
    // the order of a power cut.
    if state.trial == Some(slot) && boot.state_dir.exists() {
        let r = rollback_of(boot, slot, reason.map(str::to_owned));
        boot.state().record_rollback(&r)?;
        println!("{}", rolled_back_line(&r));
    }
    store_state(bl, &mut snap, &next)?;
    println!("slot {slot} marked bad ({next})");
    if state.trial == Some(slot) {
        crate::reports::record_for(
            boot,
            Event::RolledBack,
            Some(format!("slot {slot} failed on its trial boot")),
            &next,
        );
    }
    Ok(())
}

/// "rolled back from version V (reason)", as the agent says it everywhere.
pub fn rolled_back_line(r: &RollbackRecord) -> String {
    format!(
        "rolled back from {} ({})",
        r.version.map_or_else(
            || "an unknown version".to_owned(),
            |v| format!("version {v}")
        ),
        r.reason.as_deref().unwrap_or("no reason recorded")
    )
}

/// Health passed on the booted slot (or it booted confirmed): one load,
/// then [`confirm`]; true when a fallback was recorded.
pub fn mark_good(boot: &BootOpts, bl: &mut dyn Bootloader) -> Result<bool> {
    let slot = boot.require_booted()?;
    let mut snap = atomup_bootctl::load(bl)?;
    confirm(boot, bl, &mut snap, slot)
}

/// The fallback bookkeeping and the confirmation of `slot` on one snapshot:
/// an exhausted trial of the other slot is recorded as a rollback (with why,
/// from its last health record) and taken out of the env, then a trial of
/// `slot` is confirmed. A confirmed boot writes nothing. True when a
/// fallback was recorded.
pub fn confirm(
    boot: &BootOpts,
    bl: &mut dyn Bootloader,
    snap: &mut Snapshot,
    slot: Slot,
) -> Result<bool> {
    let mut state = snap.state()?;
    let mut fell_back = false;
    if let BootOutcome::Fallback { failed, write } = state.after_boot(slot) {
        // Record first, env last: once the env no longer shows the
        // exhausted trial, nothing would tell a later boot to record it. A
        // cut after the record repeats it on the next boot (recorded once).
        let mut r = rollback_of(boot, failed, None);
        r.reason = Some(exhausted_reason(boot, failed, r.version));
        boot.state().record_rollback(&r)?;
        store_state(bl, snap, &write)?;
        println!(
            "rollback detected: slot {failed} ran out of attempts, slot {slot} booted; recorded"
        );
        println!("{}", rolled_back_line(&r));
        crate::reports::record_for(boot, Event::RolledBack, r.reason.clone(), &write);
        state = write;
        fell_back = true;
    }
    let passed = if boot.booted()?.fallback {
        state.fallback_boot_passed(slot)
    } else {
        state.health_passed(slot)
    };
    match passed {
        Some(next) => {
            store_state(bl, snap, &next)?;
            println!("slot {slot} confirmed good ({next})");
            crate::reports::record_for(boot, Event::Confirmed, None, &next);
        }
        None => println!("slot {slot} is confirmed (not on trial): nothing to write"),
    }
    Ok(fell_back)
}
