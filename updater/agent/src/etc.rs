//! `/etc` across updates (`atomup-etc`): `etc mount` (at boot, before
//! anything reads `/etc`), `config-diff` (the device's changes against the
//! running defaults), and the merge `update` runs after the new slot is
//! verified and before the install-done env write ([`merge_into`]).

use crate::bootopts::{slot_arg, BootOpts};
use crate::error::Result;
use atomup_etc::layer::read_record;
use atomup_etc::record::MergeRecord;
use atomup_ostree::ObjectId;
use atomup_policy::Slot;
use std::path::{Path, PathBuf};

pub const MOUNT_HELP: &str = "\
Usage: atomup etc mount --slot A|B [--root DIR] [--state-dir DIR]
Mounts the slot's /etc overlay on DIR/etc (default /): lower = the slot's own /etc,
upper and work = its layer in the state dir (default DIR/var/lib/atomup), created
empty (the vendor defaults) when the slot has none. Run at boot, after the data
partition is mounted and before anything reads /etc.
";

pub const DIFF_HELP: &str = "\
Usage: atomup config-diff [--etc DIR] [--booted-slot A|B] [--state-dir DIR]
Lists the device's changes to /etc against the running commit's defaults, one per
line: M (modified: content, mode, owner, xattrs or type), A (added), D (deleted).
  --etc DIR           the /etc to compare (default /etc)
  --booted-slot A|B   the running slot (default: atomup.slot= in the kernel command line)
  --cmdline FILE      where the kernel command line is read (default /proc/cmdline)
  --state-dir DIR     agent state, holding the running commit's metadata
                      (default /var/lib/atomup)
";

/// `atomup etc <sub>`.
pub fn run(args: &mut lexopt::Parser) -> Result {
    use lexopt::prelude::*;
    let sub = match args.next()? {
        Some(Value(v)) => v.string()?,
        Some(Long("help") | Short('h')) | None => {
            print!("{MOUNT_HELP}");
            return Ok(());
        }
        Some(other) => return Err(other.unexpected().into()),
    };
    if sub != "mount" {
        return Err(format!("unknown subcommand `etc {sub}` (see `atomup etc --help`)").into());
    }
    let (mut slot, mut root, mut state) = (None, PathBuf::from("/"), None);
    while let Some(arg) = args.next()? {
        match arg {
            Long("slot") => slot = Some(slot_arg(&args.value()?.string()?)?),
            Long("root") => root = args.value()?.into(),
            Long("state-dir") => state = Some(PathBuf::from(args.value()?)),
            Long("help") | Short('h') => {
                print!("{MOUNT_HELP}");
                return Ok(());
            }
            other => return Err(other.unexpected().into()),
        }
    }
    let slot = slot.ok_or("--slot A|B is required")?;
    let state = state.unwrap_or_else(|| root.join("var/lib/atomup"));
    let m = atomup_etc::mount::mount(&root, &state, slot)?;
    println!(
        "etc: slot {slot}'s overlay mounted on {} ({})",
        m.target.display(),
        m.options
    );
    Ok(())
}

/// `atomup config-diff`.
pub fn config_diff(args: &mut lexopt::Parser) -> Result {
    use lexopt::prelude::*;
    let (mut etc, mut boot) = (PathBuf::from("/etc"), BootOpts::default());
    while let Some(arg) = args.next()? {
        match arg {
            Long("etc") => etc = args.value()?.into(),
            Long("help") | Short('h') => {
                print!("{DIFF_HELP}");
                return Ok(());
            }
            Long(name) => {
                let name = name.to_owned();
                if !boot.take(&name, args)? {
                    return Err(format!("invalid option '--{name}'").into());
                }
            }
            other => return Err(other.unexpected().into()),
        }
    }
    let booted = boot.require_booted()?;
    let running = boot
        .state()
        .slot_record(booted)?
        .and_then(|r| r.commit())
        .ok_or_else(|| {
            format!(
                "no commit recorded for the running slot {booted} in {}",
                boot.state_dir.display()
            )
        })?;
    let meta = boot.state_dir.join("meta");
    let d = atomup_etc::config_diff(&[meta.as_path()], &running, &etc)?;
    // `ostree admin config-diff`'s layout: the letter, four spaces, the path.
    for (change, path) in &d.changes {
        println!(
            "{}    {}",
            change.letter(),
            atomup_etc::record::escape(path)
        );
    }
    for (path, why) in &d.skipped {
        eprintln!(
            "config-diff: {} is {why}: not compared, not carried by updates",
            atomup_etc::record::escape(path)
        );
    }
    Ok(())
}

/// The merge of an update: the device's `/etc` (`current_etc`) carried
/// from the running commit onto `to`, written as `target`'s layer. Runs
/// after the new slot (`new_root`) is verified and its metadata persisted
/// in `<state>/meta`, before the install-done env write; returns the line
/// to print.
pub fn merge_into(
    state: &Path,
    from: ObjectId,
    to: ObjectId,
    current_etc: &Path,
    new_root: &Path,
    target: Slot,
) -> Result<String> {
    let meta = state.join("meta");
    let carried = atomup_etc::carry(&atomup_etc::Carry {
        state_dir: state,
        meta_dirs: &[meta.as_path()],
        from,
        to,
        current_etc,
        new_root,
        slot: target,
    })
    .map_err(|e| Context(format!("carrying /etc into slot {target}"), Box::new(e)))?;
    Ok(format!("/etc: {}", carried.summary()))
}

/// An error with what was being done, its cause kept as the source (so
/// the chain prints once, see `main.rs`).
#[derive(Debug)]
struct Context(String, Box<dyn std::error::Error + Send + Sync>);

impl std::fmt::Display for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Context {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.1.as_ref())
    }
}

/// The merge record of `slot`'s layer, for `status` (none when the slot has
/// no layer or one created empty at boot).
pub fn last_merge(state: &Path, slot: Slot) -> Result<Option<MergeRecord>> {
    Ok(read_record(state, slot)?)
}
