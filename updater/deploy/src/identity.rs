//! OSTree identities of entries on disk, for callers outside the engine (the
//! `/etc` merge hashes the running `/etc` with them): the same no-follow,
//! never-blocking reads and the same checksums the verification uses, so an
//! entry hashes here exactly as it would in a written slot.

use std::os::fd::AsFd;
use std::path::Path;

use atomup_ostree::object::{DirMeta, Xattrs, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG};
use atomup_ostree::ObjectId;
use rustix::fs::{AtFlags, FileType};

use crate::error::{fmt, io, Result};
use crate::nofollow;

/// What an entry is, with its OSTree checksum where it has one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Identity {
    /// A directory: its dirmeta checksum (owner, mode, xattrs).
    Dir(ObjectId),
    /// A regular file: its content checksum (header + data).
    File(ObjectId),
    /// A symbolic link: its content checksum (header with the target).
    Symlink(ObjectId),
    /// Anything else (FIFO, socket, device node): never opened; the name of
    /// its type ("a FIFO").
    Other(&'static str),
}

/// The identity of `name` in `dir` (`path` names it in errors and is used
/// for a symlink's xattrs), read without following a symlink and without
/// opening anything but a regular file or a directory. With `expected`, the
/// xattr encoding of an older OSTree is tried too (see the verification);
/// the result is computed from disk either way.
pub fn identity_at(
    dir: impl AsFd,
    name: &str,
    path: &Path,
    expected: Option<&ObjectId>,
) -> Result<Identity> {
    let dir = dir.as_fd();
    let c = nofollow::cname(name);
    let st = rustix::fs::statat(dir, c.as_c_str(), AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| io("stat", path)(e.into()))?;
    match st.st_mode & S_IFMT {
        S_IFDIR => {
            let fd = nofollow::open_dir_at(dir, name).map_err(io("open directory", path))?;
            Ok(Identity::Dir(dirmeta_id(&fd, path, expected)?))
        }
        S_IFREG => {
            let f = nofollow::open_regular_at(dir, name).map_err(io("open", path))?;
            let (id, _, _) = nofollow::hash_regular(&f, path, expected)?;
            Ok(Identity::File(id))
        }
        S_IFLNK => {
            let (id, _, _) = nofollow::hash_symlink(dir, &c, path, expected)?;
            Ok(Identity::Symlink(id))
        }
        m => Ok(Identity::Other(atomup_fsio::type_name(
            FileType::from_raw_mode(m),
        ))),
    }
}

/// The dirmeta checksum of an open directory, as [`identity_at`] computes it.
pub fn dirmeta_id(dir: impl AsFd, path: &Path, expected: Option<&ObjectId>) -> Result<ObjectId> {
    let dir = dir.as_fd();
    let st = rustix::fs::fstat(dir).map_err(|e| io("stat", path)(e.into()))?;
    let mut cands = Vec::new();
    for x in nofollow::xattr_candidates(xattrs_of(dir).map_err(io("read xattrs of", path))?) {
        let meta = DirMeta {
            uid: st.st_uid,
            gid: st.st_gid,
            mode: st.st_mode,
            xattrs: Xattrs::parse(&x).map_err(fmt("xattrs"))?,
        };
        cands.push((ObjectId::of(&meta.encode()), ()));
    }
    Ok(nofollow::pick(cands, expected).unwrap_or_default().0)
}

/// The xattrs of an open file or directory as (name, value) pairs, in
/// `listxattr` order (none on a file system without xattrs).
pub fn xattrs_of(fd: impl AsFd) -> std::io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    nofollow::fd_xattr_list(fd)
}

/// The xattrs of a symlink itself, by path.
pub fn link_xattrs_of(path: &Path) -> std::io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    nofollow::link_xattr_list(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::read_meta;
    use atomup_ostree::object::{Commit, DirTree, ObjectType};
    use std::process::Command;

    fn ostree(args: &[&str]) -> String {
        let out = Command::new("ostree")
            .args(args)
            .output()
            .expect("ostree CLI");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// Each kind of entry hashes to the id `ostree commit` gives it, and a
    /// FIFO is reported by type without being opened (no writer: an open
    /// would block).
    #[test]
    fn identities_match_ostree_and_a_fifo_is_never_opened() {
        let base = std::env::temp_dir().join(format!("atomup-identity-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let tree = base.join("tree");
        std::fs::create_dir_all(tree.join("d")).unwrap();
        std::fs::write(tree.join("f"), "data").unwrap();
        std::os::unix::fs::symlink("f", tree.join("l")).unwrap();
        let repo = base.join("repo");
        let r = format!("--repo={}", repo.display());
        ostree(&[&r, "init", "--mode=archive"]);
        let rev = ostree(&[
            &r,
            "commit",
            "-b",
            "t",
            "-s",
            "t",
            &tree.display().to_string(),
        ]);
        let rev = ObjectId::from_hex(&rev).unwrap();
        let commit = read_meta(&[&repo], &rev, ObjectType::Commit).unwrap();
        let commit = Commit::parse(&commit).unwrap();
        let root = read_meta(&[&repo], &commit.root_tree, ObjectType::DirTree).unwrap();
        let root = DirTree::parse(&root).unwrap();

        let dir = crate::nofollow::open_root(&tree).unwrap();
        let at = |n: &str| identity_at(&dir, n, &tree.join(n), None).unwrap();
        assert_eq!(at("f"), Identity::File(root.file(b"f").unwrap().id));
        assert_eq!(at("l"), Identity::Symlink(root.file(b"l").unwrap().id));
        assert_eq!(at("d"), Identity::Dir(root.dir(b"d").unwrap().meta));
        assert_eq!(dirmeta_id(&dir, &tree, None).unwrap(), commit.root_meta);
        rustix::fs::mknodat(
            &dir,
            "p",
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        assert_eq!(at("p"), Identity::Other("a FIFO"));
        std::fs::remove_dir_all(&base).unwrap();
    }
}
