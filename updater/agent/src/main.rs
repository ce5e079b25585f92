//! `atomup`, the device agent. Parses the command line, dispatches to one
//! command module, and prints an error chain exactly once.

mod board;
mod bootopts;
mod budget;
mod daemon;
mod delta;
mod envcmd;
mod error;
mod etc;
mod health;
mod inputs;
mod install;
mod led;
mod logger;
mod onelock;
mod progress;
mod reports;
mod settings;
mod signals;
mod status;
mod stickwatch;
mod target;
mod transitions;
mod update;
mod worker;

use std::error::Error;
use std::process::ExitCode;

use error::Result;

const USAGE: &str = "\
atomup — atomic A/B updates for embedded Linux devices

Usage: atomup <command> [options]
       atomup [--log-level LEVEL] [--config-dir DIR]... <command> [options]

Commands:
  help                 show this text
  version              show the version
  config               the merged configuration, each value with where it came from
  daemon               the service: poll, install, reboot by policy, report; SIGTERM stops
  update               poll the server once; install a due release into the other slot
  upgrade              the same as update (`atomic host upgrade`); --check changes nothing
  install FILE         install an offline update bundle (--scan DIR: the newest on a USB stick)
  status [--json]      each slot: booted marker, commit, version, state, attempts
  mark-good            health passed on the booted slot (confirms a trial)
  mark-bad             health failed on the booted slot (then reboot)
  health               trial boot: run the health checks, confirm or reject the slot
                       (exit 2: rejected; --arm-watchdog: arm the watchdog in early boot)
  board check          check the board profile against the running system
  rollback             make the other slot primary (if it is confirmed good)
  install-start        take a slot out of the boot order before writing it
  install-done         put a written slot first in order, on trial
  env                  show / init / set the A/B env variables (host helper)
  config-diff          the device's changes to /etc against the running defaults (M/A/D)
  etc mount --slot X   at boot: mount the slot's /etc overlay (its layer on the data partition)
  delta apply          apply a static delta into a directory and verify it
  delta show           describe a static delta (from/to, parts, signed?)
  gzip-rebuild         internal: rebuilds one gzip file of a delta's G op (stdin to
                       stdout) in its own process, for delta application

Run `atomup <command> --help` for a command's options. The configuration is read from
/usr/lib/atomup/config.d/*.toml, then /etc/atomup/config.d/*.toml (--config-dir DIR,
repeatable, replaces both); flags override it. Messages from the libraries (download
retries, progress, ...) go to stderr at --log-level or $ATOMUP_LOG, else the
configuration's log.level (off, error, warn, info, debug, trace; default info).
";

fn main() -> ExitCode {
    let mut args = lexopt::Parser::from_env();
    match run(&mut args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            report(err.as_ref());
            if err.is::<health::Rejected>() {
                // The slot was marked bad: the init system reboots.
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn run(args: &mut lexopt::Parser) -> Result {
    use lexopt::prelude::*;
    let mut log_level = None;
    let mut config_dirs = Vec::new();
    let command = loop {
        match args.next()? {
            Some(Long("log-level")) => log_level = Some(args.value()?.string()?),
            Some(Long("config-dir")) => config_dirs.push(std::path::PathBuf::from(args.value()?)),
            Some(Value(cmd)) => break cmd.string()?,
            Some(Long("help") | Short('h')) | None => {
                print!("{USAGE}");
                return Ok(());
            }
            Some(Long("version") | Short('V')) => break "version".to_owned(),
            Some(other) => return Err(other.unexpected().into()),
        }
    };
    logger::init(log_level.as_deref())?;
    // The `G` op's gzip rebuilds run in `atomup gzip-rebuild`, so a fault in
    // the rebuilding library on a damaged record fails one file, not the
    // update (`atomup_deploy::gzip_helper`).
    if let Ok(exe) = std::env::current_exe() {
        atomup_deploy::gzip_helper::use_helper(exe);
    }
    if !config_dirs.is_empty() {
        settings::set_dirs(config_dirs);
    }
    // Every device command runs on a whole, valid configuration (or not at
    // all); the host tools and the help do not read it.
    if !matches!(
        command.as_str(),
        "help" | "version" | "delta" | "gzip-rebuild"
    ) {
        logger::configured(settings::init()?.config.log_level);
    }
    match command.as_str() {
        "help" => print!("{USAGE}"),
        "version" => println!("atomup {}", env!("CARGO_PKG_VERSION")),
        "delta" => delta::run(args)?,
        "gzip-rebuild" => atomup_deploy::gzip_helper::serve()?,
        "config" => settings::run(args)?,
        "daemon" => daemon::run(args)?,
        "update" | "upgrade" => update::run(args)?,
        "install" => install::run(args)?,
        "etc" => etc::run(args)?,
        "config-diff" => etc::config_diff(args)?,
        "status" => status::run(args)?,
        "health" => health::run(args)?,
        "board" => board::run(args)?,
        "env" => envcmd::run(args)?,
        cmd if transitions::handles(cmd) => transitions::run(cmd, args)?,
        other => return Err(format!("unknown command `{other}` (see `atomup --help`)").into()),
    }
    Ok(())
}

fn report(err: &(dyn Error + 'static)) {
    eprint!("{}", error::chain(err));
}
