//! /etc carried across `atomup update`, end to end on the host: a vendor
//! repository made by the real `ostree` CLI, served by real nginx; a
//! simulated device whose running /etc is the real overlayfs (`atomup etc
//! mount`, in a private mount namespace: `unshare -m`) over its slot. The
//! device changes, adds and deletes files in /etc, an update that changes
//! some of them too lands, and the new slot's /etc, mounted the same way,
//! is exactly what the merge rules say; a second update carries the
//! changes on again. Also: the data partition is written nowhere but in
//! atomup's state directory. Needs root (mounts, whiteouts).

use atomup_ostree::ObjectId;
use atomup_tests::device::{
    env_args, in_mount_ns, mkfifo, provision, release, require_root, text, update_base_args,
    Device, World, T0,
};
use atomup_tests::nginx::Nginx;
use atomup_tests::ostree_fixture::{
    assert_same_tree, atomup, run_ok, snapshot, tree_digest_with_times, Repo, ScratchDir,
    TreeBuilder,
};
use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output};

/// The host device fixture's world (v1, v2) and a third release.
struct Etc {
    w: World,
    v3: String,
}

/// v1, v2 and v3 of a product. v2 changes some defaults (one the device
/// will change too), adds some (one into a directory the device will
/// delete), removes one, and owns `owned.conf`; v3 changes more, `motd`
/// among them. Signed deltas scratch→v1, v1→v2, v2→v3; release 2.
fn world(name: &str) -> Etc {
    atomup_tests::require_tool("ostree");
    atomup_tests::require_tool("unshare");
    require_root();
    let dir = ScratchDir::new(name);
    let repo = Repo::init(dir.join("repo"), "archive");
    let t = TreeBuilder::new(dir.join("tree"));
    t.file("etc/hosts", b"127.0.0.1 localhost\n", 0o644)
        .file("etc/motd", b"welcome v1\n", 0o644)
        .file("etc/issue", b"product v1\n", 0o644)
        .file("etc/both.conf", b"a=1\n", 0o644)
        .file("etc/gone", b"the device deletes this\n", 0o644)
        .file("etc/vendor-drops", b"v2 removes this\n", 0o644)
        .file("etc/owned.conf", b"vendor 1\n", 0o644)
        .file("etc/ssh/sshd_config", b"Port 22\n", 0o644)
        .file("etc/cron.d/job", b"* * * * * true\n", 0o644)
        .symlink("etc/hosts.link", "hosts")
        .file("usr/bin/app", b"app v1\n", 0o755);
    let v1 = repo.commit(&t.root, "v1");
    t.file("etc/issue", b"product v2\n", 0o644)
        .file("etc/both.conf", b"a=2\n", 0o644)
        .file("etc/owned.conf", b"vendor 2\n", 0o644)
        .file("etc/fresh.conf", b"new in v2\n", 0o644)
        .file("etc/cron.d/job2", b"new job in v2\n", 0o644)
        .remove("etc/vendor-drops")
        .file(
            "usr/lib/atomup/etc-owned",
            b"# vendor-owned\nowned.conf\n",
            0o644,
        )
        .file("usr/bin/app", b"app v2\n", 0o755);
    let v2 = repo.commit(&t.root, "v2");
    t.file("etc/issue", b"product v3\n", 0o644)
        .file("etc/motd", b"welcome v3\n", 0o644)
        .file("etc/three.conf", b"new in v3\n", 0o644)
        .file("usr/bin/app", b"app v3\n", 0o755);
    let v3 = repo.commit(&t.root, "v3");
    let keys = atomup_tests::ostree_fixture::Keys::generate(&dir.join("keys"), "vendor");
    let hex = [&v1, &v2, &v3];
    let ids: Vec<ObjectId> = hex.iter().map(|h| ObjectId::from_hex(h).unwrap()).collect();
    for (from, to) in [(None, 0), (Some(0), 1), (Some(1), 2)] {
        let d = repo.path.join(atomup_ostree::delta::delta_path(
            from.map(|i| &ids[i]),
            &ids[to],
        ));
        repo.delta(from.map(|i| hex[i].as_str()), hex[to], &[], &d);
        keys.sign_delta(&d);
    }
    release(&repo, &keys, 2, &v2, T0, &[]);
    let nginx = Nginx::serve(&repo.path, dir.path());
    Etc {
        w: World {
            dir,
            repo,
            keys,
            v1,
            v2,
            nginx,
        },
        v3,
    }
}

/// A device with v1 in slot A as a factory image has it (no /etc layer
/// yet), and a data partition (`var/`) holding more than atomup's state.
fn device(e: &Etc) -> Device {
    let d = provision(&e.w, "device");
    let var = TreeBuilder::new(d.root.join("var"));
    var.file("log/messages", b"boot 1\n", 0o640)
        .file("lib/app/db", &[7u8; 10_000], 0o600)
        .dir("spool/empty", 0o1777)
        .symlink("run", "/run");
    mkfifo(&d.root.join("var/lib/app/socket-ish"));
    d
}

fn slot<'a>(d: &'a Device, s: &str) -> &'a Path {
    if s == "A" {
        &d.slot_a
    } else {
        &d.slot_b
    }
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "{}", text(&out));
    text(&out)
}

/// Runs `script` (sh) as the device booted from `slot` sees the world: in a
/// private mount namespace where `atomup etc mount` has put the slot's
/// overlay on its /etc (`$ETC`; `$ATOMUP` is the binary, `$STATE` the
/// state dir); `args` are `"$@"`.
fn on_device(d: &Device, slot_name: &str, script: &str, args: &[OsString]) -> Output {
    let atomup = atomup_tests::workspace_bin("atomup");
    let root = slot(d, slot_name);
    in_mount_ns(
        &format!(
            "ATOMUP={atomup} ROOT={root} ETC={root}/etc STATE={state}\n\
             \"$ATOMUP\" etc mount --slot {slot_name} --root \"$ROOT\" --state-dir \"$STATE\" >/dev/null\n\
             {script}",
            atomup = atomup.display(),
            root = root.display(),
            state = d.state.display(),
        ),
        args,
    )
}

/// `atomup update` on the device booted from `slot`, its running /etc the
/// overlay (the default `--etc` is `FROM-ROOT/etc`).
fn update(e: &Etc, d: &Device, booted: &str) -> String {
    let other = if booted == "A" { "B" } else { "A" };
    let mut a: Vec<OsString> = vec![atomup_tests::workspace_bin("atomup").into()];
    a.extend(update_base_args(&e.w, d, &e.w.nginx.url(), booted));
    a.extend([
        "--from-root".into(),
        slot(d, booted).into(),
        "--target-dir".into(),
        slot(d, other).into(),
    ]);
    ok(on_device(d, booted, "exec \"$@\"", &a))
}

/// The /etc slot `slot` boots with: its overlay mounted as at boot, copied
/// out with `cp -a` (xattrs, modes and owners kept).
fn view(d: &Device, slot: &str, out: &Path) {
    let _ = fs::remove_dir_all(out);
    ok(on_device(
        d,
        slot,
        &format!("cp -a \"$ETC\" {}", out.display()),
        &[],
    ));
}

/// The device's edits, in order; `true` = the merge keeps it (the others:
/// `owned.conf` is vendor-owned, a FIFO is never carried).
const FIRST_EDITS: &[(&str, bool)] = &[
    ("printf 'our site\\n' > \"$ETC/motd\"", true),
    ("rm \"$ETC/gone\"", true),
    (
        "printf 'site=1\\n' > \"$ETC/mine.conf\" && chmod 640 \"$ETC/mine.conf\"",
        true,
    ),
    ("printf 'a=device\\n' > \"$ETC/both.conf\"", true),
    ("printf 'device edit\\n' > \"$ETC/owned.conf\"", false),
    ("chmod 600 \"$ETC/ssh/sshd_config\"", true),
    ("ln -sfn motd \"$ETC/hosts.link\"", true),
    ("rm -r \"$ETC/cron.d\"", true),
    ("mkfifo \"$ETC/fifo\"", false),
];

const SECOND_EDITS: &[(&str, bool)] = &[
    ("printf 'second\\n' > \"$ETC/second.conf\"", true),
    ("printf 'our site, again\\n' > \"$ETC/motd\"", true),
];

fn script(edits: &[&[(&str, bool)]], carried_only: bool) -> String {
    edits
        .iter()
        .flat_map(|e| e.iter())
        .filter(|(_, carried)| *carried || !carried_only)
        .map(|(line, _)| *line)
        .collect::<Vec<_>>()
        .join("\n")
}

/// What the rules say the new slot's /etc is: the new defaults with the
/// device's carried edits made on them.
fn expected(w: &World, commit: &str, edits: &[&[(&str, bool)]], out: &Path) {
    let co = w.dir.join(format!("checkout-{commit}"));
    if !co.exists() {
        w.repo.checkout(commit, &co);
    }
    let _ = fs::remove_dir_all(out);
    run_ok(Command::new("cp").arg("-a").arg(co.join("etc")).arg(out));
    run_ok(
        Command::new("sh")
            .args(["-c", &format!("set -eu\n{}", script(edits, true))])
            .env("ETC", out),
    );
}

fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The whole life: edits on v1, update to v2 (the merge by every rule,
/// through real overlays on both sides), config-diff and status report it,
/// the running slot's layer untouched; then edits on v2 and an update to v3
/// that carries everything on again.
#[test]
fn device_etc_changes_survive_two_updates_exactly_by_the_rules() {
    let e = world("update-etc");
    let (w, d) = (&e.w, device(&e));

    // Booted A (v1): the first mount creates A's empty layer; the device edits.
    ok(on_device(&d, "A", &script(&[FIRST_EDITS], false), &[]));
    let diff = ok(on_device(
        &d,
        "A",
        "\"$ATOMUP\" config-diff --etc \"$ETC\" --booted-slot A --state-dir \"$STATE\"",
        &[],
    ));
    for line in [
        "M    both.conf",
        "D    cron.d",
        "D    gone",
        "M    hosts.link",
        "A    mine.conf",
        "M    motd",
        "M    owned.conf",
        "M    ssh/sshd_config",
    ] {
        assert!(diff.lines().any(|l| l == line), "no `{line}` in:\n{diff}");
    }
    assert!(diff.contains("fifo is a FIFO: not compared"), "{diff}");
    assert!(!diff.contains("issue"), "{diff}");

    // The running slot's layer (its upper: overlayfs itself rewrites work/
    // at every mount).
    let layer_a = d.state.join("etc/A/upper");
    let layer_a_before = tree_digest_with_times(&layer_a);
    let slot_a_before = tree_digest_with_times(&d.slot_a);
    let out = update(&e, &d, "A");
    assert!(out.contains("into slot B"), "{out}");
    assert!(
        out.contains(
            "/etc: 5 modified, 3 removed, 1 added, 1 conflicts (kept the device's), \
             1 reset to the vendor's default, 1 not carried (special files)"
        ),
        "{out}"
    );
    assert_eq!(
        tree_digest_with_times(&layer_a),
        layer_a_before,
        "running layer written"
    );
    assert_eq!(
        tree_digest_with_times(&d.slot_a),
        slot_a_before,
        "running slot written"
    );

    // Slot B's /etc as it boots: exactly the rules.
    let got = w.dir.join("view-b");
    let want = w.dir.join("want-b");
    view(&d, "B", &got);
    expected(w, &w.v2, &[FIRST_EDITS], &want);
    assert_same_tree(&got, &want);
    assert_eq!(
        read(&got.join("both.conf")),
        "a=device\n",
        "conflict: the device's"
    );
    assert_eq!(read(&got.join("owned.conf")), "vendor 2\n", "vendor-owned");
    assert_eq!(
        read(&got.join("issue")),
        "product v2\n",
        "untouched: follows"
    );
    assert_eq!(read(&got.join("fresh.conf")), "new in v2\n");
    assert!(!got.join("vendor-drops").exists() && !got.join("cron.d").exists());
    assert!(!got.join("fifo").exists());
    assert_eq!(
        snapshot(&got)[Path::new("ssh/sshd_config")].mode,
        0o600,
        "mode-only change carried"
    );

    // `status --json`, read back by a real JSON parser: B's last merge.
    let out = atomup(env_args(&d, &["status", "--json", "--booted-slot", "A"]));
    assert!(out.status.success(), "{}", text(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        status["slots"][1]["etc_merge"],
        serde_json::json!({"to": w.v2, "modified": 5, "removed": 3, "added": 1,
            "conflicts": 1, "forced": 1, "skipped": 1, "conflict_paths": ["both.conf"]}),
        "{status}"
    );
    assert_eq!(status["slots"][0]["etc_merge"], serde_json::Value::Null);
    let conflicts = read(&d.state.join("etc/B/merge"));
    assert!(conflicts.contains("\nconflict both.conf\n"), "{conflicts}");

    // B boots and is confirmed; the device edits again; v3 is released.
    ok(atomup(env_args(&d, &["mark-good", "--booted-slot", "B"])));
    ok(on_device(&d, "B", &script(&[SECOND_EDITS], false), &[]));
    release(&w.repo, &w.keys, 3, &e.v3, T0 + 1, &[]);
    let out = update(&e, &d, "B");
    assert!(out.contains("into slot A"), "{out}");
    assert!(
        out.contains("/etc: 4 modified, 4 removed, 2 added, 1 conflicts (kept the device's)\n"),
        "{out}"
    );
    let got = w.dir.join("view-a");
    let want = w.dir.join("want-a");
    view(&d, "A", &got);
    expected(w, &e.v3, &[FIRST_EDITS, SECOND_EDITS], &want);
    assert_same_tree(&got, &want);
    assert_eq!(
        read(&got.join("motd")),
        "our site, again\n",
        "conflict: the device's"
    );
    assert_eq!(read(&got.join("three.conf")), "new in v3\n");
    assert_eq!(read(&got.join("mine.conf")), "site=1\n", "carried twice");
}

/// Everything on the data partition but atomup's state directory,
/// to the inode and the nanosecond.
fn data_partition(d: &Device) -> Vec<String> {
    fn walk(dir: &Path, skip: &Path, out: &mut Vec<String>) {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for p in names {
            if p == skip {
                continue;
            }
            let m = fs::symlink_metadata(&p).unwrap();
            let content = if m.is_file() {
                format!("{:?}", fs::read(&p).unwrap())
            } else {
                String::new()
            };
            out.push(format!(
                "{} ino={} mode={:o} {}:{} size={} mtime={}.{} ctime={}.{} {content}",
                p.display(),
                m.ino(),
                m.mode(),
                m.uid(),
                m.gid(),
                m.len(),
                m.mtime(),
                m.mtime_nsec(),
                m.ctime(),
                m.ctime_nsec()
            ));
            if m.is_dir() {
                walk(&p, skip, out);
            }
        }
    }
    let var = d.root.join("var");
    let m = fs::symlink_metadata(&var).unwrap();
    let mut out = vec![format!(
        "var ino={} mtime={}.{}",
        m.ino(),
        m.mtime(),
        m.mtime_nsec()
    )];
    walk(&var, &d.state, &mut out);
    out
}

/// /var is the device's: an update (download, apply, /etc merge, env
/// writes) writes the data partition only inside atomup's state directory:
/// every other path of /var, FIFO and symlink included, has the same inode,
/// mode, owner, content, mtime and ctime after it.
#[test]
fn an_update_writes_nothing_on_the_data_partition_but_its_state_dir() {
    let e = world("update-var");
    let d = device(&e);
    ok(on_device(&d, "A", &script(&[FIRST_EDITS], false), &[]));
    let before = data_partition(&d);
    assert!(before.len() >= 7, "{before:#?}");
    let out = update(&e, &d, "A");
    assert!(
        out.contains("into slot B") && out.contains("/etc: "),
        "{out}"
    );
    assert_eq!(data_partition(&d), before);
}
