//! `atomup board check`: does the board profile describe the running system?
//! Each line says what was checked and what was found, `ok` or `FAIL` (or
//! `warn` for what may be right but cannot be confirmed), and the command
//! fails when anything does: a profile that names the wrong partition makes
//! the agent write the wrong partition, so it is checked on the device
//! before it is trusted. Nothing is written and the watchdog is not opened
//! (opening it would arm it).

use crate::bootopts::{BootOpts, OPTIONS};
use crate::error::Result;
use crate::target::sysfs_disk_of;
use atomup_board::{Board, Bootloader as BoardBootloader, Led};
use atomup_fsio::mountinfo::{self, Mount};
use atomup_policy::Slot;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

pub const USAGE: &str = "\
  board check          check the board profile against the running system: slot and
                       data partitions, the booted root, the env, watchdog and LED
";

#[derive(Default)]
struct Report {
    fails: usize,
}

impl Report {
    fn ok(&mut self, what: &str, found: String) {
        println!("ok    {what}: {found}");
    }
    fn warn(&mut self, what: &str, found: String) {
        println!("warn  {what}: {found}");
    }
    fn fail(&mut self, what: &str, why: String) {
        self.fails += 1;
        println!("FAIL  {what}: {why}");
    }
}

fn dev_name(d: u64) -> String {
    format!("{}:{}", rustix::fs::major(d), rustix::fs::minor(d))
}

/// The block device's number, or why `path` is not one.
fn block_device(path: &Path) -> std::result::Result<u64, String> {
    let md = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !md.file_type().is_block_device() {
        let t = rustix::fs::FileType::from_raw_mode(md.mode());
        return Err(format!("{}, not a block device", atomup_fsio::type_name(t)));
    }
    Ok(md.rdev())
}

pub fn run(args: &mut lexopt::Parser) -> Result {
    use lexopt::prelude::*;
    let mut boot = BootOpts::default();
    let mut sub = None;
    while let Some(arg) = args.next()? {
        match arg {
            Value(v) if sub.is_none() => sub = Some(v.string()?),
            Long("help") | Short('h') => {
                print!("Usage: atomup board check [options]\n\n{USAGE}\n{OPTIONS}");
                std::process::exit(0);
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
    match sub.as_deref() {
        Some("check") => {}
        Some(other) => {
            return Err(
                format!("unknown board command `{other}` (see `atomup board --help`)").into(),
            )
        }
        None => return Err("usage: atomup board check [options]".into()),
    }
    let path = boot
        .board_conf
        .clone()
        .unwrap_or_else(|| atomup_board::DEFAULT_PATH.into());
    let board = boot
        .board()?
        .ok_or_else(|| format!("no board profile at {}", path.display()))?;
    check(&boot, &path, &board)
}

fn check(boot: &BootOpts, path: &Path, board: &Board) -> Result {
    let mut r = Report::default();
    r.ok(
        "profile",
        format!("{} parses: board `{}`", path.display(), board.name),
    );
    let mounts = match mountinfo::read() {
        Ok(m) => m,
        Err(e) => {
            r.fail("mounts", format!("cannot read /proc/self/mountinfo: {e}"));
            Vec::new()
        }
    };

    // Partitions as declared: block devices, distinct, of one disk.
    let mut devs = Vec::new();
    let mut parts: Vec<(&str, &Path)> = vec![("slot.A", &board.slot_a), ("slot.B", &board.slot_b)];
    if let Some(d) = &board.data {
        parts.push(("data", d));
    }
    for (key, dev) in &parts {
        match block_device(dev) {
            Ok(n) => {
                let disk = sysfs_disk_of(n);
                r.ok(
                    key,
                    format!(
                        "{} is a block device ({}){}",
                        dev.display(),
                        dev_name(n),
                        disk.map_or(String::new(), |d| format!(
                            ", a partition of disk {}",
                            dev_name(d)
                        ))
                    ),
                );
                devs.push((*key, n, disk));
            }
            Err(e) => r.fail(key, format!("{}: {e}", dev.display())),
        }
    }
    for (i, (ka, a, _)) in devs.iter().enumerate() {
        for (kb, b, _) in &devs[i + 1..] {
            if a == b {
                r.fail(
                    "partitions",
                    format!("{ka} and {kb} are the same device ({})", dev_name(*a)),
                );
            }
        }
    }
    let disks: Vec<Option<u64>> = devs.iter().map(|d| d.2).collect();
    if disks.len() > 1
        && disks.iter().all(Option::is_some)
        && disks.windows(2).any(|w| w[0] != w[1])
    {
        r.warn(
            "partitions",
            "the slots (and data) are not all on one disk; fine if the board means it".into(),
        );
    }

    // The booted slot is the mounted root, the other one is not mounted.
    let booted = boot.booted()?;
    match booted.slot {
        None => r.fail(
            "booted slot",
            format!(
                "no atomup.slot= on the kernel command line ({})",
                boot.cmdline.display()
            ),
        ),
        Some(slot) => {
            let root_dev = std::fs::metadata("/").map(|m| m.dev());
            let dev_of = |s: Slot| {
                devs.iter()
                    .find(|d| d.0 == if s == Slot::A { "slot.A" } else { "slot.B" })
                    .map(|d| d.1)
            };
            match (root_dev, dev_of(slot)) {
                (Ok(root), Some(d)) if root == d => r.ok(
                    "booted slot",
                    format!(
                        "slot {slot} ({}) is the mounted root",
                        board.slot_device(slot).display()
                    ),
                ),
                (Ok(root), Some(_)) => r.fail(
                    "booted slot",
                    format!(
                        "the kernel says slot {slot} booted, but / is on device {}, not {}",
                        dev_name(root),
                        board.slot_device(slot).display()
                    ),
                ),
                (Err(e), _) => r.fail("booted slot", format!("stat /: {e}")),
                (_, None) => {}
            }
            if let Some(other) = dev_of(!slot) {
                match mounts.iter().find(|m: &&Mount| m.dev == other) {
                    Some(m) => r.fail(
                        "other slot",
                        format!(
                            "slot {} ({}) is mounted at {}: an update would write a mounted file system",
                            !slot,
                            board.slot_device(!slot).display(),
                            m.point.display()
                        ),
                    ),
                    None => r.ok(
                        "other slot",
                        format!("slot {} ({}) is not mounted", !slot, board.slot_device(!slot).display()),
                    ),
                }
            }
        }
    }

    // The state directory lives on the data partition.
    let state = &boot.state_dir;
    match (
        std::fs::metadata(state),
        devs.iter().find(|d| d.0 == "data"),
    ) {
        (Ok(md), Some(data)) if md.dev() == data.1 => r.ok(
            "state dir",
            format!("{} is on the data partition", state.display()),
        ),
        (Ok(md), Some(_)) => r.fail(
            "state dir",
            format!(
                "{} is on device {}, not on the data partition {}",
                state.display(),
                dev_name(md.dev()),
                board.data.as_deref().unwrap_or(Path::new("-")).display()
            ),
        ),
        (Ok(_), None) if board.data.is_none() => r.warn(
            "state dir",
            format!(
                "{} exists; the profile names no data partition",
                state.display()
            ),
        ),
        (Ok(_), None) => {}
        (Err(e), _) => r.fail("state dir", format!("{}: {e}", state.display())),
    }

    // The env: readable, with a valid A/B state.
    let what = match &board.bootloader {
        BoardBootloader::UBoot { env_config } => format!("U-Boot, {}", env_config.display()),
        BoardBootloader::Grub { grubenv } => {
            let dir = grubenv.parent().unwrap_or(Path::new("/"));
            let on = std::fs::canonicalize(dir)
                .ok()
                .and_then(|c| mountinfo::mount_of(&mounts, &c).cloned());
            match on {
                Some(m) if m.point != Path::new("/") && !m.read_only => r.ok(
                    "ESP",
                    format!(
                        "{} is on {} ({} {}), read-write",
                        dir.display(),
                        m.point.display(),
                        m.fstype,
                        m.source
                    ),
                ),
                Some(m) if m.point != Path::new("/") => r.fail(
                    "ESP",
                    format!(
                        "{} is mounted read-only: the env cannot be written",
                        m.point.display()
                    ),
                ),
                _ => r.fail(
                    "ESP",
                    format!(
                        "{} is not on a mounted ESP (mount the ESP there first)",
                        dir.display()
                    ),
                ),
            }
            format!("GRUB, {}", grubenv.display())
        }
    };
    let env = boot.open_env(Some(board)).and_then(|mut bl| {
        let snap = atomup_bootctl::load(bl.as_mut())?;
        Ok((snap.vars.is_some(), snap.state()?))
    });
    match env {
        Ok((true, st)) => r.ok("env", format!("{what}: readable, {st}")),
        Ok((false, _)) => r.fail(
            "env",
            format!(
                "{what}: readable but holds no valid A/B state (provision it: atomup env init)"
            ),
        ),
        Err(e) => r.fail("env", format!("{what}: {e}")),
    }

    // Watchdog and LED exist (neither is opened: that would arm or take them).
    match &board.watchdog {
        None => r.warn(
            "watchdog",
            "none: a trial boot that hangs is not reset".into(),
        ),
        Some(w) => match std::fs::metadata(w) {
            Ok(md) if md.file_type().is_char_device() => r.ok(
                "watchdog",
                format!(
                    "{} is a character device{}",
                    w.display(),
                    board
                        .watchdog_timeout
                        .map_or(String::new(), |t| format!("; armed for {t} s on a trial"))
                ),
            ),
            Ok(_) => r.fail(
                "watchdog",
                format!("{} is not a character device", w.display()),
            ),
            Err(e) => r.fail("watchdog", format!("{}: {e}", w.display())),
        },
    }
    match &board.led {
        None => r.ok("led", "none in the profile".into()),
        Some(Led::Sysfs(dir)) => {
            let b = dir.join("brightness");
            match rustix::fs::access(&b, rustix::fs::Access::WRITE_OK) {
                Ok(()) => r.ok("led", format!("{} is writable", b.display())),
                Err(e) => r.fail("led", format!("{}: {e}", b.display())),
            }
        }
        Some(Led::Gpio { chip, line, .. }) => match atomup_board::gpio::probe(chip, *line) {
            Ok(s) if *line >= s.lines => r.fail(
                "led",
                format!("{} has {} lines, no line {line}", chip.display(), s.lines),
            ),
            Ok(s) => match s.consumer {
                None => r.ok(
                    "led",
                    format!("{} line {line} of {} is free", chip.display(), s.lines),
                ),
                Some(c) => r.warn(
                    "led",
                    format!(
                        "{} line {line} is held by `{c}` (the LED is driven only when it is free)",
                        chip.display()
                    ),
                ),
            },
            Err(e) => r.fail("led", format!("{} line {line}: {e}", chip.display())),
        },
    }

    if r.fails > 0 {
        return Err(format!(
            "board check: {} problem(s) with {} (see the FAIL lines)",
            r.fails,
            path.display()
        )
        .into());
    }
    println!("board check: {} matches this system", path.display());
    Ok(())
}
