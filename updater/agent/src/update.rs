//! `atomup update`: one poll of the update server, and if a release is due,
//! its installation into the inactive slot. The order of steps is the safety
//! argument (DESIGN "Slot state contract"):
//!
//! 1. Everything untrusted is checked before the env or any slot is touched:
//!    release metadata signature, channel/board, expiry, version, rollout,
//!    never-retry list; every download is size-capped and digest-checked.
//! 2. ONE env write takes the inactive slot out of the boot order. From here
//!    until step 4 a power cut boots the running, confirmed slot.
//! 3. The delta is applied into the inactive slot and the written tree is
//!    verified against the signed commit; then the device's `/etc` is
//!    merged onto the new defaults as the slot's layer (`atomup-etc`).
//! 4. ONE env write puts the slot first in order, on trial. The bootloader
//!    counts its attempts; `atomup mark-good` confirms it, or it falls back.
//!
//! Re-running after a power cut is safe: downloads resume from the cache and
//! the apply rewrites the (out-of-order) slot from scratch.

use crate::{bootopts, Result};
use atomup_board::Board;
use atomup_bootctl::statedir::{SlotInfo, StateDir};
use atomup_deploy::{VerifiedDelta, VerifiedSuperblock};
use atomup_fetch::{Expect, Fetcher, Options as FetchOptions};
use atomup_ostree::sign::Trust;
use atomup_ostree::ObjectId;
use atomup_policy::slot::DEFAULT_ATTEMPTS;
use atomup_policy::Slot;
use atomup_release::check::{
    advance_trusted_time, check_release, verify_signed, DeviceFacts, Offer,
};
use atomup_release::{release_path, rollout, Delta};
use std::fs;
use std::path::{Path, PathBuf};

pub const HELP: &str = "\
Usage: atomup update --server URL --channel NAME [--board NAME] [options]
Polls the server once; installs a due release into the inactive slot, on trial.
  --trusted-keys FILE   vendor public keys (default /etc/atomup/trusted.pub)
  --revoked-keys FILE   revoked keys
  --board-conf FILE     board profile (default /etc/atomup/board.conf when present): gives
                        the board name, the env location and the slots' block devices
  --target-device DEV   block device of the inactive slot (default: from the board profile)
  --target-dir DIR      the inactive slot as a directory (host tests, pre-mounted)
  --from-root DIR       the running root, source of unchanged files (default /)
  --etc DIR             the running /etc, carried into the new slot (default FROM-ROOT/etc)
  --attempts N          boot attempts for the new slot (default 3)
  --allow-downgrade     accept a release older than the running one
  --ignore-rollout      install even if this device's rollout wave has not opened
  --now UNIX            the current time (default: system clock; never earlier than
                        the latest trusted time)
  --machine-id FILE     rollout seed source (default /etc/machine-id)
  --retry-backoff-ms N  pause before the n-th retry of a cut download is n*N ms (default 2000)
Boot-state options: --env-config FILE | --env-image FILE | --grubenv PATH,
  --booted-slot A|B, --state-dir DIR (default /var/lib/atomup)
";

/// Largest release metadata file fetched (the format caps the body at 64 KiB).
const RELEASE_CAP: u64 = 80 * 1024;

struct Opts {
    server: Option<String>,
    channel: Option<String>,
    board: Option<String>,
    board_conf: Option<PathBuf>,
    trusted: PathBuf,
    revoked: Option<PathBuf>,
    target_device: Option<PathBuf>,
    target_dir: Option<PathBuf>,
    from_root: PathBuf,
    etc: Option<PathBuf>,
    attempts: u8,
    allow_downgrade: bool,
    ignore_rollout: bool,
    now: Option<u64>,
    machine_id: PathBuf,
    backoff_ms: u64,
    env_config: Option<PathBuf>,
    env_image: Option<PathBuf>,
    grubenv: Option<PathBuf>,
    booted: Option<Slot>,
    state_dir: PathBuf,
}

fn parse(args: &mut lexopt::Parser) -> Result<Opts> {
    use lexopt::prelude::*;
    let mut o = Opts {
        server: None,
        channel: None,
        board: None,
        board_conf: None,
        trusted: "/etc/atomup/trusted.pub".into(),
        revoked: None,
        target_device: None,
        target_dir: None,
        from_root: "/".into(),
        etc: None,
        attempts: DEFAULT_ATTEMPTS,
        allow_downgrade: false,
        ignore_rollout: false,
        now: None,
        machine_id: "/etc/machine-id".into(),
        backoff_ms: 2000,
        env_config: None,
        env_image: None,
        grubenv: None,
        booted: None,
        state_dir: "/var/lib/atomup".into(),
    };
    while let Some(arg) = args.next()? {
        match arg {
            Long("server") => o.server = Some(args.value()?.string()?),
            Long("channel") => o.channel = Some(args.value()?.string()?),
            Long("board") => o.board = Some(args.value()?.string()?),
            Long("board-conf") => o.board_conf = Some(args.value()?.into()),
            Long("trusted-keys") => o.trusted = args.value()?.into(),
            Long("revoked-keys") => o.revoked = Some(args.value()?.into()),
            Long("target-device") => o.target_device = Some(args.value()?.into()),
            Long("target-dir") => o.target_dir = Some(args.value()?.into()),
            Long("from-root") => o.from_root = args.value()?.into(),
            Long("etc") => o.etc = Some(args.value()?.into()),
            Long("attempts") => o.attempts = args.value()?.parse()?,
            Long("allow-downgrade") => o.allow_downgrade = true,
            Long("ignore-rollout") => o.ignore_rollout = true,
            Long("now") => o.now = Some(args.value()?.parse()?),
            Long("machine-id") => o.machine_id = args.value()?.into(),
            Long("retry-backoff-ms") => o.backoff_ms = args.value()?.parse()?,
            Long("env-config") => o.env_config = Some(args.value()?.into()),
            Long("env-image") => o.env_image = Some(args.value()?.into()),
            Long("grubenv") => o.grubenv = Some(args.value()?.into()),
            Long("booted-slot") => {
                let v = args.value()?.string()?;
                o.booted =
                    Some(Slot::parse(&v).ok_or_else(|| format!("slot must be A or B, got `{v}`"))?);
            }
            Long("state-dir") => o.state_dir = args.value()?.into(),
            Long("help") | Short('h') => {
                print!("{HELP}");
                std::process::exit(0);
            }
            other => return Err(other.unexpected().into()),
        }
    }
    Ok(o)
}

/// The board profile: given, or the device's own when it ships one.
fn board(o: &Opts) -> Result<Option<Board>> {
    let path = match &o.board_conf {
        Some(p) => p.clone(),
        None if Path::new(atomup_board::DEFAULT_PATH).exists() => atomup_board::DEFAULT_PATH.into(),
        None => return Ok(None),
    };
    let text =
        fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(Some(Board::parse(&text).map_err(|e| {
        format!("board profile {}: {e}", path.display())
    })?))
}

pub fn run(args: &mut lexopt::Parser) -> Result {
    let o = parse(args)?;
    let server = o.server.as_deref().ok_or("--server URL is required")?;
    let channel = o.channel.as_deref().ok_or("--channel NAME is required")?;
    let profile = board(&o)?;
    let board = match (&o.board, &profile) {
        (Some(b), _) => b.as_str(),
        (None, Some(p)) => p.name.as_str(),
        (None, None) => return Err("--board NAME is required (or a board profile)".into()),
    };
    if o.target_device.is_some() && o.target_dir.is_some() {
        return Err("give only one of --target-device DEV, --target-dir DIR".into());
    }
    let trust = load_trust(&o.trusted, o.revoked.as_deref())?;
    let mut bl = bootopts::open_env(
        o.env_config.as_deref(),
        o.env_image.as_deref(),
        o.grubenv.as_deref(),
        profile.as_ref().map(|p| &p.bootloader),
    )?;
    let bl = bl.as_mut();
    let booted = bootopts::require_booted(o.booted)?;
    let target = !booted;
    let target_device = match (&o.target_device, &o.target_dir, &profile) {
        (Some(dev), _, _) => Some(dev.clone()),
        (None, Some(_), _) => None,
        (None, None, Some(p)) => Some(p.slot_device(target).to_owned()),
        (None, None, None) => {
            return Err("give --target-device DEV, --target-dir DIR or a board profile".into())
        }
    };
    let state = atomup_bootctl::read(bl)?.state()?;
    let sd = StateDir::new(&o.state_dir);

    // Never overwrite the fallback: while the running slot is itself on trial,
    // the other slot is the only confirmed one.
    if state.trial == Some(booted) {
        return Err(format!("slot {booted} is running on trial: confirm it (`atomup health` / `atomup mark-good`) before updating").into());
    }
    let current = sd.slot_info(booted)?.unwrap_or_default();
    let current_commit = current.commit.as_deref().ok_or_else(|| {
        format!(
            "no commit recorded for the running slot {booted} in {}",
            o.state_dir.display()
        )
    })?;
    let current_commit = ObjectId::from_hex(current_commit)?;
    let current_version: u64 = current
        .version
        .as_deref()
        .unwrap_or("0")
        .parse()
        .unwrap_or(0);

    let time_file = o.state_dir.join("trusted-time");
    let trusted_time = read_trusted_time(&time_file)?;
    let now = o.now.unwrap_or_else(system_now);

    // 1. Release metadata: fetched capped, verified before it is parsed.
    let cache = o.state_dir.join("cache");
    let fetch_opts = FetchOptions {
        backoff: std::time::Duration::from_millis(o.backoff_ms),
        ..FetchOptions::default()
    };
    let fetcher = Fetcher::new(server, &cache, fetch_opts)?;
    let bytes = fetcher.fetch_small(&release_path(channel, board), RELEASE_CAP)?;
    let verified = verify_signed(&bytes, &trust)?;
    let facts = DeviceFacts {
        channel,
        board,
        current_version,
        current_commit: current_commit.0,
        trusted_time,
        allow_downgrade: o.allow_downgrade,
    };
    let release = &verified.release;
    let to = ObjectId(release.commit);
    let delta = match check_release(&verified, &facts, now)? {
        Offer::UpToDate => {
            println!("up to date: version {current_version} ({current_commit})");
            return Ok(());
        }
        Offer::Update { delta } => delta,
    };
    // Rule: a release that rolled back on this device is never retried.
    let to_hex = to.to_hex();
    if sd
        .rollbacks()?
        .iter()
        .any(|r| r.commit.as_deref() == Some(to_hex.as_str()))
    {
        return Err(format!(
            "release {} ({to}) rolled back on this device before: not retrying it",
            release.version
        )
        .into());
    }
    if state.trial == Some(target)
        && sd.slot_info(target)?.and_then(|i| i.commit).as_deref() == Some(to_hex.as_str())
    {
        println!(
            "version {} is installed in slot {target} on trial: reboot to try it",
            release.version
        );
        return Ok(());
    }
    let effective_now = now.max(trusted_time);
    if !o.ignore_rollout {
        let seed =
            rollout::RolloutSeed::from_machine_id(&fs::read(&o.machine_id).unwrap_or_default());
        if !rollout::is_eligible(&release.waves, &seed, effective_now) {
            match rollout::eligible_at(&release.waves, &seed) {
                Some(t) => println!(
                    "version {} is rolling out; this device's wave opens at {t}",
                    release.version
                ),
                None => println!(
                    "version {} is rolling out; this device is not in any wave yet",
                    release.version
                ),
            }
            return Ok(());
        }
    }

    // 2. Downloads: every byte capped and digest-checked, resumable.
    let verified_delta = download_delta(&fetcher, delta, &to, &trust)?;
    write_trusted_time(&time_file, advance_trusted_time(&verified, trusted_time))?;

    // 3. ONE env write: the target leaves the boot order before it changes.
    atomup_bootctl::write_state(bl, &state.install_start(target))?;
    sd.write_slot_info(
        target,
        &SlotInfo {
            status: Some("installing".into()),
            ..Default::default()
        },
    )?;

    let meta = o.state_dir.join("meta");
    let mounted = match &target_device {
        Some(dev) => Some(Mounted::new(dev, &o.state_dir.join("target"))?),
        None => None,
    };
    let target_root = mounted.as_ref().map_or_else(
        || o.target_dir.clone().expect("checked above"),
        |m| m.dir.clone(),
    );
    // The slot is out of the boot order and about to be replaced whole: empty
    // it first, so a slot sized for one root never has to hold two (unchanged
    // files come from the active root, re-hashed, not from here).
    empty_slot(&target_root)?;
    // The engine re-hashes unchanged objects read from the running root: it
    // must see the slot's own /etc, not the device's overlay on it.
    let running = atomup_etc::mount::slot_view(&o.from_root)?;
    let stats = atomup_deploy::apply(
        &verified_delta,
        &atomup_deploy::Options {
            target: &target_root,
            from_root: delta.source_commit().map(|_| running.path()),
            from_meta: delta.source_commit().map(|_| meta.as_path()),
            fallback_repo: None,
            meta_out: Some(&meta),
        },
    )?;
    // The device's /etc carried onto the new defaults, as the new slot's
    // layer: after the slot is verified (its vendor-owned list is trusted
    // from here), before the env write that makes it bootable.
    let current_etc = o.etc.clone().unwrap_or_else(|| o.from_root.join("etc"));
    let etc_line = crate::etc::merge_into(
        &o.state_dir,
        current_commit,
        to,
        &current_etc,
        &target_root,
        target,
    )?;
    println!("{etc_line}");
    // Everything written must be on disk before the env names the slot.
    rustix::fs::sync();
    if let Some(m) = mounted {
        m.unmount()?;
    }

    // 4. ONE env write: the written, verified slot goes first, on trial.
    let next = atomup_bootctl::read(bl)?
        .state()?
        .install_done(target, o.attempts)?;
    sd.write_slot_info(
        target,
        &SlotInfo {
            commit: Some(to_hex.clone()),
            version: Some(release.version.to_string()),
            timestamp: Some(release.timestamp.to_string()),
            status: None,
        },
    )?;
    atomup_bootctl::write_state(bl, &next)?;
    println!(
        "installed version {} ({to}) into slot {target}: {} objects written, {} reused; slot {target} boots next on trial ({} attempts)",
        release.version, stats.objects_written, stats.objects_reused, o.attempts
    );
    Ok(())
}

/// Fetches the superblock (capped and digest-checked against the signed
/// release) and verifies it once: its signature against the device's trust,
/// its to- and from-commit against the release. Only then are the separate
/// parts fetched (each capped and checked against the superblock); the
/// engine gets them as a verified delta. All of this happens before the
/// first env write, so a delta that fails any of it leaves both slots and
/// the env as they were.
fn download_delta(
    fetcher: &Fetcher,
    delta: &Delta,
    to: &ObjectId,
    trust: &Trust,
) -> Result<VerifiedDelta> {
    let mut progress = |_: u64, _: u64| {};
    let sb_path = fetcher.fetch_verified(
        &format!("{}/superblock", delta.path),
        Expect {
            size: delta.superblock_size,
            sha256: delta.superblock_sha256,
        },
        &mut progress,
    )?;
    let sb = VerifiedSuperblock::read(&sb_path, Some(trust))?;
    // Rule: the delta must be the one the signed release names.
    sb.expect(to, delta.source_commit().map(ObjectId).as_ref())
        .map_err(|e| format!("delta {}: {e}", delta.path))?;
    if !sb.fallbacks().is_empty() {
        return Err(format!(
            "delta {} needs fallback objects, which devices do not fetch",
            delta.path
        )
        .into());
    }
    let mut total = 0u64;
    let mut files = Vec::new();
    for (i, part) in sb.parts().iter().enumerate() {
        if part.is_inline() {
            continue;
        }
        total += part.size;
        // Rule: the signed release caps the total download, the superblock each part.
        if total > delta.parts_size {
            return Err(format!(
                "delta {} parts exceed the {} bytes the release allows",
                delta.path, delta.parts_size
            )
            .into());
        }
        let got = fetcher.fetch_verified(
            &format!("{}/{i}", delta.path),
            Expect {
                size: part.size,
                sha256: part.checksum.0,
            },
            &mut progress,
        )?;
        files.push((i, got));
    }
    // The download proved each part's size and sha256; the engine holds the
    // files open from here and proves them again as they stream.
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

fn load_trust(trusted: &Path, revoked: Option<&Path>) -> Result<Trust> {
    let read =
        |p: &Path| fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
    let revoked = revoked.map(read).transpose()?;
    Ok(Trust::from_key_files(&read(trusted)?, revoked.as_deref())?)
}

fn system_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn read_trusted_time(path: &Path) -> Result<u64> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(s
            .trim()
            .parse()
            .map_err(|_| format!("{} is not a unix time", path.display()))?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(format!("cannot read {}: {e}", path.display()).into()),
    }
}

/// Replaces the trusted-time file atomically (temp, fsync, rename).
fn write_trusted_time(path: &Path, t: u64) -> Result {
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut f = fs::File::create(&tmp)?;
        writeln!(f, "{t}")?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    Ok(())
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
