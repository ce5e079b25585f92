//! The mount table (`/proc/self/mountinfo`) as the update's target check,
//! the health checks and `atomup board check` need it: for each mount its device number, root,
//! mount point, read-only flag, file system type and source. Parsing is pure;
//! [`read`] reads this process's table through a capped read.

use std::path::{Path, PathBuf};

/// One line of `/proc/self/mountinfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// `st_dev` of the mounted file system (major:minor).
    pub dev: u64,
    /// The directory of the file system that appears at `point` (not `/` for
    /// a bind mount of a subdirectory).
    pub root: PathBuf,
    /// Where it is mounted.
    pub point: PathBuf,
    /// Mounted read-only (the mount's own `ro`, or the super block's).
    pub read_only: bool,
    pub fstype: String,
    /// What was mounted (`/dev/vda4`, `tmpfs`, ...).
    pub source: String,
}

/// Undoes mountinfo's octal escapes (`\040` space, `\011` tab, `\012`
/// newline, `\134` backslash), as bytes: a path need not be UTF-8.
fn unescape(field: &str) -> Vec<u8> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b.get(i + 1..i + 4).filter(|d| {
            b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)) && d[0] <= b'3'
        });
        match oct {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    out
}

fn unescape_path(field: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    PathBuf::from(std::ffi::OsString::from_vec(unescape(field)))
}

fn unescape_text(field: &str) -> String {
    String::from_utf8_lossy(&unescape(field)).into_owned()
}

/// Parses mountinfo text; lines that do not parse are skipped (the kernel
/// writes them; a line we cannot read names nothing we could check).
pub fn parse(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split(' ');
            let (_id, _parent, devno, root, point, options) = (
                f.next()?,
                f.next()?,
                f.next()?,
                f.next()?,
                f.next()?,
                f.next()?,
            );
            // Optional fields, then `-`, then type, source, super options.
            let mut rest = f.skip_while(|x| *x != "-");
            rest.next()?;
            let (fstype, source, sb) = (rest.next()?, rest.next()?, rest.next().unwrap_or(""));
            let (maj, min) = devno.split_once(':')?;
            let ro = |opts: &str| opts.split(',').any(|o| o == "ro");
            Some(Mount {
                dev: rustix::fs::makedev(maj.parse().ok()?, min.parse().ok()?),
                root: unescape_path(root),
                point: unescape_path(point),
                read_only: ro(options) || ro(sb),
                fstype: unescape_text(fstype),
                source: unescape_text(source),
            })
        })
        .collect()
}

/// The mount a canonical path is reached through: the longest mount point
/// that is a prefix of it, the last such line when mounts are stacked (the
/// kernel lists a mount after the one it covers).
pub fn mount_of<'m>(mounts: &'m [Mount], path: &Path) -> Option<&'m Mount> {
    let mut best: Option<&Mount> = None;
    for m in mounts {
        if path.starts_with(&m.point)
            && best.is_none_or(|b| m.point.components().count() >= b.point.components().count())
        {
            best = Some(m);
        }
    }
    best
}

/// This process's mount table.
pub fn read() -> std::io::Result<Vec<Mount>> {
    let text = crate::read_text_capped(Path::new("/proc/self/mountinfo"), 16 << 20)?;
    Ok(parse(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 254:2 / / ro,relatime - ext4 /dev/vda2 ro
23 22 0:5 / /dev rw,nosuid shared:2 - devtmpfs devtmpfs rw,size=1k
30 22 254:4 / /var rw,relatime shared:9 master:1 - ext4 /dev/vda4 rw
31 30 254:4 /lib/x /var/my\\040dir rw - ext4 /dev/vda4 rw
32 22 254:1 / /boot/efi rw - vfat /dev/vda1 ro
33 30 254:4 /srv /var rw - ext4 /dev/vda4 rw
bad line
";

    /// Devices, read-only flags (mount or super block), types, sources and
    /// escaped mount points come out of the kernel's format.
    #[test]
    fn mountinfo_parses_flags_types_and_escapes() {
        let m = parse(SAMPLE);
        assert_eq!(m.len(), 6);
        assert_eq!(m[0].point, Path::new("/"));
        assert!(m[0].read_only);
        assert_eq!(
            (m[0].fstype.as_str(), m[0].source.as_str()),
            ("ext4", "/dev/vda2")
        );
        assert_eq!(m[2].dev, rustix::fs::makedev(254, 4));
        assert!(!m[2].read_only, "optional fields skipped");
        assert_eq!(m[3].point, Path::new("/var/my dir"));
        assert_eq!(m[3].root, Path::new("/lib/x"));
        assert!(m[4].read_only, "super block ro counts");
        assert_eq!(unescape_path("a\\134b\\011c\\9x"), Path::new("a\\b\tc\\9x"));
    }

    /// The longest mount point wins, and the later of two stacked mounts.
    #[test]
    fn a_path_is_reached_through_its_longest_and_topmost_mount() {
        let m = parse(SAMPLE);
        let var = mount_of(&m, Path::new("/var/lib/atomup")).unwrap();
        assert_eq!(
            (var.point.as_path(), var.root.as_path()),
            (Path::new("/var"), Path::new("/srv"))
        );
        assert_eq!(
            mount_of(&m, Path::new("/usr")).unwrap().point,
            Path::new("/")
        );
        assert_eq!(
            mount_of(&m, Path::new("/variable")).unwrap().point,
            Path::new("/")
        );
    }
}
