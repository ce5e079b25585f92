//! `atomup-publish sign`: signs a static delta superblock in place (OSTSGNDT
//! envelope around the original unsigned bytes) or a commit in an OSTree repo
//! (its `.commitmeta`, merged with what is already there).

use std::path::{Path, PathBuf};

use atomup_ostree::delta::{Superblock, SuperblockFile};
use atomup_ostree::object::{Commit, ObjectType};
use atomup_ostree::sign::{self, parse_secret_key, sign_superblock};
use atomup_ostree::ObjectId;

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

pub fn run(args: &mut lexopt::Parser) -> Result {
    use lexopt::prelude::*;
    let (mut key, mut delta, mut repo, mut commit) = (None, None, None, None);
    while let Some(arg) = args.next()? {
        match arg {
            Long("key") => key = Some(PathBuf::from(args.value()?)),
            Long("delta") => delta = Some(PathBuf::from(args.value()?)),
            Long("repo") => repo = Some(PathBuf::from(args.value()?)),
            Long("commit") => commit = Some(args.value()?.string()?),
            other => return Err(other.unexpected().into()),
        }
    }
    let key_path = key.ok_or("--key SECRETFILE is required")?;
    let text = std::fs::read_to_string(&key_path)
        .map_err(|e| format!("cannot read {}: {e}", key_path.display()))?;
    let key = parse_secret_key(&text)?;
    match (delta, repo, commit) {
        (Some(d), None, None) => sign_delta(&key, &d),
        (None, Some(r), Some(c)) => sign_commit(&key, &r, &c),
        _ => Err("use either --delta DIR or --repo REPO --commit CSUM".into()),
    }
}

fn sign_delta(key: &atomup_ostree::sign::SigningKey, dir: &Path) -> Result {
    let path = dir.join("superblock");
    let data = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let file = SuperblockFile::parse(&data)?;
    // Refuse to sign something the device could not parse anyway.
    Superblock::parse(file.unsigned)?;
    write_atomic(&path, &sign_superblock(key, &data)?)?;
    println!("signed {}", path.display());
    Ok(())
}

fn resolve(repo: &Path, commit: &str) -> Result<ObjectId> {
    if let Ok(id) = ObjectId::from_hex(commit) {
        return Ok(id);
    }
    let r = repo.join("refs/heads").join(commit);
    let text = std::fs::read_to_string(&r)
        .map_err(|e| format!("`{commit}` is neither a checksum nor a ref ({e})"))?;
    Ok(ObjectId::from_hex(text.trim())?)
}

fn sign_commit(key: &atomup_ostree::sign::SigningKey, repo: &Path, commit: &str) -> Result {
    let id = resolve(repo, commit)?;
    let cpath = repo.join(id.object_path(ObjectType::Commit));
    let bytes =
        std::fs::read(&cpath).map_err(|e| format!("cannot read {}: {e}", cpath.display()))?;
    if ObjectId::of(&bytes) != id {
        return Err(format!("{} does not hash to {id}", cpath.display()).into());
    }
    Commit::parse(&bytes)?;
    let mpath = repo.join(id.object_path(ObjectType::CommitMeta));
    let existing = match std::fs::read(&mpath) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(format!("cannot read {}: {e}", mpath.display()).into()),
    };
    write_atomic(&mpath, &sign::sign_commit(key, &bytes, &existing)?)?;
    println!("signed commit {id}");
    Ok(())
}

/// `atomup_fsio::replace`: the old signature file or the new one after a
/// power cut, durable once this returns.
fn write_atomic(path: &Path, data: &[u8]) -> Result {
    atomup_fsio::replace(path, data)
        .map_err(|e| format!("cannot replace {}: {e}", path.display()))?;
    Ok(())
}
