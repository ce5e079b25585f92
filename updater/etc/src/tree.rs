//! The vendor's defaults from commit metadata: a commit's root dirtree → its
//! `etc` subtree → a [`Tree`] of identities, read from the metadata objects
//! the device keeps (`<state dir>/meta/objects/…`: the running commit's from
//! an earlier install, the new commit's as the apply just persisted them
//! with `--meta-out`). No content object is needed: identities are
//! checksums. Every object read is re-hashed before use (`atomup-deploy`).

use std::path::Path;

use atomup_ostree::object::{Commit, DirMeta, DirTree, ObjectType};
use atomup_ostree::ObjectId;

use crate::error::{deploy, fmt, EtcError, Result};
use crate::merge::{Entry, Kind, Tree};

/// At most this many entries in an `/etc` (each about 100 bytes in memory).
pub const MAX_ENTRIES: usize = 100_000;
/// At most this many levels below `/etc`.
pub const MAX_DEPTH: usize = 64;

/// A commit's `/etc`: its entries, and the dirmeta of `/etc` itself (none
/// when the commit has no `/etc`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Defaults {
    pub tree: Tree,
    pub top: Option<ObjectId>,
}

/// Where the metadata objects are.
#[derive(Clone, Copy, Debug)]
pub struct MetaStore<'a> {
    pub dirs: &'a [&'a Path],
}

impl MetaStore<'_> {
    fn read(&self, id: &ObjectId, ty: ObjectType) -> Result<Vec<u8>> {
        atomup_deploy::read_metadata_object(self.dirs, id, ty).map_err(deploy("commit metadata"))
    }

    /// The `/etc` of `commit`.
    pub fn etc_of(&self, commit: &ObjectId) -> Result<Defaults> {
        let bytes = self.read(commit, ObjectType::Commit)?;
        let c = Commit::parse(&bytes).map_err(fmt("commit"))?;
        let root = self.read(&c.root_tree, ObjectType::DirTree)?;
        let root = DirTree::parse(&root).map_err(fmt("dirtree"))?;
        let Some(etc) = root.dir(b"etc") else {
            return Ok(Defaults::default());
        };
        let mut tree = Tree::new();
        self.walk(etc.tree, "", 0, &mut tree)?;
        Ok(Defaults {
            tree,
            top: Some(etc.meta),
        })
    }

    fn walk(&self, id: ObjectId, rel: &str, depth: usize, out: &mut Tree) -> Result<()> {
        // Rule: bounded memory whatever the metadata says (a shared subtree
        // counts at every place it appears).
        if depth > MAX_DEPTH {
            return Err(EtcError::TooLarge {
                what: "the commit's /etc".into(),
                limit: MAX_DEPTH as u64,
                unit: "levels",
            });
        }
        let bytes = self.read(&id, ObjectType::DirTree)?;
        let t = DirTree::parse(&bytes).map_err(fmt("dirtree"))?;
        let join = |name: &str| {
            if rel.is_empty() {
                name.to_owned()
            } else {
                format!("{rel}/{name}")
            }
        };
        for f in &t.files {
            add(out, join(f.name.as_str()), Kind::File, f.id)?;
        }
        for d in &t.dirs {
            let p = join(d.name.as_str());
            add(out, p.clone(), Kind::Dir, d.meta)?;
            self.walk(d.tree, &p, depth + 1, out)?;
        }
        Ok(())
    }

    /// The dirmeta object `id`, parsed into owned values.
    pub fn dirmeta(&self, id: &ObjectId) -> Result<DirAttrs> {
        let bytes = self.read(id, ObjectType::DirMeta)?;
        let m = DirMeta::parse(&bytes).map_err(fmt("dirmeta"))?;
        let mut xattrs = Vec::new();
        for x in m.xattrs.iter().map_err(fmt("dirmeta xattrs"))? {
            let (k, v) = x.map_err(fmt("dirmeta xattrs"))?;
            xattrs.push((k.to_vec(), v.to_vec()));
        }
        Ok(DirAttrs {
            uid: m.uid,
            gid: m.gid,
            mode: m.mode,
            xattrs,
        })
    }
}

fn add(out: &mut Tree, path: String, kind: Kind, id: ObjectId) -> Result<()> {
    if out.len() >= MAX_ENTRIES {
        return Err(EtcError::TooLarge {
            what: "the commit's /etc".into(),
            limit: MAX_ENTRIES as u64,
            unit: "entries",
        });
    }
    out.insert(path, Entry { kind, id });
    Ok(())
}

/// A directory's owner, mode and xattrs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirAttrs {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}
