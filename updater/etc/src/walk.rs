//! The device's current `/etc`, as the running system sees it (the
//! overlay's merged view), read into a [`Tree`] of OSTree identities: the
//! running `/etc` is walked without following a symlink, a FIFO, socket or
//! device node is never opened (it is listed as not carried), and each entry
//! is hashed as OSTree would commit it (`atomup_deploy::identity`). Nothing
//! is written.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use atomup_deploy::identity::{identity_at, Identity};
use atomup_fsio::Want;

use crate::error::{deploy, errno, io, EtcError, Result};
use crate::fsutil;
use crate::merge::{Entry, Kind, Tree};
use crate::tree::{MAX_DEPTH, MAX_ENTRIES};

/// The current `/etc`: what can be carried, and what cannot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Current {
    pub tree: Tree,
    /// Entries that are not carried, with why ("a FIFO"), in path order.
    pub skipped: Vec<(String, &'static str)>,
}

/// Reads the `/etc` at `etc`. `hints` (the old defaults) choose between the
/// xattr encodings of OSTree versions where a file's checksum could be
/// either; the identities are always computed from disk.
pub fn read_current(etc: &Path, hints: &Tree) -> Result<Current> {
    let root: OwnedFd = atomup_fsio::open(etc, Want::Directory)
        .map_err(io("open directory", etc))?
        .into();
    let mut cur = Current::default();
    walk(&root, "", etc, 0, hints, &mut cur)?;
    cur.skipped.sort();
    Ok(cur)
}

fn walk(
    dir: impl AsFd,
    rel: &str,
    path: &Path,
    depth: usize,
    hints: &Tree,
    cur: &mut Current,
) -> Result<()> {
    // Rule: bounded memory whatever the device's /etc holds.
    if depth > MAX_DEPTH {
        return Err(EtcError::TooLarge {
            what: format!("{}", path.display()),
            limit: MAX_DEPTH as u64,
            unit: "levels",
        });
    }
    let dir = dir.as_fd();
    for name in fsutil::names(dir, path)? {
        let p = path.join(name.to_string_lossy().as_ref());
        let Ok(name) = name.into_string() else {
            cur.skipped.push((
                join(rel, &p.file_name().unwrap_or_default().to_string_lossy()),
                "a name that is not UTF-8",
            ));
            continue;
        };
        let r = join(rel, &name);
        if cur.tree.len() >= MAX_ENTRIES {
            return Err(EtcError::TooLarge {
                what: "the running /etc".into(),
                limit: MAX_ENTRIES as u64,
                unit: "entries",
            });
        }
        let hint = hints.get(&r).map(|e| e.id);
        let entry =
            match identity_at(dir, &name, &p, hint.as_ref()).map_err(deploy("the running /etc"))? {
                Identity::Dir(id) => Entry {
                    kind: Kind::Dir,
                    id,
                },
                Identity::File(id) | Identity::Symlink(id) => Entry {
                    kind: Kind::File,
                    id,
                },
                Identity::Other(what) => {
                    cur.skipped.push((r, what));
                    continue;
                }
            };
        cur.tree.insert(r.clone(), entry);
        if entry.kind == Kind::Dir {
            let sub = fsutil::open_dir_at(dir, &name).map_err(errno("open directory", &p))?;
            walk(&sub, &r, &p, depth + 1, hints, cur)?;
        }
    }
    Ok(())
}

pub(crate) fn join(rel: &str, name: &str) -> String {
    if rel.is_empty() {
        name.to_owned()
    } else {
        format!("{rel}/{name}")
    }
}
