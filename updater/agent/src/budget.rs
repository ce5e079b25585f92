//! The data budgets' I/O: the month's usage record (`<state dir>/budget`,
//! `atomup_link::budget`'s format) read before a download is admitted and
//! written as bytes arrive. The decisions themselves are `atomup-link`'s.
//!
//! The record is kept only on a metered link (a monthly budget is set): a
//! device without one writes nothing for it. Durability: the record is
//! replaced atomically (`atomup_fsio::replace`) every [`FLUSH_EVERY`] bytes
//! and at the end of each poll, so a power cut or a kill forgets at most
//! that much usage (never more than was used).

use crate::error::Result;
use atomup_link::budget::{self, Budgets, Usage};
use std::path::{Path, PathBuf};

/// Bytes charged between two writes of the record.
pub const FLUSH_EVERY: u64 = 1 << 20;

/// The month's usage, charged as bytes arrive.
pub struct Meter {
    path: PathBuf,
    pub usage: Usage,
    /// A monthly budget applies: the record is kept.
    metered: bool,
    /// Bytes charged since the record was last written.
    unsaved: u64,
}

impl Meter {
    /// Reads the record for the month holding `now`. A damaged record is an
    /// error when a monthly budget applies (reading it as zero would lift
    /// the ceiling); without one it is only a warning, and starts afresh.
    pub fn load(state_dir: &Path, budgets: Budgets, now: u64) -> Result<Meter> {
        let path = state_dir.join("budget");
        let record = match atomup_fsio::read_capped_opt(&path, 4096) {
            Ok(None) => None,
            Ok(Some(bytes)) => {
                match std::str::from_utf8(&bytes)
                    .map_err(|_| "not UTF-8".to_owned())
                    .and_then(|t| budget::parse(t).map_err(|e| e.to_string()))
                {
                    Ok(u) => Some(u),
                    Err(e) if budgets.monthly.is_some() => {
                        return Err(format!(
                            "{}: {e}: refusing to download on a metered link with unknown usage (remove the file to start the month at zero)",
                            path.display()
                        )
                        .into())
                    }
                    Err(e) => {
                        log::warn!("{}: {e}; starting the month afresh", path.display());
                        None
                    }
                }
            }
            Err(e) => return Err(format!("cannot read {}: {e}", path.display()).into()),
        };
        Ok(Meter {
            path,
            usage: Usage::current(record, now),
            metered: budgets.monthly.is_some(),
            unsaved: 0,
        })
    }

    /// Charges `bytes` that arrived; writes the record every [`FLUSH_EVERY`].
    pub fn charge(&mut self, bytes: u64) -> Result {
        if bytes == 0 {
            return Ok(());
        }
        self.usage.charge(bytes);
        self.unsaved += bytes;
        if self.unsaved >= FLUSH_EVERY {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes the record if anything was charged since the last write.
    pub fn flush(&mut self) -> Result {
        if self.unsaved == 0 || !self.metered {
            return Ok(());
        }
        atomup_fsio::replace(&self.path, budget::serialize(&self.usage).as_bytes())
            .map_err(|e| format!("writing {}: {e}", self.path.display()))?;
        self.unsaved = 0;
        Ok(())
    }
}
