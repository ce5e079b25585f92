//! The boot-state commands: `status`, `mark-good`, `mark-bad`, `rollback`,
//! `install-start`, `install-done` and the `env` helpers. Each command reads
//! the env once, asks `atomup-policy` what to write, and does at most ONE env
//! write through `atomup-bootctl`. Options let the same binary work on a
//! device (`/etc/fw_env.config`, `/proc/cmdline`) and on the host against
//! disk images and plain files (tests, image builders).

use crate::{bootopts, Result};
use atomup_bootctl::statedir::{RollbackRecord, SlotInfo, StateDir};
use atomup_bootctl::{cmdline, Bootloader};
use atomup_policy::slot::DEFAULT_ATTEMPTS;
use atomup_policy::{BootOutcome, BootState, Slot};
use std::path::PathBuf;

const USAGE: &str = "\
  status [--json]      each slot: booted marker, commit, version, state, attempts
  mark-good            health passed on the booted slot (confirms a trial)
  mark-bad             health failed on the booted slot (then reboot)
  health [--checks DIR] [--timeout S] [--watchdog DEV] [--no-reboot]
                       trial boot: run DIR's checks (default /etc/atomup/health.d)
                       under the watchdog; pass: mark-good; fail: mark-bad + reboot
  rollback             make the other slot primary (if it is confirmed good)
  install-start --slot X               take slot X out of the boot order
  install-done --slot X [--attempts N] [--commit C] [--version V] [--timestamp T]
                       X first in order, on trial with N attempts (default 3)
  env show|init|set    print / provision / set the A/B variables (host helper)
";

const OPTIONS: &str = "\
Boot-state options (all of the commands above):
  --env-config FILE   U-Boot env described by an fw_env.config-format file
                      (default /etc/fw_env.config; device paths may be image files,
                      relative paths resolve against the current directory)
  --env-image FILE    redundant U-Boot env in FILE at 0x80000 and 0x84000, 0x4000 each
  --grubenv PATH      GRUB env: PATH and PATH2 (sealed two-block scheme)
  --booted-slot A|B   booted slot (default: atomup.slot= in /proc/cmdline)
  --state-dir DIR     agent state (default /var/lib/atomup)
env subcommands:
  env show
  env init [--order \"A B\"]
  env set [--order ORDER] [--trial A|B|none] [--left N]
";

pub fn handles(command: &str) -> bool {
    matches!(
        command,
        "status"
            | "mark-good"
            | "mark-bad"
            | "health"
            | "rollback"
            | "install-start"
            | "install-done"
            | "env"
    )
}

#[derive(Default)]
struct Opts {
    env_config: Option<PathBuf>,
    env_image: Option<PathBuf>,
    grubenv: Option<PathBuf>,
    booted: Option<Slot>,
    state_dir: Option<PathBuf>,
    json: bool,
    slot: Option<Slot>,
    attempts: Option<u8>,
    order: Option<String>,
    trial: Option<String>,
    left: Option<u8>,
    commit: Option<String>,
    version: Option<String>,
    timestamp: Option<String>,
    sub: Option<String>,
    checks: Option<PathBuf>,
    check_timeout: Option<u64>,
    no_reboot: bool,
    watchdog: Option<PathBuf>,
}

fn slot_arg(v: String) -> Result<Slot> {
    Slot::parse(&v).ok_or_else(|| format!("slot must be A or B, got `{v}`").into())
}

fn parse(command: &str, args: &mut lexopt::Parser) -> Result<Opts> {
    use lexopt::prelude::*;
    let mut o = Opts::default();
    while let Some(arg) = args.next()? {
        match arg {
            Long("env-config") => o.env_config = Some(args.value()?.into()),
            Long("env-image") => o.env_image = Some(args.value()?.into()),
            Long("grubenv") => o.grubenv = Some(args.value()?.into()),
            Long("booted-slot") => o.booted = Some(slot_arg(args.value()?.string()?)?),
            Long("state-dir") => o.state_dir = Some(args.value()?.into()),
            Long("json") if command == "status" => o.json = true,
            Long("checks") if command == "health" => o.checks = Some(args.value()?.into()),
            Long("timeout") if command == "health" => {
                o.check_timeout = Some(args.value()?.parse()?)
            }
            Long("no-reboot") if command == "health" => o.no_reboot = true,
            Long("watchdog") if command == "health" => o.watchdog = Some(args.value()?.into()),
            Long("slot") if command.starts_with("install-") => {
                o.slot = Some(slot_arg(args.value()?.string()?)?)
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
            Long("order") if command == "env" => o.order = Some(args.value()?.string()?),
            Long("trial") if command == "env" => o.trial = Some(args.value()?.string()?),
            Long("left") if command == "env" => o.left = Some(args.value()?.parse()?),
            Value(v) if command == "env" && o.sub.is_none() => o.sub = Some(v.string()?),
            Long("help") | Short('h') => {
                print!("Usage: atomup {command} [options]\n\nCommands:\n{USAGE}\n{OPTIONS}");
                std::process::exit(0);
            }
            other => return Err(other.unexpected().into()),
        }
    }
    Ok(o)
}

fn bootloader(o: &Opts) -> Result<Box<dyn Bootloader>> {
    bootopts::open_env(
        o.env_config.as_deref(),
        o.env_image.as_deref(),
        o.grubenv.as_deref(),
        None,
    )
}

fn booted(o: &Opts) -> Result<cmdline::Booted> {
    Ok(bootopts::booted(o.booted))
}

fn require_booted(o: &Opts) -> Result<Slot> {
    bootopts::require_booted(o.booted)
}

fn state_dir_path(o: &Opts) -> PathBuf {
    o.state_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("/var/lib/atomup"))
}

fn state_dir(o: &Opts) -> StateDir {
    StateDir::new(&state_dir_path(o))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn run(command: &str, args: &mut lexopt::Parser) -> Result {
    let o = parse(command, args)?;
    let mut bl = bootloader(&o)?;
    let bl = bl.as_mut();
    match command {
        "status" => status(&o, bl),
        "mark-good" => mark_good(&o, bl),
        "mark-bad" => {
            mark_bad(&o, bl)?;
            println!("reboot now");
            Ok(())
        }
        "health" => health(&o, bl),
        "rollback" => {
            let slot = require_booted(&o)?;
            let state = atomup_bootctl::read(bl)?.state()?;
            let next = state.rollback(slot)?;
            atomup_bootctl::write_state(bl, &next)?;
            println!(
                "rollback: slot {} boots next ({next}); reboot to switch",
                !slot
            );
            Ok(())
        }
        "install-start" => {
            let x = o.slot.ok_or("install-start needs --slot A|B")?;
            let state = atomup_bootctl::read(bl)?.state()?;
            // The env write comes first: slot X leaves the boot order before
            // anything in it changes.
            let next = state.install_start(x);
            atomup_bootctl::write_state(bl, &next)?;
            // Only where an agent state dir exists (not on a build host).
            if state_dir_path(&o).exists() {
                let info = SlotInfo {
                    status: Some("installing".into()),
                    ..Default::default()
                };
                state_dir(&o).write_slot_info(x, &info)?;
            }
            println!("install started into slot {x} ({next})");
            Ok(())
        }
        "install-done" => {
            let x = o.slot.ok_or("install-done needs --slot A|B")?;
            let state = atomup_bootctl::read(bl)?.state()?;
            let next = state.install_done(x, o.attempts.unwrap_or(DEFAULT_ATTEMPTS))?;
            if o.commit.is_some() || o.version.is_some() || o.timestamp.is_some() {
                let info = SlotInfo {
                    commit: o.commit.clone(),
                    version: o.version.clone(),
                    timestamp: o.timestamp.clone(),
                    status: None,
                };
                state_dir(&o).write_slot_info(x, &info)?;
            }
            atomup_bootctl::write_state(bl, &next)?;
            println!("install done into slot {x} ({next}); reboot to try it");
            Ok(())
        }
        "env" => env_cmd(&o, bl),
        other => Err(format!("unknown command `{other}`").into()),
    }
}

/// Health failed on the booted slot: record its release as rolled back (so
/// `update` never retries it), then take the slot out of the boot order.
fn mark_bad(o: &Opts, bl: &mut dyn Bootloader) -> Result {
    let slot = require_booted(o)?;
    let state = atomup_bootctl::read(bl)?.state()?;
    let next = state.health_failed(slot)?;
    // Rule (DESIGN "Data flow"): a release that failed its health check is
    // recorded before the env changes, so `update` never retries it whatever
    // the order of a power cut.
    if state.trial == Some(slot) && state_dir_path(o).exists() {
        let info = state_dir(o)
            .slot_info(slot)
            .ok()
            .flatten()
            .unwrap_or_default();
        state_dir(o).record_rollback(&RollbackRecord {
            at: now(),
            slot,
            commit: info.commit,
            version: info.version,
        })?;
    }
    atomup_bootctl::write_state(bl, &next)?;
    println!("slot {slot} marked bad ({next})");
    Ok(())
}

/// `atomup health`: on a trial boot, run the release's checks (every executable
/// in the checks directory, in name order, each with a deadline) while the
/// hardware watchdog is armed; all pass → confirm the slot, any fails → mark it
/// bad and reboot into the confirmed one. A hang stops the watchdog feeding, so
/// the board resets and the bootloader counts the attempt. On a confirmed boot
/// only the fallback bookkeeping of `mark-good` runs.
fn health(o: &Opts, bl: &mut dyn Bootloader) -> Result {
    let slot = require_booted(o)?;
    let state = atomup_bootctl::read(bl)?.state()?;
    if state.trial != Some(slot) {
        return mark_good(o, bl);
    }
    let dir = o
        .checks
        .clone()
        .unwrap_or_else(|| PathBuf::from("/etc/atomup/health.d"));
    let timeout = std::time::Duration::from_secs(o.check_timeout.unwrap_or(120));
    let watchdog = match &o.watchdog {
        Some(dev) => Some(
            atomup_board::watchdog::Watchdog::arm(dev)
                .map_err(|e| format!("arming watchdog {}: {e}", dev.display()))?,
        ),
        None => None,
    };
    if let Some(dev) = &o.watchdog {
        println!(
            "health: watchdog {} armed for slot {slot}'s checks",
            dev.display()
        );
    }
    let verdict = run_checks(&dir, timeout, watchdog);
    match verdict {
        Ok(n) => {
            println!("health: {n} check(s) passed on slot {slot}");
            mark_good(o, bl)
        }
        Err(why) => {
            println!("health: slot {slot} FAILED: {why}");
            mark_bad(o, bl)?;
            if !o.no_reboot {
                rustix::fs::sync();
                rustix::system::reboot(rustix::system::RebootCommand::Restart)
                    .map_err(|e| format!("reboot: {e}"))?;
            }
            Err(format!("slot {slot} failed its health check: {why}").into())
        }
    }
}

/// Runs every executable in `dir`; Ok(count) if all exit 0 within `timeout`.
/// The watchdog is fed only while a check is within its deadline.
fn run_checks(
    dir: &std::path::Path,
    timeout: std::time::Duration,
    mut watchdog: Option<atomup_board::watchdog::Watchdog>,
) -> std::result::Result<usize, String> {
    use std::os::unix::fs::PermissionsExt;
    let mut checks: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.metadata()
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            })
            .collect(),
        // No checks shipped: booting to here is the health check.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(format!("reading {}: {e}", dir.display())),
    };
    checks.sort();
    for check in &checks {
        let mut child = std::process::Command::new(check)
            .spawn()
            .map_err(|e| format!("{}: cannot run: {e}", check.display()))?;
        let start = std::time::Instant::now();
        let status = loop {
            if let Some(w) = watchdog.as_mut() {
                let _ = w.feed();
            }
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if start.elapsed() > timeout => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "{} did not finish within {}s",
                        check.display(),
                        timeout.as_secs()
                    ));
                }
                Ok(None) => std::thread::sleep(std::time::Duration::from_millis(100)),
                Err(e) => return Err(format!("{}: {e}", check.display())),
            }
        };
        if !status.success() {
            return Err(format!("{} failed ({status})", check.display()));
        }
    }
    if let Some(w) = watchdog {
        w.disarm().map_err(|e| format!("disarming watchdog: {e}"))?;
    }
    Ok(checks.len())
}

fn mark_good(o: &Opts, bl: &mut dyn Bootloader) -> Result {
    let slot = require_booted(o)?;
    let mut state = atomup_bootctl::read(bl)?.state()?;
    if let BootOutcome::Fallback { failed, write } = state.after_boot(slot) {
        let info = state_dir(o)
            .slot_info(failed)
            .ok()
            .flatten()
            .unwrap_or_default();
        atomup_bootctl::write_state(bl, &write)?;
        state_dir(o).record_rollback(&RollbackRecord {
            at: now(),
            slot: failed,
            commit: info.commit,
            version: info.version,
        })?;
        println!(
            "rollback detected: slot {failed} ran out of attempts, slot {slot} booted; recorded"
        );
        state = write;
    }
    let passed = if booted(o)?.fallback {
        state.fallback_boot_passed(slot)
    } else {
        state.health_passed(slot)
    };
    match passed {
        Some(next) => {
            atomup_bootctl::write_state(bl, &next)?;
            println!("slot {slot} confirmed good ({next})");
        }
        None => println!("slot {slot} is confirmed (not on trial): nothing to write"),
    }
    Ok(())
}

fn env_cmd(o: &Opts, bl: &mut dyn Bootloader) -> Result {
    match o.sub.as_deref() {
        Some("show") => {
            let read = atomup_bootctl::read(bl)?;
            match &read.vars {
                None => return Err(format!("no valid env in {}", bl.describe()).into()),
                Some(_) => {
                    for (k, v) in read.state()?.to_pairs() {
                        println!("{k}={v}");
                    }
                }
            }
            Ok(())
        }
        Some("init") => {
            let order = o.order.as_deref().unwrap_or("A B");
            let state = state_from(order, None, 0)?;
            atomup_bootctl::init_state(bl, &state)?;
            println!("initialized {} ({state})", bl.describe());
            Ok(())
        }
        Some("set") => {
            let cur = atomup_bootctl::read(bl)?.state().unwrap_or_default();
            let order_s: Vec<&str> = cur.order.iter().map(|s| s.letter()).collect();
            let order = o.order.clone().unwrap_or_else(|| order_s.join(" "));
            let trial = match o.trial.as_deref() {
                None => cur.trial,
                Some("none") | Some("") => None,
                Some(t) => Some(
                    Slot::parse(t)
                        .ok_or_else(|| format!("--trial must be A, B or none, got `{t}`"))?,
                ),
            };
            let state = state_from(&order, trial, o.left.unwrap_or(cur.left))?;
            atomup_bootctl::write_state(bl, &state)?;
            println!("set {state}");
            Ok(())
        }
        _ => Err("env needs a subcommand: show, init or set (see `atomup env --help`)".into()),
    }
}

fn state_from(order: &str, trial: Option<Slot>, left: u8) -> Result<BootState> {
    let mut vars = atomup_bootenv::Vars::default();
    vars.set(atomup_policy::slot::VAR_ORDER, order)?;
    let mut state = BootState::from_vars(&vars)?;
    if left > atomup_policy::slot::MAX_ATTEMPTS {
        return Err(format!("--left must be 0..=9, got {left}").into());
    }
    state.trial = trial;
    state.left = left;
    Ok(state)
}

struct SlotRow {
    slot: Slot,
    booted: bool,
    state: &'static str,
    attempts: Option<u8>,
    info: SlotInfo,
    /// The merge record of the slot's /etc layer (the last merge into it).
    etc: Option<atomup_etc::record::MergeRecord>,
}

fn status(o: &Opts, bl: &mut dyn Bootloader) -> Result {
    let b = booted(o)?;
    let read = atomup_bootctl::read(bl)?;
    let env_valid = read.vars.is_some();
    let state = read.state()?;
    let sd = state_dir(o);
    let rollbacks = sd.rollbacks()?;
    let rows: Vec<SlotRow> = Slot::ALL
        .iter()
        .map(|&s| {
            let info = sd.slot_info(s).ok().flatten();
            let (st, attempts) = if state.trial == Some(s) && state.order.contains(&s) {
                ("trial", Some(state.left))
            } else if state.order.contains(&s) {
                ("good", None)
            } else if info.as_ref().and_then(|i| i.status.as_deref()) == Some("installing") {
                ("installing", None)
            } else if info.is_some()
                || state.trial == Some(s)
                || rollbacks.iter().any(|r| r.slot == s)
            {
                ("bad", None)
            } else {
                ("-", None)
            };
            SlotRow {
                slot: s,
                booted: b.slot == Some(s),
                state: st,
                attempts,
                info: info.unwrap_or_default(),
                etc: crate::etc::last_merge(&state_dir_path(o), s).ok().flatten(),
            }
        })
        .collect();
    let fallback_pending = b
        .slot
        .map(|s| matches!(state.after_boot(s), BootOutcome::Fallback { .. }))
        .unwrap_or(false);
    if o.json {
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
        let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        println!("{} {}", if r.booted { "●" } else { " " }, r.slot);
        println!("        State: {}", r.state);
        println!("       Commit: {}", dash(&r.info.commit));
        println!("      Version: {}", dash(&r.info.version));
        println!("    Timestamp: {}", dash(&r.info.timestamp));
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
            r.commit.as_deref().unwrap_or("-"),
            r.version.as_deref().unwrap_or("-"),
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
                json_str(r.info.commit.as_deref()),
                json_str(r.info.version.as_deref()),
                json_str(r.info.timestamp.as_deref()),
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
                json_str(r.commit.as_deref()),
                json_str(r.version.as_deref()),
                r.at
            )
        })
        .collect();
    format!(
        "{{\"format\":1,\"booted\":{},\"trial_boot\":{},\"fallback_boot\":{},\"env_valid\":{},\"order\":[{}],\"trial\":{},\"attempts_left\":{},\"fallback_pending\":{},\"slots\":[{}],\"rollbacks\":[{}]}}\n",
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
