//! `atomup-publish`, the vendor-side publisher. A host tool: the device binary
//! never links it, so vendor-only code and errors stay out of the device.

mod bundle;
mod commit;
mod deltagen;
mod keys;
mod progress;
mod prune;
mod release;
mod repo;
mod sign;

use std::process::ExitCode;

const USAGE: &str = "\
atomup-publish — publish signed releases for an atomup fleet

Usage: atomup-publish <command> [options]

Commands:
  help                 show this text
  version              show the version
  keygen               --secret-out FILE --public-out FILE: new ed25519 key pair
  sign                 --key SECRET (--delta DIR | --repo REPO --commit CSUM|REF)
  release              signed release metadata for a channel and board (see --help)
  prune                --repo DIR --keep-releases K [--dry-run]: free what old releases used
  bundle               --repo DIR --channel NAME --board NAME --out FILE: offline USB bundle
  init                 --repo DIR: new OSTree archive repo + atomup/ metadata dir
  commit               --repo DIR (--tree DIR | --tarball FILE) --branch REF [--subject S]
                       [--body B] [--timestamp RFC3339|UNIX] [--owner-uid N] [--owner-gid N]
                       [--no-devices] [--quiet]: prints the commit id
  delta                --repo DIR --to REV (--from REV | --from-last K | --scratch)...
                       [--max-part-size BYTES] [--xz-dict BYTES] [--xz-preset 0-9]
                       [--min-fallback-size BYTES] [--disable-bsdiff] [--quiet]
";

fn main() -> ExitCode {
    let mut args = lexopt::Parser::from_env();
    match run(&mut args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            // The chain once: library errors keep their causes out of Display.
            let mut cause = err.source();
            while let Some(c) = cause {
                eprintln!(" -> {c}");
                cause = c.source();
            }
            ExitCode::FAILURE
        }
    }
}

fn run(args: &mut lexopt::Parser) -> Result<(), Box<dyn std::error::Error>> {
    use lexopt::prelude::*;
    match args.next()? {
        Some(Value(cmd)) if cmd == "version" => {
            println!("atomup-publish {}", env!("CARGO_PKG_VERSION"))
        }
        Some(Value(cmd)) if cmd == "help" => print!("{USAGE}"),
        Some(Value(cmd)) if cmd == "keygen" => keys::keygen(args)?,
        Some(Value(cmd)) if cmd == "sign" => sign::run(args)?,
        Some(Value(cmd)) if cmd == "release" => release::run(args)?,
        Some(Value(cmd)) if cmd == "prune" => prune::run(args)?,
        Some(Value(cmd)) if cmd == "bundle" => bundle::run(args)?,
        Some(Value(cmd)) if cmd == "init" => repo::run_init(args)?,
        Some(Value(cmd)) if cmd == "commit" => commit::run(args)?,
        Some(Value(cmd)) if cmd == "delta" => deltagen::run(args)?,
        Some(Long("help") | Short('h')) | None => print!("{USAGE}"),
        Some(other) => return Err(other.unexpected().into()),
    }
    Ok(())
}
