//! The vendor-owned paths of `/etc` (merge rule 4): paths that always take
//! the new default, whatever the device did. The vendor lists them in the
//! commit itself, at [`OWNED_PATH`]: one path per line, relative to `/etc`
//! (a leading `/etc/` is accepted), or `dir/**` for a directory and
//! everything under it; `#` comments and blank lines are ignored.
//!
//! Trust: the list is part of the signed commit and is read from the new
//! slot only after the written tree has been verified against that commit,
//! so it says what the vendor signed. Parsing is pure (bytes in, typed
//! list or a line-numbered error out).

use std::collections::BTreeSet;

use atomup_ostree::SafeName;

/// Where a commit carries the list, relative to its root.
pub const OWNED_PATH: &str = "usr/lib/atomup/etc-owned";

/// Largest list read (refused beyond, never read to its end).
pub const MAX_OWNED_SIZE: u64 = 64 * 1024;

/// The vendor-owned paths.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Owned {
    /// Paths owned exactly.
    exact: BTreeSet<String>,
    /// Directories owned with everything under them (`dir/**`).
    trees: BTreeSet<String>,
}

/// A line of the list that cannot be used: its number (from 1) and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedLineError {
    pub line: usize,
    pub why: &'static str,
}

impl Owned {
    /// Parses the list (see the module docs). Every entry must be a clean
    /// relative path: no empty, `.` or `..` component, no other wildcard.
    pub fn parse(bytes: &[u8]) -> Result<Owned, OwnedLineError> {
        let text = std::str::from_utf8(bytes).map_err(|_| OwnedLineError {
            line: 0,
            why: "not UTF-8 text",
        })?;
        let mut out = Owned::default();
        for (i, raw) in text.lines().enumerate() {
            let err = |why| OwnedLineError { line: i + 1, why };
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let line = line.strip_prefix("/etc/").unwrap_or(line);
            let (path, tree) = match line.strip_suffix("/**") {
                Some(p) => (p, true),
                None => (line, false),
            };
            if path.is_empty() {
                return Err(err("empty path (the whole /etc cannot be vendor-owned)"));
            }
            if path.starts_with('/') {
                return Err(err("absolute path outside /etc"));
            }
            for c in path.split('/') {
                if c.contains('*') {
                    return Err(err("wildcards other than a final `/**`"));
                }
                if SafeName::new(c).is_err() {
                    return Err(err("empty, `.` or `..` path component"));
                }
            }
            if tree {
                out.trees.insert(path.to_owned());
            } else {
                out.exact.insert(path.to_owned());
            }
        }
        Ok(out)
    }

    /// Whether the vendor owns `path` (relative to `/etc`).
    pub fn owns(&self, path: &str) -> bool {
        if self.exact.contains(path) {
            return true;
        }
        let mut p = path;
        loop {
            if self.trees.contains(p) {
                return true;
            }
            match p.rsplit_once('/') {
                Some((q, _)) => p = q,
                None => return false,
            }
        }
    }

    /// No path is vendor-owned.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.trees.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exact paths own only themselves; `dir/**` owns the directory and
    /// everything below it, not a sibling sharing its prefix.
    #[test]
    fn exact_paths_and_subtrees() {
        let o = Owned::parse(
            b"# vendor files\n\natomup/trusted.pub\n/etc/ssl/certs/**\n  os-release  \n",
        )
        .unwrap();
        assert!(o.owns("atomup/trusted.pub"));
        assert!(!o.owns("atomup"));
        assert!(!o.owns("atomup/trusted.pub.bak"));
        assert!(o.owns("os-release"));
        assert!(o.owns("ssl/certs"));
        assert!(o.owns("ssl/certs/ca.pem"));
        assert!(o.owns("ssl/certs/sub/x"));
        assert!(!o.owns("ssl"));
        assert!(!o.owns("ssl/certs2"));
        assert!(Owned::parse(b"").unwrap().is_empty());
    }

    /// Lines that could name something outside /etc, or mean more than they
    /// say, are refused with their line number.
    #[test]
    fn unsafe_or_unclear_lines_are_refused() {
        for (text, line) in [
            (&b"ok\n../shadow\n"[..], 2),
            (b"a/./b\n", 1),
            (b"a//b\n", 1),
            (b"/usr/lib/x\n", 1),
            (b"**\n", 1),
            (b"/etc/**\n", 1),
            (b"a/*.conf\n", 1),
            (b"a/**/b\n", 1),
            (b"\xff\n", 0),
        ] {
            let e = Owned::parse(text).unwrap_err();
            assert_eq!(e.line, line, "{:?}: {e:?}", String::from_utf8_lossy(text));
        }
    }
}
