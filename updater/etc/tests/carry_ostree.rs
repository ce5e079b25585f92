//! The merge from disk to a slot's layer, against real peers: the defaults
//! are commits made by the real `ostree` CLI (its archive repo is the
//! metadata store, as a device's `--meta-out` is), the device's /etc is a
//! real directory with a FIFO in it, and the layer is checked by mounting
//! the real overlayfs over the new defaults in a private mount namespace
//! (`unshare -m`). Needs root (whiteouts are device nodes; mounts).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use atomup_etc::layer::{layer_dir, read_record};
use atomup_etc::{carry, config_diff, Carry, EtcError};
use atomup_ostree::ObjectId;
use atomup_policy::Slot;

/// The fault point counter is process-wide: tests take turns.
static SERIAL: Mutex<()> = Mutex::new(());

struct Scratch(PathBuf);
impl Scratch {
    fn new(name: &str) -> Scratch {
        let d = std::env::temp_dir().join(format!("atomup-etc-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        Scratch(d)
    }
}
impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn write(root: &Path, rel: &str, data: &str, mode: u32) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    let _ = fs::remove_file(&p);
    fs::write(&p, data).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
}

fn commit(repo: &Path, tree: &Path) -> ObjectId {
    let r = format!("--repo={}", repo.display());
    if !repo.join("config").exists() {
        run(Command::new("ostree").args([&r, "init", "--mode=archive"]));
    }
    let id = run(Command::new("ostree").args([
        &r,
        "commit",
        "-b",
        "t",
        "-s",
        "t",
        &format!("--tree=dir={}", tree.display()),
    ]));
    ObjectId::from_hex(&id).unwrap()
}

fn cp_a(from: &Path, to: &Path) {
    let _ = fs::remove_dir_all(to);
    fs::create_dir_all(to.parent().unwrap()).unwrap();
    run(Command::new("cp").arg("-a").arg(from).arg(to));
}

/// Everything a merged /etc shows, per path: type, mode, owner, content or
/// target, xattrs.
fn snapshot(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let mut names: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap()).collect();
        names.sort_by_key(|e| e.file_name());
        for e in names {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let m = fs::symlink_metadata(&p).unwrap();
            let what = if m.file_type().is_symlink() {
                format!("-> {}", fs::read_link(&p).unwrap().display())
            } else if m.is_dir() {
                "dir".to_owned()
            } else if m.is_file() {
                format!("{:?}", fs::read_to_string(&p).unwrap_or_default())
            } else {
                "special".to_owned()
            };
            let x = xattrs(&p);
            out.insert(
                rel,
                format!("{:o} {}:{} {what} {x:?}", m.mode(), m.uid(), m.gid()),
            );
            if m.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn xattrs(p: &Path) -> Vec<(String, String)> {
    let mut buf = vec![0u8; 4096];
    let Ok(n) = rustix::fs::llistxattr(p, &mut buf) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for name in buf[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = String::from_utf8_lossy(name).into_owned();
        let mut v = vec![0u8; 4096];
        let m = rustix::fs::lgetxattr(p, name.as_str(), &mut v).unwrap_or(0);
        out.push((name, String::from_utf8_lossy(&v[..m]).into_owned()));
    }
    out.sort();
    out
}

fn set_xattr(p: &Path, name: &str, value: &str) {
    rustix::fs::lsetxattr(p, name, value.as_bytes(), rustix::fs::XattrFlags::empty()).unwrap();
}

/// What the slot's /etc looks like with its layer on: the real overlayfs,
/// mounted in a private mount namespace, copied out with `cp -a`.
fn overlay_view(
    lower: &Path,
    state: &Path,
    slot: Slot,
    scratch: &Path,
) -> BTreeMap<String, String> {
    let layer = layer_dir(state, slot);
    let mnt = scratch.join("mnt");
    let out = scratch.join("view");
    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(&mnt).unwrap();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        layer.join("upper").display(),
        layer.join("work").display()
    );
    run(Command::new("unshare").args([
        "-m",
        "sh",
        "-c",
        &format!(
            "mount -t overlay overlay -o {opts} {m} && cp -a {m} {o}",
            m = mnt.display(),
            o = out.display()
        ),
    ]));
    let s = snapshot(&out);
    fs::remove_dir_all(&out).unwrap();
    s
}

struct World {
    s: Scratch,
    repo: PathBuf,
    v1: ObjectId,
    v2: ObjectId,
    /// The new slot's root (v2's tree).
    root2: PathBuf,
    /// The device's /etc: v1's, changed by the device.
    current: PathBuf,
    state: PathBuf,
}

/// v1 and v2 of a product (v2 changes some defaults, adds and removes
/// some, owns one path), and a device on v1 that changed its /etc.
fn world(name: &str) -> World {
    let s = Scratch::new(name);
    let root1 = s.0.join("v1");
    let e = root1.join("etc");
    write(&e, "hosts", "127.0.0.1 localhost\n", 0o644);
    write(&e, "motd", "welcome v1\n", 0o644);
    write(&e, "issue", "v1\n", 0o644);
    write(&e, "gone-by-device", "x\n", 0o644);
    write(&e, "gone-by-vendor", "x\n", 0o644);
    write(&e, "both.conf", "a=1\n", 0o644);
    write(&e, "ssh/sshd_config", "Port 22\n", 0o644);
    write(&e, "ssh/key", "secret\n", 0o600);
    write(&e, "owned.conf", "vendor 1\n", 0o644);
    write(&e, "cron.d/job", "* * * * * true\n", 0o644);
    std::os::unix::fs::symlink("hosts", e.join("hosts.link")).unwrap();
    fs::create_dir_all(root1.join("usr/lib")).unwrap();
    let repo = s.0.join("repo");
    let v1 = commit(&repo, &root1);

    let root2 = s.0.join("v2");
    cp_a(&root1, &root2);
    let e = root2.join("etc");
    write(&e, "issue", "v2\n", 0o644); // untouched by the device: follows
    write(&e, "both.conf", "a=2\n", 0o644); // both changed: conflict
    write(&e, "owned.conf", "vendor 2\n", 0o644); // vendor-owned
    write(&e, "fresh.conf", "new in v2\n", 0o644); // added by the vendor
    write(&e, "cron.d/job2", "new job\n", 0o644); // into a dir the device deleted
    fs::remove_file(e.join("gone-by-vendor")).unwrap();
    write(
        &root2,
        "usr/lib/atomup/etc-owned",
        "# the vendor's\nowned.conf\n",
        0o644,
    );
    let v2 = commit(&repo, &root2);

    let current = s.0.join("device-etc");
    cp_a(&root1.join("etc"), &current);
    write(&current, "motd", "our site\n", 0o644); // modified
    fs::remove_file(current.join("gone-by-device")).unwrap(); // removed
    write(&current, "mine.conf", "site=1\n", 0o640); // added
    write(&current, "both.conf", "a=device\n", 0o644);
    write(&current, "owned.conf", "device edit\n", 0o644);
    fs::set_permissions(current.join("ssh/key"), fs::Permissions::from_mode(0o644)).unwrap(); // mode only
    set_xattr(&current.join("hosts"), "user.site", "tagged"); // xattr only
    fs::remove_dir_all(current.join("cron.d")).unwrap(); // a whole directory
    write(&current, "site.d/10.conf", "x=1\n", 0o600); // a directory added
    fs::set_permissions(current.join("site.d"), fs::Permissions::from_mode(0o750)).unwrap();
    fs::set_permissions(current.join("ssh"), fs::Permissions::from_mode(0o700)).unwrap(); // a directory's mode
    fs::remove_file(current.join("hosts.link")).unwrap();
    std::os::unix::fs::symlink("motd", current.join("hosts.link")).unwrap(); // retargeted
    rustix::fs::mknodat(
        rustix::fs::CWD,
        current.join("fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    let state = s.0.join("state");
    World {
        repo,
        v1,
        v2,
        root2,
        current,
        state,
        s,
    }
}

fn carry_into(w: &World, slot: Slot) -> atomup_etc::Result<atomup_etc::Carried> {
    let dirs = [w.repo.as_path()];
    carry(&Carry {
        state_dir: &w.state,
        meta_dirs: &dirs,
        from: w.v1,
        to: w.v2,
        current_etc: &w.current,
        new_root: &w.root2,
        slot,
    })
}

/// The expected merged /etc: v2's defaults with the device's changes on
/// top, by the rules (conflict: the device's; vendor-owned: the vendor's;
/// the FIFO not carried).
fn expected(w: &World) -> BTreeMap<String, String> {
    let exp = w.s.0.join("expected");
    cp_a(&w.root2.join("etc"), &exp);
    for f in ["motd", "both.conf", "mine.conf", "ssh/key", "hosts"] {
        cp_a(&w.current.join(f), &exp.join(f));
    }
    cp_a(&w.current.join("site.d"), &exp.join("site.d"));
    fs::set_permissions(exp.join("ssh"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::remove_file(exp.join("gone-by-device")).unwrap();
    fs::remove_dir_all(exp.join("cron.d")).unwrap();
    fs::remove_file(exp.join("hosts.link")).unwrap();
    std::os::unix::fs::symlink("motd", exp.join("hosts.link")).unwrap();
    let s = snapshot(&exp);
    fs::remove_dir_all(&exp).unwrap();
    s
}

/// Every rule, from disk to a mounted overlay: the device's modifications,
/// additions (a directory with its own mode among them), deletions (of a
/// file and of a directory the vendor added to), a mode-only change on a
/// file and on a directory, an xattr-only change and a retargeted symlink
/// are kept;
/// untouched paths follow the new defaults; a both-changed file keeps the
/// device's version as a conflict; a vendor-owned file takes the new
/// default; a FIFO is not carried (and never opened); the record says so.
#[test]
fn the_merged_layer_mounts_as_exactly_what_the_rules_say() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let w = world("rules");
    let c = carry_into(&w, Slot::B).unwrap();
    assert_eq!(
        c.summary(),
        "7 modified, 3 removed, 3 added, 1 conflicts (kept the device's), \
         1 reset to the vendor's default, 1 not carried (special files)",
        "{:#?}",
        c.report
    );
    assert_eq!(c.report.conflicts, ["both.conf"]);
    assert_eq!(c.report.forced, ["owned.conf"]);
    assert_eq!(c.skipped, [("fifo".to_owned(), "a FIFO")]);
    let view = overlay_view(&w.root2.join("etc"), &w.state, Slot::B, &w.s.0);
    assert_eq!(view, expected(&w));
    let rec = read_record(&w.state, Slot::B).unwrap().unwrap();
    assert_eq!(rec, c.record);
    assert_eq!((rec.from, rec.to), (Some(w.v1), Some(w.v2)));
    assert!(
        !layer_dir(&w.state, Slot::A).exists(),
        "only the target's layer is written"
    );
    assert!(!w.state.join("etc/B.new").exists());

    // config-diff: the device's changes against the running defaults.
    let dirs = [w.repo.as_path()];
    let d = config_diff(&dirs, &w.v1, &w.current).unwrap();
    let lines: Vec<String> = d
        .changes
        .iter()
        .map(|(c, p)| format!("{} {p}", c.letter()))
        .collect();
    assert_eq!(
        lines,
        [
            "M both.conf",
            "D cron.d",
            "D cron.d/job",
            "D gone-by-device",
            "M hosts",
            "M hosts.link",
            "A mine.conf",
            "M motd",
            "M owned.conf",
            "A site.d",
            "A site.d/10.conf",
            "M ssh",
            "M ssh/key"
        ]
    );
}

/// A second merge into the same slot replaces its layer whole: nothing of
/// the first layer survives, no `.new` is left behind.
#[test]
fn a_second_merge_replaces_the_layer_whole() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let w = world("again");
    carry_into(&w, Slot::B).unwrap();
    // The device reverts its motd and drops its additions before updating again.
    write(&w.current, "motd", "welcome v1\n", 0o644);
    fs::remove_file(w.current.join("mine.conf")).unwrap();
    fs::remove_dir_all(w.current.join("site.d")).unwrap();
    let c = carry_into(&w, Slot::B).unwrap();
    assert!(c.report.added.is_empty() && !c.report.modified.contains(&"motd".to_owned()));
    let view = overlay_view(&w.root2.join("etc"), &w.state, Slot::B, &w.s.0);
    assert!(!view.contains_key("mine.conf") && !view.contains_key("site.d"));
    assert!(view["motd"].contains("welcome v1"), "{}", view["motd"]);
    let names: Vec<_> = fs::read_dir(w.state.join("etc"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["B"]);
}

/// A file that no longer is what the merge hashed (changed between the walk
/// and the copy) is refused, never carried half-old; the slot keeps the
/// layer it had.
#[test]
fn an_entry_changed_during_the_merge_is_refused() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let w = world("changed");
    carry_into(&w, Slot::B).unwrap();
    let before = overlay_view(&w.root2.join("etc"), &w.state, Slot::B, &w.s.0);
    // A fault point right before the copy of motd would be needed to race
    // the real walk; the plan is handed a stale identity instead.
    let dirs = [w.repo.as_path()];
    let meta = atomup_etc::tree::MetaStore { dirs: &dirs };
    let new = meta.etc_of(&w.v2).unwrap();
    let mut merged = new.tree.clone();
    merged.insert(
        "motd".into(),
        atomup_etc::Entry {
            kind: atomup_etc::Kind::File,
            id: ObjectId([9; 32]),
        },
    );
    let up = atomup_etc::upper(&merged, &new.tree);
    assert_eq!(up.copy, ["motd"]);
    let rec = atomup_etc::record::MergeRecord::default();
    let err = atomup_etc::layer::install(
        &w.state,
        Slot::B,
        &atomup_etc::layer::Plan {
            current: &w.current,
            merged: &merged,
            upper: &up,
            new: &new.tree,
            top: new.top,
            meta,
            record: &rec,
        },
    )
    .unwrap_err();
    assert!(matches!(err, EtcError::Changed { .. }), "{err}");
    assert!(err.to_string().contains("motd"), "{err}");
    assert_eq!(
        overlay_view(&w.root2.join("etc"), &w.state, Slot::B, &w.s.0),
        before
    );
}

/// A power cut at each write of a layer's construction and swap leaves the
/// slot's layer either as it was or complete: never half-merged. The next
/// run (leftovers and all) completes it.
#[test]
fn a_cut_at_every_write_leaves_the_old_or_the_complete_layer() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let w = world("cuts");
    // The slot already has a layer from an earlier install (the old one).
    write(&w.current, "motd", "older site\n", 0o644);
    carry_into(&w, Slot::B).unwrap();
    let lower = w.root2.join("etc");
    let old = overlay_view(&lower, &w.state, Slot::B, &w.s.0);
    let old_rec = read_record(&w.state, Slot::B).unwrap();
    write(&w.current, "motd", "our site\n", 0o644);
    let saved = w.s.0.join("saved-state");
    cp_a(&w.state, &saved);

    atomup_etc::failpoint::set(Some("etc-count"));
    carry_into(&w, Slot::B).unwrap();
    let writes = atomup_etc::failpoint::count();
    let new = overlay_view(&lower, &w.state, Slot::B, &w.s.0);
    let new_rec = read_record(&w.state, Slot::B).unwrap();
    assert_ne!(old, new);
    assert!(writes > 30, "{writes} write points");
    eprintln!("{writes} write points, each cut in turn");

    for k in 0..writes {
        cp_a(&saved, &w.state);
        atomup_etc::failpoint::set(Some(&format!("etc-cut:{k}")));
        let err = carry_into(&w, Slot::B).unwrap_err();
        assert!(matches!(err, EtcError::Injected { .. }), "{err}");
        let rec = read_record(&w.state, Slot::B).unwrap();
        assert!(
            layer_dir(&w.state, Slot::B).join("upper").is_dir(),
            "cut at write {k} ({err}): the slot has no layer"
        );
        let view = overlay_view(&lower, &w.state, Slot::B, &w.s.0);
        assert!(
            (view == old && rec == old_rec) || (view == new && rec == new_rec),
            "cut at write {k} ({err}): a mixture"
        );
        atomup_etc::failpoint::set(None);
        carry_into(&w, Slot::B).unwrap();
        assert_eq!(
            overlay_view(&lower, &w.state, Slot::B, &w.s.0),
            new,
            "rerun after cut {k}"
        );
        assert!(!w.state.join("etc/B.new").exists());
    }
    atomup_etc::failpoint::set(None);
}

/// `etc mount`'s first boot: a slot without a layer gets an empty one whose
/// top has the lower /etc's metadata, so the overlay shows the defaults
/// exactly; an existing layer is left alone.
#[test]
fn a_missing_layer_is_created_empty_as_the_defaults() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let w = world("empty");
    let lower = w.root2.join("etc");
    fs::set_permissions(&lower, fs::Permissions::from_mode(0o751)).unwrap();
    atomup_etc::layer::ensure_empty(&w.state, Slot::A, &lower).unwrap();
    let upper = layer_dir(&w.state, Slot::A).join("upper");
    assert_eq!(fs::read_dir(&upper).unwrap().count(), 0);
    assert_eq!(fs::metadata(&upper).unwrap().mode() & 0o7777, 0o751);
    assert_eq!(read_record(&w.state, Slot::A).unwrap(), None);
    let view = overlay_view(&lower, &w.state, Slot::A, &w.s.0);
    assert_eq!(view, snapshot(&lower));
    fs::write(upper.join("kept"), "x").unwrap();
    atomup_etc::layer::ensure_empty(&w.state, Slot::A, &lower).unwrap();
    assert!(upper.join("kept").exists());
}

/// The vendor-owned list is read from the new slot without following a
/// symlink out of it, and a list that names a path outside /etc is refused
/// with its line, before anything is written.
#[test]
fn the_vendor_list_is_read_safely_and_refused_when_unsafe() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let w = world("owned");
    write(
        &w.root2,
        "usr/lib/atomup/etc-owned",
        "ok.conf\n../shadow\n",
        0o644,
    );
    let err = carry_into(&w, Slot::B).unwrap_err();
    assert!(
        err.to_string()
            .ends_with("etc-owned line 2: empty, `.` or `..` path component"),
        "{err}"
    );
    assert!(
        !w.state.join("etc").exists(),
        "refused before the first write"
    );
    // A symlink planted at usr/lib/atomup pointing elsewhere is not followed.
    let elsewhere = w.s.0.join("elsewhere");
    write(&elsewhere, "etc-owned", "motd\n", 0o644);
    fs::remove_dir_all(w.root2.join("usr/lib/atomup")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, w.root2.join("usr/lib/atomup")).unwrap();
    assert!(atomup_etc::read_owned(&w.root2).is_err());
    fs::remove_file(w.root2.join("usr/lib/atomup")).unwrap();
    assert!(atomup_etc::read_owned(&w.root2).unwrap().is_empty());
}

/// A running /etc deeper than the bound is refused with the bound named,
/// never walked without limit.
#[test]
fn a_too_deep_etc_is_refused_with_its_bound() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let w = world("deep");
    let mut p = w.current.clone();
    for _ in 0..=atomup_etc::tree::MAX_DEPTH + 1 {
        p.push("d");
    }
    fs::create_dir_all(&p).unwrap();
    let err = carry_into(&w, Slot::B).unwrap_err();
    assert!(err.to_string().contains("more than 64 levels"), "{err}");
    assert!(!w.state.join("etc").exists());
}
