//! The daemon's watch on `bundle.scan` (the configuration): between network
//! polls, every `bundle.interval`, each scanned directory is looked at
//! cheaply (one readdir and one stat per entry, no file is opened or read)
//! and reduced to a fingerprint of what is there: the mount it belongs to
//! (statx's mount id, new for every mount of a stick) and each entry's name,
//! size, mtime and inode. The `._*` files and the result log are left out,
//! so appending the log does not count as a change.
//!
//! A directory is *due* once its fingerprint holds for two looks in a row
//! (a stick still being mounted, or a bundle still being copied into a
//! directory, is not verified half-written) and it was not handled in that
//! state yet. Handled, it is not looked at again until its fingerprint
//! changes: a refused or already-installed bundle costs one verification
//! and one message per appearance, never one per tick. A directory that is
//! gone, unreadable or empty (a mount point without its stick) is forgotten,
//! so the next insertion is a new appearance.
//!
//! The decision is pure ([`Watch::look`] over fingerprints); [`expand`] and
//! [`fingerprint`] are the only I/O.

use crate::install::LOG_NAME;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::{Component, Path, PathBuf};

/// Most directories one `bundle.scan` expands to.
pub const MAX_DIRS: usize = 64;
/// Most entries of one directory that enter its fingerprint (a stick is a
/// handful of files; a full one still costs a bounded readdir).
pub const MAX_ENTRIES: usize = 1024;

/// What the watch remembers of one directory.
struct Seen {
    fingerprint: u64,
    /// Looked at twice in a row with this fingerprint.
    settled: bool,
    handled: bool,
}

/// The scanned directories as last seen.
#[derive(Default)]
pub struct Watch {
    dirs: BTreeMap<PathBuf, Seen>,
}

impl Watch {
    /// Takes this look's fingerprints (`None`: gone, unreadable or empty)
    /// and returns the directories due now, in path order, and those handled
    /// before that are gone (the stick was pulled).
    pub fn look(&mut self, now: Vec<(PathBuf, Option<u64>)>) -> (Vec<PathBuf>, Vec<PathBuf>) {
        let mut next = BTreeMap::new();
        for (dir, fp) in now {
            let Some(fp) = fp else { continue };
            let seen = match self.dirs.remove(&dir) {
                Some(s) if s.fingerprint == fp => Seen { settled: true, ..s },
                _ => Seen {
                    fingerprint: fp,
                    settled: false,
                    handled: false,
                },
            };
            next.insert(dir, seen);
        }
        let gone = self
            .dirs
            .iter()
            .filter(|(d, s)| s.handled && !next.contains_key(*d))
            .map(|(d, _)| d.clone())
            .collect();
        self.dirs = next;
        let due = self
            .dirs
            .iter()
            .filter(|(_, s)| s.settled && !s.handled)
            .map(|(d, _)| d.clone())
            .collect();
        (due, gone)
    }

    /// `dir` was handled in the state last seen: not due again until it changes.
    pub fn handled(&mut self, dir: &Path) {
        if let Some(s) = self.dirs.get_mut(dir) {
            s.handled = true;
        }
    }

    /// Whether `dir` is still there in the state it was handled in (the
    /// stick that the LED shows the result for).
    pub fn holds(&self, dir: &Path) -> bool {
        self.dirs.get(dir).is_some_and(|s| s.handled)
    }
}

/// One look at every pattern of `bundle.scan`.
pub fn look_all(patterns: &[PathBuf]) -> Vec<(PathBuf, Option<u64>)> {
    let mut dirs = Vec::new();
    for p in patterns {
        expand(p, &mut dirs);
    }
    dirs.sort();
    dirs.dedup();
    dirs.into_iter()
        .map(|d| {
            let fp = fingerprint(&d);
            (d, fp)
        })
        .collect()
}

/// The directories `pattern` stands for: each `*` component is every
/// subdirectory there (hidden ones and symlinks excepted), at most
/// [`MAX_DIRS`] in all.
pub fn expand(pattern: &Path, out: &mut Vec<PathBuf>) {
    let mut prefixes = vec![PathBuf::from("/")];
    for c in pattern.components() {
        let Component::Normal(name) = c else { continue };
        if name != "*" {
            for p in &mut prefixes {
                p.push(name);
            }
            continue;
        }
        let mut next = Vec::new();
        for p in &prefixes {
            let Ok(entries) = std::fs::read_dir(p) else {
                continue;
            };
            for e in entries.flatten() {
                if next.len() >= MAX_DIRS {
                    break;
                }
                let hidden = e.file_name().as_encoded_bytes().starts_with(b".");
                // Mount points are directories: a symlink is not followed
                // (it could lead the watch anywhere, `/` included).
                let dir = e.file_type().is_ok_and(|t| t.is_dir());
                if !hidden && dir {
                    next.push(e.path());
                }
            }
        }
        prefixes = next;
    }
    for p in prefixes {
        if out.len() < MAX_DIRS && p.is_dir() {
            out.push(p);
        }
    }
}

/// The fingerprint of what `dir` holds, without opening a file; `None` when
/// it cannot be read or holds nothing that could be a bundle.
pub fn fingerprint(dir: &Path) -> Option<u64> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(dir).ok()? {
        let name = e.ok()?.file_name();
        let b = name.as_encoded_bytes();
        if b.starts_with(b"._") || name == LOG_NAME {
            continue;
        }
        names.push(name);
        if names.len() >= MAX_ENTRIES {
            break;
        }
    }
    if names.is_empty() {
        return None;
    }
    names.sort();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    mount_id(dir).hash(&mut h);
    for name in names {
        use std::os::unix::fs::MetadataExt;
        name.hash(&mut h);
        if let Ok(m) = std::fs::symlink_metadata(dir.join(&name)) {
            (m.len(), m.mtime(), m.mtime_nsec(), m.ino(), m.dev()).hash(&mut h);
        }
    }
    Some(h.finish())
}

/// The id of the mount `dir` lies on (0 when the kernel does not say): a
/// stick pulled and plugged in again between two looks is a new mount even
/// when its files look the same.
fn mount_id(dir: &Path) -> u64 {
    use rustix::fs::{statx, AtFlags, StatxFlags, CWD};
    statx(CWD, dir, AtFlags::empty(), StatxFlags::MNT_ID).map_or(0, |s| s.stx_mnt_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(dir: &str, fp: Option<u64>) -> Vec<(PathBuf, Option<u64>)> {
        vec![(PathBuf::from(dir), fp)]
    }

    fn due(w: &mut Watch, now: Vec<(PathBuf, Option<u64>)>) -> Vec<PathBuf> {
        w.look(now).0
    }

    // Proves a directory is due once its state held for two looks, once per
    // state: handled, it stays quiet until it changes or goes and comes back.
    #[test]
    fn a_directory_is_due_once_settled_and_once_per_appearance() {
        let mut w = Watch::default();
        assert!(due(&mut w, at("/m", Some(1))).is_empty(), "not settled yet");
        assert_eq!(due(&mut w, at("/m", Some(1))), [PathBuf::from("/m")]);
        w.handled(Path::new("/m"));
        assert!(w.holds(Path::new("/m")));
        for _ in 0..3 {
            assert!(due(&mut w, at("/m", Some(1))).is_empty(), "handled: quiet");
        }
        // A file still being copied: changes every look, never due.
        assert!(due(&mut w, at("/m", Some(2))).is_empty());
        assert!(due(&mut w, at("/m", Some(3))).is_empty());
        assert!(!w.holds(Path::new("/m")));
        assert_eq!(due(&mut w, at("/m", Some(3))), [PathBuf::from("/m")]);
        w.handled(Path::new("/m"));
        // Pulled (empty mount point), then the same stick again.
        assert_eq!(w.look(at("/m", None)), (vec![], vec![PathBuf::from("/m")]));
        assert!(!w.holds(Path::new("/m")));
        assert!(due(&mut w, at("/m", Some(3))).is_empty());
        assert_eq!(due(&mut w, at("/m", Some(3))), [PathBuf::from("/m")]);
    }

    // Proves the fingerprint ignores the result log and `._*` files, sees a
    // new or grown file, and is `None` for an empty or missing directory.
    #[test]
    fn fingerprint_sees_bundles_but_not_the_log() {
        let dir = atomup_scratch::ScratchDir::new("stickwatch-fp");
        let d = dir.path();
        assert_eq!(fingerprint(d), None, "empty");
        assert_eq!(fingerprint(&d.join("missing")), None);
        std::fs::write(d.join("._x.atomup"), b"apple").unwrap();
        std::fs::write(d.join(LOG_NAME), b"line\n").unwrap();
        assert_eq!(fingerprint(d), None, "only the log and a ._ file");
        std::fs::write(d.join("x.atomup"), b"abc").unwrap();
        let one = fingerprint(d).unwrap();
        std::fs::write(d.join(LOG_NAME), b"line\nline\n").unwrap();
        assert_eq!(fingerprint(d), Some(one), "the log appended");
        std::fs::write(d.join("x.atomup"), b"abcd").unwrap();
        assert_ne!(fingerprint(d), Some(one), "the bundle grew");
    }

    // Proves `*` stands for each visible subdirectory (not a symlink) and a
    // fixed path for itself.
    #[test]
    fn expand_takes_each_subdirectory_for_a_star() {
        let dir = atomup_scratch::ScratchDir::new("stickwatch-expand");
        let d = dir.path();
        for sub in ["alice/USB1", "alice/USB2", "bob/STICK", ".hidden/X"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        std::os::unix::fs::symlink("/", d.join("alice/root")).unwrap();
        std::fs::write(d.join("alice/file"), b"").unwrap();
        let mut out = Vec::new();
        expand(&d.join("*/*"), &mut out);
        out.sort();
        let want: Vec<PathBuf> = ["alice/USB1", "alice/USB2", "bob/STICK"]
            .iter()
            .map(|s| d.join(s))
            .collect();
        assert_eq!(out, want);
        let mut fixed = Vec::new();
        expand(&d.join("bob/STICK"), &mut fixed);
        expand(&d.join("nope"), &mut fixed);
        assert_eq!(fixed, [d.join("bob/STICK")]);
    }
}
