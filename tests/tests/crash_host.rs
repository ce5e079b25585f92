//! Power cuts at every crash point of the whole update, on the host (issue
//! 17): the agent built with its crash points (`atomup-faults`) runs each
//! step of a device's life and is killed (SIGKILL) at one named point, or
//! inside one write at a byte offset; then the power comes back: the
//! bootloader logic (`BootState::boot()`, what the U-Boot script and
//! grub.cfg do) picks a slot from the env and counts a trial boot, and the
//! device runs `atomup health` and `atomup update` as it does at every boot,
//! until it is done. After every cut:
//! - the env names a confirmed slot first that holds a good release whose
//!   tree verifies, or a trial slot whose tree verifies (never the
//!   last-resort boot);
//! - every slot the step may not write is bit-identical (contents, modes,
//!   owners, xattrs, mtimes, ctimes) to before;
//! - no release is recorded as rolled back that was not;
//! - once the power is back, the device completes the update (the expected
//!   env, trees, records and rollbacks) within a few boots.
//!
//! The life (each step starts from a saved device, U-Boot env image or GRUB
//! pair): `update` v1 → v2 from slot A; `mark-good` of v2's trial
//! (`health`); `update` v2 → v3 from slot B (v3 fails its health check);
//! `mark-bad` of v3's trial (`health`); the rollback record of v4, whose
//! kernel never boots, after the bootloader fell back (`health`).
//!
//! CI runs a seeded subset (`ATOMUP_CRASH_CUTS`, default 48, the seed
//! printed; `ATOMUP_CRASH_SEED=N` reruns it); the full campaign is
//! `ATOMUP_CRASH_FULL=1 cargo test -p atomup-tests --test crash_host --
//! --nocapture` (or `scripts/crash-campaign.sh host`). One cut alone:
//! `ATOMUP_CRASH_CUT=uboot/update/env.write@1:300`.

use atomup_bootctl::statedir::StateDir;
use atomup_bootctl::{Bootloader, GrubEnv, UbootEnv};
use atomup_ostree::ObjectId;
use atomup_policy::{BootState, Slot};
use atomup_tests::crash::{self, Hit, Rng, Table};
use atomup_tests::device::{run_bounded, text, T0};
use atomup_tests::nginx::Nginx;
use atomup_tests::ostree_fixture::{
    pseudo_bytes, run_ok, tree_digest, tree_digest_with_times, Keys, Repo, ScratchDir, TreeBuilder,
};
use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsString;
use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const RERUN: &str = "cargo test -p atomup-tests --test crash_host -- --nocapture";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EnvKind {
    UBoot,
    Grub,
}

impl EnvKind {
    fn name(self) -> &'static str {
        match self {
            EnvKind::UBoot => "uboot",
            EnvKind::Grub => "grub",
        }
    }
}

/// The vendor side: four releases made by the real `ostree` CLI (signed
/// deltas, `atomup-publish release` on one channel each), served by nginx.
struct World {
    dir: ScratchDir,
    keys: Keys,
    /// v1..v4 commit ids (hex).
    v: [String; 4],
    /// Tree digest of each commit's checkout, by commit id.
    digest: BTreeMap<String, String>,
    nginx: Nginx,
    /// From-scratch delta of v1 (the factory image).
    factory: PathBuf,
}

impl World {
    fn release(&self, n: usize) -> &str {
        &self.v[n - 1]
    }
}

/// v1: a small root (a health check that passes, an app, 24 libraries, 12
/// documents, a symlink, an empty directory). v2 changes the app (bsdiff),
/// six libraries, the symlink, deletes four documents and adds two large
/// incompressible files (so the delta has several parts). v3 is v2 whose
/// health check fails; v4 is v2 whose kernel never boots (`boot/bad-kernel`).
fn world() -> World {
    atomup_tests::require_tool("ostree");
    let dir = ScratchDir::new("crash-host");
    let repo = Repo::init(dir.join("repo"), "archive");
    let t = TreeBuilder::new(dir.join("tree"));
    let check = |pass: bool| format!("#!/bin/sh\nexit {}\n", if pass { 0 } else { 1 });
    t.file("etc/os-release", b"VERSION_ID=1\n", 0o644)
        .file(
            "etc/atomup/health.d/10-check",
            check(true).as_bytes(),
            0o755,
        )
        .file("usr/bin/app", &pseudo_bytes(1, 300_000, false), 0o755)
        .file(
            "usr/lib/libapp.so.1",
            &pseudo_bytes(2, 40_000, false),
            0o644,
        )
        .symlink("usr/lib/libapp.so", "libapp.so.1")
        .dir("var/empty", 0o755);
    for i in 0..24u64 {
        t.file(
            &format!("usr/lib/mod{i:02}.so"),
            &pseudo_bytes(100 + i, 8_000 + 500 * i as usize, false),
            0o644,
        );
    }
    for i in 0..12u64 {
        t.file(
            &format!("usr/share/doc/{i:02}.txt"),
            &pseudo_bytes(200 + i, 3_000, true),
            0o644,
        );
    }
    let v1 = repo.commit(&t.root, "v1");
    let mut app = pseudo_bytes(1, 300_000, false);
    app[1000..1100].copy_from_slice(&[7; 100]);
    t.file("etc/os-release", b"VERSION_ID=2\n", 0o644)
        .file("usr/bin/app", &app, 0o755)
        .file(
            "usr/lib/libapp.so.2",
            &pseudo_bytes(3, 40_000, false),
            0o644,
        )
        .remove("usr/lib/libapp.so.1")
        .symlink("usr/lib/libapp.so", "libapp.so.2")
        .file("usr/lib/big1.bin", &pseudo_bytes(5, 700_000, false), 0o644)
        .file("usr/lib/big2.bin", &pseudo_bytes(6, 700_000, false), 0o644)
        .file(
            "usr/share/doc/new.txt",
            &pseudo_bytes(7, 5_000, true),
            0o644,
        );
    for i in 0..6u64 {
        t.file(
            &format!("usr/lib/mod{i:02}.so"),
            &pseudo_bytes(300 + i, 9_000, false),
            0o644,
        );
    }
    for i in 0..4 {
        t.remove(&format!("usr/share/doc/{i:02}.txt"));
    }
    let v2 = repo.commit(&t.root, "v2");
    t.file("etc/os-release", b"VERSION_ID=3\n", 0o644).file(
        "etc/atomup/health.d/10-check",
        check(false).as_bytes(),
        0o755,
    );
    let v3 = repo.commit(&t.root, "v3");
    t.file("etc/os-release", b"VERSION_ID=4\n", 0o644)
        .file(
            "etc/atomup/health.d/10-check",
            check(true).as_bytes(),
            0o755,
        )
        .file("boot/bad-kernel", b"this kernel panics at once\n", 0o644);
    let v4 = repo.commit(&t.root, "v4");
    let keys = Keys::generate(&dir.join("keys"), "vendor");
    let id = |h: &str| ObjectId::from_hex(h).unwrap();
    let delta = |from: Option<&str>, to: &str, opts: &[&str]| {
        let d = repo.path.join(atomup_ostree::delta::delta_path(
            from.map(id).as_ref(),
            &id(to),
        ));
        repo.delta(from, to, opts, &d);
        keys.sign_delta(&d);
        d
    };
    let factory = delta(None, &v1, &["--min-fallback-size=0"]);
    delta(
        Some(&v1),
        &v2,
        &["--min-fallback-size=0", "--max-chunk-size=1"],
    );
    delta(Some(&v2), &v3, &["--min-fallback-size=0"]);
    delta(Some(&v2), &v4, &["--min-fallback-size=0"]);
    let v = [v1, v2, v3, v4];
    for (n, commit) in v.iter().enumerate().skip(1) {
        run_ok(
            Command::new(atomup_tests::workspace_bin("atomup-publish"))
                .args(["release", "--repo"])
                .arg(&repo.path)
                .arg("--key")
                .arg(&keys.secret)
                .args(["--channel", &format!("c{}", n + 1), "--board", "qemu-virt"])
                .args(["--version", &(n + 1).to_string(), "--to", commit])
                .args(["--timestamp", &T0.to_string(), "--expires-in-days", "30"]),
        );
    }
    let mut digest = BTreeMap::new();
    for commit in &v {
        let out = dir.join(format!("checkout-{commit}"));
        repo.checkout(commit, &out);
        digest.insert(commit.clone(), tree_digest(&out));
    }
    let nginx = Nginx::serve(&repo.path, dir.path());
    World {
        dir,
        keys,
        v,
        digest,
        nginx,
        factory,
    }
}

/// One simulated device: both slots as directories, the data partition's
/// state directory, the env (U-Boot image or GRUB pair), and the kernel
/// command line the last (simulated) boot gave it.
struct Dev {
    root: PathBuf,
    kind: EnvKind,
}

impl Dev {
    fn slot(&self, s: Slot) -> PathBuf {
        self.root
            .join(format!("slot-{}", s.letter().to_ascii_lowercase()))
    }
    fn state(&self) -> PathBuf {
        self.root.join("state")
    }
    fn cmdline(&self) -> PathBuf {
        self.root.join("cmdline")
    }

    fn env_args(&self) -> Vec<OsString> {
        let (flag, path) = match self.kind {
            EnvKind::UBoot => ("--env-image", self.root.join("disk.img")),
            EnvKind::Grub => ("--grubenv", self.root.join("grub/grubenv")),
        };
        vec![
            flag.into(),
            path.into(),
            "--state-dir".into(),
            self.state().into(),
            "--cmdline".into(),
            self.cmdline().into(),
        ]
    }

    fn bootloader(&self) -> Box<dyn Bootloader> {
        match self.kind {
            EnvKind::UBoot => Box::new(UbootEnv::qemu_image(&self.root.join("disk.img"))),
            EnvKind::Grub => Box::new(GrubEnv::new(&self.root.join("grub/grubenv"))),
        }
    }

    fn env(&self) -> Result<BootState, String> {
        let mut bl = self.bootloader();
        atomup_bootctl::read(bl.as_mut())
            .and_then(|s| s.state())
            .map_err(|e| format!("the env cannot be read: {e}"))
    }

    fn booted(&self) -> Slot {
        let text = fs::read_to_string(self.cmdline()).unwrap_or_default();
        atomup_bootctl::cmdline::parse(&text)
            .slot
            .expect("a booted slot")
    }

    /// Power on: the bootloader picks the slot from the env (and counts a
    /// trial attempt) exactly as the U-Boot script and grub.cfg do, and
    /// boots it with this command line.
    fn power_on(&self) -> Result<atomup_policy::BootChoice, String> {
        let st = self.env()?;
        let c = st.boot();
        if let Some(w) = &c.write {
            let mut bl = self.bootloader();
            atomup_bootctl::write_state(bl.as_mut(), w)
                .map_err(|e| format!("the bootloader's env write failed: {e}"))?;
        }
        let mut cmdline = format!("atomup.slot={}", c.slot);
        if c.trial {
            cmdline += " atomup.trial=1";
        }
        if c.fallback {
            cmdline += " atomup.fallback=1";
        }
        fs::write(self.cmdline(), cmdline + "\n").unwrap();
        Ok(c)
    }

    /// The commit the slot's record names, if any.
    fn recorded(&self, s: Slot) -> Option<String> {
        StateDir::new(&self.state())
            .slot_record(s)
            .ok()
            .flatten()
            .and_then(|r| r.commit())
            .map(|c| c.to_hex())
    }

    fn rollbacks(&self) -> Result<Vec<String>, String> {
        StateDir::new(&self.state())
            .rollbacks()
            .map(|l| {
                l.iter()
                    .map(|r| r.commit.map_or("-".into(), |c| c.to_hex()))
                    .collect()
            })
            .map_err(|e| format!("the rollback records cannot be read: {e}"))
    }
}

fn copy_tree(from: &Path, to: &Path) {
    let _ = fs::remove_dir_all(to);
    run_ok(
        Command::new("cp")
            .args(["-a", "--reflink=auto"])
            .arg(from)
            .arg(to),
    );
}

/// What a step is: one command of the device's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// `atomup update` on the channel of release N.
    Update(usize),
    /// `atomup health` (the booted slot's own checks).
    Health,
}

fn step_args(w: &World, d: &Dev, step: Step) -> Vec<OsString> {
    let booted = d.booted();
    let mut a: Vec<OsString> = Vec::new();
    match step {
        Step::Update(n) => {
            a.extend(["update".into(), "--server".into(), w.nginx.url().into()]);
            a.extend(["--channel".into(), format!("c{n}").into()]);
            a.extend(["--board".into(), "qemu-virt".into()]);
            a.extend(["--trusted-keys".into(), w.keys.public.clone().into()]);
            a.extend(["--machine-id".into(), d.root.join("machine-id").into()]);
            a.extend(["--now".into(), (T0 + 60).to_string().into()]);
            a.extend(["--retry-backoff-ms".into(), "20".into()]);
            a.extend(["--from-root".into(), d.slot(booted).into()]);
            a.extend(["--target-dir".into(), d.slot(!booted).into()]);
        }
        Step::Health => {
            a.extend(["health".into(), "--no-reboot".into(), "--checks".into()]);
            a.push(d.slot(booted).join("etc/atomup/health.d").into());
        }
    }
    a.extend(d.env_args());
    a
}

fn run(bin: &Path, args: &[OsString], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(bin);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_bounded(&mut cmd, Duration::from_secs(120))
}

/// One step of the life to cut, from a saved device.
struct Scenario {
    name: &'static str,
    /// The saved device it starts from.
    start: PathBuf,
    step: Step,
    /// The channel the device polls after power returns.
    channel: usize,
    /// The slot the step may write (the update's target).
    writes: Option<Slot>,
    /// Releases that may be recorded as rolled back (they did).
    may_roll_back: Vec<String>,
    /// Releases that have failed (health or attempts) once the step runs:
    /// never installed again.
    failed: Vec<String>,
    /// What the device ends as once the update is complete.
    done: Done,
    /// Names of the step's env writes, in order (for the report).
    env_writes: &'static [&'static str],
    /// The trace of the step run whole.
    hits: Vec<Hit>,
}

#[derive(Clone, Debug)]
struct Done {
    env: BootState,
    /// Slot → commit its record names and its tree holds.
    slots: Vec<(Slot, String)>,
    rollbacks: Vec<String>,
}

/// The saved devices the life's steps start from, and the steps, for one
/// env kind. Built with the plain agent; each step is also run whole once
/// with the crash-point agent recording its trace.
fn scenarios(w: &World, kind: EnvKind, base: &Path) -> Vec<Scenario> {
    let plain = atomup_tests::workspace_bin("atomup");
    let d = Dev {
        root: base.join("build"),
        kind,
    };
    let _ = fs::remove_dir_all(&d.root);
    fs::create_dir_all(d.slot(Slot::A)).unwrap();
    fs::create_dir_all(d.slot(Slot::B)).unwrap();
    fs::create_dir_all(d.state().join("slots")).unwrap();
    fs::create_dir_all(d.root.join("grub")).unwrap();
    // The factory image: v1 in A, its metadata in the state dir.
    run_ok(
        Command::new(&plain)
            .args(["delta", "apply", "--delta"])
            .arg(&w.factory)
            .arg("--to")
            .arg(d.slot(Slot::A))
            .arg("--meta-out")
            .arg(d.state().join("meta"))
            .arg("--trusted-keys")
            .arg(&w.keys.public),
    );
    fs::write(
        d.state().join("slots/A"),
        format!("format=1\ncommit={}\nversion=1\n", w.release(1)),
    )
    .unwrap();
    fs::write(d.root.join("machine-id"), "crash-campaign\n").unwrap();
    if kind == EnvKind::UBoot {
        fs::File::create(d.root.join("disk.img"))
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
    }
    let mut init = vec!["env".into(), "init".into(), "--order".into(), "A".into()];
    init.extend(d.env_args());
    run_ok(Command::new(&plain).args(&init));
    let ok = |out: Output, what: &str| {
        assert!(out.status.success(), "{what}: {}", text(&out));
        out
    };
    let save = |name: &str| {
        let p = base.join(name);
        copy_tree(&d.root, &p);
        p
    };
    let (v1, v2, v3, v4) = (w.release(1), w.release(2), w.release(3), w.release(4));
    use Slot::{A, B};
    let st = |order: &[Slot]| BootState {
        order: order.to_vec(),
        trial: None,
        left: 0,
    };
    let mut out = Vec::new();

    d.power_on().unwrap();
    out.push(Scenario {
        name: "update",
        start: save("s-update"),
        step: Step::Update(2),
        channel: 2,
        writes: Some(B),
        may_roll_back: vec![],
        failed: vec![],
        done: Done {
            env: st(&[B, A]),
            slots: vec![(A, v1.into()), (B, v2.into())],
            rollbacks: vec![],
        },
        env_writes: &["install-start", "install-done"],
        hits: Vec::new(),
    });
    ok(
        run(&plain, &step_args(w, &d, Step::Update(2)), &[]),
        "update to v2",
    );
    d.power_on().unwrap();
    out.push(Scenario {
        name: "mark-good",
        start: save("s-mark-good"),
        step: Step::Health,
        channel: 2,
        writes: None,
        may_roll_back: vec![],
        failed: vec![],
        done: Done {
            env: st(&[B, A]),
            slots: vec![(A, v1.into()), (B, v2.into())],
            rollbacks: vec![],
        },
        env_writes: &["mark-good"],
        hits: Vec::new(),
    });
    ok(
        run(&plain, &step_args(w, &d, Step::Health), &[]),
        "mark-good",
    );
    d.power_on().unwrap();
    out.push(Scenario {
        name: "update-from-b",
        start: save("s-update-from-b"),
        step: Step::Update(3),
        channel: 3,
        writes: Some(A),
        may_roll_back: vec![v3.into()],
        failed: vec![],
        done: Done {
            env: st(&[B]),
            slots: vec![(A, v3.into()), (B, v2.into())],
            rollbacks: vec![v3.into()],
        },
        env_writes: &["install-start", "install-done"],
        hits: Vec::new(),
    });
    ok(
        run(&plain, &step_args(w, &d, Step::Update(3)), &[]),
        "update to v3",
    );
    d.power_on().unwrap();
    out.push(Scenario {
        name: "mark-bad",
        start: save("s-mark-bad"),
        step: Step::Health,
        channel: 3,
        writes: None,
        may_roll_back: vec![v3.into()],
        failed: vec![v3.into()],
        done: Done {
            env: st(&[B]),
            slots: vec![(A, v3.into()), (B, v2.into())],
            rollbacks: vec![v3.into()],
        },
        env_writes: &["mark-bad"],
        hits: Vec::new(),
    });
    // v3 marked bad, then v4 from the confirmed v2: installed into A, its
    // kernel panics on all three trial boots, the bootloader falls back to
    // B, where `health` records the rollback.
    let bad = run(&plain, &step_args(w, &d, Step::Health), &[]);
    assert!(
        !bad.status.success(),
        "v3's health must fail: {}",
        text(&bad)
    );
    d.power_on().unwrap();
    ok(
        run(&plain, &step_args(w, &d, Step::Update(4)), &[]),
        "update to v4",
    );
    for _ in 0..3 {
        let c = d.power_on().unwrap();
        assert!(c.trial && c.slot == A, "{c:?}");
    }
    let c = d.power_on().unwrap();
    assert!(!c.trial && c.slot == B, "{c:?}");
    out.push(Scenario {
        name: "fallback",
        start: save("s-fallback"),
        step: Step::Health,
        channel: 4,
        writes: None,
        may_roll_back: vec![v3.into(), v4.into()],
        failed: vec![v3.into(), v4.into()],
        done: Done {
            env: st(&[B]),
            slots: vec![(A, v4.into()), (B, v2.into())],
            rollbacks: vec![v3.into(), v4.into()],
        },
        env_writes: &["rollback"],
        hits: Vec::new(),
    });
    // Each step whole, with the crash-point agent, recording its trace.
    let faults = crash::faults_atomup();
    for s in &mut out {
        copy_tree(&s.start, &d.root);
        let trace = base.join(format!("trace-{}", s.name));
        let _ = fs::remove_file(&trace);
        let r = run(
            &faults,
            &step_args(w, &d, s.step),
            &[("ATOMUP_FAILPOINT_TRACE", trace.to_str().unwrap())],
        );
        let expect_ok = s.name != "mark-bad";
        assert_eq!(r.status.success(), expect_ok, "{}: {}", s.name, text(&r));
        s.hits = crash::read_trace(&trace);
        assert!(!s.hits.is_empty(), "{}: no crash point passed", s.name);
    }
    out
}

/// One cut: which step, which hit, how many bytes of a write.
#[derive(Clone, Debug)]
struct Cut {
    kind: EnvKind,
    scenario: usize,
    hit: Hit,
    bytes: u64,
}

impl Cut {
    fn spec(&self) -> String {
        if self.hit.is_write() {
            format!("{}@{}:{}", self.hit.name, self.hit.k, self.bytes)
        } else {
            format!("{}@{}", self.hit.name, self.hit.k)
        }
    }
    fn id(&self, sc: &[Scenario]) -> String {
        format!(
            "{}/{}/{}",
            self.kind.name(),
            sc[self.scenario].name,
            self.spec()
        )
    }
}

/// The byte offsets a write is cut at: nothing written, all written (not
/// yet acknowledged), the first bytes, and seeded ones in between.
fn offsets(h: &Hit, rng: &mut Rng) -> Vec<u64> {
    let len = h.len;
    let mut v = vec![0, len];
    let random = match h.name.as_str() {
        "env.write" => {
            // The byte classes of a copy or block: CRC/header, flags, the
            // first variable, mid-data, the last byte.
            v.extend([1, 3, 4, 5, 6, 12, 31, 64, len / 2, len.saturating_sub(1)]);
            4
        }
        "record.write" => 6,
        "fetch.download" => 8,
        _ => 2,
    };
    for _ in 0..random {
        if len > 1 {
            v.push(1 + rng.below(len - 1));
        }
    }
    v.retain(|&o| o <= len);
    v.sort_unstable();
    v.dedup();
    v
}

/// Every cut of a campaign over these scenarios.
fn all_cuts(kind: EnvKind, sc: &[Scenario], rng: &mut Rng) -> Vec<Cut> {
    let mut cuts = Vec::new();
    for (i, s) in sc.iter().enumerate() {
        for h in &s.hits {
            let bytes = if h.is_write() {
                offsets(h, rng)
            } else {
                vec![0]
            };
            for b in bytes {
                cuts.push(Cut {
                    kind,
                    scenario: i,
                    hit: h.clone(),
                    bytes: b,
                });
            }
        }
    }
    cuts
}

/// The report's name for a cut's point.
fn row_name(s: &Scenario, h: &Hit) -> String {
    let what = match h.name.as_str() {
        "env.write" => s
            .env_writes
            .get(h.k as usize)
            .copied()
            .unwrap_or("env")
            .to_owned(),
        "record.write" => {
            let p = Path::new(&h.label);
            let file = p.file_name().unwrap_or_default().to_string_lossy();
            match p.parent().and_then(|d| d.file_name()) {
                Some(d) if d == "slots" => format!("slots/{file}"),
                _ => file.into_owned(),
            }
        }
        "fetch.download" | "fetch.done" if h.label.ends_with("superblock") => "superblock".into(),
        "fetch.download" => "part".into(),
        _ => String::new(),
    };
    if what.is_empty() {
        format!("{:<13} {}", s.name, h.name)
    } else {
        format!("{:<13} {} {what}", s.name, h.name)
    }
}

/// Makes one cut and lets the power come back; `Err` names the broken
/// invariant.
fn cut_once(w: &World, sc: &[Scenario], cut: &Cut, d: &Dev) -> Result<Vec<String>, String> {
    let s = &sc[cut.scenario];
    copy_tree(&s.start, &d.root);
    let before: BTreeMap<Slot, String> = Slot::ALL
        .into_iter()
        .map(|x| (x, tree_digest_with_times(&d.slot(x))))
        .collect();
    let out = run(
        &crash::faults_atomup(),
        &step_args(w, d, s.step),
        &[("ATOMUP_FAILPOINT", &cut.spec())],
    );
    // 0. It died at the point, by SIGKILL.
    let marker = format!("fault point {}@{}", cut.hit.name, cut.hit.k);
    if out.status.signal() != Some(9) || !text(&out).contains(&marker) {
        return Err(format!(
            "the cut was not made ({}): {}",
            out.status,
            text(&out)
        ));
    }
    let mut outcome = Vec::new();
    // 1. The env boots a confirmed good release or a trial slot whose tree
    //    verifies, never the last resort.
    let env = d.env()?;
    let c = env.boot();
    if c.fallback {
        return Err(format!("no slot to boot in {env}: last-resort boot"));
    }
    let holds = d.recorded(c.slot);
    let tree = tree_digest(&d.slot(c.slot));
    let verifies = holds
        .as_ref()
        .is_some_and(|commit| w.digest.get(commit) == Some(&tree));
    if !verifies {
        return Err(format!(
            "{env} boots slot {} whose tree is not the commit its record names ({holds:?})",
            c.slot
        ));
    }
    let good = [w.release(1), w.release(2)];
    if !c.trial && !holds.as_deref().is_some_and(|h| good.contains(&h)) {
        return Err(format!(
            "{env} boots slot {} confirmed, holding {holds:?}, which never passed a health check",
            c.slot
        ));
    }
    outcome.push(format!("boot {}", c.slot));
    if c.trial {
        outcome.push("trial".into());
    }
    // 2. What the step may not write is bit-identical.
    for x in Slot::ALL {
        if Some(x) != s.writes && tree_digest_with_times(&d.slot(x)) != before[&x] {
            return Err(format!(
                "slot {x} changed although the step never writes it"
            ));
        }
    }
    // 3. Only releases that rolled back are recorded as rolled back, once.
    let check_rollbacks = |list: Vec<String>| -> Result<(), String> {
        let mut seen = Vec::new();
        for r in &list {
            if !s.may_roll_back.contains(r) || seen.contains(&r) {
                return Err(format!("rollback records {list:?}: {r} did not roll back"));
            }
            seen.push(r);
        }
        Ok(())
    };
    check_rollbacks(d.rollbacks()?)?;
    // 4. Power returns: the device boots and runs as at every boot until
    //    the update is done.
    let boots = live(w, d, s.channel, s.failed.clone())?;
    outcome.push("done".into());
    outcome.push(format!("{boots} boot{}", if boots == 1 { "" } else { "s" }));
    let env = d.env()?;
    if env != s.done.env {
        return Err(format!(
            "after power returned the env is {env}, want {}",
            s.done.env
        ));
    }
    for (x, commit) in &s.done.slots {
        let tree = tree_digest(&d.slot(*x));
        if d.recorded(*x).as_ref() != Some(commit) || w.digest.get(commit) != Some(&tree) {
            return Err(format!(
                "after power returned slot {x} does not hold {commit}"
            ));
        }
    }
    let list = d.rollbacks()?;
    check_rollbacks(list.clone())?;
    if list != s.done.rollbacks {
        return Err(format!(
            "after power returned the rollbacks are {list:?}, want {:?}",
            s.done.rollbacks
        ));
    }
    Ok(outcome)
}

/// The device's boots after the power came back: bootloader, `health`,
/// `update` (the plain agent), until the update is done or refused as
/// rolled back before. A release that failed (`failed`, and any whose
/// health check fails or whose attempts run out meanwhile) must never be
/// installed again. Returns the number of boots it took.
fn live(w: &World, d: &Dev, channel: usize, mut failed: Vec<String>) -> Result<usize, String> {
    let plain = atomup_tests::workspace_bin("atomup");
    for boot in 1..=8 {
        let before = d.env()?;
        let c = d.power_on()?;
        if c.fallback {
            return Err(format!("boot {boot}: last-resort boot"));
        }
        if let Some(x) = before.trial.filter(|&x| x != c.slot && before.left == 0) {
            failed.extend(d.recorded(x)); // its attempts ran out
        }
        if d.slot(c.slot).join("boot/bad-kernel").exists() {
            continue; // the kernel panics: the board resets
        }
        let h = run(&plain, &step_args(w, d, Step::Health), &[]);
        if !h.status.success() {
            if text(&h).contains("FAILED") {
                failed.extend(d.recorded(c.slot));
                continue; // marked bad: reboot
            }
            return Err(format!("boot {boot}: health failed: {}", text(&h)));
        }
        let u = run(&plain, &step_args(w, d, Step::Update(channel)), &[]);
        let t = text(&u);
        match u.status.success() {
            true if t.contains("installed version") => {
                let again = failed.iter().find(|f| t.contains(f.as_str()));
                if let Some(f) = again {
                    return Err(format!(
                        "boot {boot}: installed {f} again, which failed: {t}"
                    ));
                }
                continue;
            }
            true if t.contains("up to date") => return Ok(boot),
            false if t.contains("rolled back on this device before") => return Ok(boot),
            _ => return Err(format!("boot {boot}: update failed: {t}")),
        }
    }
    Err("the update was not done after 8 boots".into())
}

/// The campaign: the scenarios for both env kinds, their cuts (all of them,
/// or the seeded subset), two devices cut in parallel, the report.
fn campaign(full: bool) {
    let started = Instant::now();
    let seed = crash::seed(
        if full {
            "host crash campaign (full)"
        } else {
            "host crash campaign (CI subset)"
        },
        &if full {
            format!("ATOMUP_CRASH_FULL=1 {RERUN}")
        } else {
            RERUN.to_owned()
        },
    );
    let w = world();
    eprintln!("world built in {:.1} s", started.elapsed().as_secs_f64());
    let only = std::env::var("ATOMUP_CRASH_CUT").ok();
    let subset: usize = std::env::var("ATOMUP_CRASH_CUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48);
    let mut rng = Rng::new(seed);
    let mut sets = Vec::new();
    let mut queue = VecDeque::new();
    for kind in [EnvKind::UBoot, EnvKind::Grub] {
        let base = w.dir.join(kind.name());
        let t = Instant::now();
        let sc = scenarios(&w, kind, &base);
        eprintln!(
            "{} steps saved and traced in {:.1} s: {} crash point hits",
            kind.name(),
            t.elapsed().as_secs_f64(),
            sc.iter().map(|s| s.hits.len()).sum::<usize>()
        );
        let mut cuts = all_cuts(kind, &sc, &mut rng);
        if let Some(id) = &only {
            cuts.retain(|c| &c.id(&sc) == id);
        } else if !full {
            // One cut of every (step, point), then random others.
            rng.shuffle(&mut cuts);
            let mut picked: Vec<Cut> = Vec::new();
            let mut rest = Vec::new();
            for c in cuts {
                let row = row_name(&sc[c.scenario], &c.hit);
                if picked
                    .iter()
                    .any(|p| row_name(&sc[p.scenario], &p.hit) == row)
                {
                    rest.push(c);
                } else {
                    picked.push(c);
                }
            }
            let each = subset / 2;
            picked.truncate(each);
            let more = each.saturating_sub(picked.len());
            picked.extend(rest.into_iter().take(more));
            cuts = picked;
        }
        queue.extend(cuts.into_iter().map(|c| (sets.len(), c)));
        sets.push(sc);
    }
    let total = queue.len();
    eprintln!(
        "host crash campaign: {total} cuts over {} steps x 2 envs",
        sets[0].len()
    );
    let queue = Mutex::new(queue);
    let table = Mutex::new(Table::new(&[
        "boot A", "boot B", "trial", "done", "1 boot", "2 boots", "3 boots",
    ]));
    let failures = Mutex::new(Vec::new());
    let done = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for worker in 0..2 {
            let (w, sets, queue, table, failures, done) =
                (&w, &sets, &queue, &table, &failures, &done);
            s.spawn(move || loop {
                let Some((set, cut)) = queue.lock().unwrap().pop_front() else {
                    break;
                };
                let sc = &sets[set];
                let d = Dev {
                    root: w.dir.join(format!("work-{worker}")),
                    kind: cut.kind,
                };
                let row = format!(
                    "{} {}",
                    cut.kind.name(),
                    row_name(&sc[cut.scenario], &cut.hit)
                );
                let result = cut_once(w, sc, &cut, &d);
                let mut t = table.lock().unwrap();
                match result {
                    Ok(outcome) => {
                        let o: Vec<&str> = outcome.iter().map(String::as_str).collect();
                        t.add(&row, &o);
                    }
                    Err(why) => {
                        t.add(&row, &["VIOLATED"]);
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("{}: {why}", cut.id(sc)));
                    }
                }
                let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                if n % 50 == 0 {
                    eprintln!(
                        "  {n}/{total} cuts, {:.0} s",
                        started.elapsed().as_secs_f64()
                    );
                }
            });
        }
    });
    let table = table.into_inner().unwrap();
    let failures = failures.into_inner().unwrap();
    eprintln!(
        "\n{}",
        table.render(&format!(
            "host crash campaign, seed {seed}: {} cuts in {:.0} s (U-Boot image and GRUB pair)",
            table.cuts(),
            started.elapsed().as_secs_f64()
        ))
    );
    assert!(
        failures.is_empty(),
        "{} of {} cuts broke an invariant (seed {seed}; rerun one with ATOMUP_CRASH_CUT=<id>):\n{}",
        failures.len(),
        table.cuts(),
        failures.join("\n")
    );
    if full && only.is_none() {
        assert!(
            table.cuts() >= 500,
            "a full campaign makes at least 500 cuts"
        );
    }
}

/// The seeded subset CI runs (or the full campaign with `ATOMUP_CRASH_FULL=1`):
/// a power cut at any crash point of the update, mark-good, mark-bad and the
/// rollback record leaves a device that boots a verified slot, keeps its
/// other slot bit-identical, records no false rollback, and completes the
/// update when the power returns.
#[test]
fn a_power_cut_at_any_point_of_the_update_is_safe() {
    campaign(crash::full());
}
