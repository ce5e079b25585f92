//! Verification: the written tree hashed back from disk into OSTree's
//! (dirtree, dirmeta) checksums, to be compared with the signed commit. It
//! is the last step of an apply and runs alone, so it uses both cores: two
//! threads hash the subtrees a few levels down, then this one hashes the top
//! of the tree with their results.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use atomup_ostree::object::{DirTree, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG};
use atomup_ostree::ObjectId;
use rustix::fs::AtFlags;

use crate::error::{fmt, io, DeployError, Result};
use crate::limits::MAX_DEPTH;
use crate::nofollow;
use crate::readback::{ctime, HashCache, Hashed};

/// Loads an expected dirtree's bytes by id (verification hints).
pub(crate) type TreeLoader<'l> = &'l (dyn Fn(&ObjectId) -> Option<Arc<[u8]>> + Sync);

/// How deep the subtrees handed to the two threads are.
const PIECE_DEPTH: usize = 3;

/// Hashes the tree under `root` (open as `root_fd`). `seeded` holds
/// checksums read back earlier, used only while a file's inode, ctime and
/// size are unchanged. With `expected` (the commit's root tree and meta) and
/// `load`, the subtrees are shared between two threads.
pub(crate) fn hash_tree(
    root_fd: &OwnedFd,
    root: &Path,
    seeded: &HashCache,
    expected: Option<(ObjectId, ObjectId)>,
    load: TreeLoader<'_>,
) -> Result<(ObjectId, ObjectId)> {
    let pieces = expected.map(|e| pieces(e, load)).unwrap_or_default();
    let next = AtomicUsize::new(0);
    let done = Mutex::new(HashMap::new());
    let work = || {
        let mut v = Verifier::new(seeded, None, load);
        while let Some((rel, ids)) = pieces.get(next.fetch_add(1, Ordering::Relaxed)) {
            // A piece that fails here is simply hashed again (and its error
            // reported) by the final pass over the top of the tree.
            let path = root.join(rel);
            let Ok(fd) = nofollow::walk_dir(root_fd, rel) else {
                continue;
            };
            if let Ok(r) = v.hash_dir(&fd, &path, PIECE_DEPTH, Some(*ids)) {
                done.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(path, r);
            }
        }
    };
    if !pieces.is_empty() {
        std::thread::scope(|s| {
            s.spawn(work);
            work();
        });
    }
    let done = done.into_inner().unwrap_or_else(|e| e.into_inner());
    Verifier::new(seeded, Some(&done), load).hash_dir(root_fd, root, 0, expected)
}

/// The commit's directories `PIECE_DEPTH` levels down, with their expected
/// ids, from the dirtrees alone (nothing read from the target).
fn pieces(root: (ObjectId, ObjectId), load: TreeLoader<'_>) -> Vec<(String, (ObjectId, ObjectId))> {
    let mut level = vec![(String::new(), root)];
    for _ in 0..PIECE_DEPTH {
        let mut below = Vec::new();
        for (rel, (tree, _)) in level {
            let Some(tree) = load(&tree) else { continue };
            let Ok(tree) = DirTree::parse(&tree) else {
                continue;
            };
            for d in &tree.dirs {
                below.push((nofollow::child_rel(&rel, d.name.as_str()), (d.tree, d.meta)));
            }
        }
        level = below;
    }
    level
}

struct Verifier<'a> {
    /// Checksums read back earlier (the seed's).
    seeded: &'a HashCache,
    /// Checksums this walker computed (hard links are hashed once).
    own: HashCache,
    /// Subtrees already hashed by the two threads, by path.
    done: Option<&'a HashMap<PathBuf, (ObjectId, ObjectId)>>,
    load: TreeLoader<'a>,
}

impl<'a> Verifier<'a> {
    fn new(
        seeded: &'a HashCache,
        done: Option<&'a HashMap<PathBuf, (ObjectId, ObjectId)>>,
        load: TreeLoader<'a>,
    ) -> Self {
        Verifier {
            seeded,
            own: HashCache::new(),
            done,
            load,
        }
    }

    /// Hashes `dir` (at `path`, `depth` levels below the root). With
    /// `expected` (tree, meta) ids, xattr encodings of older OSTree versions
    /// are tried where the sorted one does not match; the result is still
    /// computed from disk only: hints choose between encodings, they never
    /// supply entries.
    fn hash_dir(
        &mut self,
        dir: &OwnedFd,
        path: &Path,
        depth: usize,
        expected: Option<(ObjectId, ObjectId)>,
    ) -> Result<(ObjectId, ObjectId)> {
        use atomup_ostree::object::{DirEntry, FileEntry};
        use atomup_ostree::SafeName;
        if depth > MAX_DEPTH {
            return Err(DeployError::TooDeep { limit: MAX_DEPTH });
        }
        let meta_id = crate::identity::dirmeta_id(dir, path, expected.as_ref().map(|e| &e.1))?;
        let hint_bytes = expected.and_then(|(t, _)| (self.load)(&t));
        let hint = hint_bytes.as_deref().and_then(|b| DirTree::parse(b).ok());
        let mut names: Vec<String> = Vec::new();
        for n in nofollow::dir_names(dir, path)? {
            names.push(n.into_string().map_err(|_| DeployError::BadFileType {
                path: path.to_owned(),
            })?);
        }
        names.sort();
        let mut files = Vec::new();
        let mut dirs = Vec::new();
        for name in &names {
            let p = path.join(name);
            let safe = SafeName::new(name).map_err(fmt("file name"))?;
            let c = nofollow::cname(name);
            let want_file = hint
                .as_ref()
                .and_then(|h| h.file(name.as_bytes()))
                .map(|f| f.id);
            let s = rustix::fs::statat(dir, c.as_c_str(), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| io("stat", &p)(e.into()))?;
            match s.st_mode & S_IFMT {
                S_IFDIR => {
                    let want_dir = hint
                        .as_ref()
                        .and_then(|h| h.dir(name.as_bytes()))
                        .map(|d| (d.tree, d.meta));
                    let (tree, meta) = match self.done.and_then(|d| d.get(&p)) {
                        Some(ids) => *ids,
                        None => {
                            let sub = nofollow::open_dir_at(dir, name)
                                .map_err(io("open directory", &p))?;
                            self.hash_dir(&sub, &p, depth + 1, want_dir)?
                        }
                    };
                    dirs.push(DirEntry {
                        name: safe,
                        tree,
                        meta,
                    });
                }
                S_IFREG => {
                    let key = (s.st_dev, s.st_ino);
                    let known = self
                        .own
                        .get(&key)
                        .or_else(|| self.seeded.get(&key))
                        .filter(|h| h.ctime == ctime(&s) && h.size == s.st_size as u64);
                    let id = match known {
                        Some(h) => h.id,
                        None => {
                            let file =
                                nofollow::open_regular_at(dir, name).map_err(io("open", &p))?;
                            let (id, size, _, st) =
                                nofollow::hash_regular_stat(&file, &p, want_file.as_ref())?;
                            let hashed = Hashed {
                                id,
                                ctime: ctime(&st),
                                size,
                            };
                            self.own.insert((st.st_dev, st.st_ino), hashed);
                            id
                        }
                    };
                    files.push(FileEntry { name: safe, id });
                }
                S_IFLNK => {
                    let (id, _, _) = nofollow::hash_symlink(dir, &c, &p, want_file.as_ref())?;
                    files.push(FileEntry { name: safe, id });
                }
                _ => return Err(DeployError::BadFileType { path: p }),
            }
        }
        let tree = DirTree { files, dirs };
        Ok((ObjectId::of(&tree.encode()), meta_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::read_meta;
    use atomup_ostree::object::{Commit, ObjectType};
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

    /// The two-thread verification agrees with upstream's commit of the same
    /// tree, and a file changed deep inside a subtree handed to the threads
    /// changes the result exactly as the single-threaded walk sees it.
    #[test]
    fn two_thread_verification_matches_ostree_and_sees_a_deep_change() {
        let base =
            std::env::temp_dir().join(format!("atomup-verify-pieces-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let tree = base.join("tree");
        for (path, data) in [
            ("top", "t"),
            ("a/x", "x"),
            ("a/b/c/d/deep", "deep"),
            ("a/b/c/d/e/deeper", "deeper"),
            ("a/b/c2/d2/other", "other"),
            ("z/y/x/w/v", "v"),
        ] {
            let p = tree.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, data).unwrap();
        }
        std::os::unix::fs::symlink("../deep", tree.join("a/b/c/d/e/link")).unwrap();
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
        let root = (commit.root_tree, commit.root_meta);

        let load = |id: &ObjectId| {
            read_meta(&[&repo], id, ObjectType::DirTree)
                .ok()
                .map(Arc::from)
        };
        let fd = nofollow::open_root(&tree).unwrap();
        let none = HashCache::new();
        assert!(
            !pieces(root, &load).is_empty(),
            "the tree is deep enough to split"
        );
        assert_eq!(
            hash_tree(&fd, &tree, &none, Some(root), &load).unwrap(),
            root
        );

        std::fs::write(tree.join("a/b/c/d/e/deeper"), "changed").unwrap();
        let parallel = hash_tree(&fd, &tree, &none, Some(root), &load).unwrap();
        let serial = hash_tree(&fd, &tree, &none, None, &|_| None).unwrap();
        assert_ne!(parallel, root);
        assert_eq!(parallel, serial);
        std::fs::remove_dir_all(&base).unwrap();
    }
}
