use super::*;

/// Builds a tree from `path kind tag` triples; the tag stands for the
/// checksum (same tag = same content, mode, owner and xattrs).
fn tree(entries: &[(&str, Kind, u8)]) -> Tree {
    entries
        .iter()
        .map(|&(p, kind, tag)| {
            (
                p.to_owned(),
                Entry {
                    kind,
                    id: ObjectId([tag; 32]),
                },
            )
        })
        .collect()
}

// A symlink is a content object like a file (see `Kind`); `L` marks the
// entries the scenarios mean as symlinks, whose checksums (tags) differ.
use Kind::{Dir as D, File as F, File as L};

fn none(_: &str) -> bool {
    false
}

fn run(old: &Tree, cur: &Tree, new: &Tree) -> Merged {
    merge(old, cur, new, &none)
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Rule 1: everything the device did not touch follows the new defaults:
/// changed, added and removed by the vendor.
#[test]
fn untouched_paths_follow_the_new_defaults() {
    let old = tree(&[("hosts", F, 1), ("motd", F, 1), ("gone", F, 1)]);
    let new = tree(&[("hosts", F, 2), ("motd", F, 1), ("fresh", F, 1)]);
    let m = run(&old, &old, &new);
    assert_eq!(m.result, new);
    assert_eq!(m.report, Report::default());
    assert_eq!(
        m.report.summary(),
        "0 modified, 0 removed, 0 added, 0 conflicts (kept the device's)"
    );
}

/// Rule 2: the device's modifications, additions and deletions are kept,
/// and a deletion stays a deletion even when the vendor leaves the file alone.
#[test]
fn device_changes_are_kept_and_deletions_stay_deleted() {
    let old = tree(&[("hosts", F, 1), ("motd", F, 1), ("issue", F, 1)]);
    let cur = tree(&[("hosts", F, 9), ("issue", F, 1), ("mine.conf", F, 7)]);
    let new = tree(&[("hosts", F, 1), ("motd", F, 1), ("issue", F, 2)]);
    let m = run(&old, &cur, &new);
    assert_eq!(
        m.result,
        tree(&[("hosts", F, 9), ("issue", F, 2), ("mine.conf", F, 7)])
    );
    assert_eq!(m.report.modified, strs(&["hosts"]));
    assert_eq!(m.report.removed, strs(&["motd"]));
    assert_eq!(m.report.added, strs(&["mine.conf"]));
    assert!(m.report.conflicts.is_empty());
}

/// Rule 3: both changed the same file → the device's version, reported as a
/// conflict; both deleted or both made the same change → no conflict.
#[test]
fn both_changed_keeps_the_device_version_as_a_conflict() {
    let old = tree(&[("a", F, 1), ("b", F, 1), ("c", F, 1), ("d", F, 1)]);
    let cur = tree(&[("a", F, 8), ("c", F, 5)]);
    let new = tree(&[("a", F, 2), ("b", F, 2), ("c", F, 5)]);
    let m = run(&old, &cur, &new);
    assert_eq!(m.result, tree(&[("a", F, 8), ("c", F, 5)]));
    assert_eq!(
        m.report.conflicts,
        strs(&["a", "b"]),
        "b: device deleted, vendor changed"
    );
    assert_eq!(m.report.modified, strs(&["a", "c"]));
    assert_eq!(m.report.removed, strs(&["b", "d"]));
    assert_eq!(
        m.report.summary(),
        "2 modified, 2 removed, 0 added, 2 conflicts (kept the device's)"
    );
}

/// A mode-only, owner-only or xattr-only change is a change (it changes the
/// checksum), on files and on directories.
#[test]
fn metadata_only_changes_count() {
    let old = tree(&[("ssh", D, 1), ("ssh/key", F, 1)]);
    let cur = tree(&[("ssh", D, 3), ("ssh/key", F, 4)]);
    let new = tree(&[("ssh", D, 1), ("ssh/key", F, 1), ("ssh/new", F, 1)]);
    let m = run(&old, &cur, &new);
    assert_eq!(
        m.result,
        tree(&[("ssh", D, 3), ("ssh/key", F, 4), ("ssh/new", F, 1)])
    );
    assert_eq!(m.report.modified, strs(&["ssh", "ssh/key"]));
}

/// Type changes by the device (file → directory, file → symlink) are kept
/// whole, and a vendor file under what the device turned into a file is
/// dropped with it.
#[test]
fn device_type_changes_are_kept() {
    let old = tree(&[
        ("conf", F, 1),
        ("link", F, 1),
        ("dir", D, 1),
        ("dir/x", F, 1),
    ]);
    let cur = tree(&[
        ("conf", D, 2),
        ("conf/part", F, 2),
        ("link", L, 3),
        ("dir", F, 4),
    ]);
    let new = tree(&[
        ("conf", F, 5),
        ("link", F, 1),
        ("dir", D, 1),
        ("dir/x", F, 6),
        ("dir/y", F, 1),
    ]);
    let m = run(&old, &cur, &new);
    assert_eq!(m.result, cur);
    assert_eq!(m.report.conflicts, strs(&["conf", "dir/x"]));
    assert_eq!(m.report.modified, strs(&["conf", "dir", "link"]));
    assert_eq!(m.report.added, strs(&["conf/part"]));
    assert_eq!(m.report.removed, strs(&["dir/x"]));
}

/// Vendor type changes on untouched paths are followed; a device addition
/// inside a directory the vendor removed or replaced keeps the device's
/// directory, reported as a conflict.
#[test]
fn vendor_type_changes_and_device_content_under_them() {
    let old = tree(&[("a", D, 1), ("a/f", F, 1), ("b", D, 1), ("c", F, 1)]);
    let cur = tree(&[
        ("a", D, 1),
        ("a/f", F, 1),
        ("b", D, 1),
        ("b/mine", F, 7),
        ("c", F, 1),
    ]);
    let new = tree(&[("a", F, 2), ("c", L, 2)]);
    let m = run(&old, &cur, &new);
    assert_eq!(
        m.result,
        tree(&[("a", F, 2), ("b", D, 1), ("b/mine", F, 7), ("c", L, 2)])
    );
    assert_eq!(m.report.added, strs(&["b/mine"]));
    assert_eq!(m.report.conflicts, strs(&["b"]));
}

/// The device deleting a whole directory deletes it from the result,
/// including what the vendor adds to it.
#[test]
fn a_deleted_directory_stays_deleted_with_its_new_content() {
    let old = tree(&[("cron.d", D, 1), ("cron.d/job", F, 1)]);
    let cur = tree(&[]);
    let new = tree(&[("cron.d", D, 1), ("cron.d/job", F, 1), ("cron.d/new", F, 1)]);
    let m = run(&old, &cur, &new);
    assert_eq!(m.result, tree(&[]));
    assert_eq!(m.report.removed, strs(&["cron.d", "cron.d/job"]));
    assert!(m.report.conflicts.is_empty());
}

/// Deep device additions under a directory the vendor removed restore the
/// device's whole chain of directories.
#[test]
fn deep_device_additions_restore_their_directories() {
    let old = tree(&[("x", D, 1), ("x/y", D, 1)]);
    let cur = tree(&[("x", D, 1), ("x/y", D, 1), ("x/y/z", F, 3)]);
    let new = tree(&[]);
    let m = run(&old, &cur, &new);
    assert_eq!(m.result, cur);
    assert_eq!(m.report.conflicts, strs(&["x", "x/y"]));
}

/// Rule 4: a vendor-owned path takes the new default whatever the device did,
/// and device content under a vendor-owned path that is no longer a
/// directory is dropped; both reported as forced.
#[test]
fn vendor_owned_paths_take_the_new_default() {
    let old = tree(&[("owned.conf", F, 1), ("own.d", D, 1), ("free", F, 1)]);
    let cur = tree(&[
        ("owned.conf", F, 9),
        ("own.d", D, 1),
        ("own.d/mine", F, 7),
        ("free", F, 9),
    ]);
    let new = tree(&[("owned.conf", F, 2), ("own.d", F, 2), ("free", F, 2)]);
    let owned = |p: &str| p == "owned.conf" || p == "own.d" || p.starts_with("own.d/");
    let m = merge(&old, &cur, &new, &owned);
    assert_eq!(
        m.result,
        tree(&[("free", F, 9), ("own.d", F, 2), ("owned.conf", F, 2)])
    );
    assert_eq!(m.report.forced, strs(&["own.d/mine", "owned.conf"]));
    assert_eq!(m.report.conflicts, strs(&["free"]));
    assert!(m
        .report
        .summary()
        .ends_with(", 2 reset to the vendor's default"));
}

/// The result is always a consistent tree, whatever the three inputs are
/// (each consistent): exhaustive over small trees.
#[test]
fn the_result_is_always_a_tree() {
    // All consistent trees over paths a, a/b with kinds {absent, D, F(1), F(2)}.
    let kinds: [Option<(Kind, u8)>; 4] = [None, Some((D, 1)), Some((F, 1)), Some((F, 2))];
    let mut trees = Vec::new();
    for a in kinds {
        for b in kinds {
            let mut t = Tree::new();
            if let Some((k, tag)) = a {
                t.insert(
                    "a".into(),
                    Entry {
                        kind: k,
                        id: ObjectId([tag; 32]),
                    },
                );
            }
            if let Some((k, tag)) = b {
                if !matches!(a, Some((D, _))) {
                    continue;
                }
                t.insert(
                    "a/b".into(),
                    Entry {
                        kind: k,
                        id: ObjectId([tag; 32]),
                    },
                );
            }
            trees.push(t);
        }
    }
    let owned = |p: &str| p == "a";
    for o in &trees {
        for c in &trees {
            for n in &trees {
                for own in [&none as &dyn Fn(&str) -> bool, &owned] {
                    let m = merge(o, c, n, own);
                    for p in m.result.keys() {
                        if let Some(q) = parent(p) {
                            assert_eq!(
                                m.result.get(q).map(|e| e.kind),
                                Some(D),
                                "{p} without its directory: {o:?} {c:?} {n:?}"
                            );
                        }
                    }
                    // Untouched by the device and no fix-up: the new default.
                    if o == c {
                        assert_eq!(&m.result, n);
                    }
                }
            }
        }
    }
}

/// `diff` lists the device's changes as M/A/D, like `ostree admin config-diff`.
#[test]
fn config_diff_lists_the_device_changes() {
    let old = tree(&[("a", F, 1), ("b", F, 1), ("c", F, 1)]);
    let cur = tree(&[("a", F, 2), ("c", F, 1), ("d", L, 1)]);
    let d: Vec<String> = diff(&old, &cur)
        .into_iter()
        .map(|(c, p)| format!("{} {p}", c.letter()))
        .collect();
    assert_eq!(d, strs(&["M a", "D b", "A d"]));
}

/// The upper layer holds exactly the differences from the new defaults:
/// entries to copy (including a directory whose metadata differs) and
/// whiteouts only where they mean something.
#[test]
fn upper_holds_the_differences_from_the_new_defaults() {
    let new = tree(&[
        ("a", F, 1),
        ("gone", F, 1),
        ("d", D, 1),
        ("d/x", F, 1),
        ("d/y", F, 1),
        ("r", D, 1),
        ("r/z", F, 1),
        ("t", D, 1),
        ("t/w", F, 1),
    ]);
    let merged = tree(&[
        ("a", F, 2),
        ("d", D, 1),
        ("d/x", F, 1),
        ("d/mine", F, 5),
        ("m", D, 3),
        ("t", F, 4),
    ]);
    let up = upper(&merged, &new);
    assert_eq!(up.copy, strs(&["a", "d/mine", "m", "t"]));
    assert_eq!(
        up.whiteout,
        strs(&["d/y", "gone", "r"]),
        "r/z is hidden by r, t/w by the file t"
    );
}

/// Both sides adding the same path: the same entry is no conflict, a
/// different one keeps the device's and is one.
#[test]
fn both_added_keeps_the_device_entry() {
    let old = tree(&[]);
    let cur = tree(&[("same", F, 1), ("differs", F, 2), ("kind", D, 3)]);
    let new = tree(&[("same", F, 1), ("differs", F, 4), ("kind", F, 5)]);
    let m = run(&old, &cur, &new);
    assert_eq!(m.result, cur);
    assert_eq!(m.report.added, strs(&["differs", "kind", "same"]));
    assert_eq!(m.report.conflicts, strs(&["differs", "kind"]));
}

/// Rule 4 on every kind of device change: a vendor-owned file the device
/// deleted comes back as the new default; one the vendor removed goes even
/// though the device changed it; a device file added inside a vendor-owned
/// `dir/**` that is still a directory is dropped. All reported as forced;
/// an owned path the device left alone is not.
#[test]
fn vendor_owned_paths_override_deletions_additions_and_changes() {
    let old = tree(&[
        ("deleted", F, 1),
        ("dropped", F, 1),
        ("untouched", F, 1),
        ("o.d", D, 1),
        ("o.d/f", F, 1),
    ]);
    let cur = tree(&[
        ("dropped", F, 9),
        ("untouched", F, 1),
        ("o.d", D, 1),
        ("o.d/f", F, 1),
        ("o.d/mine", F, 7),
    ]);
    let new = tree(&[
        ("deleted", F, 2),
        ("untouched", F, 2),
        ("o.d", D, 1),
        ("o.d/f", F, 2),
    ]);
    // Every path vendor-owned (as `**` would say, were it allowed).
    let m = merge(&old, &cur, &new, &|_| true);
    assert_eq!(m.result, new);
    assert_eq!(m.report.forced, strs(&["deleted", "dropped", "o.d/mine"]));
    assert!(m.report.conflicts.is_empty());
}

/// A symlink retargeted by the device is a modification like a file edit
/// (its checksum covers the target), kept over the vendor's unchanged link.
#[test]
fn a_retargeted_symlink_is_kept() {
    let old = tree(&[("link", L, 1), ("a", F, 1), ("b", F, 1)]);
    let cur = tree(&[("link", L, 2), ("a", F, 1), ("b", F, 1)]);
    let new = tree(&[("link", L, 1), ("a", F, 3), ("b", F, 1)]);
    let m = run(&old, &cur, &new);
    assert_eq!(m.result, tree(&[("link", L, 2), ("a", F, 3), ("b", F, 1)]));
    assert_eq!(m.report.modified, strs(&["link"]));
}
