//! The overlay on `/etc` at boot: lower = the booted slot's own `/etc`
//! (read-only, exactly the signed commit's), upper and work = the slot's
//! layer on the data partition. What the device then writes to `/etc`
//! lands in the layer. A slot without a layer (the factory slot on its
//! first boot, or a device that had none before) gets an empty one first:
//! the vendor defaults as they are. Also the other side of it: the running
//! slot's own tree, below the overlay ([`slot_view`]), for the delta engine.

use std::path::{Path, PathBuf};

use atomup_policy::Slot;

use crate::error::{errno, EtcError, Result};
use crate::layer::{ensure_empty, layer_dir, UPPER, WORK};

/// overlayfs's `f_type` (`OVERLAYFS_SUPER_MAGIC`).
const OVERLAY_MAGIC: i64 = 0x794c_7630;

/// What [`mount`] mounted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mounted {
    pub target: PathBuf,
    pub options: String,
}

/// Mounts the overlay of `slot` on `<root>/etc`, its layer under
/// `state_dir` (created empty when missing).
pub fn mount(root: &Path, state_dir: &Path, slot: Slot) -> Result<Mounted> {
    let etc = root.join("etc");
    let st = rustix::fs::statfs(&etc).map_err(errno("stat the file system of", &etc))?;
    // Mounting twice would stack the layer on its own merged view.
    #[allow(clippy::unnecessary_cast)]
    if st.f_type as i64 == OVERLAY_MAGIC {
        return Err(EtcError::AlreadyMounted { path: etc });
    }
    ensure_empty(state_dir, slot, &etc)?;
    let layer = layer_dir(state_dir, slot);
    let options = options(&etc, &layer.join(UPPER), &layer.join(WORK))?;
    let data = std::ffi::CString::new(options.clone()).map_err(|_| EtcError::BadOverlayPath {
        path: layer.clone(),
    })?;
    rustix::mount::mount(
        "overlay",
        &etc,
        "overlay",
        rustix::mount::MountFlags::empty(),
        data.as_c_str(),
    )
    .map_err(errno("mount the /etc overlay on", &etc))?;
    Ok(Mounted {
        target: etc,
        options,
    })
}

/// The running root as its slot holds it: where `<root>/etc` is our
/// overlay, the files under it are the device's, not the commit's, and the
/// delta engine, which reads unchanged objects from the running root and
/// re-hashes them, must see the slot's own `/etc`. So a detached clone of
/// `<root>`'s mount without its submounts (`open_tree(OPEN_TREE_CLONE)`,
/// not recursive: the overlay on `/etc` is not in it) is opened, and the
/// engine reads through `/proc/self/fd/N`. Nothing is attached anywhere and
/// nothing is left behind: the clone goes with its descriptor. Where `/etc`
/// is not an overlay the root is used as it is.
#[derive(Debug)]
pub struct SlotView {
    _clone: Option<std::os::fd::OwnedFd>,
    path: PathBuf,
}

impl SlotView {
    /// The path to read the slot's own tree from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `/etc` was an overlay (the view is a clone).
    pub fn is_clone(&self) -> bool {
        self._clone.is_some()
    }
}

/// The slot's own tree under `root` (see [`SlotView`]).
pub fn slot_view(root: &Path) -> Result<SlotView> {
    let etc = root.join("etc");
    let overlaid = match rustix::fs::statfs(&etc) {
        #[allow(clippy::unnecessary_cast)]
        Ok(st) => st.f_type as i64 == OVERLAY_MAGIC,
        Err(_) => false,
    };
    if !overlaid {
        return Ok(SlotView {
            _clone: None,
            path: root.to_owned(),
        });
    }
    use rustix::mount::OpenTreeFlags;
    let fd = rustix::mount::open_tree(
        rustix::fs::CWD,
        root,
        OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
    )
    .map_err(errno("open the slot's own tree (open_tree) at", root))?;
    let path = PathBuf::from(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&fd)
    ));
    Ok(SlotView {
        _clone: Some(fd),
        path,
    })
}

/// The overlay's option string; paths overlayfs would split are refused.
pub fn options(lower: &Path, upper: &Path, work: &Path) -> Result<String> {
    let mut parts = Vec::new();
    for (k, p) in [("lowerdir", lower), ("upperdir", upper), ("workdir", work)] {
        let s = p.to_str().filter(|s| !s.contains([',', ':', '\\']));
        let s = s.ok_or_else(|| EtcError::BadOverlayPath { path: p.into() })?;
        parts.push(format!("{k}={s}"));
    }
    Ok(parts.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Paths that overlayfs would cut at a separator are refused, not
    /// mounted as something else.
    #[test]
    fn overlay_options_refuse_separators() {
        let ok = options(Path::new("/etc"), Path::new("/var/u"), Path::new("/var/w")).unwrap();
        assert_eq!(ok, "lowerdir=/etc,upperdir=/var/u,workdir=/var/w");
        for bad in ["/var/a,b", "/var/a:b", "/var/a\\b"] {
            assert!(options(Path::new("/etc"), Path::new(bad), Path::new("/w")).is_err());
        }
    }
}
