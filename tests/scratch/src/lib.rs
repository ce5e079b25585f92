//! The workspace's one scratch-directory helper, for unit and integration
//! tests alike (a dev-dependency only: never in a shipped binary). A
//! directory under the cargo target dir (the same file system as the build,
//! so xattrs, hard links and renames behave as on a real disk, unlike a
//! tmpfs `/tmp`), unique per process and call, removed when dropped unless
//! `ATOMUP_KEEP_SCRATCH` is set; directories left by test processes that are
//! gone are swept on the next use of the same name.

use std::fs;
use std::path::{Path, PathBuf};

pub struct ScratchDir(PathBuf);

/// Cargo's target directory: `CARGO_TARGET_DIR` (relative to the workspace
/// root, where cargo was started, when relative), else `<workspace>/target`.
/// Canonical, so a scratch path compares equal to what the kernel reports
/// for it (`/proc/self/mountinfo` has no `..` in it).
pub fn target_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = match std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from) {
        Some(dir) if dir.is_absolute() => dir,
        Some(dir) => root.join(dir),
        None => root.join("target"),
    };
    dir.canonicalize().unwrap_or(dir)
}

impl ScratchDir {
    pub fn new(name: &str) -> Self {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let base = target_dir().join("test-scratch");
        let dir = base.join(format!("{name}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        // Shared fixtures live in statics, which are never dropped: remove
        // what earlier test processes (now gone) left behind.
        for entry in fs::read_dir(&base).into_iter().flatten().flatten() {
            let file_name = entry.file_name();
            let rest = file_name.to_string_lossy();
            let pid = rest
                .strip_prefix(&format!("{name}-"))
                .and_then(|r| r.split('-').next());
            if let Some(pid) = pid.filter(|p| p.parse::<u32>().is_ok()) {
                if !Path::new("/proc").join(pid).exists() {
                    let _ = fs::remove_dir_all(entry.path());
                }
            }
        }
        fs::create_dir_all(&dir).unwrap();
        ScratchDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl std::ops::Deref for ScratchDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for ScratchDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if std::env::var_os("ATOMUP_KEEP_SCRATCH").is_none() {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}
