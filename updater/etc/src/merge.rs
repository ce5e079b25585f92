//! The three-way merge of `/etc`, as a pure function over three trees:
//! **old** (the running commit's defaults), **current** (the device's /etc as
//! it is now) and **new** (the new commit's defaults). OSTree's rules
//! (`ostree admin upgrade`'s configuration merge), per path:
//!
//! 1. A path the device did not touch (current == old) follows the new
//!    defaults: changed, added or removed as the vendor did.
//! 2. A path the device changed, added or deleted (current != old) is kept as
//!    the device has it; a deletion stays a deletion.
//! 3. If the vendor changed that path too (new != old, and new != current),
//!    the device's version is kept and the path is reported as a conflict.
//! 4. A path the vendor marks as its own always takes the new default,
//!    whatever the device did (reported separately).
//!
//! Identity is OSTree's: a file or symlink is its content checksum (which
//! covers the data, mode, owner and xattrs), a directory its dirmeta checksum
//! (mode, owner, xattrs). So a chmod, a chown or an xattr change is a change,
//! and a type change (file → directory, file → symlink) is a change of the path.
//!
//! The result must be a tree, which the per-path rules alone do not promise;
//! two fix-ups keep it one, both in the direction of the rules above:
//! - a vendor entry whose directory the device deleted (or turned into a
//!   file) is dropped with it: the device's deletion covers the subtree;
//! - a device entry whose directory the vendor removed or turned into a file
//!   keeps the device's directory, reported as a conflict on the directory;
//!   unless the vendor owns that directory (rule 4), in which case the
//!   device's entry is dropped and reported as forced.

use std::collections::BTreeMap;

use atomup_ostree::ObjectId;

/// What is at a path: a directory, or a content object (a regular file or a
/// symlink). The two kinds of content object are not told apart: a commit's
/// dirtree lists both as files by checksum and does not say which (the
/// device holds no content objects to look it up), and the checksum already
/// differs between a symlink and any regular file, because it covers the
/// mode. So a file that became a symlink is a change of its checksum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Dir,
    File,
}

/// One entry's identity: its kind and its OSTree checksum (content checksum
/// for files and symlinks, dirmeta checksum for directories).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    pub id: ObjectId,
}

/// A tree: relative paths under `/etc` (`"hosts"`, `"ssh/sshd_config"`; the
/// top directory itself is not an entry) to their identities. A consistent
/// tree has every entry's parent as a `Dir` entry.
pub type Tree = BTreeMap<String, Entry>;

/// The device's changes that were carried over, by path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Present in old and current, different.
    pub modified: Vec<String>,
    /// In old, not in current.
    pub removed: Vec<String>,
    /// In current, not in old.
    pub added: Vec<String>,
    /// Device changes kept although the vendor changed the same path.
    pub conflicts: Vec<String>,
    /// Device changes overridden because the vendor owns the path.
    pub forced: Vec<String>,
}

impl Report {
    /// `"13 modified, 0 removed, 18 added, 1 conflicts (kept the device's)"`.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} modified, {} removed, {} added, {} conflicts (kept the device's)",
            self.modified.len(),
            self.removed.len(),
            self.added.len(),
            self.conflicts.len()
        );
        if !self.forced.is_empty() {
            s.push_str(&format!(
                ", {} reset to the vendor's default",
                self.forced.len()
            ));
        }
        s
    }
}

/// The merged tree and what it carried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Merged {
    pub result: Tree,
    pub report: Report,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Device,
    Vendor,
    /// A vendor-owned path: the new default, forced.
    Forced,
}

/// One of the device's changes: old vs current.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Modified,
    Added,
    Removed,
}

impl Change {
    /// `M`, `A` or `D`, as `ostree admin config-diff` prints them.
    pub fn letter(self) -> char {
        match self {
            Change::Modified => 'M',
            Change::Added => 'A',
            Change::Removed => 'D',
        }
    }
}

/// The device's changes (old vs current), in path order: what `atomup
/// config-diff` lists.
pub fn diff(old: &Tree, current: &Tree) -> Vec<(Change, String)> {
    let mut out = Vec::new();
    for p in paths(&[old, current]) {
        match (old.get(p), current.get(p)) {
            (Some(o), Some(c)) if o != c => out.push((Change::Modified, p.clone())),
            (Some(_), None) => out.push((Change::Removed, p.clone())),
            (None, Some(_)) => out.push((Change::Added, p.clone())),
            _ => {}
        }
    }
    out
}

fn paths<'a>(trees: &[&'a Tree]) -> Vec<&'a String> {
    let mut all: Vec<&String> = trees.iter().flat_map(|t| t.keys()).collect();
    all.sort();
    all.dedup();
    all
}

fn parent(p: &str) -> Option<&str> {
    p.rsplit_once('/').map(|(d, _)| d)
}

/// Merges per the module rules. `vendor_owned(path)` says whether the vendor
/// owns a path (rule 4).
pub fn merge(
    old: &Tree,
    current: &Tree,
    new: &Tree,
    vendor_owned: &dyn Fn(&str) -> bool,
) -> Merged {
    let mut report = Report::default();
    // Per-path decisions (rules 1-4).
    let mut decided: BTreeMap<&str, (Option<Entry>, Side)> = BTreeMap::new();
    for p in paths(&[old, current, new]) {
        let (o, c, n) = (old.get(p), current.get(p), new.get(p));
        let touched = o != c;
        if touched {
            match (o, c) {
                (Some(_), Some(_)) => report.modified.push(p.clone()),
                (Some(_), None) => report.removed.push(p.clone()),
                (None, Some(_)) => report.added.push(p.clone()),
                (None, None) => unreachable!("touched means old != current"),
            }
        }
        let pick = if !touched {
            (n.copied(), Side::Vendor)
        } else if vendor_owned(p) {
            if n != c {
                report.forced.push(p.clone());
            }
            (n.copied(), Side::Forced)
        } else {
            if n != o && n != c {
                report.conflicts.push(p.clone());
            }
            (c.copied(), Side::Device)
        };
        decided.insert(p.as_str(), pick);
    }

    // Fix-ups: every entry kept needs its parent as a directory.
    let mut result: BTreeMap<&str, (Entry, Side)> = BTreeMap::new();
    for (&p, &(e, side)) in &decided {
        let Some(e) = e else { continue };
        if keep_parents(p, side, &mut result, current, &decided, &mut report) {
            result.insert(p, (e, side));
        }
    }
    report.conflicts.sort();
    report.conflicts.dedup();
    report.forced.sort();
    report.forced.dedup();
    Merged {
        result: result
            .into_iter()
            .map(|(p, (e, _))| (p.to_owned(), e))
            .collect(),
        report,
    }
}

/// Makes sure `p`'s ancestors are directories in `result`, restoring the
/// device's directory where the vendor removed it under a device entry;
/// false when `p` must be dropped. Parents are visited before children (a
/// prefix sorts first), so `result` already holds every decided ancestor.
fn keep_parents<'a>(
    p: &'a str,
    side: Side,
    result: &mut BTreeMap<&'a str, (Entry, Side)>,
    current: &Tree,
    decided: &BTreeMap<&'a str, (Option<Entry>, Side)>,
    report: &mut Report,
) -> bool {
    let Some(q) = parent(p) else { return true };
    if matches!(result.get(q), Some((e, _)) if e.kind == Kind::Dir) {
        return true;
    }
    let q_side = decided.get(q).map(|d| d.1);
    match side {
        // The device deleted or replaced the directory: its deletion covers
        // the vendor's entries under it.
        Side::Vendor | Side::Forced => false,
        Side::Device => {
            if q_side == Some(Side::Forced) {
                report.forced.push(p.to_owned());
                return false;
            }
            // The vendor removed q or made it a non-directory; the device has
            // content under it: keep the device's directory.
            let Some(&dir) = current.get(q).filter(|e| e.kind == Kind::Dir) else {
                return false;
            };
            if !keep_parents(q, Side::Device, result, current, decided, report) {
                return false;
            }
            let q_key = decided.get_key_value(q).map_or(q, |(k, _)| *k);
            result.insert(q_key, (dir, Side::Device));
            report.conflicts.push(q.to_owned());
            true
        }
    }
}

/// What the device's side of the new slot's /etc holds on top of the new
/// defaults (an overlay upper layer): the entries to copy from the current
/// /etc, and the paths to hide (whiteouts).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Upper {
    /// Paths whose merged entry differs from the new default, in path order
    /// (directories before what they hold): copied from the current /etc.
    /// Their ancestors that are not listed have the same metadata in the
    /// merged tree and the new defaults; the writer creates them with it.
    pub copy: Vec<String>,
    /// Paths of the new defaults that the merge removed; only the topmost of
    /// a removed subtree is listed.
    pub whiteout: Vec<String>,
}

/// The upper layer that makes the new defaults look like `merged`.
pub fn upper(merged: &Tree, new: &Tree) -> Upper {
    let mut up = Upper::default();
    for p in paths(&[merged, new]) {
        match (merged.get(p), new.get(p)) {
            (Some(m), n) if Some(m) != n => up.copy.push(p.clone()),
            (Some(m), Some(_)) if m.kind == Kind::Dir => {
                // Same directory metadata: needed in the upper only if
                // something below it is; added when a child is (see below).
            }
            (None, Some(_)) => {
                // A whiteout means something only where the merged tree and
                // the new defaults both have the parent directory; otherwise
                // an ancestor is removed or replaced, which hides it already.
                let parent_is_dir = parent(p).is_none_or(|q| {
                    merged.get(q).is_some_and(|e| e.kind == Kind::Dir)
                        && new.get(q).is_some_and(|e| e.kind == Kind::Dir)
                });
                if parent_is_dir {
                    up.whiteout.push(p.clone());
                }
            }
            _ => {}
        }
    }
    up
}

#[cfg(test)]
mod tests;
