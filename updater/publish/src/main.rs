//! `atomup-publish`, the vendor-side publisher. A host tool: the device binary
//! never links it, so vendor-only code and errors stay out of the device.

mod keys;
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
";

fn main() -> ExitCode {
    let mut args = lexopt::Parser::from_env();
    match run(&mut args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &mut lexopt::Parser) -> Result<(), Box<dyn std::error::Error>> {
    use lexopt::prelude::*;
    match args.next()? {
        Some(Value(cmd)) if cmd == "version" => println!("atomup-publish {}", env!("CARGO_PKG_VERSION")),
        Some(Value(cmd)) if cmd == "help" => print!("{USAGE}"),
        Some(Value(cmd)) if cmd == "keygen" => keys::keygen(args)?,
        Some(Value(cmd)) if cmd == "sign" => sign::run(args)?,
        Some(Long("help") | Short('h')) | None => print!("{USAGE}"),
        Some(other) => return Err(other.unexpected().into()),
    }
    Ok(())
}
