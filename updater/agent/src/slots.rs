//! The boot-state commands: `status`, `mark-good`, `mark-bad`, `rollback`,
//! `install-start`, `install-done` and the `env` helpers. Each command reads
//! the env once, asks `atomup-policy` what to write, and does at most ONE env
//! write through `atomup-bootctl`. Options let the same binary work on a
//! device (`/etc/fw_env.config`, `/proc/cmdline`) and on the host against
//! disk images and plain files (tests, image builders).

use crate::{bootopts, Result};
use atomup_bootctl::statedir::{rfc3339, RollbackRecord, SlotRecord, StateDir};
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
                      (default: the board profile's env, else /etc/fw_env.config;
                      device paths may be image files, relative paths resolve
                      against the current directory)
  --env-image FILE    redundant U-Boot env in FILE at 0x80000 and 0x84000, 0x4000 each
  --grubenv PATH      GRUB env: PATH and PATH2 (sealed two-block scheme)
  --board-conf FILE   board profile giving the env location (default
                      /etc/atomup/board.conf when present)
  --booted-slot A|B   booted slot (default: atomup.slot= in the kernel command line)
  --cmdline FILE      where the kernel command line is read (default /proc/cmdline)
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
    board_conf: Option<PathBuf>,
    cmdline: Option<PathBuf>,
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
            Long("cmdline") => o.cmdline = Some(args.value()?.into()),
            Long("board-conf") => o.board_conf = Some(args.value()?.into()),
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

/// The env, found as `update` finds it: a flag, else the board profile
/// (`--board-conf`, or the device's own), else `/etc/fw_env.config`.
fn bootloader(o: &Opts) -> Result<Box<dyn Bootloader>> {
    let profile = crate::inputs::board(o.board_conf.as_deref())?;
    bootopts::open_env(
        o.env_config.as_deref(),
        o.env_image.as_deref(),
        o.grubenv.as_deref(),
        profile.as_ref().map(|p| &p.bootloader),
    )
}

fn cmdline_path(o: &Opts) -> PathBuf {
    o.cmdline
        .clone()
        .unwrap_or_else(|| PathBuf::from(bootopts::CMDLINE))
}

fn booted(o: &Opts) -> Result<cmdline::Booted> {
    bootopts::booted(o.booted, &cmdline_path(o))
}

fn require_booted(o: &Opts) -> Result<Slot> {
    bootopts::require_booted(o.booted, &cmdline_path(o))
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
            let next = state.install_start(x);
            // Record first, env last: the record says "installing" before
            // slot X leaves the boot order (a cut in between leaves a record
            // for a slot still in the order, which status shows as good).
            // Only where an agent state dir exists (not on a build host).
            if state_dir_path(&o).exists() {
                state_dir(&o).write_slot_record(x, &SlotRecord::installing())?;
            }
            // Slot X leaves the boot order before anything in it changes.
            atomup_bootctl::write_state(bl, &next)?;
            println!("install started into slot {x} ({next})");
            Ok(())
        }
        "install-done" => {
            let x = o.slot.ok_or("install-done needs --slot A|B")?;
            let state = atomup_bootctl::read(bl)?.state()?;
            let next = state.install_done(x, o.attempts.unwrap_or(DEFAULT_ATTEMPTS))?;
            if let Some(record) = install_record(&o)? {
                state_dir(&o).write_slot_record(x, &record)?;
            }
            atomup_bootctl::write_state(bl, &next)?;
            println!("install done into slot {x} ({next}); reboot to try it");
            Ok(())
        }
        "env" => env_cmd(&o, bl),
        other => Err(format!("unknown command `{other}`").into()),
    }
}

/// The record `install-done` writes from `--commit`, `--version` (both or
/// neither) and `--timestamp` (unix seconds or RFC 3339), typed as the
/// records are.
fn install_record(o: &Opts) -> Result<Option<SlotRecord>> {
    use atomup_bootctl::statedir::{parse_commit, parse_rfc3339, parse_u64};
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

/// The record of `slot` for a rollback entry. An unreadable record must not
/// keep the rollback from being recorded (or the slot from leaving the
/// order): the entry is then written without commit and version, and said so.
fn rollback_of(o: &Opts, slot: Slot) -> RollbackRecord {
    let record = match state_dir(o).slot_record(slot) {
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
        state_dir(o).record_rollback(&rollback_of(o, slot))?;
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

/// Whether a checks-directory entry is documentation, not a check: `README`
/// or a name ending in `.md`, and a regular file. The only exceptions to
/// "everything in the checks directory is a check" (see the README).
fn is_documentation(name: &std::ffi::OsStr, entry: &std::fs::DirEntry) -> bool {
    let name = name.as_encoded_bytes();
    (name == b"README" || name.ends_with(b".md")) && entry.file_type().is_ok_and(|t| t.is_file())
}

/// Rule (issue 11.5): health fails closed. Every entry of the checks
/// directory is a check that must run and pass, except documentation
/// ([`is_documentation`]); anything else (not executable, a dangling
/// symlink, a directory, a FIFO, ...) fails the trial with its name, instead
/// of being skipped into "0 check(s) passed". A checks directory that does
/// not exist means no checks: booting this far is the health check.
fn list_checks(dir: &std::path::Path) -> std::result::Result<Vec<PathBuf>, String> {
    use std::os::unix::fs::PermissionsExt;
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(format!(
                "reading the checks directory {}: {e}",
                dir.display()
            ))
        }
    };
    let mut checks = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("reading {}: {e}", dir.display()))?;
        let path = entry.path();
        if is_documentation(&entry.file_name(), &entry) {
            continue;
        }
        // Follows a symlink to what it names; a dangling one fails here.
        let md = std::fs::metadata(&path)
            .map_err(|e| format!("{}: not a runnable check ({e})", path.display()))?;
        if !md.is_file() {
            let t = rustix::fs::FileType::from_raw_mode(std::os::unix::fs::MetadataExt::mode(&md));
            return Err(format!(
                "{} is {}, not a runnable check",
                path.display(),
                atomup_fsio::type_name(t)
            ));
        }
        if md.permissions().mode() & 0o111 == 0 {
            return Err(format!(
                "{} is not executable, not a runnable check",
                path.display()
            ));
        }
        checks.push(path);
    }
    Ok(checks)
}

/// Runs every check in `dir` ([`list_checks`]); Ok(count) if all exit 0
/// within `timeout`. The watchdog is fed only while a check is within its
/// deadline.
fn run_checks(
    dir: &std::path::Path,
    timeout: std::time::Duration,
    mut watchdog: Option<atomup_board::watchdog::Watchdog>,
) -> std::result::Result<usize, String> {
    let mut checks = list_checks(dir)?;
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
        // Record first, env last: once the env no longer shows the
        // exhausted trial, nothing would tell a later boot to record it. A
        // cut after the record repeats it on the next boot (recorded once).
        state_dir(o).record_rollback(&rollback_of(o, failed))?;
        atomup_bootctl::write_state(bl, &write)?;
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
    info: SlotRecord,
}

fn status(o: &Opts, bl: &mut dyn Bootloader) -> Result {
    let b = booted(o)?;
    let read = atomup_bootctl::read(bl)?;
    let env_valid = read.vars.is_some();
    let state = read.state()?;
    let sd = state_dir(o);
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
