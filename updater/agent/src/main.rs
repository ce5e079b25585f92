//! `atomup`, the device agent. Parses the command line, dispatches to one
//! command module, and prints an error chain exactly once.

mod board;
mod bootopts;
mod delta;
mod envcmd;
mod error;
mod health;
mod inputs;
mod led;
mod logger;
mod status;
mod target;
mod transitions;
mod update;

use std::error::Error;
use std::process::ExitCode;

use error::Result;

const USAGE: &str = "\
atomup — atomic A/B updates for embedded Linux devices

Usage: atomup <command> [options]
       atomup --log-level LEVEL <command> [options]

Commands:
  help                 show this text
  version              show the version
  update               poll the server; install a due release into the other slot
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
  delta apply          apply a static delta into a directory and verify it
  delta show           describe a static delta (from/to, parts, signed?)

Run `atomup <command> --help` for a command's options. Messages from the libraries
(download retries, ...) go to stderr at --log-level or $ATOMUP_LOG (off, error, warn,
info, debug, trace; default warn).
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
    let command = loop {
        match args.next()? {
            Some(Long("log-level")) => log_level = Some(args.value()?.string()?),
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
    match command.as_str() {
        "help" => print!("{USAGE}"),
        "version" => println!("atomup {}", env!("CARGO_PKG_VERSION")),
        "delta" => delta::run(args)?,
        "update" => update::run(args)?,
        "status" => status::run(args)?,
        "health" => health::run(args)?,
        "board" => board::run(args)?,
        "env" => envcmd::run(args)?,
        cmd if transitions::handles(cmd) => transitions::run(cmd, args)?,
        other => return Err(format!("unknown command `{other}` (see `atomup --help`)").into()),
    }
    Ok(())
}

/// Prints `error: <top>` then one ` -> <cause>` line per source. Library
/// errors never repeat their source in their own message, so nothing prints twice.
fn report(err: &(dyn Error + 'static)) {
    eprintln!("error: {err}");
    let mut source = err.source();
    while let Some(cause) = source {
        eprintln!(" -> {cause}");
        source = cause.source();
    }
}
