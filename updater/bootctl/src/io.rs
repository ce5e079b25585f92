//! The few file operations every env backend needs, each with its durability
//! step (fsync) and the fault point in front of it, so that "one atomic
//! write" means the same thing everywhere.

use crate::BootctlError;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

pub(crate) fn io_err<'a>(
    path: &'a Path,
    what: &'static str,
) -> impl FnOnce(std::io::Error) -> BootctlError + 'a {
    move |source| BootctlError::Io {
        path: path.to_path_buf(),
        what,
        source,
    }
}

/// Reads `len` bytes at `offset`.
pub(crate) fn read_at(path: &Path, offset: u64, len: usize) -> Result<Vec<u8>, BootctlError> {
    let mut f = File::open(path).map_err(io_err(path, "opening env storage for reading"))?;
    f.seek(SeekFrom::Start(offset))
        .map_err(io_err(path, "seeking to the env copy"))?;
    let mut buf = vec![0u8; len];
    f.read_exact(&mut buf)
        .map_err(io_err(path, "reading the env copy"))?;
    Ok(buf)
}

/// Writes all of `data` at `offset` and syncs it to the device before
/// returning; the failpoint may cut it short like a power cut.
pub(crate) fn write_at(
    path: &Path,
    offset: u64,
    data: &[u8],
    create: bool,
) -> Result<(), BootctlError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(create)
        .truncate(false)
        .open(path)
        .map_err(io_err(path, "opening env storage for writing"))?;
    f.seek(SeekFrom::Start(offset))
        .map_err(io_err(path, "seeking to the env copy"))?;
    if let Some(n) = crate::failpoint::next_write() {
        let n = n.min(data.len());
        f.write_all(&data[..n])
            .map_err(io_err(path, "writing the env copy"))?;
        f.sync_all().map_err(io_err(path, "syncing the env copy"))?;
        return Err(BootctlError::Injected {
            path: path.to_path_buf(),
            written: n,
        });
    }
    f.write_all(data)
        .map_err(io_err(path, "writing the env copy"))?;
    f.sync_all().map_err(io_err(path, "syncing the env copy"))
}

/// Replaces a whole file: temp file, fsync, rename, fsync the directory.
pub(crate) fn replace_file(path: &Path, data: &[u8]) -> Result<(), BootctlError> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    write_at(&tmp, 0, data, true)?;
    std::fs::rename(&tmp, path).map_err(io_err(path, "renaming the new env file into place"))?;
    sync_dir(path)
}

pub(crate) fn sync_dir(path: &Path) -> Result<(), BootctlError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let d = File::open(dir).map_err(io_err(dir, "opening the env directory"))?;
    match d.sync_all() {
        Ok(()) => Ok(()),
        // Some filesystems (vfat on older kernels) refuse fsync on a directory.
        Err(e) if e.raw_os_error() == Some(22) => Ok(()),
        Err(e) => Err(io_err(dir, "syncing the env directory")(e)),
    }
}
