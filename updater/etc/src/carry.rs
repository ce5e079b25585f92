//! The merge at install time, from disk to the new slot's layer: the old
//! defaults (the running commit's `/etc`, from its metadata), the device's
//! current `/etc` and the new defaults (the new commit's, from the metadata
//! the apply just persisted) are read, merged ([`crate::merge`]), and laid
//! down as the new slot's layer ([`crate::layer`]). The caller runs it after
//! the new slot is verified and before the env makes it bootable. Also the
//! read side of `atomup config-diff`.

use std::path::Path;

use atomup_fsio::Want;
use atomup_ostree::ObjectId;
use atomup_policy::Slot;
use rustix::io::Errno;

use crate::error::{errno, io, EtcError, Result};
use crate::fsutil;
use crate::layer::{install, Plan};
use crate::merge::{diff, merge, upper, Change, Report};
use crate::owned::{Owned, MAX_OWNED_SIZE, OWNED_PATH};
use crate::record::MergeRecord;
use crate::tree::MetaStore;
use crate::walk::read_current;

/// What an install carries over.
pub struct Carry<'a> {
    pub state_dir: &'a Path,
    /// Metadata object stores (`<state dir>/meta`) holding both commits.
    pub meta_dirs: &'a [&'a Path],
    /// The running commit (old defaults).
    pub from: ObjectId,
    /// The commit just installed (new defaults).
    pub to: ObjectId,
    /// The running `/etc`, as the device sees it.
    pub current_etc: &'a Path,
    /// The new slot's root, verified against `to`: its vendor-owned list.
    pub new_root: &'a Path,
    /// The slot being installed.
    pub slot: Slot,
}

/// What was carried.
#[derive(Clone, Debug)]
pub struct Carried {
    pub report: Report,
    /// Entries of the running `/etc` that cannot be carried, with why.
    pub skipped: Vec<(String, &'static str)>,
    pub record: MergeRecord,
}

impl Carried {
    /// The line `atomup update` prints after `/etc: `.
    pub fn summary(&self) -> String {
        self.record.summary()
    }
}

/// Merges and writes the new slot's layer (see the module docs).
pub fn carry(c: &Carry<'_>) -> Result<Carried> {
    let meta = MetaStore { dirs: c.meta_dirs };
    let old = meta.etc_of(&c.from)?;
    let new = meta.etc_of(&c.to)?;
    let owned = read_owned(c.new_root)?;
    let cur = read_current(c.current_etc, &old.tree)?;
    let merged = merge(&old.tree, &cur.tree, &new.tree, &|p| owned.owns(p));
    let up = upper(&merged.result, &new.tree);
    let skipped: Vec<String> = cur.skipped.iter().map(|(p, _)| p.clone()).collect();
    let record = MergeRecord::of(&merged.report, &skipped, c.from, c.to);
    install(
        c.state_dir,
        c.slot,
        &Plan {
            current: c.current_etc,
            merged: &merged.result,
            upper: &up,
            new: &new.tree,
            top: new.top,
            meta,
            record: &record,
        },
    )?;
    Ok(Carried {
        report: merged.report,
        skipped: cur.skipped,
        record,
    })
}

/// The device's changes to `/etc` against the running defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigDiff {
    /// M/A/D per path, in path order.
    pub changes: Vec<(Change, String)>,
    /// Entries that are not content (special files), with why.
    pub skipped: Vec<(String, &'static str)>,
}

/// The device's changes to `/etc` against the running commit's defaults
/// (`atomup config-diff`).
pub fn config_diff(
    meta_dirs: &[&Path],
    running: &ObjectId,
    current_etc: &Path,
) -> Result<ConfigDiff> {
    let old = MetaStore { dirs: meta_dirs }.etc_of(running)?;
    let cur = read_current(current_etc, &old.tree)?;
    Ok(ConfigDiff {
        changes: diff(&old.tree, &cur.tree),
        skipped: cur.skipped,
    })
}

/// The vendor-owned list of the slot at `root` ([`OWNED_PATH`]), read
/// without following a symlink out of it; none when the commit has none.
pub fn read_owned(root: &Path) -> Result<Owned> {
    let path = root.join(OWNED_PATH);
    let fd = atomup_fsio::open(root, Want::Directory).map_err(io("open directory", root))?;
    let (dir, name) = match fsutil::walk_parent(&fd, OWNED_PATH) {
        Ok(x) => x,
        Err(Errno::NOENT) => return Ok(Owned::default()),
        Err(e) => return Err(errno("open", &path)(e)),
    };
    let mut f = match atomup_fsio::open_at(&dir, name, Want::Regular) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Owned::default()),
        Err(e) => return Err(io("open", &path)(e)),
    };
    let bytes = atomup_fsio::read_all_capped(&mut f, MAX_OWNED_SIZE).map_err(io("read", &path))?;
    Owned::parse(&bytes).map_err(|e| EtcError::Owned {
        path,
        line: e.line,
        why: e.why,
    })
}
