//! `atomup-publish prune`: a repository only grows (every release adds
//! commits, objects and deltas), but devices only ever need the releases a
//! vendor still serves. Prune keeps the newest K releases of every channel and
//! board plus the branch heads, and deletes older release records, deltas that
//! lead elsewhere, and objects no kept commit reaches. Deltas *into* a kept
//! commit stay, whatever their source: devices still on an old version need them.

use crate::deltagen::index_tree;
use crate::release::{files_under, published, superblocks};
use crate::repo::Repo;
use atomup_ostree::delta::{Superblock, SuperblockFile};
use atomup_ostree::object::{ObjectId, ObjectType};
use atomup_release::Release;
use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

pub const HELP: &str = "\
Usage: atomup-publish prune --repo DIR --keep-releases K [--dry-run]
Keeps the newest K releases of every channel/board and the branch heads; deletes
older release records, deltas leading to other commits, and unreachable objects.
Prints what was (or, with --dry-run, would be) freed.
";

#[derive(Default)]
struct Freed {
    files: u64,
    bytes: u64,
}

impl Freed {
    fn add(&mut self, path: &Path, dry_run: bool) -> Result {
        let len = fs::symlink_metadata(path)?.len();
        if !dry_run {
            fs::remove_file(path).map_err(|e| format!("removing {}: {e}", path.display()))?;
        }
        self.files += 1;
        self.bytes += len;
        Ok(())
    }
}

pub fn run(args: &mut lexopt::Parser) -> Result {
    use lexopt::prelude::*;
    let (mut repo, mut keep, mut dry_run) = (None, None, false);
    while let Some(arg) = args.next()? {
        match arg {
            Long("repo") => repo = Some(PathBuf::from(args.value()?)),
            Long("keep-releases") => keep = Some(args.value()?.parse::<usize>()?),
            Long("dry-run") => dry_run = true,
            Long("help") | Short('h') => {
                print!("{HELP}");
                return Ok(());
            }
            other => return Err(other.unexpected().into()),
        }
    }
    let repo = Repo::open(&repo.ok_or("--repo DIR is required")?)?;
    let keep = keep.ok_or("--keep-releases K is required")?;
    if keep == 0 {
        return Err(
            "--keep-releases must be at least 1: the current release is always kept".into(),
        );
    }

    // 1. Release records: newest K versions per channel/board survive.
    let mut kept: HashSet<ObjectId> = HashSet::new();
    let mut releases = Freed::default();
    let mut kept_releases = 0;
    for history in history_dirs(repo.root())? {
        let mut versions = Vec::new();
        for entry in fs::read_dir(&history)? {
            let path = entry?.path();
            let release = read_release(&path)?;
            versions.push((release.version, ObjectId(release.commit), path));
        }
        versions.sort_by_key(|v| std::cmp::Reverse(v.0));
        for (i, (_, commit, path)) in versions.into_iter().enumerate() {
            if i < keep {
                kept.insert(commit);
                kept_releases += 1;
            } else {
                releases.add(&path, dry_run)?;
            }
        }
        // The published file is the newest release; keep its commit regardless.
        let current = history.with_file_name("release");
        if current.exists() {
            kept.insert(ObjectId(read_release(&current)?.commit));
        }
    }
    // Branch heads are what the next delta is made from.
    for head in ref_heads(&repo.root().join("refs/heads"))? {
        kept.insert(head);
    }

    // 2. Deltas: only those leading to a kept commit are useful.
    let mut deltas = Freed::default();
    let mut delta_dirs = 0;
    for superblock in superblocks(&repo.root().join("deltas"))? {
        let bytes = fs::read(&superblock)?;
        let what = |e: atomup_ostree::Error| format!("{}: {e}", superblock.display());
        let to = Superblock::parse(SuperblockFile::parse(&bytes).map_err(what)?.unsigned)
            .map_err(what)?
            .to;
        if kept.contains(&to) {
            continue;
        }
        let dir = superblock
            .parent()
            .expect("a superblock lives in a delta directory");
        for entry in fs::read_dir(dir)? {
            deltas.add(&entry?.path(), dry_run)?;
        }
        if !dry_run {
            fs::remove_dir(dir)?;
        }
        delta_dirs += 1;
    }

    // 3. Objects: everything a kept commit reaches stays.
    let mut reachable: HashSet<(ObjectType, ObjectId)> = HashSet::new();
    for commit in &kept {
        reachable.insert((ObjectType::Commit, *commit));
        reachable.insert((ObjectType::CommitMeta, *commit));
        let index = index_tree(&repo, commit)?;
        reachable.extend(index.meta.iter().copied());
        reachable.extend(index.content.keys().map(|id| (ObjectType::File, *id)));
    }
    let mut objects = Freed::default();
    let objects_dir = repo.root().join("objects");
    for prefix in read_dir_sorted(&objects_dir)? {
        for path in read_dir_sorted(&prefix)? {
            match object_of(&prefix, &path) {
                Some(key) if reachable.contains(&key) => {}
                // Unknown names (temporary files, foreign object kinds) are left alone.
                None => {}
                Some(_) => objects.add(&path, dry_run)?,
            }
        }
    }

    let verb = if dry_run { "would free" } else { "freed" };
    println!(
        "prune: kept {kept_releases} release(s) and {} commit(s); {verb} {} release record(s), {delta_dirs} delta(s) ({} bytes), {} object(s) ({} bytes); {} bytes in all",
        kept.len(),
        releases.files,
        deltas.bytes,
        objects.files,
        objects.bytes,
        releases.bytes + deltas.bytes + objects.bytes
    );
    Ok(())
}

fn read_release(path: &Path) -> Result<Release> {
    published(path)?.ok_or_else(|| format!("{} vanished", path.display()).into())
}

/// `atomup/<channel>/<board>/history` directories.
fn history_dirs(root: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for channel in read_dir_sorted(&root.join("atomup"))? {
        for board in read_dir_sorted(&channel)? {
            let h = board.join("history");
            if h.is_dir() {
                out.push(h);
            }
        }
    }
    Ok(out)
}

fn ref_heads(dir: &Path) -> Result<Vec<ObjectId>> {
    files_under(dir)?
        .iter()
        .map(|p| {
            let text = fs::read_to_string(p)?;
            Ok(ObjectId::from_hex(text.trim()).map_err(|e| format!("{}: {e}", p.display()))?)
        })
        .collect()
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = match fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<Vec<_>>>()?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(format!("reading {}: {e}", dir.display()).into()),
    };
    out.sort();
    Ok(out)
}

/// `objects/ab/cdef….dirtree` → (DirTree, abcdef…).
fn object_of(prefix: &Path, path: &Path) -> Option<(ObjectType, ObjectId)> {
    let hi = prefix.file_name()?.to_str()?;
    let (rest, ext) = path.file_name()?.to_str()?.split_once('.')?;
    let ty = match ext {
        "commit" => ObjectType::Commit,
        "commitmeta" => ObjectType::CommitMeta,
        "dirtree" => ObjectType::DirTree,
        "dirmeta" => ObjectType::DirMeta,
        "filez" => ObjectType::File,
        _ => return None,
    };
    Some((ty, ObjectId::from_hex(&format!("{hi}{rest}")).ok()?))
}
