//! The file operations every device-side crate shares, written once so that
//! they mean the same thing everywhere:
//!
//! - **Opens that cannot block.** Everything atomup reads (the running root,
//!   delta files, env devices, configuration, state) may have been replaced
//!   by something that is not a regular file. Opening a FIFO for reading
//!   blocks until a writer appears, forever on a device nobody watches; a
//!   terminal can become the controlling one. So every open here passes
//!   `O_NONBLOCK | O_NOCTTY`, then `fstat`s the descriptor and refuses any
//!   type the caller did not ask for, naming the type it found.
//! - **Reads that are capped.** A file longer than the caller's limit is
//!   refused at the limit, never read to its end.
//! - **One atomic, durable replace** ([`replace`]), with its crash guarantee
//!   written on it.
//! - **The mount table** ([`mountinfo`]), read and parsed once for everyone
//!   who asks what is mounted where and how.
//! - **What a fetched or copied file must be** ([`Expect`]): the one type
//!   the downloader and the bundle reader check their files against.

pub mod mountinfo;

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags};

/// What a file must be, from signed metadata (a release, a verified
/// superblock): its exact size and sha256. A download (`atomup-fetch`) or a
/// bundle member's copy (`atomup-bundle`) is kept only when both hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expect {
    pub size: u64,
    pub sha256: [u8; 32],
}

/// What an open accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// A regular file.
    Regular,
    /// A directory.
    Directory,
    /// Raw storage: a regular file (disk image), a block device (eMMC, SD) or
    /// a character device (MTD). FIFOs, sockets and terminals are refused.
    Storage,
}

impl Want {
    fn accepts(self, t: FileType) -> bool {
        match self {
            Want::Regular => t == FileType::RegularFile,
            Want::Directory => t == FileType::Directory,
            Want::Storage => matches!(
                t,
                FileType::RegularFile | FileType::BlockDevice | FileType::CharacterDevice
            ),
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Want::Regular => "a regular file",
            Want::Directory => "a directory",
            Want::Storage => "a regular file or a storage device",
        }
    }
}

/// The name of a file type, for messages ("a FIFO, not a regular file").
pub fn type_name(t: FileType) -> &'static str {
    match t {
        FileType::RegularFile => "a regular file",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symbolic link",
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::Unknown => "a file of unknown type",
    }
}

/// The error an open of the wrong type of file returns: `InvalidInput`, whose
/// message names what was found and what was wanted.
pub fn wrong_type(found: FileType, want: Want) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{}, not {}", type_name(found), want.noun()),
    )
}

/// True when `e` is the refusal of a file of the wrong type.
pub fn is_wrong_type(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::InvalidInput && e.get_ref().is_some()
}

fn checked(fd: OwnedFd, want: Want) -> io::Result<File> {
    let st = rustix::fs::fstat(&fd)?;
    let t = FileType::from_raw_mode(st.st_mode);
    if !want.accepts(t) {
        return Err(wrong_type(t, want));
    }
    // O_NONBLOCK only had to protect the open itself (a FIFO or a device that
    // waits for carrier); clear it so reads of the file we accepted behave as
    // usual. (For regular files and directories it has no effect anyway.)
    if want == Want::Storage {
        let fl = rustix::fs::fcntl_getfl(&fd)?;
        rustix::fs::fcntl_setfl(&fd, fl - OFlags::NONBLOCK)?;
    }
    Ok(File::from(fd))
}

fn base_flags(want: Want, write: bool) -> OFlags {
    let mut f = OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    f |= if write { OFlags::RDWR } else { OFlags::RDONLY };
    if want == Want::Directory {
        f |= OFlags::DIRECTORY;
    }
    f
}

/// Opens `path` for reading without blocking, following symlinks, and
/// refuses it unless it is what `want` says.
pub fn open(path: &Path, want: Want) -> io::Result<File> {
    let fd = rustix::fs::open(path, base_flags(want, false), Mode::empty())?;
    checked(fd, want)
}

/// Opens raw storage (see [`Want::Storage`]) for reading and writing without
/// blocking on the open.
pub fn open_storage_rw(path: &Path) -> io::Result<File> {
    let fd = rustix::fs::open(path, base_flags(Want::Storage, true), Mode::empty())?;
    checked(fd, Want::Storage)
}

/// Opens `name` under `dir` for reading without following a symlink in its
/// last component, without blocking, refusing any type but `want`. (`name`
/// may be raw bytes, as a directory listing gives them.)
pub fn open_at(dir: impl AsFd, name: impl rustix::path::Arg, want: Want) -> io::Result<File> {
    let fd = rustix::fs::openat(
        dir,
        name,
        base_flags(want, false) | OFlags::NOFOLLOW,
        Mode::empty(),
    )?;
    checked(fd, want)
}

/// Opens a regular file for reading and writing (created with mode 0644 when
/// `create` and missing) without blocking and without following a symlink in
/// its last component; anything but a regular file is refused by type. For
/// state files updated in place (a download being resumed, a lock file).
pub fn open_rw(path: &Path, create: bool) -> io::Result<File> {
    let mut flags = base_flags(Want::Regular, true) | OFlags::NOFOLLOW;
    if create {
        flags |= OFlags::CREATE;
    }
    let fd = rustix::fs::open(path, flags, Mode::from_raw_mode(0o644))?;
    checked(fd, Want::Regular)
}

/// Reads all of `file`, refusing more than `limit` bytes at the limit.
pub fn read_all_capped(file: &mut File, limit: u64) -> io::Result<Vec<u8>> {
    let len = file.metadata()?.len();
    if len > limit {
        return Err(too_large(limit));
    }
    let mut buf = Vec::with_capacity(len as usize);
    file.take(limit + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > limit {
        return Err(too_large(limit));
    }
    Ok(buf)
}

fn too_large(limit: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("larger than the {limit}-byte limit"),
    )
}

/// The number after `key` in `/proc/self/<file>`: `VmHWM:` or `RssFile:` of
/// `status` in KiB, `rchar:` of `io` the bytes this process has read.
pub fn proc_self(file: &str, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(Path::new("/proc/self").join(file)).ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Reads a regular file of at most `limit` bytes (see [`open`]).
pub fn read_capped(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    read_all_capped(&mut open(path, Want::Regular)?, limit)
}

/// [`read_capped`], as UTF-8 text.
pub fn read_text_capped(path: &Path, limit: u64) -> io::Result<String> {
    String::from_utf8(read_capped(path, limit)?)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"))
}

/// [`read_capped`], with a missing file read as `None`.
pub fn read_capped_opt(path: &Path, limit: u64) -> io::Result<Option<Vec<u8>>> {
    match read_capped(path, limit) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Replaces `path` with `data` atomically and durably.
///
/// Crash guarantee: the data goes to a temporary file in the same directory,
/// which is fsynced before it is renamed over `path`, and the directory is
/// fsynced after. A power cut at any point leaves `path` holding either its
/// old content or all of `data`, never a mixture or an empty file; once this
/// returns, the new content survives a power cut. (A leftover temporary file
/// is harmless: the next replace truncates it.) The one exception is a file
/// system without atomic rename, such as FAT, where a cut can lose the name:
/// the env backends on FAT write in place instead, see `atomup-bootctl`.
pub fn replace(path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = temp_path(path);
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags_nofollow()
            .open(&tmp)?;
        // Crash point `record.write`: a cut inside the temp file's write.
        atomup_faults::write_all("record.write", path, &mut f, data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    sync_parent(path)
}

/// Appends `data` to the regular file `path` (created, mode 0644, when
/// missing; the last component never followed; anything but a regular file
/// refused by type, without blocking) in one `O_APPEND` write, then fsyncs
/// it, and its directory when the file was new. For logs that collect one
/// line per run (the result log on a USB stick): after a cut, the lines
/// before are intact, the last one whole or missing or cut short.
pub fn append(path: &Path, data: &[u8]) -> io::Result<()> {
    let existed = std::fs::symlink_metadata(path).is_ok();
    use std::io::Write;
    // O_RDWR, not O_WRONLY: a FIFO then opens at once (O_WRONLY|O_NONBLOCK
    // fails with ENXIO without a reader) and is refused by type, by name.
    let flags = OFlags::RDWR
        | OFlags::APPEND
        | OFlags::CREATE
        | OFlags::NOFOLLOW
        | OFlags::NONBLOCK
        | OFlags::NOCTTY
        | OFlags::CLOEXEC;
    let fd = rustix::fs::open(path, flags, Mode::from_raw_mode(0o644))?;
    let mut f = checked(fd, Want::Regular)?;
    f.write_all(data)?;
    f.sync_all()?;
    if !existed {
        sync_parent(path)?;
    }
    Ok(())
}

/// `<dir>/<name>.tmp`, the temporary file [`replace`] writes first.
pub fn temp_path(path: &Path) -> PathBuf {
    let mut name: OsString = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Fsyncs the directory holding `path`, so a rename or a new entry in it is
/// durable. File systems that refuse fsync on a directory (vfat on older
/// kernels: `EINVAL`) are accepted: they have nothing more to flush.
pub fn sync_parent(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    match open(dir, Want::Directory)?.sync_all() {
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => Ok(()),
        other => other,
    }
}

trait NoFollow {
    fn custom_flags_nofollow(&mut self) -> &mut Self;
}

impl NoFollow for std::fs::OpenOptions {
    /// The temporary file is never a symlink planted to redirect the write.
    fn custom_flags_nofollow(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags((OFlags::NOFOLLOW | OFlags::NOCTTY | OFlags::NONBLOCK).bits() as i32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn scratch(name: &str) -> atomup_scratch::ScratchDir {
        atomup_scratch::ScratchDir::new(&format!("fsio-{name}"))
    }

    fn mkfifo(p: &Path) {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            p,
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
    }

    /// A FIFO where a file is expected is refused at once, by every open.
    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let d = scratch("fifo");
        let p = d.join("fifo");
        mkfifo(&p);
        for want in [Want::Regular, Want::Storage] {
            let e = open(&p, want).unwrap_err();
            assert!(is_wrong_type(&e), "{e}");
            assert!(e.to_string().starts_with("a FIFO, not "), "{e}");
        }
        assert!(open_storage_rw(&p).is_err());
        let dir = open(&d, Want::Directory).unwrap();
        assert!(is_wrong_type(
            &open_at(&dir, "fifo", Want::Regular).unwrap_err()
        ));
        assert!(read_capped(&p, 10).is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// A state file opened for update is created when asked, and a FIFO or a
    /// symlink in its place is refused without blocking.
    #[test]
    fn open_rw_creates_regular_files_and_refuses_fifos_and_symlinks() {
        let d = scratch("rw");
        let f = d.join("f");
        assert!(open_rw(&f, false).is_err());
        open_rw(&f, true).unwrap().write_all(b"x").unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"x");
        mkfifo(&d.join("fifo"));
        assert!(is_wrong_type(&open_rw(&d.join("fifo"), true).unwrap_err()));
        std::os::unix::fs::symlink(&f, d.join("l")).unwrap();
        assert!(open_rw(&d.join("l"), true).is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// A log collects one line per append (created on the first), and a
    /// FIFO or a symlink in its place is refused without blocking.
    #[test]
    fn append_adds_lines_and_refuses_fifos_and_symlinks() {
        let d = scratch("append");
        let f = d.join("log");
        append(&f, b"one\n").unwrap();
        append(&f, b"two\n").unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"one\ntwo\n");
        mkfifo(&d.join("fifo"));
        assert!(is_wrong_type(&append(&d.join("fifo"), b"x").unwrap_err()));
        std::os::unix::fs::symlink(&f, d.join("l")).unwrap();
        assert!(append(&d.join("l"), b"x").is_err());
        assert_eq!(std::fs::read(&f).unwrap(), b"one\ntwo\n");
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// A directory is not a regular file, and a symlink's last component is
    /// not followed by `open_at`.
    #[test]
    fn wrong_types_are_named() {
        let d = scratch("types");
        let e = open(&d, Want::Regular).unwrap_err();
        assert_eq!(e.to_string(), "a directory, not a regular file");
        std::fs::write(d.join("f"), b"x").unwrap();
        std::os::unix::fs::symlink("f", d.join("l")).unwrap();
        let dir = open(&d, Want::Directory).unwrap();
        assert!(open_at(&dir, "l", Want::Regular).is_err());
        assert!(open_at(&dir, "f", Want::Regular).is_ok());
        assert!(open(&d.join("f"), Want::Storage).is_ok());
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// A file longer than the limit is refused, however it grew.
    #[test]
    fn reads_are_capped_at_the_limit() {
        let d = scratch("cap");
        let p = d.join("f");
        std::fs::write(&p, vec![1u8; 100]).unwrap();
        assert_eq!(read_capped(&p, 100).unwrap().len(), 100);
        assert!(read_capped(&p, 99).is_err());
        assert_eq!(read_capped_opt(&d.join("none"), 9).unwrap(), None);
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// Replace leaves either the old or the new content, never the temp file
    /// in its place, and follows no symlink planted as the temp name.
    #[test]
    fn replace_is_whole_and_leaves_no_temp() {
        let d = scratch("replace");
        let p = d.join("record");
        replace(&p, b"one").unwrap();
        replace(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert!(!temp_path(&p).exists());
        std::fs::write(d.join("victim"), b"keep").unwrap();
        std::os::unix::fs::symlink(d.join("victim"), temp_path(&p)).unwrap();
        assert!(replace(&p, b"three").is_err());
        assert_eq!(std::fs::read(d.join("victim")).unwrap(), b"keep");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
