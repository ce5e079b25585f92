//! The few file operations every env backend needs, each with its durability
//! step (fsync) and the fault point in front of it, so that "one atomic
//! write" means the same thing everywhere. Every open goes through
//! `atomup-fsio`: it cannot block (a FIFO named as env storage would hang an
//! agent nobody watches) and refuses any type of file but storage.

use crate::BootctlError;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

/// The workspace's one I/O error convention (as `atomup-fetch`'s): what was
/// being done and to which path, the `io::Error` as the source, printed once
/// by the binary's error chain.
pub(crate) fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> BootctlError + 'a {
    move |source| BootctlError::Io {
        path: path.to_path_buf(),
        what,
        source,
    }
}

/// Reads `len` bytes at `offset` of env storage (a file, a block or an MTD
/// character device).
pub(crate) fn read_at(path: &Path, offset: u64, len: usize) -> Result<Vec<u8>, BootctlError> {
    let mut f = atomup_fsio::open(path, atomup_fsio::Want::Storage)
        .map_err(io_err("opening env storage for reading", path))?;
    f.seek(SeekFrom::Start(offset))
        .map_err(io_err("seeking to the env copy", path))?;
    let mut buf = vec![0u8; len];
    f.read_exact(&mut buf)
        .map_err(io_err("reading the env copy", path))?;
    Ok(buf)
}

/// Writes all of `data` at `offset` of existing env storage and syncs it to
/// the device before returning; the crash point may cut it short like a
/// power cut.
pub(crate) fn write_at(path: &Path, offset: u64, data: &[u8]) -> Result<(), BootctlError> {
    let mut f = atomup_fsio::open_storage_rw(path)
        .map_err(io_err("opening env storage for writing", path))?;
    f.seek(SeekFrom::Start(offset))
        .map_err(io_err("seeking to the env copy", path))?;
    // Crash point `env.write`: a cut inside the env write.
    if let Some(n) = atomup_faults::torn("env.write", path, data.len() as u64) {
        let n = n as usize;
        f.write_all(&data[..n])
            .map_err(io_err("writing the env copy", path))?;
        f.sync_all().map_err(io_err("syncing the env copy", path))?;
        atomup_faults::cut("env.write");
        return Err(BootctlError::Injected {
            path: path.to_path_buf(),
            written: n,
        });
    }
    f.write_all(data)
        .map_err(io_err("writing the env copy", path))?;
    f.sync_all().map_err(io_err("syncing the env copy", path))
}

/// Replaces a whole file with `atomup_fsio::replace` (temp, fsync, rename,
/// fsync the directory: old or new content after a power cut, never a
/// mixture). The crash point cuts the write of the temporary file, which is
/// where a power cut during a replace can land; the name keeps its old file.
/// (Unarmed, the replace below is also a `record.write` hit of its own.)
pub(crate) fn replace_file(path: &Path, data: &[u8]) -> Result<(), BootctlError> {
    // Crash point `env.write` (a block created whole): a cut inside the
    // temporary file's write.
    if let Some(n) = atomup_faults::torn("env.write", path, data.len() as u64) {
        let n = n as usize;
        let tmp = atomup_fsio::temp_path(path);
        let mut f =
            atomup_fsio::open_rw(&tmp, true).map_err(io_err("opening the new file", &tmp))?;
        f.set_len(0)
            .map_err(io_err("truncating the new file", &tmp))?;
        f.write_all(&data[..n])
            .map_err(io_err("writing the new file", &tmp))?;
        f.sync_all().map_err(io_err("syncing the new file", &tmp))?;
        atomup_faults::cut("env.write");
        return Err(BootctlError::Injected {
            path: tmp,
            written: n,
        });
    }
    atomup_fsio::replace(path, data).map_err(io_err("replacing the file", path))
}
