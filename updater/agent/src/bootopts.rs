//! The boot-state options every device command shares (`--env-config`,
//! `--env-image`, `--grubenv`, `--booted-slot`), resolved in one place so
//! `update` and the slot commands always open the same env and see the same
//! booted slot.

use crate::Result;
use atomup_board::Bootloader as BoardBootloader;
use atomup_bootctl::{cmdline, Bootloader, GrubEnv, UbootEnv};
use atomup_policy::Slot;
use std::path::{Path, PathBuf};

/// Opens the env named by at most one of the flags; without one, the board
/// profile's env (when given), else `/etc/fw_env.config`.
pub fn open_env(
    env_config: Option<&Path>,
    env_image: Option<&Path>,
    grubenv: Option<&Path>,
    board: Option<&BoardBootloader>,
) -> Result<Box<dyn Bootloader>> {
    Ok(match (env_config, env_image, grubenv, board) {
        (None, None, Some(p), _) => Box::new(GrubEnv::new(p)),
        (None, Some(p), None, _) => Box::new(UbootEnv::qemu_image(p)),
        (None, None, None, Some(BoardBootloader::Grub { grubenv })) => {
            Box::new(GrubEnv::new(grubenv))
        }
        (c, None, None, b) => {
            let cfg: PathBuf = match (c, b) {
                (Some(c), _) => c.to_owned(),
                (None, Some(BoardBootloader::UBoot { env_config })) => env_config.clone(),
                _ => "/etc/fw_env.config".into(),
            };
            Box::new(UbootEnv::from_config_file(&cfg, &std::env::current_dir()?)?)
        }
        _ => return Err("give only one of --env-config, --env-image, --grubenv".into()),
    })
}

/// Where the kernel command line is read from unless told otherwise.
pub const CMDLINE: &str = "/proc/cmdline";

/// What the kernel command line (`cmdline`, normally `/proc/cmdline`) says
/// about this boot; `--booted-slot` overrides the slot (host use).
pub fn booted(explicit: Option<Slot>, cmdline: &Path) -> Result<cmdline::Booted> {
    if let Some(s) = explicit {
        return Ok(cmdline::Booted {
            slot: Some(s),
            ..Default::default()
        });
    }
    match atomup_fsio::read_text_capped(cmdline, 64 * 1024) {
        Ok(text) => Ok(cmdline::parse(&text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(cmdline::Booted::default()),
        Err(e) => Err(format!(
            "cannot read the kernel command line {}: {e}",
            cmdline.display()
        )
        .into()),
    }
}

pub fn require_booted(explicit: Option<Slot>, cmdline: &Path) -> Result<Slot> {
    booted(explicit, cmdline)?.slot.ok_or_else(|| {
        "booted slot unknown: no atomup.slot= on the kernel command line (use --booted-slot)".into()
    })
}
