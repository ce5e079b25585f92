//! The configuration every device command runs on (`atomup-config`): the
//! vendor's drop-ins (`/usr/lib/atomup/config.d`), then the site's
//! (`/etc/atomup/config.d`), then the command line, validated as a whole
//! before anything runs. `main` loads the file layers once for the slot
//! commands (`base`); `update`, `daemon` and `config` lay their flags on top
//! (`load`), and the daemon loads again on SIGHUP. `--config-dir DIR`
//! (repeatable, before the command) replaces the two directories: tests and
//! image builders point it at a tree of their own.

use crate::error::Result;
use atomup_config::{Bytes, Loaded, Partial, Seconds, Source};
use lexopt::ValueExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

static DIRS: OnceLock<Vec<PathBuf>> = OnceLock::new();
static BASE: OnceLock<Loaded> = OnceLock::new();

/// Replaces the drop-in directories (`--config-dir`); call before any load.
pub fn set_dirs(dirs: Vec<PathBuf>) {
    let _ = DIRS.set(dirs);
}

/// The drop-in directories: `--config-dir`, else the vendor's and the site's.
pub fn dirs() -> Vec<PathBuf> {
    DIRS.get().cloned().unwrap_or_else(|| {
        vec![
            PathBuf::from(atomup_config::VENDOR_DIR),
            PathBuf::from(atomup_config::SITE_DIR),
        ]
    })
}

/// Reads the drop-ins now (not cached: the daemon reloads on SIGHUP), lays
/// `flags` on top and validates the whole.
pub fn load(flags: &Partial) -> Result<Loaded> {
    let dirs = dirs();
    let refs: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
    let mut layered = atomup_config::load(&refs)?;
    layered.add(flags.clone(), Source::CommandLine);
    Ok(layered.finish()?)
}

/// Loads the file layers once, for the commands that take no configuration
/// flags of their own (their boot-state defaults come from it).
pub fn init() -> Result<&'static Loaded> {
    if let Some(b) = BASE.get() {
        return Ok(b);
    }
    let loaded = load(&Partial::default())?;
    Ok(BASE.get_or_init(|| loaded))
}

/// The file layers, if `init` ran (host tools such as `delta` skip it).
pub fn base() -> Option<&'static Loaded> {
    BASE.get()
}

/// Help text for the configuration flags.
pub const OPTIONS: &str = "\
Configuration options (each overrides its key from the config.d drop-ins; see `atomup config`):
  --server URL             server.url           --channel NAME         server.channel
  --ca-bundle FILE         server.ca_bundle     --report-url URL       server.report_url
  --trusted-keys FILE      trust.keys_file      --revoked-keys FILE    trust.revoked_file
  --board-conf FILE        device.board_profile --state-dir DIR        device.state_dir
  --machine-id FILE        device.machine_id
  --poll-interval D        poll.interval        --poll-jitter D        poll.jitter
  --bandwidth B            link.bandwidth       --update-budget B      link.update_budget
  --monthly-budget B       link.monthly_budget  --allow-scratch-fallback
  --connect-timeout D      link.connect_timeout --stall-timeout D      link.stall_timeout
  --low-speed-limit B      link.low_speed_limit --low-speed-time D     link.low_speed_time
  --retries N              link.retries         --backoff-max D        link.backoff_max
  --cache-max B            link.cache_max
  --reboot now|window|never  reboot.policy      --reboot-window HH:MM-HH:MM  reboot.window
  D is seconds or 90s/15m/6h/1d; B is bytes or 64KiB/10MiB/1GiB/500kB/2MB
  (--idle-timeout S is --stall-timeout S)
";

/// Takes `--name VALUE` into `flags` if it is a configuration flag; `false`
/// when it is not one (the caller's own, or unexpected).
pub fn take(flags: &mut Partial, name: &str, args: &mut lexopt::Parser) -> Result<bool> {
    let value = |args: &mut lexopt::Parser| -> Result<String> { Ok(args.value()?.string()?) };
    // Paths are made absolute here: the configuration only holds absolute
    // ones, and a relative flag means the current directory.
    let path = |args: &mut lexopt::Parser| -> Result<PathBuf> {
        let p: PathBuf = args.value()?.into();
        Ok(std::path::absolute(&p)?)
    };
    let secs = |args: &mut lexopt::Parser| -> Result<Seconds> {
        let v = value(args)?;
        Seconds::parse(&v).map_err(|e| format!("--{name}: {e}").into())
    };
    let bytes = |args: &mut lexopt::Parser| -> Result<Bytes> {
        let v = value(args)?;
        Bytes::parse(&v).map_err(|e| format!("--{name}: {e}").into())
    };
    match name {
        "server" => flags.server.url = Some(value(args)?),
        "channel" => flags.server.channel = Some(value(args)?),
        "ca-bundle" => flags.server.ca_bundle = Some(path(args)?),
        "report-url" => flags.server.report_url = Some(value(args)?),
        "trusted-keys" => flags.trust.keys_file = Some(path(args)?),
        "revoked-keys" => flags.trust.revoked_file = Some(path(args)?),
        "board-conf" => flags.device.board_profile = Some(path(args)?),
        "state-dir" => flags.device.state_dir = Some(path(args)?),
        "machine-id" => flags.device.machine_id = Some(path(args)?),
        "poll-interval" => flags.poll.interval = Some(secs(args)?),
        "poll-jitter" => flags.poll.jitter = Some(secs(args)?),
        "bandwidth" => flags.link.bandwidth = Some(bytes(args)?),
        "update-budget" => flags.link.update_budget = Some(bytes(args)?),
        "monthly-budget" => flags.link.monthly_budget = Some(bytes(args)?),
        "allow-scratch-fallback" => flags.link.allow_scratch_fallback = Some(true),
        "connect-timeout" => flags.link.connect_timeout = Some(secs(args)?),
        "stall-timeout" | "idle-timeout" => flags.link.stall_timeout = Some(secs(args)?),
        "low-speed-limit" => flags.link.low_speed_limit = Some(bytes(args)?),
        "low-speed-time" => flags.link.low_speed_time = Some(secs(args)?),
        "retries" => {
            let v = value(args)?;
            flags.link.retries = Some(
                v.parse()
                    .map_err(|_| format!("--retries: `{v}` is not a number"))?,
            )
        }
        "backoff-max" => flags.link.backoff_max = Some(secs(args)?),
        "cache-max" => flags.link.cache_max = Some(bytes(args)?),
        "reboot" => flags.reboot.policy = Some(value(args)?),
        "reboot-window" => flags.reboot.window = Some(value(args)?),
        _ => return Ok(false),
    }
    Ok(true)
}

/// `atomup config`: the merged configuration, every key with its value and
/// where it came from (a file, the command line, or the default).
pub fn run(args: &mut lexopt::Parser) -> Result {
    use lexopt::prelude::*;
    let mut flags = Partial::default();
    while let Some(arg) = args.next()? {
        match arg {
            Long("help") | Short('h') => {
                print!("Usage: atomup [--config-dir DIR]... config [options]\nPrints the merged configuration: every key, its value, where it came from.\n\n{OPTIONS}");
                return Ok(());
            }
            Long(name) => {
                let name = name.to_owned();
                if !take(&mut flags, &name, args)? {
                    return Err(format!("invalid option '--{name}'").into());
                }
            }
            other => return Err(other.unexpected().into()),
        }
    }
    print!("{}", load(&flags)?.listing());
    Ok(())
}
