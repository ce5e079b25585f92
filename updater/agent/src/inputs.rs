//! The small files the agent reads besides the env and its records: the board
//! profile, the vendor keys, the trusted time, the machine id and the kernel
//! command line. Each is read through `atomup-fsio` (an open that cannot
//! block: a FIFO in place of any of them would hang an agent nobody watches)
//! with a size cap, and a missing, oversized or wrong-type file is a clear
//! error naming the file and its purpose.

use crate::error::Result;
use atomup_board::Board;
use atomup_ostree::sign::Trust;
use std::path::Path;

/// Cap for the profile, key files, machine id and command line.
const SMALL: u64 = 64 * 1024;

/// Reads a small UTF-8 file; `what` names its purpose in the error.
pub fn read_text(path: &Path, what: &str) -> Result<String> {
    atomup_fsio::read_text_capped(path, SMALL)
        .map_err(|e| format!("cannot read {what} {}: {e}", path.display()).into())
}

/// The board profile: `explicit`, or the device's own when it ships one.
pub fn board(explicit: Option<&Path>) -> Result<Option<Board>> {
    let path = match explicit {
        Some(p) => p,
        None if Path::new(atomup_board::DEFAULT_PATH).exists() => {
            Path::new(atomup_board::DEFAULT_PATH)
        }
        None => return Ok(None),
    };
    let text = read_text(path, "board profile")?;
    Ok(Some(Board::parse(&text).map_err(|e| {
        format!("board profile {}: {e}", path.display())
    })?))
}

/// The vendor keys of the configuration: `trust.keys_file` (when it exists,
/// or always when a layer named it) and `trust.keys`, minus
/// `trust.revoked_file` and `trust.revoked`.
pub fn trust_of(cfg: &atomup_config::Config, keys_file_named: bool) -> Result<Trust> {
    let lines = |keys: &[String]| keys.iter().map(|k| format!("{k}\n")).collect::<String>();
    let file = &cfg.trusted_keys_file;
    let mut trusted = if keys_file_named || cfg.trusted_keys.is_empty() || file.exists() {
        read_text(file, "trusted keys")?
    } else {
        String::new()
    };
    if !trusted.is_empty() && !trusted.ends_with('\n') {
        trusted.push('\n');
    }
    trusted.push_str(&lines(&cfg.trusted_keys));
    let mut revoked = match &cfg.revoked_keys_file {
        Some(p) => read_text(p, "revoked keys")?,
        None => String::new(),
    };
    if !revoked.is_empty() && !revoked.ends_with('\n') {
        revoked.push('\n');
    }
    revoked.push_str(&lines(&cfg.revoked_keys));
    let revoked = (!revoked.is_empty()).then_some(revoked);
    Ok(Trust::from_key_files(&trusted, revoked.as_deref())?)
}

/// The rollout seed's source; a missing file is an empty seed (every device
/// without one lands in the same bucket), anything unreadable an error.
pub fn machine_id(path: &Path) -> Result<Vec<u8>> {
    match atomup_fsio::read_capped_opt(path, SMALL) {
        Ok(b) => Ok(b.unwrap_or_default()),
        Err(e) => Err(format!("cannot read machine id {}: {e}", path.display()).into()),
    }
}
