//! GRUB env storage: the two sealed grubenv blocks of the scheme in
//! `atomup_bootenv::grub_pair`. The agent overwrites the NON-current block in
//! place (1024 bytes, fsync), exactly as GRUB's own `save_env` does; the
//! scheme makes that safe, and in-place keeps the file's clusters where
//! GRUB's blocklist write expects them. On FAT a rename is not atomic (a cut
//! can leave the name missing), so temp+fsync+rename+fsync-dir is used only
//! to CREATE a block that is missing or has the wrong size; the current block
//! is never touched either way.

use crate::io::{io_err, replace_file, write_at};
use crate::{lock, BootctlError, Bootloader, Next, Snapshot};
use atomup_bootenv::grub::BLOCK_SIZE;
use atomup_bootenv::grub_pair::{self, Pair, SchemeError};
use atomup_bootenv::Vars;
use std::path::{Path, PathBuf};

/// Largest grubenv file read: GRUB's own blocks are 1024 bytes; a bigger
/// file is not one either side wrote and is refused rather than read whole.
pub const MAX_FILE: u64 = 64 * 1024;

#[derive(Debug, Clone)]
pub struct GrubEnv {
    files: [PathBuf; 2],
}

impl GrubEnv {
    /// `path` is block 1; block 2 is `path` + "2" (grubenv -> grubenv2).
    pub fn new(path: &Path) -> GrubEnv {
        let mut second = path.as_os_str().to_os_string();
        second.push("2");
        GrubEnv {
            files: [path.to_path_buf(), PathBuf::from(second)],
        }
    }

    pub fn files(&self) -> &[PathBuf; 2] {
        &self.files
    }

    /// The directory of the two blocks (what the snapshot locks).
    fn dir(&self) -> PathBuf {
        match self.files[0].parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    fn read_block(path: &Path) -> Result<Vec<u8>, BootctlError> {
        // A missing block is simply not valid; the pair logic copes. Anything
        // but a regular file of at most MAX_FILE bytes is refused.
        match atomup_fsio::read_capped_opt(path, MAX_FILE) {
            Ok(b) => Ok(b.unwrap_or_default()),
            Err(e) => Err(io_err("reading grubenv", path)(e)),
        }
    }

    pub fn read_pair(&self) -> Result<Pair, BootctlError> {
        Ok(Pair::parse(
            &Self::read_block(&self.files[0])?,
            &Self::read_block(&self.files[1])?,
        ))
    }

    fn write_block(&self, index: usize, vars: &Vars, seq: u64) -> Result<(), BootctlError> {
        let path = &self.files[index % 2];
        let block =
            grub_pair::serialize_sealed(vars, seq).map_err(|source| BootctlError::Format {
                what: "serializing grubenv",
                source: source.into(),
            })?;
        let existing = std::fs::metadata(path).map(|m| m.len()).ok();
        if existing == Some(BLOCK_SIZE as u64) {
            write_at(path, 0, &block)
        } else {
            replace_file(path, &block)
        }
    }
}

impl Bootloader for GrubEnv {
    /// Reads both blocks once under a lock on their directory; the next
    /// store goes to the non-current block with a SEQ above both.
    fn load(&mut self) -> Result<Snapshot, BootctlError> {
        let lock = lock::lock_dir(&self.dir())?;
        let mut pair = self.read_pair()?;
        let (index, seq) = pair.next_write();
        let vars = match pair.current {
            Some(i) => std::mem::replace(&mut pair.files[i], Err(SchemeError::SealMismatch))
                .ok()
                .map(|s| s.vars),
            None => None,
        };
        Ok(Snapshot {
            vars,
            next: Next::GrubBlock { index, seq },
            _lock: lock,
        })
    }

    fn store(&mut self, snap: &mut Snapshot, vars: Vars) -> Result<(), BootctlError> {
        let Next::GrubBlock { index, seq } = snap.next else {
            return Err(Snapshot::wrong_backend());
        };
        self.write_block(index, &vars, seq)?;
        // The block just written has the highest SEQ: it is current.
        snap.next = Next::GrubBlock {
            index: 1 - index,
            seq: seq.saturating_add(1),
        };
        snap.vars = Some(vars);
        Ok(())
    }

    fn init(&mut self, vars: &Vars) -> Result<(), BootctlError> {
        let _lock = lock::lock_dir(&self.dir())?;
        self.write_block(1, vars, 0)?;
        self.write_block(0, vars, 1)
    }

    fn describe(&self) -> String {
        format!(
            "GRUB env {} + {}",
            self.files[0].display(),
            self.files[1].display()
        )
    }
}
