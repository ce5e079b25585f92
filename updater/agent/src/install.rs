//! `atomup install FILE` and `atomup install --scan DIR`: an offline update
//! from a bundle on a USB stick (`atomup-bundle`), through the same stages
//! as a network poll (`update.rs`): [`update::prepare`], the same planner
//! ([`update::decide`]) over the bundle's signed release, and the same
//! [`update::execute`]. Only the source of the delta differs: instead of
//! downloads, the members of the one delta this device needs are extracted
//! from the stick into the download cache, each only once its size and
//! sha256 hold (`atomup_bundle::extract_verified`); the other deltas of the
//! bundle are never read.
//!
//! Order, and what a pulled stick leaves (the safety argument):
//! 1. Nothing is written before the bundle's first member, the signed
//!    release, is read (capped) and verified with the device's keys, and the
//!    planner accepted it: channel, board, expiry against `max(now, trusted
//!    time)` (the release crate's README, "Offline bundles"), version,
//!    downgrade and replay, never-retry. Rollout waves do not apply (the
//!    technician is the rollout), nor the metered-link rule against the
//!    from-scratch delta (a stick is not metered).
//! 2. The delta's superblock is extracted and verified (signature, from/to
//!    commits), then its parts. Until here only the cache changed: a stick
//!    pulled now is a failed read, the env and both slots untouched; a
//!    member cut mid-copy stays a `.partial` that nothing uses, and the
//!    next insertion re-hashes the finished members, resumes the cut one
//!    from where its `.partial` ends, and copies the rest.
//! 3. `execute`: record, env write (slot out of the order), apply, verify,
//!    /etc merge, sync, record, env write (slot in, on trial). It reads only
//!    the cache, never the stick.
//! 4. The result line is appended to the log on the stick and synced
//!    (`--log`, by default `DIR/atomup-log.txt` with `--scan`). The stick is
//!    read through a read-only mount; with `--remount` the log's directory
//!    (the stick's mount point) is remounted read-write just for the append
//!    and read-only again, so a stick pulled at any other moment holds a
//!    clean file system. (A remount rather than a second read-write mount:
//!    two mounts of one FAT device share one superblock, so the second one
//!    would make the first writable too.)

use crate::error::Result;
use crate::progress::{Mode, Reporter};
use crate::update::{self, Extra, Opts, Outcome};
use crate::{reports, settings};
use atomup_board::status::State;
use atomup_bundle::{Expect, Member};
use atomup_deploy::{VerifiedDelta, VerifiedSuperblock};
use atomup_ostree::ObjectId;
use atomup_policy::update::Flags;
use atomup_release::check::verify_signed;
use atomup_release::{Delta, Release};
use atomup_report::document::Event;
use atomup_report::progress::Phase;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

pub const HELP: &str = "\
Usage: atomup install FILE [options]
       atomup install --scan DIR [options]
Installs an offline update bundle (`atomup-publish bundle`) into the inactive slot, on
trial, after the same checks as `atomup update` (keys, channel, board, expiry, version,
never-retry). With --scan, every file in DIR (a mounted USB stick) is considered:
macOS `._*` files, non-bundles, bundles for other boards and releases that are not
newer are skipped, each with its reason; the newest valid one wins.
  --scan DIR            choose the bundle among the files in DIR
  --log FILE            append the result line to FILE (default with --scan: DIR/atomup-log.txt)
  --no-log              append no result line
  --remount             the log's directory is a read-only mount point (the stick):
                        remount it read-write for the append only
  --reboot              after an install (and the log), run reboot.command
  --linger S            keep the status LED showing the result for S seconds before exiting
  --check               report what would be installed; extract and change nothing
  --json                progress as one JSON event per line on stdout
  --board NAME          board name (default: from the board profile)
  --target-device DEV   block device of the inactive slot (default: from the board profile)
  --target-dir DIR      the inactive slot as a directory (host tests, pre-mounted)
  --from-root DIR       the running root, source of unchanged files (default /)
  --etc DIR             the running /etc, carried into the new slot (default FROM-ROOT/etc)
  --attempts N          boot attempts for the new slot (default 3)
  --allow-downgrade     accept a release older than the running one
  --now UNIX            the current time (default: system clock; never earlier than
                        the latest trusted time)
The channel is the configuration's server.channel.
";

/// The result log's name on the stick with `--scan`.
pub const LOG_NAME: &str = "atomup-log.txt";
/// Largest release metadata member read (as over the network).
const RELEASE_CAP: u64 = 80 * 1024;

#[derive(Default)]
struct Args {
    file: Option<PathBuf>,
    scan: Option<PathBuf>,
    log: Option<PathBuf>,
    no_log: bool,
    remount: bool,
    reboot: bool,
    linger: u64,
    /// The daemon's stop flag: a stop asked for during the apply ends it at
    /// the next safe point, as in a network install.
    cancel: Option<&'static std::sync::atomic::AtomicBool>,
}

fn parse(args: &mut lexopt::Parser) -> Result<(Opts, Args)> {
    let mut a = Args::default();
    let mut extra = |arg: Extra<'_>, p: &mut lexopt::Parser| -> Result<bool> {
        match arg {
            Extra::Value(v) if a.file.is_none() => a.file = Some(v.into()),
            Extra::Value(v) => {
                return Err(format!("one bundle only (also given: {})", v.to_string_lossy()).into())
            }
            Extra::Long("scan") => a.scan = Some(p.value()?.into()),
            Extra::Long("log") => a.log = Some(p.value()?.into()),
            Extra::Long("no-log") => a.no_log = true,
            Extra::Long("remount") => a.remount = true,
            Extra::Long("reboot") => a.reboot = true,
            Extra::Long("linger") => a.linger = lexopt::ValueExt::parse(&p.value()?)?,
            Extra::Long(_) => return Ok(false),
        }
        Ok(true)
    };
    let o = update::parse_with(args, "install", HELP, &mut extra)?;
    match (&a.file, &a.scan) {
        (Some(_), Some(_)) | (None, None) => {
            return Err("give a bundle FILE or --scan DIR (one of them)".into())
        }
        _ => {}
    }
    if a.no_log && a.log.is_some() {
        return Err("give only one of --log FILE, --no-log".into());
    }
    if a.log.is_none() && !a.no_log {
        a.log = a.scan.as_ref().map(|d| d.join(LOG_NAME));
    }
    if a.remount && a.log.is_none() {
        return Err("--remount needs a log (--log FILE or --scan DIR)".into());
    }
    Ok((o, a))
}

/// What the result line says besides the outcome.
#[derive(Default)]
struct Summary {
    bundle: Option<String>,
    from: Option<u64>,
    to: Option<u64>,
}

pub fn run(args: &mut lexopt::Parser) -> Result {
    let (mut o, a) = parse(args)?;
    let loaded = settings::load(&o.config)?;
    crate::logger::configured(loaded.config.log_level);
    o.boot.configure(&loaded);
    let done = attempt(&o, &a, &loaded);
    if a.linger > 0 {
        let _led = result_led(&o, done.led);
        std::thread::sleep(std::time::Duration::from_secs(a.linger));
    }
    let installed = matches!(done.result, Ok(Outcome::Installed { .. }));
    done.result?;
    if let Some(e) = done.log_err {
        return Err(e);
    }
    if installed && a.reboot {
        reboot(&loaded.config);
    }
    Ok(())
}

/// What one install from a bundle came to.
pub struct Attempt {
    pub result: Result<Outcome>,
    /// What the status LED shows for it: on trial, error, or confirmed
    /// (nothing to do).
    pub led: State,
    /// The result line could not be appended to the log (said already).
    pub log_err: Option<Box<dyn std::error::Error + Send + Sync>>,
}

/// The status LED held at `state` (the technician reads the result) until
/// the returned guard is dropped.
pub fn result_led(o: &Opts, state: State) -> crate::led::StatusLed {
    let profile = o.boot.board().ok().flatten();
    crate::led::StatusLed::start(profile.as_ref().and_then(|p| p.led.as_ref()), state)
}

/// The daemon's install from a stick that appeared in a `bundle.scan`
/// directory: exactly `atomup install --scan DIR` (`--remount` as
/// `bundle.remount` says), the result line appended to `DIR`'s log.
pub fn from_stick(
    o: &Opts,
    loaded: &atomup_config::Loaded,
    dir: &Path,
    cancel: Option<&'static std::sync::atomic::AtomicBool>,
) -> Attempt {
    let a = Args {
        scan: Some(dir.to_owned()),
        log: Some(dir.join(LOG_NAME)),
        remount: loaded.config.bundle.remount,
        cancel,
        ..Args::default()
    };
    attempt(o, &a, loaded)
}

/// One install (or `--check`) with its progress, report, result line and
/// the LED state it ends in; nothing held afterwards.
fn attempt(o: &Opts, a: &Args, loaded: &atomup_config::Loaded) -> Attempt {
    let cfg = &loaded.config;
    let started = system_now();
    let mut rep = Reporter::new(
        Mode::detect(o.json),
        (!o.check).then_some(o.boot.state_dir.as_path()),
    );
    let mut summary = Summary::default();
    let result = install(o, a, loaded, &mut rep, &mut summary);
    let error = match &result {
        Ok(Outcome::Installed { .. }) => {
            rep.done();
            reports::record(cfg, &o.boot, Event::Installed, None);
            None
        }
        Ok(_) => {
            rep.done();
            None
        }
        // A daemon told to stop: nothing failed, nothing to report.
        Err(e) if update::is_cancelled(e.as_ref()) => {
            rep.done();
            Some(crate::error::one_line(e.as_ref()))
        }
        Err(e) => {
            let text = crate::error::one_line(e.as_ref());
            rep.failed(&text);
            if !o.check {
                reports::record(cfg, &o.boot, Event::Failed, Some(text.clone()));
            }
            Some(text)
        }
    };
    let outcome = match &result {
        Ok(Outcome::Installed { .. }) => "installed",
        Ok(Outcome::UpToDate) => "up-to-date",
        Ok(Outcome::Pending) => "pending",
        Ok(Outcome::Waiting) => "waiting",
        Ok(Outcome::WouldInstall) => "would-install",
        Err(e) if update::is_cancelled(e.as_ref()) => "stopped",
        Err(_) => "failed",
    };
    // The technician reads the LED: installed (on trial) or failed, held
    // for a while after the work is done.
    let led = match (&result, error.is_some()) {
        (Ok(Outcome::Installed { .. }), _) => State::OnTrial,
        (_, true) => State::Error,
        _ => State::Confirmed,
    };
    let mut log_err = None;
    if let (Some(log), false) = (&a.log, o.check) {
        let line = result_line(cfg, &summary, outcome, error.as_deref(), started);
        if let Err(e) = append_log(log, &line, a.remount) {
            eprintln!("error: the result was not logged: {e}");
            log_err = Some(e);
        } else {
            rep.say(&format!("result logged to {}", log.display()));
        }
    }
    Attempt {
        result,
        led,
        log_err,
    }
}

/// Runs the init system's reboot (`reboot.command`); a failure is said, the
/// slot waits on trial for the next reboot.
fn reboot(cfg: &atomup_config::Config) {
    let command = &cfg.reboot_command;
    println!("rebooting into the new slot: {}", command.join(" "));
    rustix::fs::sync();
    match std::process::Command::new(&command[0])
        .args(&command[1..])
        .status()
    {
        Ok(s) if s.success() => {}
        Ok(s) => eprintln!("error: the reboot command {} failed ({s})", command[0]),
        Err(e) => eprintln!("error: cannot run the reboot command {}: {e}", command[0]),
    }
}

/// A bundle that passed the checks that need no planning: readable, the
/// signed release verified, its members listed.
struct Candidate {
    path: PathBuf,
    file: File,
    verified: atomup_release::check::Verified,
    members: Vec<Member>,
}

/// Opens `path` as a bundle (a regular file only: a FIFO or a device is
/// refused by type, without blocking), reads its first member capped and
/// verifies it as signed release metadata before anything else is read,
/// then lists the members (headers only; data is seeked over).
fn open_bundle(path: &Path, trust: &atomup_ostree::sign::Trust) -> Result<Candidate> {
    let mut file = atomup_fsio::open(path, atomup_fsio::Want::Regular)
        .map_err(|e| format!("cannot open the bundle {}: {e}", path.display()))?;
    let first = atomup_bundle::first(&mut file)?;
    if first.size > RELEASE_CAP {
        return Err(format!(
            "its first member `{}` is {} bytes, over the {RELEASE_CAP}-byte cap of release metadata",
            first.name, first.size
        )
        .into());
    }
    let mut bytes = vec![0u8; first.size as usize];
    file.seek(SeekFrom::Start(first.offset))?;
    file.read_exact(&mut bytes)
        .map_err(|e| format!("reading the release metadata: {e}"))?;
    // Rule: the signed index is verified before anything else is looked at.
    let verified = verify_signed(&bytes, trust)?;
    let members = atomup_bundle::scan(&mut file)?;
    Ok(Candidate {
        path: path.to_owned(),
        file,
        verified,
        members,
    })
}

/// The files `--scan` considers, in name order: every entry of `dir` but the
/// result log and macOS's `._*` AppleDouble files (said, then skipped).
/// Also returns how many were skipped.
fn scan_dir(dir: &Path, rep: &mut Reporter) -> Result<(Vec<PathBuf>, usize)> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| format!("reading {}: {e}", dir.display()))?
        .collect::<std::io::Result<Vec<_>>>()?
        .into_iter()
        .map(|e| e.file_name())
        .collect();
    names.sort();
    let mut out = Vec::new();
    let mut skipped = 0;
    for name in names {
        let shown = name.to_string_lossy();
        if shown == LOG_NAME {
            continue;
        }
        if shown.starts_with("._") {
            rep.say(&format!(
                "skipping {shown}: a macOS metadata file (._*), not a bundle"
            ));
            skipped += 1;
            continue;
        }
        out.push(dir.join(name));
    }
    Ok((out, skipped))
}

fn install(
    o: &Opts,
    a: &Args,
    loaded: &atomup_config::Loaded,
    rep: &mut Reporter,
    summary: &mut Summary,
) -> Result<Outcome> {
    let cfg = &loaded.config;
    let flags = Flags {
        attempts: o.attempts,
        allow_downgrade: o.allow_downgrade,
        // The technician's visit is the rollout; a stick is not metered.
        ignore_rollout: true,
        allow_scratch_fallback: true,
    };
    let mut p = update::prepare(o, loaded, flags)?;
    summary.from = Some(p.current_version);
    rep.phase(Phase::Checking, None);

    // 1. Each file verified and planned; none written.
    let (paths, single, mut skipped) = match (&a.file, &a.scan) {
        (Some(f), _) => (vec![f.clone()], true, 0),
        (None, Some(dir)) => {
            let (paths, skipped) = scan_dir(dir, rep)?;
            (paths, false, skipped)
        }
        (None, None) => return Err("give a bundle FILE or --scan DIR".into()),
    };
    let mut best: Option<Candidate> = None;
    let mut nothing_due: Option<Outcome> = None;
    for path in paths {
        let shown = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into(),
        );
        let decided =
            open_bundle(&path, &p.trust).and_then(|c| match update::decide(&p, &c.verified)? {
                Ok(_) => Ok(Ok(c)),
                Err((outcome, message)) => Ok(Err((outcome, message))),
            });
        match decided {
            Ok(Ok(c)) => {
                let v = c.verified.release().version;
                if best
                    .as_ref()
                    .is_some_and(|b| b.verified.release().version >= v)
                {
                    rep.say(&format!(
                        "skipping {shown}: version {v}, a newer bundle is here"
                    ));
                    skipped += 1;
                } else {
                    if let Some(b) = best.take() {
                        rep.say(&format!(
                            "skipping {}: version {}, a newer bundle is here",
                            b.path.file_name().unwrap_or_default().to_string_lossy(),
                            b.verified.release().version
                        ));
                        skipped += 1;
                    }
                    best = Some(c);
                }
            }
            Ok(Err((outcome, why))) => {
                if single {
                    rep.say(&format!("{shown}: {why}"));
                    return Ok(outcome);
                }
                rep.say(&format!("skipping {shown}: {why}"));
                nothing_due.get_or_insert(outcome);
                skipped += 1;
            }
            Err(e) if single => {
                return Err(
                    format!("{shown} is refused: {}", crate::error::one_line(e.as_ref())).into(),
                )
            }
            Err(e) => {
                rep.say(&format!(
                    "skipping {shown}: {}",
                    crate::error::one_line(e.as_ref())
                ));
                skipped += 1;
            }
        }
    }
    let Some(c) = best else {
        if let Some(outcome) = nothing_due {
            return Ok(outcome);
        }
        return Err(format!(
            "no bundle in {} installs on this device (board {}, channel {}, version {}): {skipped} file(s) skipped",
            a.scan.as_deref().unwrap_or(Path::new(".")).display(),
            p.board,
            p.channel,
            p.current_version
        )
        .into());
    };
    let Candidate {
        path,
        mut file,
        verified,
        members,
    } = c;
    let shown = path.display().to_string();
    summary.bundle = path.file_name().map(|n| n.to_string_lossy().into_owned());
    summary.to = Some(verified.release().version);
    rep.version(verified.release().version);
    let plan = update::decide(&p, &verified)?.map_err(|(_, why)| why)?;
    let chosen = bundle_delta(plan.release, plan.delta, &members).ok_or_else(|| {
        format!(
            "{shown} holds no delta from the booted commit {} and none from scratch",
            p.current_commit
        )
    })?;
    let plan = atomup_policy::update::Plan {
        delta: chosen,
        ..plan
    };
    let to = ObjectId(plan.release.commit);
    let total = update::delta_bytes(plan.delta);
    update::check_cache_max(cfg, total)?;
    if o.check {
        rep.say(&format!(
            "would install version {} ({to}) into slot {} from {shown}: delta {} from {}, {total} bytes; nothing was extracted or written",
            plan.release.version,
            p.target,
            plan.delta.path,
            source_name(plan.delta),
        ));
        return Ok(Outcome::WouldInstall);
    }
    rep.say(&format!(
        "installing version {} from {shown}: delta {} from {}, {total} bytes",
        plan.release.version,
        plan.delta.path,
        source_name(plan.delta)
    ));

    // 2. The delta's members, extracted verified into the cache. From here
    //    the LED shows `installing`; dropped by an error it shows `error`.
    p.led.set(State::Installing);
    update::check_download_space(&p.cache, &o.boot.state_dir, plan.delta, 0)?;
    rep.p.bytes_total = total;
    let source = Source {
        path: &path,
        file: &mut file,
        members: &members,
    };
    let vd = extract_delta(source, plan.release, plan.delta, &p, a.cancel, rep)?;

    // 3. The same execution as a network update.
    let outcome = update::execute(o, &mut p, &plan, &vd, a.cancel, rep)?;
    p.led.set(State::OnTrial);
    Ok(outcome)
}

fn source_name(d: &Delta) -> String {
    d.source_commit()
        .map_or("scratch".to_owned(), |c| ObjectId(c).to_hex())
}

/// Rule: the delta from the booted commit if the bundle carries it, else the
/// release's from-scratch delta if the bundle carries that. `planned` is the
/// planner's choice among all the release's deltas (from the booted commit,
/// else from scratch); a bundle may carry only some of them.
fn bundle_delta<'r>(
    release: &'r Release,
    planned: &'r Delta,
    members: &[Member],
) -> Option<&'r Delta> {
    let has = |d: &Delta| {
        let sb = format!("{}/superblock", d.path);
        members.iter().any(|m| m.name == sb)
    };
    if has(planned) {
        return Some(planned);
    }
    release
        .deltas
        .iter()
        .find(|d| d.source_commit().is_none() && has(d))
}

/// Extracts the superblock (checked against the signed release), verifies
/// it (signature, from/to commits), drops anything else from the cache, then
/// extracts each separate part (checked against the superblock); the same
/// checks as `download_delta`, with the bundle as the source.
/// The chosen bundle, open.
struct Source<'a> {
    path: &'a Path,
    file: &'a mut File,
    members: &'a [Member],
}

fn extract_delta(
    c: Source<'_>,
    release: &Release,
    delta: &Delta,
    p: &update::Prepared,
    cancel: Option<&'static std::sync::atomic::AtomicBool>,
    rep: &mut Reporter,
) -> Result<VerifiedDelta> {
    let member = |name: &str| -> Result<Member> {
        c.members
            .iter()
            .find(|m| m.name == name)
            .cloned()
            .ok_or_else(|| format!("{} has no member `{name}`", c.path.display()).into())
    };
    let sb_member = member(&format!("{}/superblock", delta.path))?;
    let sb_path = atomup_bundle::extract_verified(
        c.file,
        &sb_member,
        Expect {
            size: delta.superblock_size,
            sha256: delta.superblock_sha256,
        },
        &p.cache,
    )?
    .path;
    let sb = VerifiedSuperblock::read(&sb_path, Some(&p.trust))?;
    update::check_superblock(&sb, release, delta, &p.current_commit)?;
    let separate = update::separate_parts(&sb, delta, &p.cache)?;
    rep.p.parts_total = separate.len() as u64;
    rep.phase(Phase::Receiving, None);
    let mut done = delta.superblock_size;
    rep.received(done);
    update::receive_parts(sb, delta, &separate, |i, expect| {
        // A stop between two members: the copied ones stay in the cache
        // (verified, by sha256), the next start copies only the rest.
        if cancel.is_some_and(|c| c.load(std::sync::atomic::Ordering::SeqCst)) {
            return Err(crate::error::Stopped(format!(
                "stopped while copying {}'s members: the {} copied are kept for the next start",
                c.path.display(),
                rep.p.parts_done
            ))
            .into());
        }
        let m = member(&format!("{}/{i}", delta.path))?;
        let got = atomup_bundle::extract_verified(c.file, &m, expect, &p.cache)?;
        if got.resumed > 0 {
            rep.say(&format!(
                "{}: resumed at byte {} of {} (the copy cut when the stick was pulled)",
                m.name, got.resumed, expect.size
            ));
        }
        done += expect.size;
        rep.received(done);
        rep.p.parts_done += 1;
        Ok(got.path)
    })
}

/// One line of the log on the stick: `key=value` fields, the error quoted.
fn result_line(
    cfg: &atomup_config::Config,
    s: &Summary,
    outcome: &str,
    error: Option<&str>,
    started: u64,
) -> String {
    let device = crate::inputs::machine_id(&cfg.machine_id)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or_else(|| "unknown".into());
    let v = |x: Option<u64>| x.map_or("-".to_owned(), |n| n.to_string());
    let mut line = format!(
        "start={} end={} device={device} bundle={} from={} to={} outcome={outcome}",
        atomup_bootctl::statedir::rfc3339(started),
        atomup_bootctl::statedir::rfc3339(system_now()),
        s.bundle
            .as_deref()
            .unwrap_or("-")
            .replace(char::is_whitespace, "_"),
        v(s.from),
        v(s.to),
    );
    if let Some(e) = error {
        let e: String = e
            .chars()
            .map(|ch| match ch {
                '"' => '\'',
                ch if ch.is_control() => ' ',
                ch => ch,
            })
            .collect();
        line.push_str(&format!(" error=\"{e}\""));
    }
    line.push('\n');
    line
}

/// Appends `line` to the log and syncs it; with `remount`, the log's
/// directory is remounted read-write around the append. A remount replaces
/// the per-mount flags, so the stick's `nosuid`, `nodev`, `noexec` are read
/// first and kept in both remounts.
fn append_log(log: &Path, line: &str, remount: bool) -> Result {
    use rustix::fs::StatVfsMountFlags as Vfs;
    use rustix::mount::{mount_remount, MountFlags};
    let dir = log
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut keep = MountFlags::empty();
    if remount {
        let st = rustix::fs::statvfs(dir).map_err(|e| format!("statvfs {}: {e}", dir.display()))?;
        for (vfs, ms) in [
            (Vfs::NOSUID, MountFlags::NOSUID),
            (Vfs::NODEV, MountFlags::NODEV),
            (Vfs::NOEXEC, MountFlags::NOEXEC),
        ] {
            if st.f_flag.contains(vfs) {
                keep |= ms;
            }
        }
        mount_remount(dir, keep | MountFlags::NOATIME, "")
            .map_err(|e| format!("remounting {} read-write: {e}", dir.display()))?;
    }
    let appended = atomup_fsio::append(log, line.as_bytes())
        .map_err(|e| format!("appending to {}: {e}", log.display()));
    if remount {
        rustix::fs::sync();
        mount_remount(dir, keep | MountFlags::RDONLY, "")
            .map_err(|e| format!("remounting {} read-only: {e}", dir.display()))?;
    }
    Ok(appended?)
}

fn system_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release_with(deltas: &[(Option<[u8; 32]>, &str)]) -> Release {
        use atomup_release::DeltaSource;
        Release {
            channel: "stable".into(),
            board: "b".into(),
            version: 2,
            commit: [0x22; 32],
            timestamp: 100,
            expires: 200,
            min_from_version: 0,
            deltas: deltas
                .iter()
                .map(|(from, path)| Delta {
                    from: from.map_or(DeltaSource::Scratch, DeltaSource::From),
                    path: (*path).into(),
                    superblock_size: 10,
                    superblock_sha256: [0x33; 32],
                    parts_size: 20,
                })
                .collect(),
            waves: Vec::new(),
        }
    }

    fn members(names: &[&str]) -> Vec<Member> {
        names
            .iter()
            .map(|n| Member {
                name: (*n).into(),
                offset: 0,
                size: 1,
            })
            .collect()
    }

    // Proves the bundle's delta is the one from the booted commit when the bundle holds it,
    // else the from-scratch one, and none when it holds neither.
    #[test]
    fn bundle_delta_prefers_the_booted_commit_then_scratch() {
        let r = release_with(&[(None, "d/scratch"), (Some([0x11; 32]), "d/from1")]);
        let from1 = r.deltas.iter().find(|d| d.path == "d/from1").unwrap();
        let both = members(&[
            "atomup/stable/b/release",
            "d/scratch/superblock",
            "d/from1/superblock",
        ]);
        assert_eq!(bundle_delta(&r, from1, &both).unwrap().path, "d/from1");
        let scratch_only = members(&["d/scratch/superblock", "d/scratch/0"]);
        assert_eq!(
            bundle_delta(&r, from1, &scratch_only).unwrap().path,
            "d/scratch"
        );
        // A part without its superblock is not a delta.
        assert!(bundle_delta(&r, from1, &members(&["d/from1/0"])).is_none());
    }
}
