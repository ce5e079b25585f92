//! `atomup update` (alias `upgrade`): one poll of the update server, and if
//! a release is due, its installation into the inactive slot. The daemon
//! runs the same [`poll`] at its interval. It is a plan followed by I/O
//! steps, and the order of the steps is the safety argument (DESIGN "Slot
//! state contract"):
//!
//! 1. Everything that needs no writing is checked before the first write:
//!    flags and ranges, the configuration as a whole, the device's own
//!    refusals (`atomup_policy::update::preflight`), the target
//!    (`target.rs`: never the running root or the data partition), the
//!    signed release metadata and the pure decision over it
//!    (`atomup_policy::update::plan`: channel, board, expiry, version,
//!    never-retry, pending trial, rollout, no silent from-scratch fallback),
//!    the data budgets and the cache bound (`atomup_link::budget`), the
//!    download's size against the free space, and, once downloaded (capped
//!    and digest-checked into the cache, the only thing written so far
//!    besides the month's usage record), the delta superblock's signature
//!    and from/to commits. `--check` stops before the first download.
//! 2. The trusted time and the target's record (`installing`) are written,
//!    then ONE env write takes the target out of the boot order. From here
//!    until step 4 a power cut boots the running, confirmed slot.
//! 3. The delta is applied into the target and the written tree is verified
//!    against the signed commit; then the device's `/etc` is merged onto the
//!    new defaults as the target's layer (`atomup-etc`); everything is synced.
//!    A daemon told to stop meanwhile exits here: the slot stays out of the
//!    boot order.
//! 4. The target's record (commit, version) is written, then ONE env write
//!    puts the slot first in order, on trial. The bootloader counts its
//!    attempts; `atomup mark-good` confirms it, or it falls back. The
//!    download cache is cleared.
//!
//! The steps are stages that `atomup install` (an offline bundle,
//! `install.rs`) shares: [`prepare`] (flags, board, env, booted slot,
//! target, trust, records: step 1 up to the release), [`decide`] (the pure
//! plan over a verified release, whatever its source), the delta source
//! (here the downloads of step 1; for a bundle, its members extracted and
//! verified into the same cache) and [`execute`] (steps 2 to 4).
//!
//! Re-running after a power cut (or a kill) is safe: downloads resume from
//! the cache with Range requests and the apply rewrites the (out-of-order)
//! slot from scratch; a record written before a cut describes a slot that is
//! not in the boot order.

use crate::bootopts::{BootOpts, OPTIONS};
use crate::budget::Meter;
use crate::error::Result;
use crate::progress::{Mode, Reporter};
use crate::target::{self, Protected, Target};
use crate::{inputs, reports, settings};
use atomup_bootctl::statedir::SlotRecord;
use atomup_bootctl::statedir::StateDir;
use atomup_config::{Config, Loaded, Partial};
use atomup_deploy::{VerifiedDelta, VerifiedSuperblock};
use atomup_fetch::{Expect, FetchError, Fetcher, Options as FetchOptions};
use atomup_link::budget::Budgets;
use atomup_ostree::sign::Trust;
use atomup_ostree::ObjectId;
use atomup_policy::slot::BootState;
use atomup_policy::slot::DEFAULT_ATTEMPTS;
use atomup_policy::update::{self, Decision, Flags};
use atomup_policy::Slot;
use atomup_release::check::{verify_signed, Verified};
use atomup_release::{release_path, rollout, Delta, Release};
use atomup_report::document::Event;
use atomup_report::progress::Phase;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub const HELP: &str = "\
Usage: atomup update [options]      (or: atomup upgrade)
Polls the server once; installs a due release into the inactive slot, on trial.
The server, channel, keys, link limits, ... come from the configuration
(`atomup config`); the configuration options below override it.
  --check               report what would be installed; download and change nothing
  --json                progress as one JSON event per line on stdout
  --board NAME          board name (default: from the board profile)
  --target-device DEV   block device of the inactive slot (default: from the board profile)
  --target-dir DIR      the inactive slot as a directory (host tests, pre-mounted)
  --from-root DIR       the running root, source of unchanged files (default /)
  --etc DIR             the running /etc, carried into the new slot (default FROM-ROOT/etc)
  --attempts N          boot attempts for the new slot (default 3)
  --allow-downgrade     accept a release older than the running one
  --ignore-rollout      install even if this device's rollout wave has not opened
  --now UNIX            the current time (default: system clock; never earlier than
                        the latest trusted time)
  --retry-backoff-ms N  base of the backoff between retries of a cut download (default 2000)
";

/// Largest release metadata file fetched (the format caps the body at 64 KiB).
const RELEASE_CAP: u64 = 80 * 1024;
/// Largest CA bundle read.
const CA_CAP: u64 = 1 << 20;

/// The options of `update`, `upgrade` and `daemon`.
pub struct Opts {
    /// Configuration flags, laid over the drop-ins.
    pub config: Partial,
    board: Option<String>,
    target_device: Option<PathBuf>,
    target_dir: Option<PathBuf>,
    from_root: PathBuf,
    etc: Option<PathBuf>,
    pub attempts: u8,
    pub allow_downgrade: bool,
    ignore_rollout: bool,
    now: Option<u64>,
    backoff_ms: u64,
    pub check: bool,
    pub json: bool,
    pub boot: BootOpts,
}

/// Parses the options of `command` (`daemon` takes no `--check`).
pub fn parse(args: &mut lexopt::Parser, command: &str, help: &str) -> Result<Opts> {
    parse_with(args, command, help, &mut |_, _| Ok(false))
}

/// An argument a command adds to the shared options (`install`'s).
pub enum Extra<'a> {
    Long(&'a str),
    Value(std::ffi::OsString),
}

/// [`parse`], offering `extra` each argument the shared options do not
/// know first; it returns whether it took it.
pub fn parse_with(
    args: &mut lexopt::Parser,
    command: &str,
    help: &str,
    extra: &mut dyn FnMut(Extra<'_>, &mut lexopt::Parser) -> Result<bool>,
) -> Result<Opts> {
    use lexopt::prelude::*;
    let mut o = Opts {
        config: Partial::default(),
        board: None,
        target_device: None,
        target_dir: None,
        from_root: "/".into(),
        etc: None,
        attempts: DEFAULT_ATTEMPTS,
        allow_downgrade: false,
        ignore_rollout: false,
        now: None,
        backoff_ms: 2000,
        check: false,
        json: false,
        boot: BootOpts::default(),
    };
    while let Some(arg) = args.next()? {
        match arg {
            Long("board") => o.board = Some(args.value()?.string()?),
            Long("target-device") => o.target_device = Some(args.value()?.into()),
            Long("target-dir") => o.target_dir = Some(args.value()?.into()),
            Long("from-root") => o.from_root = args.value()?.into(),
            Long("etc") => o.etc = Some(args.value()?.into()),
            Long("attempts") => o.attempts = args.value()?.parse()?,
            Long("allow-downgrade") => o.allow_downgrade = true,
            Long("ignore-rollout") => o.ignore_rollout = true,
            Long("now") => o.now = Some(args.value()?.parse()?),
            Long("retry-backoff-ms") => o.backoff_ms = args.value()?.parse()?,
            Long("check") if command != "daemon" => o.check = true,
            Long("json") => o.json = true,
            Long("help") | Short('h') => {
                print!("{help}{}\n{OPTIONS}", settings::OPTIONS);
                std::process::exit(0);
            }
            Long(name) => {
                let name = name.to_owned();
                if !extra(Extra::Long(&name), args)?
                    && !settings::take(&mut o.config, &name, args)?
                    && !o.boot.take(&name, args)?
                {
                    return Err(format!("invalid option '--{name}'").into());
                }
            }
            Value(v) => {
                if !extra(Extra::Value(v.clone()), args)? {
                    return Err(Value(v).unexpected().into());
                }
            }
            other => return Err(other.unexpected().into()),
        }
    }
    if o.target_device.is_some() && o.target_dir.is_some() {
        return Err("give only one of --target-device DEV, --target-dir DIR".into());
    }
    Ok(o)
}

/// What a poll came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    UpToDate,
    /// Installed in the other slot on trial before: a reboot tries it.
    Pending,
    /// The device's rollout wave has not opened.
    Waiting,
    /// `--check`: a release is due (nothing was downloaded or written).
    WouldInstall,
    /// Installed into `slot`, which boots next on trial.
    Installed {
        version: u64,
        slot: Slot,
    },
}

pub fn run(args: &mut lexopt::Parser) -> Result {
    let mut o = parse(args, "update", HELP)?;
    let loaded = settings::load(&o.config)?;
    crate::logger::configured(loaded.config.log_level);
    o.boot.configure(&loaded);
    let mut rep = Reporter::new(
        Mode::detect(o.json),
        (!o.check).then_some(o.boot.state_dir.as_path()),
    );
    let result = poll(&o, &loaded, None, &mut rep);
    after_poll(&o, &loaded.config, &result, &mut rep);
    result.map(|_| ())
}

/// Reports what a poll did (queued, then delivered with whatever else
/// waits), and shows a failure as the last progress event.
pub fn after_poll(o: &Opts, cfg: &Config, result: &Result<Outcome>, rep: &mut Reporter) {
    match result {
        Ok(Outcome::Installed { .. }) => {
            rep.done();
            reports::record(cfg, &o.boot, Event::Installed, None);
        }
        Ok(_) => rep.done(),
        Err(e) if is_cancelled(e.as_ref()) => rep.done(),
        Err(e) => {
            let text = crate::error::one_line(e.as_ref());
            rep.failed(&text);
            if !o.check {
                reports::record(cfg, &o.boot, Event::Failed, Some(text));
            }
        }
    }
    if o.check || cfg.report_url.is_none() {
        return;
    }
    match fetch_options(cfg, o.backoff_ms, None)
        .and_then(|opts| {
            Ok(Fetcher::new(
                &report_base(cfg),
                &o.boot.state_dir.join("cache"),
                opts,
            )?)
        })
        .and_then(|f| reports::deliver(cfg, &f))
    {
        Ok(0) => {}
        Ok(n) => log::info!("{n} report(s) delivered"),
        Err(e) => log::warn!("delivering reports: {}", crate::error::one_line(e.as_ref())),
    }
}

fn report_base(cfg: &Config) -> String {
    cfg.report_url.clone().unwrap_or_default()
}

/// Whether `e` is a download (or a bundle's copy) stopped by the cancel flag
/// (a daemon told to stop).
pub fn is_cancelled(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if matches!(
            err.downcast_ref::<FetchError>(),
            Some(FetchError::Cancelled { .. })
        ) || err.is::<crate::error::Stopped>()
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// The downloader's options from the configuration.
pub fn fetch_options(
    cfg: &Config,
    backoff_ms: u64,
    cancel: Option<&'static AtomicBool>,
) -> Result<FetchOptions> {
    let ca_pem = match &cfg.ca_bundle {
        Some(p) => Some(
            atomup_fsio::read_capped(p, CA_CAP)
                .map_err(|e| format!("cannot read the CA bundle {}: {e}", p.display()))?,
        ),
        None => None,
    };
    Ok(FetchOptions {
        attempts: cfg.retries,
        backoff: Duration::from_millis(backoff_ms),
        backoff_max: cfg.backoff_max.as_duration(),
        connect_timeout: cfg.connect_timeout.as_duration(),
        idle_timeout: cfg.stall_timeout.as_duration(),
        bandwidth: cfg.bandwidth,
        low_speed: Some(atomup_fetch::LowSpeedLimit {
            limit: cfg.low_speed_limit,
            window: cfg.low_speed_time.as_duration(),
        }),
        ca_pem,
        cancel,
        ..FetchOptions::default()
    })
}

/// One poll: check, plan, and (unless `--check`) download and install.
/// `cancel`: the daemon's stop flag (downloads end at their next read; an
/// apply in progress ends the process, see step 3).
pub fn poll(
    o: &Opts,
    loaded: &Loaded,
    cancel: Option<&'static AtomicBool>,
    rep: &mut Reporter,
) -> Result<Outcome> {
    let cfg = &loaded.config;
    // 1. Flags, configuration and the device's own state: no network, no writes.
    let server = cfg.server.as_ref().ok_or(
        "no update server: set server.url and server.channel in config.d (or --server URL --channel NAME)",
    )?;
    let server = server.url.as_str();
    let flags = Flags {
        attempts: o.attempts,
        allow_downgrade: o.allow_downgrade,
        ignore_rollout: o.ignore_rollout,
        allow_scratch_fallback: cfg.allow_scratch_fallback,
    };
    let mut p = prepare(o, loaded, flags)?;
    let budgets = Budgets {
        per_update: cfg.update_budget,
        monthly: cfg.monthly_budget,
    };
    // The month's usage: read before anything is fetched (a damaged record
    // on a metered link refuses here); written only when bytes arrive.
    let mut meter = Meter::load(&o.boot.state_dir, budgets, p.now)?;

    // 2. Release metadata, fetched capped and verified before it is parsed,
    //    then the decision: everything a release decides is decided here.
    let fetcher = Fetcher::new(server, &p.cache, fetch_options(cfg, o.backoff_ms, cancel)?)?;
    rep.phase(Phase::Checking, None);
    let fetched = fetcher.fetch_small(&release_path(&p.channel, &p.board), RELEASE_CAP);
    if !o.check {
        // Written now: a poll that goes no further (up to date, refused)
        // still used the link, and the month's record must say so.
        meter.charge(fetcher.received())?;
        meter.flush()?;
    }
    let bytes = fetched?;
    let verified = verify_signed(&bytes, &p.trust)?;
    rep.version(verified.release().version);
    // Crash point `update.metadata`: the signed release fetched and verified.
    atomup_faults::point("update.metadata");
    let plan = match decide(&p, &verified)? {
        Ok(plan) => plan,
        Err((outcome, message)) => {
            rep.say(&message);
            return Ok(outcome);
        }
    };
    let to = ObjectId(plan.release.commit);

    // Rules (metered links, bounded cache): the whole delta against the
    // per-update budget and the cache bound, what is left to fetch against
    // the month's; all before the first byte of the delta is fetched.
    let total = delta_bytes(plan.delta);
    let cached = cached_bytes(&p.cache, plan.delta, &p.trust);
    let need = total.saturating_sub(cached);
    Budgets {
        per_update: budgets.per_update,
        monthly: None,
    }
    .admit(total, &meter.usage)?;
    Budgets {
        per_update: None,
        monthly: budgets.monthly,
    }
    .admit(need, &meter.usage)?;
    check_cache_max(cfg, total)?;
    if o.check {
        rep.say(&format!(
            "would install version {} ({to}) into slot {}: delta {} from {}, {total} bytes ({cached} of them cached); nothing was downloaded or written",
            plan.release.version,
            p.target,
            plan.delta.path,
            plan.delta
                .source_commit()
                .map_or("scratch".to_owned(), |c| ObjectId(c).to_hex()),
        ));
        return Ok(Outcome::WouldInstall);
    }

    // 3. Downloads (the cache and the usage record are the only things
    //    written): every byte capped and digest-checked, resumable; then
    //    the delta's own claims.
    p.led.set(atomup_board::status::State::Downloading);
    check_download_space(&p.cache, &o.boot.state_dir, plan.delta, cached)?;
    rep.p.bytes_total = total;
    let verified_delta = download_delta(
        &fetcher,
        &mut meter,
        rep,
        plan.release,
        plan.delta,
        &p.trust,
        &p.current_commit,
        &p.cache,
    );
    meter.flush()?;
    let verified_delta = verified_delta?;

    // 4. Execute the plan.
    let outcome = execute(o, &mut p, &plan, &verified_delta, cancel, rep)?;
    p.led.set(atomup_board::status::State::Idle);
    Ok(outcome)
}

/// Stage 1 of an installation, shared by a network poll and `atomup
/// install`: flags, board, env, booted slot, target and trust, and the
/// device's records, all read and checked; nothing written. The env lock is
/// not held: each env write in [`execute`] loads the env again and checks
/// that it is still `env`.
pub struct Prepared {
    pub flags: Flags,
    pub board: String,
    /// The device's channel (`server.channel`).
    pub channel: String,
    /// The status LED while this runs; dropped mid-download or mid-install
    /// (an error returned early) it shows `error`.
    pub led: crate::led::StatusLed,
    pub trust: Trust,
    bl: Box<dyn atomup_bootctl::Bootloader>,
    pub booted: Slot,
    env: BootState,
    pub target: Slot,
    spec: Target,
    sd: StateDir,
    pub current_commit: ObjectId,
    pub current_version: u64,
    target_commit: Option<[u8; 32]>,
    highest_version: u64,
    time_file: PathBuf,
    trusted_time: u64,
    rolled_back: Vec<[u8; 32]>,
    seed: rollout::RolloutSeed,
    pub now: u64,
    /// The download cache (`<state>/cache`), where a bundle's members are
    /// extracted too.
    pub cache: PathBuf,
}

/// Stage 1: see [`Prepared`].
pub fn prepare(o: &Opts, loaded: &Loaded, flags: Flags) -> Result<Prepared> {
    let cfg = &loaded.config;
    let channel = cfg
        .channel
        .clone()
        .ok_or("no channel: set server.url and server.channel in config.d (or --server URL --channel NAME)")?;
    let profile = o.boot.board()?;
    let board = match (&o.board, &profile) {
        (Some(b), _) => b.clone(),
        (None, Some(p)) => p.name.clone(),
        (None, None) => return Err("--board NAME is required (or a board profile)".into()),
    };
    let led = crate::led::StatusLed::start(
        profile.as_ref().and_then(|p| p.led.as_ref()),
        atomup_board::status::State::Idle,
    );
    let trust = inputs::trust_of(cfg, loaded.sources.contains_key("trust.keys_file"))?;
    let mut bl = o.boot.open_env(profile.as_ref())?;
    let booted = o.boot.require_booted()?;
    // Read for planning only: the snapshot (and the env lock) is dropped at
    // once; each env write below loads the env again under the lock and
    // checks that it is still what the plan was made from.
    let env = atomup_bootctl::load(bl.as_mut())?.state()?;
    let target = update::preflight(&env, booted, &flags)?;
    let spec = match (&o.target_device, &o.target_dir, &profile) {
        (Some(dev), _, _) => Target::Device(dev.clone()),
        (None, Some(dir), _) => Target::Dir(dir.clone()),
        (None, None, Some(p)) => Target::Device(p.slot_device(target).to_owned()),
        (None, None, None) => {
            return Err("give --target-device DEV, --target-dir DIR or a board profile".into())
        }
    };
    // A run stopped while the target was mounted (Ctrl-C, a kill: no
    // destructor ran) left it on our own mount point: ours to undo before
    // the checks, which refuse a mounted target (issue 17).
    if let Target::Device(dev) = &spec {
        Mounted::reclaim(dev, &o.boot.state_dir.join("target"))?;
    }
    // Rule (issue 11.1): the target is resolved, by device, inode and mount,
    // before anything is written, and must not be the running system or its
    // data: an update empties what it writes.
    let protect = Protected {
        root: &o.from_root,
        state_dir: &o.boot.state_dir,
        data_device: profile.as_ref().and_then(|p| p.data.as_deref()),
    };
    target::check(
        &spec,
        &protect,
        &target::read_mounts()?,
        &target::sysfs_disk_of,
    )?;
    let sd = o.boot.state();
    // Typed, strictly parsed records: an unreadable one fails here.
    let current = sd
        .slot_record(booted)?
        .and_then(|r| r.installed)
        .ok_or_else(|| {
            format!(
                "no commit and version recorded for the running slot {booted} in {}",
                o.boot.state_dir.display()
            )
        })?;
    let target_commit = sd
        .slot_record(target)?
        .and_then(|r| r.commit())
        .map(|c| c.0);
    let highest_version = sd.highest_version()?;
    let time_file = o.boot.state_dir.join("trusted-time");
    let trusted_time = read_trusted_time(&time_file)?;
    let rolled_back: Vec<[u8; 32]> = sd
        .rollbacks()?
        .iter()
        .filter_map(|r| r.commit)
        .map(|id| id.0)
        .collect();
    let seed = rollout::RolloutSeed::from_machine_id(&inputs::machine_id(&cfg.machine_id)?);
    Ok(Prepared {
        flags,
        board,
        channel,
        led,
        trust,
        bl,
        booted,
        env,
        target,
        spec,
        sd,
        current_commit: current.commit,
        current_version: current.version,
        target_commit,
        highest_version,
        time_file,
        trusted_time,
        rolled_back,
        seed,
        now: o.now.unwrap_or_else(system_now),
        cache: o.boot.state_dir.join("cache"),
    })
}

/// Stage 2: the pure decision (`atomup_policy::update::plan`) over a
/// verified release, whatever its source; `Err((outcome, message))` when
/// there is nothing to install, with the reason to say.
pub fn decide<'r>(
    p: &Prepared,
    verified: &'r Verified,
) -> Result<std::result::Result<update::Plan<'r>, (Outcome, String)>> {
    let device = update::Device {
        channel: &p.channel,
        board: &p.board,
        booted: p.booted,
        env: &p.env,
        booted_commit: p.current_commit.0,
        booted_version: p.current_version,
        target_commit: p.target_commit,
        highest_version: p.highest_version,
        rolled_back: &p.rolled_back,
        trusted_time: p.trusted_time,
        seed: p.seed,
    };
    let version = verified.release().version;
    Ok(match update::plan(verified, &device, &p.flags, p.now)? {
        Decision::UpToDate => Err((
            Outcome::UpToDate,
            format!(
                "up to date: version {} ({})",
                p.current_version, p.current_commit
            ),
        )),
        Decision::PendingOnTrial { target } => Err((
            Outcome::Pending,
            format!("version {version} is installed in slot {target} on trial: reboot to try it"),
        )),
        Decision::Waiting { opens_at: Some(t) } => Err((
            Outcome::Waiting,
            format!("version {version} is rolling out; this device's wave opens at {t}"),
        )),
        Decision::Waiting { opens_at: None } => Err((
            Outcome::Waiting,
            format!("version {version} is rolling out; this device is not in any wave yet"),
        )),
        Decision::Install(plan) => Ok(plan),
    })
}

/// A delta's bytes in the cache once fetched or extracted: superblock and parts.
pub fn delta_bytes(delta: &Delta) -> u64 {
    delta.superblock_size.saturating_add(delta.parts_size)
}

/// Rule (bounded cache): one delta must fit under `link.cache_max`.
pub fn check_cache_max(cfg: &Config, total: u64) -> Result {
    if total > cfg.cache_max {
        return Err(format!(
            "the delta needs {total} bytes of download cache, over link.cache_max ({} bytes): nothing was downloaded",
            cfg.cache_max
        )
        .into());
    }
    Ok(())
}

/// Stage 4, shared by a network poll and `atomup install`: the plan carried
/// out on a verified delta (its superblock and parts in the cache). Each
/// step loads the env once (under its lock), records first and writes the
/// env last. The LED shows `installing` throughout.
pub fn execute(
    o: &Opts,
    p: &mut Prepared,
    plan: &update::Plan<'_>,
    verified_delta: &VerifiedDelta,
    cancel: Option<&'static AtomicBool>,
    rep: &mut Reporter,
) -> Result<Outcome> {
    let (target, spec, sd) = (p.target, &p.spec, &p.sd);
    let bl = p.bl.as_mut();
    let to = ObjectId(plan.release.commit);
    let current_commit = p.current_commit;
    p.led.set(atomup_board::status::State::Installing);
    // One install at a time (`onelock.rs`): held until the last env write.
    let _one = crate::onelock::take(&o.boot.state_dir, cancel, rep)?;
    let mut snap = atomup_bootctl::load(bl)?;
    if snap.state()? != p.env {
        return Err(format!(
            "the env changed while the update was prepared ({} instead of {}): nothing was installed, try again",
            snap.state()?,
            p.env
        )
        .into());
    }
    write_trusted_time(&p.time_file, plan.trusted_time)?;
    // Accepted from here on: a replay of anything older is refused even if
    // this install never finishes.
    sd.accept_version(plan.release.version)?;
    sd.write_slot_record(target, &SlotRecord::installing())?;
    // ONE env write: the target leaves the boot order before it changes.
    atomup_bootctl::store_state(bl, &mut snap, &plan.start)?;
    drop(snap);

    let letter = if target == Slot::A { 'A' } else { 'B' };
    rep.phase(Phase::Writing, Some(letter));
    let meta = o.boot.state_dir.join("meta");
    let mounted = match spec {
        Target::Device(dev) => Some(Mounted::new(dev, &o.boot.state_dir.join("target"))?),
        Target::Dir(_) => None,
    };
    let target_root = match (&mounted, spec) {
        (Some(m), _) => m.dir.clone(),
        (None, Target::Dir(dir)) => dir.clone(),
        (None, Target::Device(_)) => unreachable!("a device target is mounted"),
    };
    // The engine re-hashes unchanged objects read from the running root: it
    // must see the slot's own /etc, not the device's overlay on it.
    let running = atomup_etc::mount::slot_view(&o.from_root)?;
    let deploy_opts = atomup_deploy::Options {
        target: &target_root,
        from_root: plan.delta.source_commit().map(|_| running.path()),
        from_meta: plan.delta.source_commit().map(|_| meta.as_path()),
        fallback_repo: None,
        meta_out: Some(&meta),
    };
    let (stats, etc_line) = std::thread::scope(|scope| {
        let writer = scope.spawn(|| -> Result<(atomup_deploy::Stats, String)> {
            // The slot is out of the boot order and about to be replaced
            // whole: empty it first, so a slot sized for one root never has
            // to hold two (unchanged files come from the active root,
            // re-hashed, not from here).
            empty_slot(&target_root)?;
            let stats = atomup_deploy::apply(verified_delta, &deploy_opts)?;
            // The device's /etc carried onto the new defaults, as the new
            // slot's layer: after the slot is verified (its vendor-owned list
            // is trusted from here), before the env write that makes it
            // bootable.
            let current_etc = o.etc.clone().unwrap_or_else(|| o.from_root.join("etc"));
            let etc_line = crate::etc::merge_into(
                &o.boot.state_dir,
                current_commit,
                to,
                &current_etc,
                &target_root,
                target,
            )?;
            log::info!("slot {target} written and verified: syncing");
            // Everything written must be on disk before the env names the slot.
            rustix::fs::sync();
            Ok((stats, etc_line))
        });
        loop {
            if writer.is_finished() {
                break writer
                    .join()
                    .unwrap_or_else(|_| Err("the slot writer panicked".into()));
            }
            if cancel.is_some_and(|c| c.load(Ordering::SeqCst)) {
                stop_during_apply(rep, target, mounted.as_ref().map(|m| m.dir.as_path()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })?;
    // Said here, not in the writer: with `--json` stdout holds only events.
    rep.say(&etc_line);
    // A stop asked for during the apply holds after it too: the slot stays
    // out of the boot order (the same state a cut during the apply leaves).
    if cancel.is_some_and(|c| c.load(Ordering::SeqCst)) {
        stop_during_apply(rep, target, mounted.as_ref().map(|m| m.dir.as_path()));
    }
    if let Some(m) = mounted {
        m.unmount()?;
    }
    // Crash point `update.synced`: the slot written, verified and synced,
    // still out of the boot order.
    atomup_faults::point("update.synced");

    rep.phase(Phase::Finishing, Some(letter));
    let mut snap = atomup_bootctl::load(bl)?;
    if snap.state()? != plan.start {
        return Err(format!(
            "the env changed while slot {target} was written ({} instead of {}): slot {target} stays out of the boot order",
            snap.state()?,
            plan.start
        )
        .into());
    }
    sd.write_slot_record(
        target,
        &SlotRecord::installed(to, plan.release.version, Some(plan.release.timestamp)),
    )?;
    // ONE env write: the written, verified slot goes first, on trial.
    atomup_bootctl::store_state(bl, &mut snap, &plan.done)?;
    drop(snap);
    rep.say(&format!(
        "installed version {} ({to}) into slot {target}: {} objects written, {} reused; slot {target} boots next on trial ({} attempts)",
        plan.release.version, stats.objects_written, stats.objects_reused, o.attempts
    ));
    // The delta is spent: the cache goes (it is bounded to one delta anyway).
    match atomup_fetch::prune_cache(&p.cache, &[]) {
        Ok(freed) => rep.say(&format!("download cache cleared: {freed} bytes freed")),
        Err(e) => log::warn!("clearing the download cache: {e}"),
    }
    Ok(Outcome::Installed {
        version: plan.release.version,
        slot: target,
    })
}

/// A daemon told to stop while a slot is written stops here, at once: the
/// slot is out of the boot order (the first env write), so leaving it half
/// written is what a power cut would do, and the next poll rewrites it.
fn stop_during_apply(rep: &mut Reporter, target: Slot, mounted: Option<&Path>) -> ! {
    if let Some(dir) = mounted {
        let _ = rustix::mount::unmount(dir, rustix::mount::UnmountFlags::DETACH);
    }
    rep.say(&format!(
        "stopped while slot {target} was written: it stays out of the boot order; the next poll writes it again"
    ));
    rep.done();
    std::process::exit(0);
}

/// Bytes of `delta` already in the cache: the superblock (finished or
/// partial), and when it is finished and verifies, the parts it names.
/// Counted so that a resumed download is admitted for what it still needs.
fn cached_bytes(cache: &Path, delta: &Delta, trust: &Trust) -> u64 {
    let len = |name: &str| fs::symlink_metadata(cache.join(name)).map_or(0, |m| m.len());
    let have = |sha: &[u8; 32], size: u64| {
        let name = atomup_ostree::hex::encode(sha);
        len(&name).max(len(&format!("{name}.partial"))).min(size)
    };
    let mut total = have(&delta.superblock_sha256, delta.superblock_size);
    let sb_path = cache.join(atomup_ostree::hex::encode(&delta.superblock_sha256));
    if total == delta.superblock_size && sb_path.is_file() {
        if let Ok(sb) = VerifiedSuperblock::read(&sb_path, Some(trust)) {
            total += sb
                .parts()
                .iter()
                .filter(|p| !p.is_inline())
                .map(|p| have(&p.checksum.0, p.size))
                .sum::<u64>();
        }
    }
    total
}

/// Rule (issue 11.3): the download fits on the data partition, checked before
/// it starts. What is already cached of the delta counts; parts are counted
/// whole (their names are known only from the superblock).
pub fn check_download_space(cache: &Path, state_dir: &Path, delta: &Delta, cached: u64) -> Result {
    let need = (delta.superblock_size + delta.parts_size).saturating_sub(cached);
    // The cache is made by the first download; it lives in the state dir.
    let on = if cache.exists() { cache } else { state_dir };
    let st = rustix::fs::statvfs(on).map_err(|e| format!("statvfs {}: {e}", on.display()))?;
    let free = st.f_bavail.saturating_mul(st.f_frsize);
    if need > free {
        return Err(format!(
            "the delta needs {need} more bytes in {}, only {free} are free: nothing was written",
            cache.display()
        )
        .into());
    }
    Ok(())
}

/// Rule (issue 11.3): the delta's own claims hold before the first write and
/// before any part is fetched: its superblock is signed by a key this device
/// trusts (checked by `VerifiedSuperblock`), leads to the release's commit and
/// starts from the booted slot's commit (or from scratch, as the release says).
pub fn check_superblock(
    sb: &VerifiedSuperblock,
    release: &Release,
    delta: &Delta,
    booted_commit: &ObjectId,
) -> Result {
    let to = ObjectId(release.commit);
    if sb.to() != to {
        return Err(format!(
            "delta {} leads to {}, the release names {to}",
            delta.path,
            sb.to()
        )
        .into());
    }
    let from = delta.source_commit().map(ObjectId);
    if sb.from() != from {
        return Err(format!(
            "delta {} starts from {}, the release says {}",
            delta.path,
            sb.from().map_or("scratch".into(), |f| f.to_hex()),
            from.map_or("scratch".into(), |f| f.to_hex())
        )
        .into());
    }
    if let Some(f) = sb.from().filter(|f| f != booted_commit) {
        return Err(format!(
            "delta {} starts from {f}, the booted slot holds {booted_commit}",
            delta.path
        )
        .into());
    }
    if !sb.fallbacks().is_empty() {
        return Err(format!(
            "delta {} needs fallback objects, which devices do not fetch",
            delta.path
        )
        .into());
    }
    Ok(())
}

/// Fetches the superblock (capped and digest-checked against the signed
/// release) and verifies it once (signature against the device's trust, the
/// release's from/to commits), drops anything else from the cache (an older
/// download: the cache holds one delta), then fetches each separate part
/// (capped and checked against the superblock), charging the month's usage
/// as bytes arrive, and hands the engine the verified delta.
#[allow(clippy::too_many_arguments)]
fn download_delta(
    fetcher: &Fetcher,
    meter: &mut Meter,
    rep: &mut Reporter,
    release: &Release,
    delta: &Delta,
    trust: &Trust,
    booted_commit: &ObjectId,
    cache: &Path,
) -> Result<VerifiedDelta> {
    let mut charged = fetcher.received();
    let mut meter_err = None;
    let mut done_before = 0u64;
    let mut fetch = |rep: &mut Reporter, rel: &str, expect: Expect| -> Result<PathBuf> {
        let base = done_before;
        let got = fetcher.fetch_verified(rel, expect, &mut |have, _| {
            let now = fetcher.received();
            if let Err(e) = meter.charge(now - charged) {
                meter_err.get_or_insert(e);
            }
            charged = now;
            rep.received(base + have);
        });
        if let Err(e) = meter.charge(fetcher.received() - charged) {
            meter_err.get_or_insert(e);
        }
        charged = fetcher.received();
        if let Some(e) = meter_err.take() {
            return Err(e);
        }
        done_before += expect.size;
        Ok(got?)
    };
    let sb_path = fetch(
        rep,
        &format!("{}/superblock", delta.path),
        Expect {
            size: delta.superblock_size,
            sha256: delta.superblock_sha256,
        },
    )?;
    let sb = VerifiedSuperblock::read(&sb_path, Some(trust))?;
    check_superblock(&sb, release, delta, booted_commit)?;
    let separate = separate_parts(&sb, delta, cache)?;
    rep.p.parts_total = separate.len() as u64;
    rep.phase(Phase::Receiving, None);
    receive_parts(sb, delta, &separate, |i, expect| {
        let got = fetch(rep, &format!("{}/{i}", delta.path), expect)?;
        rep.p.parts_done += 1;
        Ok(got)
    })
}

/// The superblock's separate (not inline) parts, as (index, what the file
/// must be); the download cache is pruned to them and the superblock (it
/// holds one delta: an older download goes).
pub fn separate_parts(
    sb: &VerifiedSuperblock,
    delta: &Delta,
    cache: &Path,
) -> Result<Vec<(usize, Expect)>> {
    let separate: Vec<(usize, Expect)> = sb
        .parts()
        .iter()
        .enumerate()
        .filter(|(_, p)| !p.is_inline())
        .map(|(i, p)| {
            let expect = Expect {
                size: p.size,
                sha256: p.checksum.0,
            };
            (i, expect)
        })
        .collect();
    let mut keep: Vec<[u8; 32]> = separate.iter().map(|(_, e)| e.sha256).collect();
    keep.push(delta.superblock_sha256);
    let freed = atomup_fetch::prune_cache(cache, &keep)?;
    if freed > 0 {
        log::info!("download cache: {freed} bytes of an older download removed");
    }
    Ok(separate)
}

/// Gets each separate part through `get` (a download or a bundle member,
/// each proving its size and sha256) and hands the engine the verified
/// delta, which holds the files open and proves them again as they stream.
/// Rule: the signed release caps the parts' total, the superblock each part.
pub fn receive_parts(
    sb: VerifiedSuperblock,
    delta: &Delta,
    separate: &[(usize, Expect)],
    mut get: impl FnMut(usize, Expect) -> Result<PathBuf>,
) -> Result<VerifiedDelta> {
    let mut total = 0u64;
    let mut files = Vec::new();
    for &(i, expect) in separate {
        total += expect.size;
        if total > delta.parts_size {
            return Err(format!(
                "delta {} parts exceed the {} bytes the release allows",
                delta.path, delta.parts_size
            )
            .into());
        }
        files.push((i, get(i, expect)?));
    }
    Ok(VerifiedDelta::from_downloads(sb, |i| {
        files
            .iter()
            .find(|(n, _)| *n == i)
            .map(|(_, p)| p.clone())
            .unwrap_or_default()
    })?)
}

/// Removes everything in the target slot but ext4's `lost+found`, never
/// following a symlink out of it.
fn empty_slot(root: &Path) -> Result {
    for entry in fs::read_dir(root).map_err(|e| format!("reading {}: {e}", root.display()))? {
        let entry = entry?;
        if entry.file_name() == "lost+found" {
            continue;
        }
        let path = entry.path();
        let removed = if entry.file_type()?.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        removed.map_err(|e| format!("emptying {}: {e}", path.display()))?;
    }
    Ok(())
}

fn system_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn read_trusted_time(path: &Path) -> Result<u64> {
    match atomup_fsio::read_capped_opt(path, 4096) {
        Ok(Some(b)) => Ok(std::str::from_utf8(&b)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| format!("{} is not a unix time", path.display()))?),
        Ok(None) => Ok(0),
        Err(e) => Err(format!("cannot read {}: {e}", path.display()).into()),
    }
}

/// Replaces the trusted-time file with `atomup_fsio::replace`: the old time
/// or the new one after a power cut, durable once this returns (it used to
/// skip the directory fsync, and followed a symlink planted at its temp name).
fn write_trusted_time(path: &Path, t: u64) -> Result {
    atomup_fsio::replace(path, format!("{t}\n").as_bytes())
        .map_err(|e| format!("writing {}: {e}", path.display()).into())
}

/// The inactive slot's filesystem, mounted read-write only while it is written
/// (unmounted on every error path too).
struct Mounted {
    dir: PathBuf,
    mounted: bool,
}

impl Mounted {
    fn new(dev: &Path, dir: &Path) -> Result<Mounted> {
        fs::create_dir_all(dir)?;
        rustix::mount::mount(dev, dir, "ext4", rustix::mount::MountFlags::NOATIME, None)
            .map_err(|e| format!("mounting {} on {}: {e}", dev.display(), dir.display()))?;
        Ok(Mounted {
            dir: dir.to_owned(),
            mounted: true,
        })
    }

    /// Unmounts `dev` from `dir`, the mount point only `update` uses, where
    /// an interrupted run left it (nothing else is ever mounted there).
    fn reclaim(dev: &Path, dir: &Path) -> Result {
        use std::os::unix::fs::MetadataExt;
        let (Ok(dir), Ok(md)) = (fs::canonicalize(dir), fs::metadata(dev)) else {
            return Ok(()); // no mount point yet, or no device (refused below)
        };
        for m in target::read_mounts()? {
            if m.point == dir && m.dev == md.rdev() {
                log::warn!(
                    "{} is still mounted on {} by an interrupted update: unmounting it",
                    dev.display(),
                    dir.display()
                );
                rustix::mount::unmount(&dir, rustix::mount::UnmountFlags::empty())
                    .map_err(|e| format!("unmounting {}: {e}", dir.display()))?;
            }
        }
        Ok(())
    }

    fn unmount(mut self) -> Result {
        rustix::fs::sync();
        self.mounted = false;
        rustix::mount::unmount(&self.dir, rustix::mount::UnmountFlags::empty())
            .map_err(|e| format!("unmounting {}: {e}", self.dir.display()))?;
        Ok(())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.mounted {
            let _ = rustix::mount::unmount(&self.dir, rustix::mount::UnmountFlags::DETACH);
        }
    }
}
