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
//!    verified against the signed commit.
//! 4. ONE env write puts the slot first in order, on trial. The bootloader
//!    counts its attempts; `atomup mark-good` confirms it, or it falls back.
//!
//! Re-running after a power cut is safe: downloads resume from the cache and
//! the apply rewrites the (out-of-order) slot from scratch.

use crate::target::{self, Protected, Target};
use crate::{bootopts, inputs, Result};
use atomup_bootctl::statedir::{SlotInfo, StateDir};
use atomup_fetch::{Expect, Fetcher, Options as FetchOptions};
use atomup_ostree::delta::{Superblock, SuperblockFile};
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
  --attempts N          boot attempts for the new slot (default 3)
  --allow-downgrade     accept a release older than the running one
  --ignore-rollout      install even if this device's rollout wave has not opened
  --now UNIX            the current time (default: system clock; never earlier than
                        the latest trusted time)
  --machine-id FILE     rollout seed source (default /etc/machine-id)
  --retry-backoff-ms N  pause before the n-th retry of a cut download is n*N ms (default 2000)
Boot-state options: --env-config FILE | --env-image FILE | --grubenv PATH,
  --booted-slot A|B, --cmdline FILE (default /proc/cmdline),
  --state-dir DIR (default /var/lib/atomup)
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
    cmdline: PathBuf,
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
        cmdline: bootopts::CMDLINE.into(),
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
            Long("cmdline") => o.cmdline = args.value()?.into(),
            Long("help") | Short('h') => {
                print!("{HELP}");
                std::process::exit(0);
            }
            other => return Err(other.unexpected().into()),
        }
    }
    Ok(o)
}

pub fn run(args: &mut lexopt::Parser) -> Result {
    let o = parse(args)?;
    let server = o.server.as_deref().ok_or("--server URL is required")?;
    let channel = o.channel.as_deref().ok_or("--channel NAME is required")?;
    let profile = inputs::board(o.board_conf.as_deref())?;
    let board = match (&o.board, &profile) {
        (Some(b), _) => b.as_str(),
        (None, Some(p)) => p.name.as_str(),
        (None, None) => return Err("--board NAME is required (or a board profile)".into()),
    };
    if o.target_device.is_some() && o.target_dir.is_some() {
        return Err("give only one of --target-device DEV, --target-dir DIR".into());
    }
    let trust = inputs::trust(&o.trusted, o.revoked.as_deref())?;
    let mut bl = bootopts::open_env(
        o.env_config.as_deref(),
        o.env_image.as_deref(),
        o.grubenv.as_deref(),
        profile.as_ref().map(|p| &p.bootloader),
    )?;
    let bl = bl.as_mut();
    let booted = bootopts::require_booted(o.booted, &o.cmdline)?;
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

    // Rule (issue 11.1): the target is resolved, by device, inode and mount,
    // before anything is written, and must not be the running system or its
    // data: an update empties what it writes.
    let spec = match (&target_device, &o.target_dir) {
        (Some(dev), _) => Target::Device(dev.clone()),
        (None, Some(dir)) => Target::Dir(dir.clone()),
        (None, None) => unreachable!("checked above"),
    };
    let protect = Protected {
        root: &o.from_root,
        state_dir: &o.state_dir,
        data_device: profile.as_ref().and_then(|p| p.data.as_deref()),
    };
    target::check(
        &spec,
        &protect,
        &target::read_mounts()?,
        &target::sysfs_disk_of,
    )?;
    // Rule: the env's own idea of the running system wins over a command line
    // that names the other slot (a wrong `atomup.slot=`).
    if state.primary_confirmed() == Some(target) {
        return Err(format!(
            "the env makes slot {target} the confirmed slot that boots next ({state}), but the booted slot is given as {booted}: refusing to overwrite slot {target}"
        )
        .into());
    }

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
    // Everything else the decision needs is read before the first request
    // (which creates the download cache): unreadable state fails here.
    let rollbacks = sd.rollbacks()?;
    let seed = rollout::RolloutSeed::from_machine_id(&inputs::machine_id(&o.machine_id)?);
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
    if rollbacks
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
    if !o.ignore_rollout && !rollout::is_eligible(&release.waves, &seed, effective_now) {
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

    // 2. Downloads: every byte capped and digest-checked, resumable.
    let delta_dir = download_delta(&fetcher, delta, &cache, &to)?;
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
    let stats = atomup_deploy::apply(&atomup_deploy::Options {
        delta: &delta_dir,
        target: &target_root,
        from_root: delta.source_commit().map(|_| o.from_root.as_path()),
        from_meta: delta.source_commit().map(|_| meta.as_path()),
        fallback_repo: None,
        meta_out: Some(&meta),
        trust: Some(&trust),
    })?;
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
    let _ = fs::remove_dir_all(&delta_dir);
    println!(
        "installed version {} ({to}) into slot {target}: {} objects written, {} reused; slot {target} boots next on trial ({} attempts)",
        release.version, stats.objects_written, stats.objects_reused, o.attempts
    );
    Ok(())
}

/// Fetches the superblock (capped and digest-checked against the signed
/// release), then each separate part (capped and checked against the
/// superblock), and lays them out as a delta directory for the engine.
fn download_delta(
    fetcher: &Fetcher,
    delta: &Delta,
    cache: &Path,
    to: &ObjectId,
) -> Result<PathBuf> {
    let mut progress = |_: u64, _: u64| {};
    let sb_path = fetcher.fetch_verified(
        &format!("{}/superblock", delta.path),
        Expect {
            size: delta.superblock_size,
            sha256: delta.superblock_sha256,
        },
        &mut progress,
    )?;
    let dir = cache.join(format!("delta-{}", to.to_hex()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    link_or_copy(&sb_path, &dir.join("superblock"))?;
    let bytes = fs::read(&sb_path)?;
    let file = SuperblockFile::parse(&bytes)?;
    let sb = Superblock::parse(file.unsigned)?;
    if sb.to != *to {
        return Err(format!(
            "delta {} leads to {}, the release names {to}",
            delta.path, sb.to
        )
        .into());
    }
    let mut total = 0u64;
    for (i, part) in sb.parts.iter().enumerate() {
        if sb.inline_part(i)?.is_some() {
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
        link_or_copy(&got, &dir.join(i.to_string()))?;
    }
    if !sb.fallbacks.is_empty() {
        return Err(format!(
            "delta {} needs fallback objects, which devices do not fetch",
            delta.path
        )
        .into());
    }
    Ok(dir)
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

fn link_or_copy(from: &Path, to: &Path) -> std::io::Result<()> {
    fs::hard_link(from, to).or_else(|_| fs::copy(from, to).map(|_| ()))
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
