//! Which checks a trial boot runs, in which order, each with its time limit.
//!
//! Two check roots, each with `required.d/` and `wanted.d/` (greenboot's
//! layout): the vendor's in the read-only image (`/usr/lib/atomup/health.d`)
//! and the site's (`/etc/atomup/health.d`). Rules (the agent README has the
//! table):
//!
//! - a site check with the same name and kind as a vendor check replaces it;
//!   a site entry that is a symlink to `/dev/null` masks the vendor check of
//!   that name (systemd's convention);
//! - everything else in those directories must be a runnable check: a
//!   regular file (a symlink to one is fine) with an execute bit; anything
//!   else (no execute bit, a dangling symlink, a directory, a FIFO, a device)
//!   fails the trial with its name: health fails closed. The only exception
//!   is documentation, a regular file named `README` or ending in `.md`;
//! - a root itself may hold only `required.d`, `wanted.d` and documentation:
//!   a check dropped directly into `health.d/` is refused, not silently
//!   never run;
//! - order: built-in required checks, the required checks by name (byte
//!   order, vendor and site merged), built-in wanted checks, the wanted
//!   checks by name;
//! - time limit: the configured default, unless the check declares its own
//!   on a comment line in its first 4 KiB: `# atomup-timeout: 90s`
//!   (seconds, or a unit `s`, `m`, `h`; 1 s to 1 h).
//!
//! [`merge`] is the pure part; [`list_root`] reads one root.

use crate::builtin::Builtin;
use crate::record::{is_check_name, Kind};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Longest time limit a check may declare.
pub const MAX_TIMEOUT: u64 = 3600;
/// How much of a check is searched for its timeout declaration.
pub const HEADER_SCAN: u64 = 4096;
/// Most checks one root may hold per kind.
pub const MAX_PER_DIR: usize = 100;

/// What a check runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Program {
    Builtin(Builtin),
    Script(PathBuf),
}

/// One check of the plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub kind: Kind,
    pub name: String,
    pub program: Program,
    pub timeout: Duration,
}

/// One entry of a `required.d` or `wanted.d`, as found on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub path: PathBuf,
    pub what: What,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum What {
    /// A regular file with an execute bit (through a symlink or not).
    Runnable,
    /// A symlink to `/dev/null`.
    Mask,
    /// `README` or `*.md`, a regular file.
    Documentation,
    /// Anything else: why it cannot run.
    NotRunnable(String),
}

/// The merged, ordered scripts of one kind: `(name, path)`. Pure.
pub fn merge(vendor: &[Entry], site: &[Entry]) -> Result<Vec<(String, PathBuf)>, String> {
    let mut names: Vec<&str> = vendor
        .iter()
        .chain(site)
        .filter(|e| e.what != What::Documentation)
        .map(|e| e.name.as_str())
        .collect();
    names.sort_unstable();
    names.dedup();
    let mut out = Vec::new();
    for name in names {
        let pick = site
            .iter()
            .find(|e| e.name == name)
            .or_else(|| vendor.iter().find(|e| e.name == name))
            .expect("the name came from one of the lists");
        match &pick.what {
            What::Mask | What::Documentation => {}
            What::NotRunnable(why) => return Err(format!("{}: {why}", pick.path.display())),
            What::Runnable if !is_check_name(name) || name.starts_with("atomup:") => {
                return Err(format!(
                    "{}: a check's name is 1-128 of A-Z a-z 0-9 . _ + @ - (not starting with . or -)",
                    pick.path.display()
                ))
            }
            What::Runnable => out.push((name.to_owned(), pick.path.clone())),
        }
    }
    Ok(out)
}

fn is_documentation(name: &[u8]) -> bool {
    name == b"README" || name.ends_with(b".md")
}

/// What one directory entry is (following a symlink to what it names).
fn classify(path: &Path, name: &[u8]) -> What {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(target) = std::fs::read_link(path) {
        if target == Path::new("/dev/null") {
            return What::Mask;
        }
    }
    let md = match std::fs::metadata(path) {
        Ok(md) => md,
        Err(e) => return What::NotRunnable(format!("not a runnable check ({e})")),
    };
    if !md.is_file() {
        let t = rustix::fs::FileType::from_raw_mode(std::os::unix::fs::MetadataExt::mode(&md));
        return What::NotRunnable(format!(
            "{}, not a runnable check",
            atomup_fsio::type_name(t)
        ));
    }
    if is_documentation(name) {
        return What::Documentation;
    }
    if md.permissions().mode() & 0o111 == 0 {
        return What::NotRunnable("not executable, not a runnable check".into());
    }
    What::Runnable
}

fn read_dir_names(dir: &Path) -> Result<Option<Vec<(String, PathBuf)>>, String> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(format!(
                "reading the checks directory {}: {e}",
                dir.display()
            ))
        }
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("reading {}: {e}", dir.display()))?;
        if out.len() >= MAX_PER_DIR {
            return Err(format!(
                "{}: more than {MAX_PER_DIR} entries",
                dir.display()
            ));
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        out.push((name, entry.path()));
    }
    Ok(Some(out))
}

/// The entries of `root/required.d` and `root/wanted.d`. A missing root, or
/// a missing subdirectory, has none; anything in `root` besides the two
/// subdirectories and documentation is an error.
pub fn list_root(root: &Path) -> Result<(Vec<Entry>, Vec<Entry>), String> {
    let Some(top) = read_dir_names(root)? else {
        return Ok((Vec::new(), Vec::new()));
    };
    for (name, path) in &top {
        match name.as_str() {
            "required.d" | "wanted.d" => {
                if !std::fs::metadata(path).is_ok_and(|m| m.is_dir()) {
                    return Err(format!("{}: must be a directory of checks", path.display()));
                }
            }
            n if is_documentation(n.as_bytes())
                && classify(path, n.as_bytes()) == What::Documentation => {}
            _ => {
                return Err(format!(
                    "{}: checks go in {}/required.d/ or {}/wanted.d/, not there",
                    path.display(),
                    root.display(),
                    root.display()
                ))
            }
        }
    }
    let kind = |sub: &str| -> Result<Vec<Entry>, String> {
        let Some(list) = read_dir_names(&root.join(sub))? else {
            return Ok(Vec::new());
        };
        Ok(list
            .into_iter()
            .map(|(name, path)| {
                let what = classify(&path, name.as_bytes());
                Entry { name, path, what }
            })
            .collect())
    };
    Ok((kind("required.d")?, kind("wanted.d")?))
}

/// The time limit `text` (a check's first bytes) declares, if any:
/// a `# atomup-timeout: <duration>` comment line.
pub fn declared_timeout(text: &[u8]) -> Result<Option<Duration>, String> {
    for line in text.split(|&b| b == b'\n') {
        let Ok(line) = std::str::from_utf8(line) else {
            continue;
        };
        let Some(rest) = line.trim_start().strip_prefix('#') else {
            continue;
        };
        let Some(value) = rest.trim_start().strip_prefix("atomup-timeout:") else {
            continue;
        };
        let value = value.trim();
        let secs = atomup_config::Seconds::parse(value)
            .map_err(|e| format!("`# atomup-timeout: {value}`: {e}"))?;
        if !(1..=MAX_TIMEOUT).contains(&secs.0) {
            return Err(format!(
                "`# atomup-timeout: {value}`: must be between 1s and 1h"
            ));
        }
        return Ok(Some(secs.as_duration()));
    }
    Ok(None)
}

fn script_timeout(path: &Path) -> Result<Option<Duration>, String> {
    use std::io::Read;
    let f = atomup_fsio::open(path, atomup_fsio::Want::Regular)
        .map_err(|e| format!("{}: cannot read it ({e})", path.display()))?;
    let mut head = Vec::new();
    f.take(HEADER_SCAN)
        .read_to_end(&mut head)
        .map_err(|e| format!("{}: cannot read it ({e})", path.display()))?;
    declared_timeout(&head).map_err(|e| format!("{}: {e}", path.display()))
}

/// The whole plan: built-ins and the scripts of both roots, ordered, each
/// with its time limit.
pub fn plan(
    vendor_root: &Path,
    site_root: &Path,
    builtins: &[Builtin],
    default_timeout: Duration,
) -> Result<Vec<Check>, String> {
    let (vr, vw) = list_root(vendor_root)?;
    let (sr, sw) = list_root(site_root)?;
    let mut checks = Vec::new();
    for kind in [Kind::Required, Kind::Wanted] {
        for b in builtins.iter().filter(|b| b.kind() == kind) {
            checks.push(Check {
                kind,
                name: b.name().to_owned(),
                program: Program::Builtin(b.clone()),
                timeout: default_timeout,
            });
        }
        let (v, s) = match kind {
            Kind::Required => (&vr, &sr),
            Kind::Wanted => (&vw, &sw),
        };
        for (name, path) in merge(v, s)? {
            let timeout = script_timeout(&path)?.unwrap_or(default_timeout);
            checks.push(Check {
                kind,
                name,
                program: Program::Script(path),
                timeout,
            });
        }
    }
    Ok(checks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(name: &str, what: What) -> Entry {
        Entry {
            name: name.into(),
            path: format!("/x/{name}").into(),
            what,
        }
    }

    /// Vendor and site merge by name: the site replaces, masks, or adds;
    /// the result is in byte order of the names.
    #[test]
    fn site_checks_replace_mask_and_add_in_name_order() {
        let vendor = [
            e("20-b", What::Runnable),
            e("10-a", What::Runnable),
            e("30-c", What::Runnable),
            e("README", What::Documentation),
        ];
        let site = [
            e("30-c", What::Mask),
            e("15-site", What::Runnable),
            e("20-b", What::Runnable),
        ];
        let got = merge(&vendor, &site).unwrap();
        let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["10-a", "15-site", "20-b"]);
        assert_eq!(got[2].1, PathBuf::from("/x/20-b"));
    }

    /// A site entry that cannot run fails the plan even where it replaces a
    /// good vendor check; a masked broken vendor check does not.
    #[test]
    fn what_cannot_run_fails_unless_masked() {
        let bad = What::NotRunnable("not executable".into());
        let e1 = merge(&[e("10-a", What::Runnable)], &[e("10-a", bad.clone())]).unwrap_err();
        assert!(e1.contains("/x/10-a: not executable"), "{e1}");
        assert!(merge(&[e("10-a", bad)], &[e("10-a", What::Mask)])
            .unwrap()
            .is_empty());
        let e2 = merge(&[e("bad name", What::Runnable)], &[]).unwrap_err();
        assert!(e2.contains("a check's name"), "{e2}");
    }

    /// The timeout comment is found on a comment line, in any unit, and a
    /// malformed or out-of-range one is an error, not the default.
    #[test]
    fn declared_timeouts() {
        let t = |s: &str| declared_timeout(s.as_bytes());
        assert_eq!(
            t("#!/bin/sh\n# atomup-timeout: 90s\n"),
            Ok(Some(Duration::from_secs(90)))
        );
        assert_eq!(
            t("#!/bin/sh\n#atomup-timeout:2m\nexit 0\n"),
            Ok(Some(Duration::from_secs(120)))
        );
        assert_eq!(
            t("#!/bin/sh\n  # atomup-timeout: 5\n"),
            Ok(Some(Duration::from_secs(5)))
        );
        assert_eq!(t("#!/bin/sh\necho atomup-timeout: 5\n"), Ok(None));
        assert_eq!(t("\x7fELF\x02\x01\x01\0\0\0"), Ok(None));
        assert!(t("# atomup-timeout: soon\n").unwrap_err().contains("soon"));
        assert!(t("# atomup-timeout: 0\n")
            .unwrap_err()
            .contains("between 1s and 1h"));
        assert!(t("# atomup-timeout: 2h\n").is_err());
    }
}
