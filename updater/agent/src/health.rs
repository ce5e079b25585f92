//! `atomup health`: on a trial boot, run the release's checks while the
//! hardware watchdog is armed; all pass → confirm the slot, any fails (or
//! anything in the checks directory is not a runnable check) → mark it bad
//! and reboot into the confirmed one. A hang stops the watchdog feeding, so
//! the board resets and the bootloader counts the attempt. On a confirmed
//! boot only the fallback bookkeeping of `mark-good` runs.

use crate::bootopts::{BootOpts, OPTIONS};
use crate::error::Result;
use crate::transitions;
use std::path::PathBuf;

pub const USAGE: &str = "\
  health [--checks DIR] [--timeout S] [--watchdog DEV] [--no-reboot]
                       trial boot: run DIR's checks (default /etc/atomup/health.d)
                       under the watchdog; pass: mark-good; fail: mark-bad + reboot
";

struct Opts {
    boot: BootOpts,
    checks: PathBuf,
    timeout: std::time::Duration,
    watchdog: Option<PathBuf>,
    no_reboot: bool,
}

fn parse(args: &mut lexopt::Parser) -> Result<Opts> {
    use lexopt::prelude::*;
    let mut o = Opts {
        boot: BootOpts::default(),
        checks: "/etc/atomup/health.d".into(),
        timeout: std::time::Duration::from_secs(120),
        watchdog: None,
        no_reboot: false,
    };
    while let Some(arg) = args.next()? {
        match arg {
            Long("checks") => o.checks = args.value()?.into(),
            Long("timeout") => o.timeout = std::time::Duration::from_secs(args.value()?.parse()?),
            Long("watchdog") => o.watchdog = Some(args.value()?.into()),
            Long("no-reboot") => o.no_reboot = true,
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
    Ok(o)
}

pub fn run(args: &mut lexopt::Parser) -> Result {
    let o = parse(args)?;
    let board = o.boot.board()?;
    let mut bl = o.boot.open_env(board.as_ref())?;
    let bl = bl.as_mut();
    let slot = o.boot.require_booted()?;
    let mut snap = atomup_bootctl::load(bl)?;
    if snap.state()?.trial != Some(slot) {
        return transitions::confirm(&o.boot, bl, &mut snap, slot);
    }
    // The checks may run for minutes: the env lock is not held meanwhile;
    // the verdict's transition loads the env afresh.
    drop(snap);
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
    match run_checks(&o.checks, o.timeout, watchdog) {
        Ok(n) => {
            println!("health: {n} check(s) passed on slot {slot}");
            transitions::mark_good(&o.boot, bl)
        }
        Err(why) => {
            println!("health: slot {slot} FAILED: {why}");
            transitions::mark_bad(&o.boot, bl)?;
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
