//! `atomup update`: one poll of the update server, and if a release is due,
//! its installation into the inactive slot. It is a plan followed by I/O
//! steps, and the order of the steps is the safety argument (DESIGN "Slot
//! state contract"):
//!
//! 1. Everything that needs no writing is checked before the first write:
//!    flags and ranges, the device's own refusals (`atomup_policy::update::
//!    preflight`), the target (`target.rs`: never the running root or the
//!    data partition), the signed release metadata and the pure decision over
//!    it (`atomup_policy::update::plan`: channel, board, expiry, version,
//!    never-retry, pending trial, rollout), the download's size against the
//!    free space, and, once downloaded (capped and digest-checked into the
//!    cache, the only thing written so far), the delta superblock's signature
//!    and from/to commits.
//! 2. The trusted time and the target's record (`installing`) are written,
//!    then ONE env write takes the target out of the boot order. From here
//!    until step 4 a power cut boots the running, confirmed slot.
//! 3. The delta is applied into the target and the written tree is verified
//!    against the signed commit; everything is synced.
//! 4. The target's record (commit, version) is written, then ONE env write
//!    puts the slot first in order, on trial. The bootloader counts its
//!    attempts; `atomup mark-good` confirms it, or it falls back.
//!
//! Re-running after a power cut is safe: downloads resume from the cache and
//! the apply rewrites the (out-of-order) slot from scratch; a record written
//! before a cut describes a slot that is not in the boot order.

use crate::bootopts::{BootOpts, OPTIONS};
use crate::error::Result;
use crate::inputs;
use crate::target::{self, Protected, Target};
use atomup_bootctl::statedir::SlotRecord;
use atomup_deploy::{VerifiedDelta, VerifiedSuperblock};
use atomup_fetch::{Expect, Fetcher, Options as FetchOptions};
use atomup_ostree::sign::Trust;
use atomup_ostree::ObjectId;
use atomup_policy::slot::DEFAULT_ATTEMPTS;
use atomup_policy::update::{self, Decision, Flags};
use atomup_release::check::verify_signed;
use atomup_release::{release_path, rollout, Delta, Release};
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
  --idle-timeout S      a connection that delivers nothing for S seconds counts as cut
                        and is retried (default 60; each retry is logged on stderr)
";

/// Largest release metadata file fetched (the format caps the body at 64 KiB).
const RELEASE_CAP: u64 = 80 * 1024;

struct Opts {
    server: Option<String>,
    channel: Option<String>,
    board: Option<String>,
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
    idle_timeout_s: u64,
    boot: BootOpts,
}

fn parse(args: &mut lexopt::Parser) -> Result<Opts> {
    use lexopt::prelude::*;
    let mut o = Opts {
        server: None,
        channel: None,
        board: None,
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
        idle_timeout_s: 60,
        boot: BootOpts::default(),
    };
    while let Some(arg) = args.next()? {
        match arg {
            Long("server") => o.server = Some(args.value()?.string()?),
            Long("channel") => o.channel = Some(args.value()?.string()?),
            Long("board") => o.board = Some(args.value()?.string()?),
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
            Long("idle-timeout") => o.idle_timeout_s = args.value()?.parse()?,
            Long("help") | Short('h') => {
                print!("{HELP}{OPTIONS}");
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
    // 1. Flags and the device's own state: no network, no writes.
    let server = o.server.as_deref().ok_or("--server URL is required")?;
    let channel = o.channel.as_deref().ok_or("--channel NAME is required")?;
    if o.target_device.is_some() && o.target_dir.is_some() {
        return Err("give only one of --target-device DEV, --target-dir DIR".into());
    }
    let flags = Flags {
        attempts: o.attempts,
        allow_downgrade: o.allow_downgrade,
        ignore_rollout: o.ignore_rollout,
    };
    let profile = o.boot.board()?;
    let board = match (&o.board, &profile) {
        (Some(b), _) => b.as_str(),
        (None, Some(p)) => p.name.as_str(),
        (None, None) => return Err("--board NAME is required (or a board profile)".into()),
    };
    let trust = inputs::trust(&o.trusted, o.revoked.as_deref())?;
    let mut bl = o.boot.open_env(profile.as_ref())?;
    let bl = bl.as_mut();
    let booted = o.boot.require_booted()?;
    // Read for planning only: the snapshot (and the env lock) is dropped at
    // once; each env write below loads the env again under the lock and
    // checks that it is still what the plan was made from.
    let env = atomup_bootctl::load(bl)?.state()?;
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
    let (current_commit, current_version) = (current.commit, current.version);
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
    let seed = rollout::RolloutSeed::from_machine_id(&inputs::machine_id(&o.machine_id)?);
    let now = o.now.unwrap_or_else(system_now);

    // 2. Release metadata, fetched capped and verified before it is parsed,
    //    then the decision: everything a release decides is decided here.
    let cache = o.boot.state_dir.join("cache");
    let fetch_opts = FetchOptions {
        backoff: std::time::Duration::from_millis(o.backoff_ms),
        idle_timeout: std::time::Duration::from_secs(o.idle_timeout_s),
        ..FetchOptions::default()
    };
    let fetcher = Fetcher::new(server, &cache, fetch_opts)?;
    let bytes = fetcher.fetch_small(&release_path(channel, board), RELEASE_CAP)?;
    let verified = verify_signed(&bytes, &trust)?;
    // Crash point `update.metadata`: the signed release fetched and verified.
    atomup_faults::point("update.metadata");
    let device = update::Device {
        channel,
        board,
        booted,
        env: &env,
        booted_commit: current_commit.0,
        booted_version: current_version,
        target_commit,
        highest_version,
        rolled_back: &rolled_back,
        trusted_time,
        seed,
    };
    let plan = match update::plan(&verified, &device, &flags, now)? {
        Decision::UpToDate => {
            println!("up to date: version {current_version} ({current_commit})");
            return Ok(());
        }
        Decision::PendingOnTrial { target } => {
            println!(
                "version {} is installed in slot {target} on trial: reboot to try it",
                verified.release().version
            );
            return Ok(());
        }
        Decision::Waiting { opens_at: Some(t) } => {
            println!(
                "version {} is rolling out; this device's wave opens at {t}",
                verified.release().version
            );
            return Ok(());
        }
        Decision::Waiting { opens_at: None } => {
            println!(
                "version {} is rolling out; this device is not in any wave yet",
                verified.release().version
            );
            return Ok(());
        }
        Decision::Install(plan) => plan,
    };
    let to = ObjectId(plan.release.commit);

    // 3. Downloads (the cache is the only thing written): every byte capped
    //    and digest-checked, resumable; then the delta's own claims.
    check_download_space(&cache, plan.delta)?;
    // The progress of an install, one line per step (`--log-level info`).
    log::info!(
        "version {} is due: downloading {} ({} bytes)",
        plan.release.version,
        plan.delta.path,
        plan.delta.superblock_size + plan.delta.parts_size
    );
    let verified_delta =
        download_delta(&fetcher, plan.release, plan.delta, &trust, &current_commit)?;

    // 4. Execute the plan. Each step loads the env once (under its lock),
    //    records first and writes the env last.
    let mut snap = atomup_bootctl::load(bl)?;
    if snap.state()? != env {
        return Err(format!(
            "the env changed while the update was prepared ({} instead of {env}): nothing was installed, try again",
            snap.state()?
        )
        .into());
    }
    write_trusted_time(&time_file, plan.trusted_time)?;
    // Accepted from here on: a replay of anything older is refused even if
    // this install never finishes.
    sd.accept_version(plan.release.version)?;
    sd.write_slot_record(target, &SlotRecord::installing())?;
    // ONE env write: the target leaves the boot order before it changes.
    atomup_bootctl::store_state(bl, &mut snap, &plan.start)?;
    drop(snap);
    log::info!(
        "slot {target} is out of the boot order: writing version {}",
        plan.release.version
    );

    let meta = o.boot.state_dir.join("meta");
    let mounted = match &spec {
        Target::Device(dev) => Some(Mounted::new(dev, &o.boot.state_dir.join("target"))?),
        Target::Dir(_) => None,
    };
    let target_root = match (&mounted, &spec) {
        (Some(m), _) => m.dir.clone(),
        (None, Target::Dir(dir)) => dir.clone(),
        (None, Target::Device(_)) => unreachable!("a device target is mounted"),
    };
    // The slot is out of the boot order and about to be replaced whole: empty
    // it first, so a slot sized for one root never has to hold two (unchanged
    // files come from the active root, re-hashed, not from here).
    empty_slot(&target_root)?;
    let stats = atomup_deploy::apply(
        &verified_delta,
        &atomup_deploy::Options {
            target: &target_root,
            from_root: plan.delta.source_commit().map(|_| o.from_root.as_path()),
            from_meta: plan.delta.source_commit().map(|_| meta.as_path()),
            fallback_repo: None,
            meta_out: Some(&meta),
        },
    )?;
    log::info!("slot {target} written and verified: syncing");
    // Everything written must be on disk before the env names the slot.
    rustix::fs::sync();
    if let Some(m) = mounted {
        m.unmount()?;
    }
    // Crash point `update.synced`: the slot written, verified and synced,
    // still out of the boot order.
    atomup_faults::point("update.synced");

    log::info!("slot {target} synced: putting it first in the boot order, on trial");
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
    println!(
        "installed version {} ({to}) into slot {target}: {} objects written, {} reused; slot {target} boots next on trial ({} attempts)",
        plan.release.version, stats.objects_written, stats.objects_reused, o.attempts
    );
    Ok(())
}

/// Rule (issue 11.3): the download fits on the data partition, checked before
/// it starts. What is already cached of the superblock counts; parts are
/// counted whole (their names are known only from the superblock).
fn check_download_space(cache: &Path, delta: &Delta) -> Result {
    let sha = atomup_ostree::hex::encode(&delta.superblock_sha256);
    let cached = |name: &str| fs::symlink_metadata(cache.join(name)).map_or(0, |m| m.len());
    let have = cached(&sha).max(cached(&format!("{sha}.partial")));
    let need = (delta.superblock_size + delta.parts_size).saturating_sub(have);
    let st = rustix::fs::statvfs(cache).map_err(|e| format!("statvfs {}: {e}", cache.display()))?;
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
fn check_superblock(
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
/// release's from/to commits), then each separate part (capped and checked
/// against the superblock), and hands the engine the verified delta.
fn download_delta(
    fetcher: &Fetcher,
    release: &Release,
    delta: &Delta,
    trust: &Trust,
    booted_commit: &ObjectId,
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
    check_superblock(&sb, release, delta, booted_commit)?;
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
