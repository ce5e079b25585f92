//! `atomup daemon`: the service. It polls at `poll.interval` plus a random
//! jitter (a fleet that booted together does not poll together), installs
//! what is due with the same [`update::poll`] as `atomup update`, applies
//! the reboot policy, and reports. Failed polls back off exponentially from
//! a minute, capped (`atomup_link::backoff::poll_wait`). The decisions are
//! pure (`atomup-link`, `RebootPolicy`); this loop only sleeps and acts.
//!
//! Signals (`signals.rs`): SIGTERM or SIGINT stop it at the next safe point
//! and it exits 0. A download in progress ends at its next read, its
//! partial synced and kept (the next start resumes it with a Range
//! request); a slot being written is left out of the boot order, as a power
//! cut would (the next start writes it again). SIGHUP reloads the
//! configuration (an invalid one is refused and the old one kept) and polls
//! at once.
//!
//! Offline bundles (`bundle.scan`, `stickwatch.rs`): while it waits for the
//! next poll, every `bundle.interval` it looks at the scanned directories;
//! a stick that appeared (and settled) is installed from exactly as `atomup
//! install --scan DIR` would (`install::from_stick`: the same checks, the
//! same log on the stick, the same LED), then the reboot policy applies as
//! after a network install. Polls and bundles take turns in this one loop,
//! so they never install at once. The result shows on the LED until the stick is
//! pulled or the next poll.

use crate::error::{self, Result};
use crate::progress::{Mode, Reporter};
use crate::signals::{self, Wake};
use crate::stickwatch::{self, Watch};
use crate::update::{self, Outcome};
use crate::{install, logger, settings, worker};
use atomup_board::status::State;
use atomup_config::{Loaded, RebootPolicy};
use std::time::Duration;

pub const HELP: &str = "\
Usage: atomup daemon [options]
The device's update service: polls at poll.interval + random(0..=poll.jitter), installs
a due release into the inactive slot, reboots by reboot.policy (now, in the daily
reboot.window, or never: the operator reboots), reports to server.report_url.
Between polls, every bundle.interval, the bundle.scan directories are looked at: a USB
stick's bundle that appears there is installed as by `atomup install --scan DIR`
(with server.channel and bundle.scan but no server.url: bundles only, no polls).
SIGTERM/SIGINT: stop at the next safe point, exit 0. SIGHUP: reload the configuration
and poll at once. Takes the options of `atomup update` (but --check):
  --json                progress as one JSON event per line on stdout
  --board NAME, --target-device DEV, --target-dir DIR, --from-root DIR, --attempts N,
  --allow-downgrade, --ignore-rollout, --now UNIX, --retry-backoff-ms N: as for update
";

pub fn run(args: &mut lexopt::Parser) -> Result {
    let mut o = update::parse(args, "daemon", HELP)?;
    signals::install().map_err(|e| format!("installing the signal handlers: {e}"))?;
    let boot_flags = o.boot.clone();
    let mut loaded = settings::load(&o.config)?;
    apply(&mut o, &boot_flags, &loaded);
    println!(
        "atomup daemon {}: {}",
        env!("CARGO_PKG_VERSION"),
        describe(&loaded)
    );
    let mut failures = 0u32;
    let mut sticks = Sticks::default();
    loop {
        if loaded.config.server.is_none() && !loaded.config.bundle.scan.is_empty() {
            // Bundles only (a device that never sees a network): no poll,
            // only the watch.
            let wait = loaded.config.poll_interval.as_duration();
            if wait_or_reload(&mut o, &boot_flags, &mut loaded, &mut sticks, wait) {
                return stopped();
            }
            continue;
        }
        // The network poll drives the LED itself.
        sticks.led = None;
        let back = in_child("poll", || {
            let mut rep = Reporter::new(Mode::detect(o.json), Some(&o.boot.state_dir));
            let result = update::poll(&o, &loaded, Some(&signals::STOP), &mut rep);
            if let Err(e) = &result {
                if !update::is_cancelled(e.as_ref()) {
                    eprint!("{}", error::chain(e.as_ref()));
                }
            }
            update::after_poll(&o, &loaded.config, &result, &mut rep);
            Came::of(&result).line()
        });
        let came = back
            .as_deref()
            .and_then(Came::parse)
            .unwrap_or(Came::Failed);
        if signals::stop_requested() {
            return stopped();
        }
        match came {
            Came::Installed { version, slot } => {
                failures = 0;
                if let Wake::Stop = reboot(&mut o, &boot_flags, &mut loaded, version, slot) {
                    return stopped();
                }
            }
            Came::Done => failures = 0,
            Came::Failed => failures = failures.saturating_add(1),
        }
        if signals::take_reload() {
            reload(&mut o, &boot_flags, &mut loaded);
            continue;
        }
        let c = &loaded.config;
        let wait = atomup_link::backoff::poll_wait(
            failures,
            c.poll_interval.as_duration(),
            c.poll_jitter.as_duration(),
            c.backoff_max.as_duration(),
            atomup_fetch::random_u64(),
        );
        log::info!(
            "next poll in {} s{}",
            wait.as_secs(),
            if failures > 0 {
                format!(" ({failures} failed in a row)")
            } else {
                String::new()
            }
        );
        if wait_or_reload(&mut o, &boot_flags, &mut loaded, &mut sticks, wait) {
            return stopped();
        }
    }
}

/// [`idle`], then the configuration reloaded when SIGHUP ended the wait;
/// true when a stop was asked for.
fn wait_or_reload(
    o: &mut update::Opts,
    boot_flags: &crate::bootopts::BootOpts,
    loaded: &mut Loaded,
    sticks: &mut Sticks,
    wait: Duration,
) -> bool {
    match idle(o, boot_flags, loaded, sticks, wait) {
        Wake::Stop => true,
        Wake::Reload => {
            signals::take_reload();
            reload(o, boot_flags, loaded);
            false
        }
        Wake::Elapsed => false,
    }
}

/// The bundle watch and the LED showing the last stick's result.
#[derive(Default)]
struct Sticks {
    watch: Watch,
    /// The scanned directory whose result the LED holds, and the LED.
    led: Option<(std::path::PathBuf, crate::led::StatusLed)>,
}

/// Waits `wait` for the next poll; with `bundle.scan`, looks at the scanned
/// directories every `bundle.interval` meanwhile and installs from a stick
/// that appeared. Ends early on a signal, as [`signals::sleep`] does.
fn idle(
    o: &mut update::Opts,
    boot_flags: &crate::bootopts::BootOpts,
    loaded: &mut Loaded,
    sticks: &mut Sticks,
    wait: Duration,
) -> Wake {
    let end = std::time::Instant::now() + wait;
    loop {
        let left = end.saturating_duration_since(std::time::Instant::now());
        let b = &loaded.config.bundle;
        if b.scan.is_empty() {
            return signals::sleep(left);
        }
        if left.is_zero() {
            return Wake::Elapsed;
        }
        match signals::sleep(left.min(b.interval.as_duration())) {
            Wake::Elapsed => {}
            other => return other,
        }
        let (due, gone) = sticks.watch.look(stickwatch::look_all(&b.scan));
        for dir in gone {
            println!("atomup daemon: {} is empty or gone", dir.display());
        }
        if sticks
            .led
            .as_ref()
            .is_some_and(|(d, _)| !sticks.watch.holds(d))
        {
            sticks.led = None;
        }
        for dir in due {
            sticks.led = None;
            println!("atomup daemon: a bundle appeared in {}", dir.display());
            let back = in_child("bundle install", || {
                let done = install::from_stick(o, loaded, &dir, Some(&signals::STOP));
                if let Err(e) = &done.result {
                    eprint!("{}", error::chain(e.as_ref()));
                }
                stick_line(done.led, &Came::of(&done.result))
            });
            let (led, came) = back
                .as_deref()
                .and_then(parse_stick_line)
                .unwrap_or((State::Error, Came::Failed));
            sticks.watch.handled(&dir);
            sticks.led = Some((dir.clone(), install::result_led(o, led)));
            if signals::stop_requested() {
                // Installed or not, the init system is stopping us: a slot
                // on trial waits for the reboot that is coming anyway.
                return Wake::Stop;
            }
            if let Came::Installed { version, slot } = came {
                if let Wake::Stop = reboot(o, boot_flags, loaded, version, slot) {
                    return Wake::Stop;
                }
            }
        }
    }
}

/// What the daemon needs to know of a poll or a stick install that ran in
/// a child (`worker.rs`): the rest (messages, reports, the LED, the status
/// file) the child did itself.
#[derive(Debug, PartialEq, Eq)]
enum Came {
    Installed {
        version: u64,
        slot: atomup_policy::Slot,
    },
    /// Up to date, pending, waiting, or stopped by a signal.
    Done,
    Failed,
}

impl Came {
    fn of(result: &Result<Outcome>) -> Came {
        match result {
            Ok(Outcome::Installed { version, slot }) => Came::Installed {
                version: *version,
                slot: *slot,
            },
            Ok(_) => Came::Done,
            Err(e) if update::is_cancelled(e.as_ref()) => Came::Done,
            Err(_) => Came::Failed,
        }
    }

    /// The line the child sends back.
    fn line(&self) -> String {
        match self {
            Came::Installed { version, slot } => format!("installed {version} {slot}"),
            Came::Done => "done".to_owned(),
            Came::Failed => "failed".to_owned(),
        }
    }

    /// The line read back; `None` for anything else (no line at all: the
    /// child died, or stopped in the middle of a slot write).
    fn parse(line: &str) -> Option<Came> {
        let mut words = line.split(' ');
        let came = match words.next()? {
            "installed" => Came::Installed {
                version: words.next()?.parse().ok()?,
                slot: atomup_policy::Slot::parse(words.next()?)?,
            },
            "done" => Came::Done,
            "failed" => Came::Failed,
            _ => return None,
        };
        words.next().is_none().then_some(came)
    }
}

/// Runs `work` (a poll, a stick install) in a child process (`worker.rs`)
/// and logs the child's peak memory; the line the child sent back, or
/// `None` when it could not start, died, or sent nothing (said here unless
/// the daemon is stopping: then the child stopped, as asked).
fn in_child(what: &str, work: impl FnOnce() -> String) -> Option<String> {
    let ended = match worker::run(work) {
        Ok(ended) => ended,
        Err(e) => {
            log::error!("cannot start the {what} process: {e}");
            return None;
        }
    };
    if let Some(kib) = ended.peak_kib {
        log::info!("{what} process peak RSS {kib} KiB");
    }
    if ended.clean && !ended.line.is_empty() {
        return Some(ended.line);
    }
    if !signals::stop_requested() {
        log::error!(
            "the {what} process ended with {} and no result: counted as a failure",
            ended.how
        );
    }
    None
}

/// A stick install's line: the LED's state (its index in `State::ALL`),
/// then the [`Came`] line.
fn stick_line(led: State, came: &Came) -> String {
    let n = State::ALL.iter().position(|s| *s == led).unwrap_or(0);
    format!("{n} {}", came.line())
}

fn parse_stick_line(line: &str) -> Option<(State, Came)> {
    let (n, rest) = line.split_once(' ')?;
    let led = *State::ALL.get(n.parse::<usize>().ok()?)?;
    Some((led, Came::parse(rest)?))
}

fn stopped() -> Result {
    println!("atomup daemon: stopped by signal");
    Ok(())
}

fn describe(loaded: &Loaded) -> String {
    let c = &loaded.config;
    let server = c
        .server
        .as_ref()
        .map_or("no server configured".to_owned(), |s| {
            format!("server {} channel {}", s.url, s.channel)
        });
    let reboot = match c.reboot {
        RebootPolicy::Now => "now".to_owned(),
        RebootPolicy::Never => "never".to_owned(),
        RebootPolicy::Window { start, end } => format!(
            "window {:02}:{:02}-{:02}:{:02} UTC",
            start / 60,
            start % 60,
            end / 60,
            end % 60
        ),
    };
    let sticks = if c.bundle.scan.is_empty() {
        String::new()
    } else {
        let dirs: Vec<String> = c
            .bundle
            .scan
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        format!(
            ", bundles from {} every {}",
            dirs.join(" "),
            c.bundle.interval
        )
    };
    format!(
        "{server}, every {} + up to {}, reboot {reboot}{sticks}",
        c.poll_interval, c.poll_jitter
    )
}

/// The boot-state options for `loaded`: the command line's, then the
/// configuration's state directory and board profile.
fn apply(o: &mut update::Opts, boot_flags: &crate::bootopts::BootOpts, loaded: &Loaded) {
    logger::configured(loaded.config.log_level);
    o.boot = boot_flags.clone();
    o.boot.configure(loaded);
}

/// SIGHUP: the drop-ins are read again under the same flags; an invalid
/// configuration is refused and the running one kept.
fn reload(o: &mut update::Opts, boot_flags: &crate::bootopts::BootOpts, loaded: &mut Loaded) {
    match settings::load(&o.config) {
        Ok(new) => {
            *loaded = new;
            apply(o, boot_flags, loaded);
            println!(
                "atomup daemon: configuration reloaded: {}",
                describe(loaded)
            );
        }
        Err(e) => log::error!(
            "configuration reload refused, the previous one stays: {}",
            error::one_line(e.as_ref())
        ),
    }
}

/// The reboot policy after an install: now, in the maintenance window
/// (waiting for it, still answering signals), or never (the operator
/// reboots; later polls find the release pending). The reboot is the init
/// system's own (`reboot.command`), so services stop in order and ours is
/// sent SIGTERM like the rest.
fn reboot(
    o: &mut update::Opts,
    boot_flags: &crate::bootopts::BootOpts,
    loaded: &mut Loaded,
    version: u64,
    slot: atomup_policy::Slot,
) -> Wake {
    loop {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let Some(wait) = loaded.config.reboot.wait_secs(now) else {
            println!(
                "version {version} waits in slot {slot}: reboot.policy is never, reboot to try it"
            );
            return Wake::Elapsed;
        };
        if wait == 0 {
            break;
        }
        println!("version {version} waits in slot {slot}: rebooting in the maintenance window, in {wait} s");
        match signals::sleep(Duration::from_secs(wait.min(3600))) {
            Wake::Stop => return Wake::Stop,
            Wake::Reload => {
                signals::take_reload();
                reload(o, boot_flags, loaded);
            }
            Wake::Elapsed => {}
        }
    }
    let command = &loaded.config.reboot_command;
    println!(
        "rebooting into slot {slot} (version {version}): {}",
        command.join(" ")
    );
    rustix::fs::sync();
    match std::process::Command::new(&command[0])
        .args(&command[1..])
        .status()
    {
        Ok(s) if s.success() => {}
        Ok(s) => eprintln!(
            "error: the reboot command {} failed ({s}): reboot to try slot {slot}",
            command[0]
        ),
        Err(e) => eprintln!(
            "error: cannot run the reboot command {}: {e}: reboot to try slot {slot}",
            command[0]
        ),
    }
    Wake::Elapsed
}
