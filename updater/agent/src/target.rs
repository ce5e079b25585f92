//! Where `update` is about to write, resolved and checked before anything is
//! written (env, records or slot). An update empties its target and fills it
//! with a new root, so a target that is, contains or lies inside the running
//! root or the data partition would destroy the running system or its state.
//! Paths lie (symlinks, bind mounts, `..`, a second name for a device), so the
//! check works on what the kernel says: canonical paths, device and inode
//! numbers, and the mount table (`/proc/self/mountinfo`), which also tells
//! where inside its file system a mount's root lies (bind mounts of
//! subdirectories).
//!
//! The rules, each refusing with a message that names the target and what it
//! collides with:
//! - a target directory must not be the same directory as the running root or
//!   the data area, must not contain either (or any mount point: emptying it
//!   would delete what is mounted there), and must not lie inside either on
//!   the same file system (a separate file system mounted below `/` is fine);
//! - the data area is the whole file system of the state directory when that
//!   is a mount of its own (the device's data partition), else the state
//!   directory itself, plus the board profile's `data` device;
//! - a target device must be a block device that is not mounted anywhere and
//!   is not (a partition of, or the disk holding) the running root's, the
//!   data partition's or any mounted file system's device.

use std::fmt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use atomup_fsio::mountinfo::{mount_of, Mount};

/// A directory as the kernel sees it.
#[derive(Clone, Debug)]
pub struct Place {
    pub path: PathBuf,
    pub dev: u64,
    pub ino: u64,
    /// `(dev, ino)` of every directory above it, up to `/`.
    pub ancestors: Vec<(u64, u64)>,
    /// The file system it lives in and its path inside that file system, when
    /// the mount table agrees with `stat` about the device.
    pub fs_path: Option<(u64, PathBuf)>,
    /// The mount point it is reached through.
    pub mount_point: Option<PathBuf>,
}

impl Place {
    /// Resolves `path` (symlinks, `..`) and stats it and its parents.
    pub fn resolve(path: &Path, mounts: &[Mount]) -> Result<Place, String> {
        let canon = std::fs::canonicalize(path)
            .map_err(|e| format!("resolving {}: {e}", path.display()))?;
        let md =
            std::fs::metadata(&canon).map_err(|e| format!("examining {}: {e}", canon.display()))?;
        let mut ancestors = Vec::new();
        for a in canon.ancestors().skip(1) {
            let m = std::fs::metadata(a).map_err(|e| format!("examining {}: {e}", a.display()))?;
            ancestors.push((m.dev(), m.ino()));
        }
        let mount = mount_of(mounts, &canon);
        let fs_path = mount.filter(|m| m.dev == md.dev()).map(|m| {
            let rel = canon.strip_prefix(&m.point).unwrap_or(Path::new(""));
            (m.dev, m.root.join(rel))
        });
        Ok(Place {
            path: canon,
            dev: md.dev(),
            ino: md.ino(),
            ancestors,
            fs_path,
            mount_point: mount.map(|m| m.point.clone()),
        })
    }

    fn same_dir(&self, other: &Place) -> bool {
        (self.dev, self.ino) == (other.dev, other.ino)
            || matches!((&self.fs_path, &other.fs_path), (Some(a), Some(b)) if a == b)
    }

    /// `self` is a directory above `other` (through any mount or alias).
    fn contains(&self, other: &Place) -> bool {
        other.ancestors.contains(&(self.dev, self.ino))
            || matches!((&self.fs_path, &other.fs_path),
                (Some((da, a)), Some((db, b))) if da == db && b.starts_with(a) && a != b)
    }

    /// `self` lies below `other` on `other`'s own file system.
    fn inside(&self, other: &Place) -> bool {
        (self.dev == other.dev && self.ancestors.contains(&(other.dev, other.ino)))
            || matches!((&self.fs_path, &other.fs_path),
                (Some((da, a)), Some((db, b))) if da == db && a.starts_with(b) && a != b)
    }
}

/// What must survive an update.
pub struct Protected<'a> {
    /// The running root (`--from-root`).
    pub root: &'a Path,
    /// The state directory (on the data partition).
    pub state_dir: &'a Path,
    /// The board profile's data partition device, if it names one.
    pub data_device: Option<&'a Path>,
}

/// Why a target was refused.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused(pub String);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// The directory, or the block device, an update writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Dir(PathBuf),
    Device(PathBuf),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Dir(p) => write!(f, "target directory {}", p.display()),
            Target::Device(p) => write!(f, "target device {}", p.display()),
        }
    }
}

fn refuse(target: &Target, why: String) -> Refused {
    Refused(format!("refusing {target}: {why}"))
}

/// The whole-disk device of a partition, from sysfs (`None` for a disk, or
/// when sysfs does not say).
pub fn sysfs_disk_of(dev: u64) -> Option<u64> {
    let node = PathBuf::from(format!(
        "/sys/dev/block/{}:{}",
        rustix::fs::major(dev),
        rustix::fs::minor(dev)
    ));
    let node = std::fs::canonicalize(node).ok()?;
    if !node.join("partition").exists() {
        return None;
    }
    let text = atomup_fsio::read_text_capped(&node.parent()?.join("dev"), 64).ok()?;
    let (maj, min) = text.trim().split_once(':')?;
    Some(rustix::fs::makedev(maj.parse().ok()?, min.parse().ok()?))
}

/// Two block devices overlap when they are the same, or one is a partition
/// of the other.
pub fn devices_overlap(a: u64, b: u64, disk_of: &dyn Fn(u64) -> Option<u64>) -> bool {
    a == b || disk_of(a) == Some(b) || disk_of(b) == Some(a)
}

/// Checks `target` against everything an update must not touch. `mounts` is
/// the parsed mount table; `disk_of` maps a partition to its disk.
pub fn check(
    target: &Target,
    protect: &Protected<'_>,
    mounts: &[Mount],
    disk_of: &dyn Fn(u64) -> Option<u64>,
) -> Result<(), Refused> {
    let root = Place::resolve(protect.root, mounts)
        .map_err(|e| refuse(target, format!("cannot resolve the running root: {e}")))?;
    let state = Place::resolve(protect.state_dir, mounts)
        .map_err(|e| refuse(target, format!("cannot resolve the state directory: {e}")))?;
    // The state dir on a mount of its own is the data partition: all of it
    // is protected. On the root's own mount, only the state dir is.
    let data_partition = state.mount_point.is_some()
        && state.mount_point != root.mount_point
        && state.dev != root.dev;
    let data_dev = match protect.data_device {
        Some(p) => Some(
            block_device(p)
                .map_err(|e| refuse(target, format!("board profile data partition: {e}")))?,
        ),
        None => None,
    };
    match target {
        Target::Dir(dir) => {
            let t = Place::resolve(dir, mounts).map_err(|e| refuse(target, e))?;
            for (what, p) in [("the running root", &root), ("the state directory", &state)] {
                let shown = p.path.display();
                if t.same_dir(p) {
                    return Err(refuse(target, format!("it is {what} {shown}")));
                }
                if t.contains(p) {
                    return Err(refuse(target, format!("it contains {what} {shown}")));
                }
                if t.inside(p) {
                    return Err(refuse(target, format!("it is inside {what} {shown}")));
                }
            }
            if data_partition && t.dev == state.dev {
                return Err(refuse(
                    target,
                    format!(
                        "it is on the data partition mounted at {} (state directory {})",
                        state
                            .mount_point
                            .as_deref()
                            .unwrap_or(Path::new("?"))
                            .display(),
                        state.path.display()
                    ),
                ));
            }
            if let (Some(dd), Some(p)) = (data_dev, protect.data_device) {
                if t.dev == dd {
                    return Err(refuse(
                        target,
                        format!("it is on the board's data partition {}", p.display()),
                    ));
                }
            }
            if let Some(m) = mounts
                .iter()
                .find(|m| m.point.starts_with(&t.path) && m.point != t.path)
            {
                return Err(refuse(
                    target,
                    format!(
                        "{} is mounted inside it: emptying the target would delete it",
                        m.point.display()
                    ),
                ));
            }
            Ok(())
        }
        Target::Device(dev) => {
            let rdev = block_device(dev).map_err(|e| refuse(target, e))?;
            let overlap = |other: u64| devices_overlap(rdev, other, disk_of);
            if overlap(root.dev) {
                return Err(refuse(
                    target,
                    format!(
                        "it is the device of the running root {}",
                        root.path.display()
                    ),
                ));
            }
            if overlap(state.dev) {
                return Err(refuse(
                    target,
                    format!(
                        "it is the device of the state directory {} (the data partition)",
                        state.path.display()
                    ),
                ));
            }
            if let (Some(dd), Some(p)) = (data_dev, protect.data_device) {
                if overlap(dd) {
                    return Err(refuse(
                        target,
                        format!("it is the board's data partition {}", p.display()),
                    ));
                }
            }
            if let Some(m) = mounts.iter().find(|m| overlap(m.dev)) {
                return Err(refuse(
                    target,
                    format!(
                        "it is mounted at {}: a slot being written is never mounted elsewhere",
                        m.point.display()
                    ),
                ));
            }
            Ok(())
        }
    }
}

/// The device number of a block device (following symlinks such as
/// `/dev/disk/by-label/...`); anything else is refused by type.
fn block_device(path: &Path) -> Result<u64, String> {
    let md = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !md.file_type().is_block_device() {
        return Err(format!(
            "{} is {}, not a block device",
            path.display(),
            atomup_fsio::type_name(rustix::fs::FileType::from_raw_mode(md.mode()))
        ));
    }
    Ok(md.rdev())
}

/// Reads this process's mount table.
pub fn read_mounts() -> Result<Vec<Mount>, String> {
    atomup_fsio::mountinfo::read().map_err(|e| format!("reading /proc/self/mountinfo: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Same device, a partition of the other, or its disk: overlapping.
    #[test]
    fn partitions_overlap_their_disk_but_not_each_other() {
        let (disk, p2, p3) = (
            rustix::fs::makedev(8, 0),
            rustix::fs::makedev(8, 2),
            rustix::fs::makedev(8, 3),
        );
        let disk_of = |d: u64| (d != disk).then_some(disk);
        assert!(devices_overlap(p2, p2, &disk_of));
        assert!(devices_overlap(disk, p2, &disk_of));
        assert!(devices_overlap(p3, disk, &disk_of));
        assert!(!devices_overlap(p2, p3, &disk_of));
    }

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("atomup-target-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Directory aliases on one file system: the same dir through a symlink or
    /// `..`, a parent, a child: all refused; a sibling is fine.
    #[test]
    fn directory_aliases_of_the_root_or_state_are_refused() {
        let d = scratch("aliases");
        for p in ["root/usr", "state", "other"] {
            std::fs::create_dir_all(d.join(p)).unwrap();
        }
        std::os::unix::fs::symlink(d.join("root"), d.join("link")).unwrap();
        let mounts = read_mounts().unwrap();
        let protect = Protected {
            root: &d.join("root"),
            state_dir: &d.join("state"),
            data_device: None,
        };
        let check_dir =
            |p: PathBuf| check(&Target::Dir(p), &protect, &mounts, &|_| None).map_err(|e| e.0);
        let why = |p: &str| check_dir(d.join(p)).unwrap_err();
        assert!(
            why("root").contains("it is the running root"),
            "{}",
            why("root")
        );
        assert!(why("link").contains("it is the running root"));
        assert!(why("other/../root").contains("it is the running root"));
        assert!(why(".").contains("it contains the running root"));
        assert!(why("root/usr").contains("it is inside the running root"));
        assert!(why("state").contains("it is the state directory"));
        assert!(check_dir(d.join("other")).is_ok());
        assert!(check_dir(d.join("missing"))
            .unwrap_err()
            .contains("resolving"));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
