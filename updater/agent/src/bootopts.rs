//! The boot-state options every device command shares (`--env-config`,
//! `--env-image`, `--grubenv`, `--board-conf`, `--booted-slot`, `--cmdline`,
//! `--state-dir`), parsed and resolved in one place so `update` and the slot
//! commands always open the same env, see the same booted slot and use the
//! same records.

use crate::error::Result;
use crate::inputs;
use crate::settings;
use atomup_board::{Board, Bootloader as BoardBootloader};
use atomup_bootctl::statedir::StateDir;
use atomup_bootctl::{cmdline, Bootloader, GrubEnv, UbootEnv};
use atomup_policy::Slot;
use lexopt::ValueExt;
use std::path::{Path, PathBuf};

/// Where the kernel command line is read from unless told otherwise.
pub const CMDLINE: &str = "/proc/cmdline";
/// Where the agent keeps its records unless told otherwise.
pub const STATE_DIR: &str = "/var/lib/atomup";

/// Help text for the shared options.
pub const OPTIONS: &str = "\
Boot-state options (every device command):
  --env-config FILE   U-Boot env described by an fw_env.config-format file
                      (default: the board profile's env, else /etc/fw_env.config;
                      device paths may be image files, relative paths resolve
                      against the current directory)
  --env-image FILE    redundant U-Boot env in FILE at 0x80000 and 0x84000, 0x4000 each
  --grubenv PATH      GRUB env: PATH and PATH2 (sealed two-block scheme)
  --board-conf FILE   board profile (default /etc/atomup/board.conf when present): the
                      board name, the env location, the slots' block devices
  --booted-slot A|B   booted slot (default: atomup.slot= in the kernel command line)
  --cmdline FILE      where the kernel command line is read (default /proc/cmdline)
  --state-dir DIR     agent records (default /var/lib/atomup)
";

/// The shared options as given.
#[derive(Debug, Clone)]
pub struct BootOpts {
    pub env_config: Option<PathBuf>,
    pub env_image: Option<PathBuf>,
    pub grubenv: Option<PathBuf>,
    pub board_conf: Option<PathBuf>,
    pub booted: Option<Slot>,
    pub cmdline: PathBuf,
    pub state_dir: PathBuf,
}

/// The defaults, then what the configuration says (`device.state_dir`, and
/// `device.board_profile` when a layer set it), then the flags.
impl Default for BootOpts {
    fn default() -> Self {
        let mut b = BootOpts {
            env_config: None,
            env_image: None,
            grubenv: None,
            board_conf: None,
            booted: None,
            cmdline: CMDLINE.into(),
            state_dir: STATE_DIR.into(),
        };
        if let Some(loaded) = settings::base() {
            b.configure(loaded);
        }
        b
    }
}

/// `A` or `B` from an option value.
pub fn slot_arg(v: &str) -> Result<Slot> {
    Slot::parse(v).ok_or_else(|| format!("slot must be A or B, got `{v}`").into())
}

impl BootOpts {
    /// The state directory and board profile of `loaded`. A board profile
    /// left at its default is read only when present (a host has none).
    pub fn configure(&mut self, loaded: &atomup_config::Loaded) {
        self.state_dir = loaded.config.state_dir.clone();
        if loaded.sources.contains_key("device.board_profile") {
            self.board_conf = Some(loaded.config.board_profile.clone());
        }
    }

    /// Takes the value of `--name` if it is a shared option; `false` when
    /// the option is not one of them (the caller's own or unexpected).
    pub fn take(&mut self, name: &str, args: &mut lexopt::Parser) -> Result<bool> {
        match name {
            "env-config" => self.env_config = Some(args.value()?.into()),
            "env-image" => self.env_image = Some(args.value()?.into()),
            "grubenv" => self.grubenv = Some(args.value()?.into()),
            "board-conf" => self.board_conf = Some(args.value()?.into()),
            "booted-slot" => self.booted = Some(slot_arg(&args.value()?.string()?)?),
            "cmdline" => self.cmdline = args.value()?.into(),
            "state-dir" => self.state_dir = args.value()?.into(),
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The board profile, if given or shipped.
    pub fn board(&self) -> Result<Option<Board>> {
        inputs::board(self.board_conf.as_deref())
    }

    /// The env: named by at most one of the flags; without one, the board
    /// profile's env (when there is a profile), else `/etc/fw_env.config`.
    pub fn open_env(&self, board: Option<&Board>) -> Result<Box<dyn Bootloader>> {
        let board = board.map(|b| &b.bootloader);
        let (config, image, grubenv) = (
            self.env_config.as_deref(),
            self.env_image.as_deref(),
            self.grubenv.as_deref(),
        );
        Ok(match (config, image, grubenv, board) {
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

    /// What the kernel command line says about this boot; `--booted-slot`
    /// overrides the slot (host use).
    pub fn booted(&self) -> Result<cmdline::Booted> {
        booted(self.booted, &self.cmdline)
    }

    pub fn require_booted(&self) -> Result<Slot> {
        self.booted()?.slot.ok_or_else(|| {
            "booted slot unknown: no atomup.slot= on the kernel command line (use --booted-slot)"
                .into()
        })
    }

    pub fn state(&self) -> StateDir {
        StateDir::new(&self.state_dir)
    }
}

/// What `cmdline` says about this boot, unless `explicit` names the slot.
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
