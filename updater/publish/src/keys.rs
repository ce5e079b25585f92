//! `atomup-publish keygen`: makes an ed25519 key pair in OSTree's (libsodium)
//! file layout. Randomness comes straight from /dev/urandom, so no RNG crate
//! is needed.

use std::io::{Read, Write};
use std::path::PathBuf;

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

pub fn keygen(args: &mut lexopt::Parser) -> Result {
    use lexopt::prelude::*;
    let (mut secret, mut public) = (None, None);
    while let Some(arg) = args.next()? {
        match arg {
            Long("secret-out") => secret = Some(PathBuf::from(args.value()?)),
            Long("public-out") => public = Some(PathBuf::from(args.value()?)),
            other => return Err(other.unexpected().into()),
        }
    }
    let secret = secret.ok_or("--secret-out FILE is required")?;
    let public = public.ok_or("--public-out FILE is required")?;
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .map_err(|e| format!("cannot read /dev/urandom: {e}"))?;
    let (secret_line, public_line) = atomup_ostree::sign::key_lines(seed);
    write_new(&secret, &secret_line, 0o600)?;
    write_new(&public, &public_line, 0o644)?;
    println!("{public_line}");
    Ok(())
}

/// Writes a key file that must not exist yet: overwriting a key by accident
/// would orphan every device that trusts it.
fn write_new(path: &PathBuf, line: &str, mode: u32) -> Result {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    writeln!(f, "{line}").map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(())
}
