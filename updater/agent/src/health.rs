//! `atomup health`: on a trial boot, run the release's checks
//! (`atomup-health`: the vendor's and the site's `required.d`/`wanted.d` and
//! the built-ins the configuration switches on) while the board's hardware
//! watchdog is armed and fed; the verdict is the slot's: all required checks
//! pass → confirm it (`mark-good`), one fails → mark it bad with the reason
//! and reboot into the confirmed one. A hang stops the feeding, so the board
//! resets and the bootloader counts the attempt. On a confirmed boot only the
//! fallback bookkeeping of `mark-good` runs (and nothing is written to the
//! env unless a fallback is to be recorded).
//!
//! `--arm-watchdog` is the early-boot half: on a trial boot it arms the
//! watchdog and leaves it running (closed without the magic byte), so the
//! whole trial window up to the verdict is guarded, not only the checks.
//!
//! Exit status: 0 confirmed (or nothing to do), 2 the slot was rejected
//! (marked bad; the caller reboots when `--no-reboot`), 1 any other error
//! (nothing decided: on a trial boot the armed watchdog then resets the
//! board, which counts as a failed attempt).

use crate::bootopts::{BootOpts, OPTIONS};
use crate::error::Result;
use crate::led::StatusLed;
use crate::transitions;
use atomup_board::status::State;
use atomup_board::watchdog::Watchdog;
use atomup_board::Board;
use atomup_bootctl::cmdline;
use atomup_health::builtin::Builtin;
use atomup_health::record::{CheckRecord, Outcome};
use std::path::{Path, PathBuf};

pub const USAGE: &str = "\
  health [--checks DIR] [--vendor-checks DIR] [--config-dir DIR]... [--timeout S]
         [--watchdog DEV | --no-watchdog] [--no-reboot] [--arm-watchdog]
                       trial boot: run the required.d/wanted.d checks of DIR (site,
                       default /etc/atomup/health.d) and of the vendor's (default
                       /usr/lib/atomup/health.d) and the built-ins, under the board's
                       watchdog; pass: mark-good; fail: mark-bad + reboot (exit 2);
                       --arm-watchdog: only arm the watchdog for the trial (early boot)
";

/// The slot was rejected: main exits with status 2 (the caller reboots).
#[derive(Debug)]
pub struct Rejected(pub String);

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Rejected {}

struct Opts {
    boot: BootOpts,
    site: PathBuf,
    vendor: PathBuf,
    config_dirs: Vec<PathBuf>,
    timeout: Option<u64>,
    watchdog: Option<PathBuf>,
    no_watchdog: bool,
    no_reboot: bool,
    arm_only: bool,
}

fn parse(args: &mut lexopt::Parser) -> Result<Opts> {
    use lexopt::prelude::*;
    let mut o = Opts {
        boot: BootOpts::default(),
        site: atomup_health::SITE_ROOT.into(),
        vendor: atomup_health::VENDOR_ROOT.into(),
        config_dirs: Vec::new(),
        timeout: None,
        watchdog: None,
        no_watchdog: false,
        no_reboot: false,
        arm_only: false,
    };
    while let Some(arg) = args.next()? {
        match arg {
            Long("checks") => o.site = args.value()?.into(),
            Long("vendor-checks") => o.vendor = args.value()?.into(),
            Long("config-dir") => o.config_dirs.push(args.value()?.into()),
            Long("timeout") => o.timeout = Some(args.value()?.parse()?),
            Long("watchdog") => o.watchdog = Some(args.value()?.into()),
            Long("no-watchdog") => o.no_watchdog = true,
            Long("no-reboot") => o.no_reboot = true,
            Long("arm-watchdog") => o.arm_only = true,
            Long("help") | Short('h') => {
                print!("Usage: atomup health [options]\n\n{USAGE}\n{OPTIONS}");
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
    if o.watchdog.is_some() && o.no_watchdog {
        return Err("give only one of --watchdog DEV, --no-watchdog".into());
    }
    if o.config_dirs.is_empty() {
        o.config_dirs = vec![
            atomup_config::VENDOR_DIR.into(),
            atomup_config::SITE_DIR.into(),
        ];
    }
    Ok(o)
}

/// The watchdog to use: `--watchdog`, else the board profile's; none with
/// `--no-watchdog`.
fn watchdog_of<'a>(o: &'a Opts, board: Option<&'a Board>) -> Option<&'a Path> {
    if o.no_watchdog {
        return None;
    }
    o.watchdog
        .as_deref()
        .or_else(|| board.and_then(|b| b.watchdog.as_deref()))
}

/// Arms the watchdog for a trial with the board's timeout.
fn arm(dev: &Path, board: Option<&Board>) -> Result<Watchdog> {
    let mut w =
        Watchdog::arm(dev).map_err(|e| format!("arming watchdog {}: {e}", dev.display()))?;
    if let Some(t) = board.and_then(|b| b.watchdog_timeout) {
        match w.set_timeout(t) {
            Ok(got) if got != t => log::warn!(
                "watchdog {}: asked for a {t} s timeout, the driver set {got} s",
                dev.display()
            ),
            Ok(_) => {}
            Err(e) => log::warn!(
                "watchdog {}: cannot set a {t} s timeout ({e}); the driver's stays",
                dev.display()
            ),
        }
    }
    Ok(w)
}

pub fn run(args: &mut lexopt::Parser) -> Result {
    let o = parse(args)?;
    let board = o.boot.board()?;
    let dev = watchdog_of(&o, board.as_ref());
    let booted = o.boot.booted()?;
    if o.arm_only {
        return arm_early(board.as_ref(), dev, &booted);
    }
    let mut bl = o.boot.open_env(board.as_ref())?;
    let bl = bl.as_mut();
    let slot = o.boot.require_booted()?;
    let mut snap = atomup_bootctl::load(bl)?;
    let led = board.as_ref().and_then(|b| b.led.as_ref());
    if snap.state()?.trial != Some(slot) {
        let mut led = StatusLed::start(led, State::Confirmed);
        if transitions::confirm(&o.boot, bl, &mut snap, slot)? {
            led.set(State::RolledBack);
        }
        drop(snap);
        // Armed in early boot for a trial that is no longer one (someone
        // confirmed it by hand first): without a verdict to wait for, stop it.
        if let (true, Some(dev)) = (booted.trial, dev) {
            arm(dev, board.as_ref())?
                .disarm()
                .map_err(|e| format!("disarming watchdog {}: {e}", dev.display()))?;
        }
        return Ok(());
    }
    // The checks may run for minutes: the env lock is not held meanwhile;
    // the verdict's transition loads the env afresh.
    drop(snap);
    let mut led = StatusLed::start(led, State::OnTrial);
    let mut watchdog = match dev {
        Some(d) => {
            let w = arm(d, board.as_ref())?;
            println!(
                "health: watchdog {} armed for slot {slot}'s checks",
                d.display()
            );
            Some(w)
        }
        None => None,
    };
    let version = o
        .boot
        .state()
        .slot_record(slot)
        .ok()
        .flatten()
        .and_then(|r| r.version());
    let plan = plan(&o, board.as_ref());
    let store = atomup_health::Store::new(&o.boot.state_dir);
    let summary = atomup_health::run_all(
        plan,
        slot,
        version,
        &store,
        &mut || {
            if let Some(w) = watchdog.as_mut() {
                let _ = w.feed();
            }
        },
        &mut print_check,
    );
    match summary.reason {
        None => {
            let wanted: Vec<&str> = summary
                .record
                .failed_wanted()
                .map(|c| c.name.as_str())
                .collect();
            println!(
                "health: {} check(s) passed on slot {slot}{}",
                summary.checks_run() - wanted.len(),
                if wanted.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; wanted check(s) failed, recorded and reported: {}",
                        wanted.join(", ")
                    )
                }
            );
            transitions::mark_good(&o.boot, bl)?;
            led.set(State::Confirmed);
            // Disarmed only once the confirmation is in the env: a hang in
            // that write still resets the board.
            if let Some(w) = watchdog {
                w.disarm().map_err(|e| format!("disarming watchdog: {e}"))?;
            }
            Ok(())
        }
        Some(why) => {
            println!("health: slot {slot} FAILED: {why}");
            transitions::mark_bad(&o.boot, bl, Some(&why))?;
            led.set(State::RolledBack);
            drop(led);
            // The watchdog stays armed (closed without the magic byte): if
            // the reboot does not happen, it does.
            drop(watchdog);
            if !o.no_reboot {
                rustix::fs::sync();
                rustix::system::reboot(rustix::system::RebootCommand::Restart)
                    .map_err(|e| format!("reboot: {e}"))?;
            }
            Err(Box::new(Rejected(format!(
                "slot {slot} failed its health check: {why}"
            ))))
        }
    }
}

/// One line per check as it finishes.
fn print_check(c: &CheckRecord) {
    let outcome = match c.outcome {
        Outcome::Passed => "passed",
        Outcome::Failed => "FAILED",
        Outcome::TimedOut => "TIMED OUT",
        other => other.name(),
    };
    println!(
        "health: {} {} {outcome} ({} ms){}",
        c.kind.name(),
        c.name,
        c.millis,
        if c.detail.is_empty() {
            String::new()
        } else {
            format!(": {}", c.detail)
        }
    );
}

/// The checks of this device: the configuration (which built-ins, the
/// default limit) and both check roots. A configuration that does not load
/// is a plan error: the trial fails closed on it, as on a check that cannot run.
fn plan(
    o: &Opts,
    board: Option<&Board>,
) -> std::result::Result<Vec<atomup_health::plan::Check>, String> {
    let dirs: Vec<&Path> = o.config_dirs.iter().map(PathBuf::as_path).collect();
    let cfg = atomup_config::load(&dirs)
        .and_then(|l| l.finish())
        .map_err(|e| format!("configuration: {e}"))?
        .config;
    let h = &cfg.health;
    let state = &o.boot.state_dir;
    let mut builtins = Vec::new();
    if h.read_only_root {
        builtins.push(Builtin::ReadOnlyRoot);
    }
    if h.data_partition {
        builtins.push(Builtin::DataPartition {
            state_dir: state.clone(),
            device: board.and_then(|b| b.data.clone()),
        });
    }
    if let Some(min) = h.min_free {
        builtins.push(Builtin::FreeSpace {
            state_dir: state.clone(),
            min,
        });
    }
    if !h.services.is_empty() {
        builtins.push(Builtin::Services(h.services.clone()));
    }
    if let (true, Some(server)) = (h.server_reachable, &cfg.server) {
        builtins.push(Builtin::ServerReachable {
            url: server.url.clone(),
        });
    }
    let timeout = std::time::Duration::from_secs(o.timeout.unwrap_or(h.timeout.0).max(1));
    atomup_health::plan_for(&o.vendor, &o.site, &builtins, timeout)
}

/// Early boot of a trial: arm the watchdog and leave it running.
fn arm_early(board: Option<&Board>, dev: Option<&Path>, booted: &cmdline::Booted) -> Result {
    if !booted.trial {
        println!("health: not a trial boot (no atomup.trial=1): the watchdog is not armed");
        return Ok(());
    }
    let Some(dev) = dev else {
        println!("health: no watchdog (none in the board profile, or --no-watchdog)");
        return Ok(());
    };
    let mut w = arm(dev, board)?;
    w.feed()
        .map_err(|e| format!("feeding watchdog {}: {e}", dev.display()))?;
    // Closed without the magic byte: the timer keeps running until
    // `atomup health` opens it again (and feeds it, and disarms it at the
    // verdict), or the board resets.
    drop(w);
    let slot = booted
        .slot
        .map_or_else(|| "the booted slot".to_owned(), |s| format!("slot {s}"));
    println!(
        "health: watchdog {} armed for {slot}'s trial{}",
        dev.display(),
        board
            .and_then(|b| b.watchdog_timeout)
            .map_or(String::new(), |t| format!(
                " ({t} s to reach `atomup health`)"
            ))
    );
    Ok(())
}
