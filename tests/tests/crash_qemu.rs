//! Power cuts on a real device (issue 17): a QEMU aarch64 board (real U-Boot,
//! Linux, the static device `atomup`, the demo product's init) updates v1 → v2
//! from a real nginx, and the VM is killed (SIGKILL of QEMU: everything the
//! guest had not yet written to its disk is lost) at a random moment of one
//! phase: the download, the apply, the sync, the env flip or the trial boot.
//! The phases are found on the console (`atomup --log-level info update`
//! prints one line per step); a clean run first measures each phase, and a
//! cut waits a seeded random time into its phase. After every cut, from the
//! disk image:
//! - the env names a confirmed slot first or a trial slot whose tree
//!   verifies (slot B mounted from a copy and compared with v2's tree);
//! - slot A, the running slot, is bit-identical (its partition's sha256);
//!
//! then the power comes back (the VM boots the same disk again): the device
//! completes the update by itself (B confirmed, v2, the next poll up to date)
//! and no rollback is recorded.
//!
//! The same run proves Ctrl-C: SIGINT to `atomup update` in the guest while
//! slot B is being written, then the device's own `atomup update` completes.
//!
//! CI runs a seeded subset (`ATOMUP_QEMU_CUTS`, default 3 cuts, phases drawn
//! by the seed, printed; `ATOMUP_CRASH_SEED=N` reruns it); the full campaign
//! (10 cuts per phase) is `ATOMUP_CRASH_FULL=1 cargo test -p atomup-tests
//! --test crash_qemu -- --nocapture` (or `scripts/crash-campaign.sh qemu`).
//! Two VMs run at once (`ATOMUP_QEMU_JOBS` overrides).

use atomup_policy::Slot;
use atomup_tests::crash::{self, Rng, Table};
use atomup_tests::device::{in_mount_ns, require_root, text};
use atomup_tests::nginx::Nginx;
use atomup_tests::ostree_fixture::{pseudo_bytes, run_ok, ScratchDir};
use atomup_tests::{require_tool, workspace_bin, workspace_root};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, VecDeque};
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

const RERUN: &str = "cargo test -p atomup-tests --test crash_qemu -- --nocapture";

/// Console lines that start each step of the update, in order. The phases
/// cut are the spans from one to the next (the last span, "trial boot", is
/// the reboot into B until its health check confirmed it).
const MARKS: &[(&str, &str)] = &[
    ("boot", "ATOMUP-DEMO: booted slot=A trial=0"),
    ("download", "Receiving"),
    ("apply", "Writing slot B"),
    ("sync", "info: slot B written and verified: syncing"),
    ("env flip", "Finishing"),
    ("trial boot", "ATOMUP-DEMO: installed, rebooting"),
    ("confirmed", "slot B confirmed good"),
    ("done", "ATOMUP-DEMO: done on slot B version 2"),
];
/// The longest one VM run may take (seconds; a clean update boots twice in
/// about 20 s, a few times that on a loaded machine): a guest that stalls
/// fails its cut with its console rather than holding the campaign.
const VM_LIMIT: u64 = 240;
/// The phases a cut aims at: MARKS[i]..MARKS[i + 1] for these i.
const PHASES: std::ops::Range<usize> = 1..6;

/// The static aarch64 device agent (cargo is a no-op when it is fresh).
fn device_atomup() -> PathBuf {
    let triple = "aarch64-unknown-linux-musl";
    run_ok(
        Command::new(env!("CARGO"))
            .args([
                "build",
                "--quiet",
                "--locked",
                "--release",
                "--target",
                triple,
            ])
            .args(["-p", "atomup"])
            .current_dir(workspace_root()),
    );
    atomup_tests::target_dir()
        .join(triple)
        .join("release")
        .join("atomup")
}

/// The vendor's repository served by nginx, and the factory image of a
/// device with v1 in slot A, v2 released (the demo's product: its init,
/// health check, board profile; v2 adds 2 MB that do not compress, so the
/// download and the apply take a while).
struct World {
    dir: ScratchDir,
    _nginx: Nginx,
    img: PathBuf,
    layout: BTreeMap<String, u64>,
    v2_tree: PathBuf,
    slot_a_sha: String,
}

fn sh(script: &str, args: &[&std::ffi::OsStr]) {
    run_ok(
        Command::new("bash")
            .arg("-ec")
            .arg(script)
            .arg("bash")
            .args(args),
    );
}

fn world() -> World {
    for tool in [
        "qemu-system-aarch64",
        "nginx",
        "ostree",
        "mkfs.ext4",
        "sgdisk",
        "mkimage",
        "debugfs",
        "cpio",
    ] {
        require_tool(tool);
    }
    let dir = ScratchDir::new("crash-qemu");
    let repo = dir.join("repo");
    fs::create_dir_all(&repo).unwrap();
    let nginx = Nginx::serve(&repo, dir.path());
    let publish = workspace_bin("atomup-publish");
    let host = workspace_bin("atomup");
    let qemu = workspace_root().join("qemu");
    let base = dir.join("base");
    run_ok(
        Command::new(qemu.join("build-image.sh"))
            .arg("--rootfs-out")
            .arg(&base)
            .arg("--init")
            .arg(qemu.join("guest/device-init.sh"))
            .arg("--guest-bin")
            .arg(device_atomup()),
    );
    let (secret, public) = (dir.join("vendor.secret"), dir.join("vendor.pub"));
    run_ok(
        Command::new(&publish)
            .args(["keygen", "--secret-out"])
            .arg(&secret)
            .arg("--public-out")
            .arg(&public),
    );
    let tree = |v: u32| {
        let t = dir.join(format!("tree-v{v}"));
        sh(
            r#"cp -a "$1" "$2"; t=$2
            mkdir -p "$t/etc/atomup/health.d/required.d" "$t/usr/share/demo" "$t/boot/efi"
            cp "$3" "$t/etc/atomup/trusted.pub"
            printf 'SERVER=http://10.0.2.2:%s\nCHANNEL=stable\n' "$4" >"$t/etc/atomup/device.conf"
            printf 'board = qemu-virt\nbootloader = uboot\nslot.A = /dev/vda2\nslot.B = /dev/vda3\ndata = /dev/vda4\nwatchdog = /dev/watchdog\n' >"$t/etc/atomup/board.conf"
            echo "$5" >"$t/etc/atomup/version"
            echo "atomup-demo $5" >"$t/etc/atomup-image"
            printf '#!/bin/sh\nexit 0\n' >"$t/etc/atomup/health.d/required.d/10-demo"
            chmod 755 "$t/etc/atomup/health.d/required.d/10-demo""#,
            &[
                base.as_os_str(),
                t.as_os_str(),
                public.as_os_str(),
                nginx.port.to_string().as_ref(),
                v.to_string().as_ref(),
            ],
        );
        t
    };
    let v1 = tree(1);
    let v2 = tree(2);
    fs::write(
        v2.join("usr/share/demo/payload.bin"),
        pseudo_bytes(17, 2 << 20, false),
    )
    .unwrap();
    let out = |cmd: &mut Command| {
        String::from_utf8(run_ok(cmd).stdout)
            .unwrap()
            .trim()
            .to_owned()
    };
    run_ok(Command::new(&publish).arg("init").arg("--repo").arg(&repo));
    let commit = |t: &Path, s: &str| {
        out(Command::new(&publish)
            .args(["commit", "--repo"])
            .arg(&repo)
            .arg("--tree")
            .arg(t)
            .args(["--branch", "os/qemu-virt", "--subject", s])
            .args(["--owner-uid", "0", "--owner-gid", "0", "--quiet"]))
    };
    let (c1, c2) = (commit(&v1, "v1"), commit(&v2, "v2"));
    let delta = |args: &[&str]| {
        let d = out(Command::new(&publish)
            .args(["delta", "--repo"])
            .arg(&repo)
            .args(args)
            .arg("--quiet"));
        run_ok(
            Command::new(&publish)
                .args(["sign", "--key"])
                .arg(&secret)
                .arg("--delta")
                .arg(repo.join(&d)),
        );
        d
    };
    delta(&["--to", &c2, "--from", &c1]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    run_ok(
        Command::new(&publish)
            .args(["release", "--repo"])
            .arg(&repo)
            .arg("--key")
            .arg(&secret)
            .args([
                "--channel",
                "stable",
                "--board",
                "qemu-virt",
                "--version",
                "2",
            ])
            .args(["--to", &c2, "--timestamp", &now.to_string()]),
    );
    // The factory image: v1 in A checked out by the real `ostree`, /var
    // seeded with v1's metadata objects (an archive repo keeps them as they
    // are; the demo applies a from-scratch delta instead, minutes of xz).
    let (slot_a, state) = (dir.join("slotA"), dir.join("data/lib/atomup"));
    fs::create_dir_all(state.join("slots")).unwrap();
    run_ok(
        Command::new("ostree")
            .arg(format!("--repo={}", repo.display()))
            .args(["checkout", &c1])
            .arg(&slot_a),
    );
    sh(
        r#"cd "$1" && find objects -name '*.commit' -o -name '*.dirtree' -o -name '*.dirmeta' |
            cpio -pdm --quiet "$2""#,
        &[repo.as_os_str(), state.join("meta").as_os_str()],
    );
    fs::write(
        state.join("slots/A"),
        format!("format=1\ncommit={c1}\nversion=1\n"),
    )
    .unwrap();
    fs::write(state.join("machine-id"), "crash-qemu-0001\n").unwrap();
    fs::write(state.join("trusted-time"), format!("{now}\n")).unwrap();
    let img = dir.join("img");
    run_ok(
        Command::new(qemu.join("build-image.sh"))
            .args(["--bootloader", "uboot", "--out"])
            .arg(&img)
            .arg("--root-a-dir")
            .arg(&slot_a)
            .arg("--empty-b")
            .arg("--data-dir")
            .arg(dir.join("data")),
    );
    run_ok(
        Command::new(&host)
            .args(["env", "init", "--order", "A", "--env-image"])
            .arg(img.join("disk.img")),
    );
    let layout = fs::read_to_string(img.join("layout.env"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once('=')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect();
    let mut w = World {
        dir,
        _nginx: nginx,
        img,
        layout,
        v2_tree: v2,
        slot_a_sha: String::new(),
    };
    w.slot_a_sha = w.slot_sha(&w.img.join("disk.img"), Slot::A);
    w
}

impl World {
    /// The byte range of a slot's partition in the disk image.
    fn slot_range(&self, s: Slot) -> (u64, u64) {
        let (a, b, data) = (
            self.layout["ROOT_A_OFFSET"],
            self.layout["ROOT_B_OFFSET"],
            self.layout["DATA_OFFSET"],
        );
        match s {
            Slot::A => (a, b - a),
            Slot::B => (b, data - b),
        }
    }

    fn slot_sha(&self, disk: &Path, s: Slot) -> String {
        let (off, len) = self.slot_range(s);
        let mut f = fs::File::open(disk).unwrap();
        f.seek(SeekFrom::Start(off)).unwrap();
        let (mut h, mut r, mut buf) = (Sha256::new(), f.take(len), vec![0u8; 1 << 20]);
        loop {
            let n = r.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        atomup_tests::ostree_fixture::hex(&h.finalize())
    }

    /// Whether slot B's file system (a copy of it, its journal replayed on
    /// mount) holds exactly v2's tree: entries, types, modes, owners, link
    /// targets and file contents.
    fn slot_b_is_v2(&self, disk: &Path, work: &Path) -> Result<(), String> {
        let copy = work.join("slot-b.img");
        let (off, len) = self.slot_range(Slot::B);
        let mut f = fs::File::open(disk).unwrap();
        f.seek(SeekFrom::Start(off)).unwrap();
        std::io::copy(&mut f.take(len), &mut fs::File::create(&copy).unwrap()).unwrap();
        let digest = "find . -printf '%p %y %m %U:%G %l\\n' | LC_ALL=C sort | sha256sum && \
                      find . -type f -exec sha256sum {} + | LC_ALL=C sort | sha256sum";
        let got = in_mount_ns(
            &format!("d=$(mktemp -d) && mount -o loop \"$1\" \"$d\" && cd \"$d\" && {digest}"),
            &[copy.clone().into()],
        );
        let _ = fs::remove_file(&copy);
        let want = in_mount_ns(
            &format!("cd \"$1\" && {digest}"),
            &[self.v2_tree.clone().into()],
        );
        if !got.status.success() {
            return Err(format!("slot B does not mount: {}", text(&got)));
        }
        if got.stdout != want.stdout {
            return Err("slot B's tree is not v2's".into());
        }
        Ok(())
    }

    /// A file of the data partition (`None`: not there), read on the host.
    fn data_file(&self, disk: &Path, path: &str) -> Option<String> {
        let out = Command::new("debugfs")
            .args(["-R", &format!("cat {path}")])
            .arg(format!(
                "{}?offset={}",
                disk.display(),
                self.layout["DATA_OFFSET"]
            ))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        (!err.contains("not found")).then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// Counting semaphore: at most `ATOMUP_QEMU_JOBS` (2) VMs at once.
struct Permits {
    free: Mutex<usize>,
    cv: Condvar,
}

impl Permits {
    fn take(&self) {
        let mut n = self.free.lock().unwrap();
        while *n == 0 {
            n = self.cv.wait(n).unwrap();
        }
        *n -= 1;
    }
    fn give(&self) {
        *self.free.lock().unwrap() += 1;
        self.cv.notify_one();
    }
}

/// One VM run of `disk`.
fn start_vm(w: &World, disk: &Path, log: &Path, script: Option<&Path>, timeout: u64) -> Child {
    let mut cmd = Command::new(workspace_root().join("qemu/run-vm.sh"));
    cmd.arg("--dir")
        .arg(&w.img)
        .arg("--disk")
        .arg(disk)
        .args(["--net", "--watchdog", "--timeout", &timeout.to_string()])
        .arg("--log")
        .arg(log);
    // Any test script makes the device's init run its update once in the
    // foreground, its progress on the console (the phases are timed from
    // it), instead of through the busybox service; the same `atomup update`.
    let foreground = w.dir.join("foreground.sh");
    if script.is_none() && !foreground.exists() {
        fs::write(&foreground, "# the update in the foreground\n").unwrap();
    }
    cmd.arg("--script").arg(script.unwrap_or(&foreground));
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting run-vm.sh")
}

/// Every process below `pid`, deepest first.
fn descendants(pid: u32) -> Vec<u32> {
    let mut parent = BTreeMap::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let ppid = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split(' ').nth(1)?.parse::<u32>().ok());
        if let Some(pp) = ppid {
            parent.insert(p, pp);
        }
    }
    let mut out = Vec::new();
    let mut level = vec![pid];
    while !level.is_empty() {
        level = parent
            .iter()
            .filter(|(_, pp)| level.contains(pp))
            .map(|(p, _)| *p)
            .collect();
        out.extend(&level);
    }
    out.reverse();
    out
}

/// The power cut: SIGKILL to QEMU (and to the scripts around it: run-vm.sh
/// runs it under `timeout`, in a process group of its own).
fn power_cut(vm: &mut Child) {
    for p in descendants(vm.id()) {
        let _ = Command::new("kill")
            .args(["-KILL", &p.to_string()])
            .stderr(Stdio::null())
            .status();
    }
    let _ = vm.kill();
    let _ = vm.wait();
}

/// Waits until the console shows `mark` (or the VM ends, or `limit`
/// passes); the time it was seen.
fn wait_for(log: &Path, mark: &str, vm: &mut Child, limit: Duration) -> Option<Instant> {
    let end = Instant::now() + limit;
    loop {
        let seen = fs::read(log).unwrap_or_default();
        if String::from_utf8_lossy(&seen).contains(mark) {
            return Some(Instant::now());
        }
        if Instant::now() > end || vm.try_wait().unwrap().is_some() {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The index of the last mark the console shows.
fn last_mark(log: &Path) -> Option<usize> {
    let text = String::from_utf8_lossy(&fs::read(log).unwrap_or_default()).into_owned();
    MARKS.iter().rposition(|(_, m)| text.contains(m))
}

fn console_tail(log: &Path) -> String {
    let text = String::from_utf8_lossy(&fs::read(log).unwrap_or_default()).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// The clean run: every mark's time after power-on (the phase windows).
fn calibrate(w: &World) -> Result<Vec<Duration>, String> {
    let work = w.dir.join("calibration");
    fs::create_dir_all(&work).unwrap();
    let disk = work.join("disk.img");
    run_ok(
        Command::new("cp")
            .arg("--sparse=always")
            .arg(w.img.join("disk.img"))
            .arg(&disk),
    );
    let log = work.join("console.log");
    let start = Instant::now();
    let mut vm = start_vm(w, &disk, &log, None, VM_LIMIT);
    let mut times = Vec::new();
    for (name, mark) in MARKS {
        match wait_for(&log, mark, &mut vm, Duration::from_secs(VM_LIMIT)) {
            Some(t) => times.push(t - start),
            None => {
                power_cut(&mut vm);
                return Err(format!(
                    "the clean run never showed {name}:\n{}",
                    console_tail(&log)
                ));
            }
        }
    }
    let status = vm.wait().unwrap();
    if !status.success() {
        return Err(format!("the clean run ended with {status}"));
    }
    check_done(w, &disk, &log, &work)?;
    Ok(times)
}

/// The device after its update: B confirmed first, then A; A bit-identical;
/// B holds v2; no rollback recorded; the last poll found nothing to do.
fn check_done(w: &World, disk: &Path, log: &Path, work: &Path) -> Result<(), String> {
    let mut env = atomup_bootctl::UbootEnv::qemu_image(disk);
    let st = atomup_bootctl::read(&mut env)
        .and_then(|s| s.state())
        .map_err(|e| format!("env: {e}"))?;
    if st.order != [Slot::B, Slot::A] || st.trial.is_some() {
        return Err(format!("the update ended with the env {st}"));
    }
    if w.slot_sha(disk, Slot::A) != w.slot_a_sha {
        return Err("slot A changed".into());
    }
    w.slot_b_is_v2(disk, work)?;
    if let Some(r) = w.data_file(disk, "/lib/atomup/rollbacks") {
        return Err(format!("a rollback was recorded: {r}"));
    }
    let console = String::from_utf8_lossy(&fs::read(log).unwrap_or_default()).into_owned();
    if !console.contains("up to date: version 2") {
        return Err("the last poll did not find the device up to date".into());
    }
    Ok(())
}

/// One cut in `phase` (an index of MARKS), `delay` after its mark (at the
/// latest when the next mark shows); then the power returns. The outcome
/// labels (where it landed, what the env boots), or what broke.
fn cut(w: &World, n: usize, phase: usize, delay: Duration) -> Result<Vec<String>, String> {
    let work = w.dir.join(format!("cut-{n}"));
    fs::create_dir_all(&work).unwrap();
    let disk = work.join("disk.img");
    run_ok(
        Command::new("cp")
            .arg("--sparse=always")
            .arg(w.img.join("disk.img"))
            .arg(&disk),
    );
    let log = work.join("console-cut.log");
    let mut vm = start_vm(w, &disk, &log, None, VM_LIMIT);
    let (name, mark) = MARKS[phase];
    if wait_for(&log, mark, &mut vm, Duration::from_secs(VM_LIMIT)).is_none() {
        power_cut(&mut vm);
        return Err(format!("never reached {name}:\n{}", console_tail(&log)));
    }
    // `delay` into the phase, or at its end if this run is quicker than the
    // clean one was.
    let _ = wait_for(&log, MARKS[phase + 1].1, &mut vm, delay);
    power_cut(&mut vm);
    // Where it landed: the last step the console had shown.
    let landed = last_mark(&log).map_or("boot", |i| MARKS[i].0);
    let mut outcome = vec![format!("in {landed}")];
    // 1. The env boots a confirmed slot or a trial slot whose tree verifies.
    let mut env = atomup_bootctl::UbootEnv::qemu_image(&disk);
    let st = atomup_bootctl::read(&mut env)
        .and_then(|s| s.state())
        .map_err(|e| format!("the env cannot be read after the cut: {e}"))?;
    let c = st.boot();
    if c.fallback {
        return Err(format!("{st}: no slot to boot (last-resort boot)"));
    }
    match (c.slot, c.trial) {
        (Slot::A, false) => outcome.push("boot A".into()),
        (Slot::B, trial) => {
            w.slot_b_is_v2(&disk, &work)
                .map_err(|e| format!("{st} boots slot B: {e}"))?;
            outcome.push(if trial { "boot B trial" } else { "boot B" }.into());
        }
        (Slot::A, true) => return Err(format!("{st}: slot A on trial")),
    }
    // 2. The running slot is bit-identical.
    if w.slot_sha(&disk, Slot::A) != w.slot_a_sha {
        return Err("slot A changed".into());
    }
    // 3. Power returns: the device completes the update by itself.
    let log2 = work.join("console-after.log");
    let mut vm = start_vm(w, &disk, &log2, None, VM_LIMIT);
    let status = vm.wait().unwrap();
    if !status.success() {
        return Err(format!(
            "after the cut the device did not finish ({status}):\n{}",
            console_tail(&log2)
        ));
    }
    check_done(w, &disk, &log2, &work)
        .map_err(|e| format!("after the cut: {e}\n{}", console_tail(&log2)))?;
    outcome.push("done".into());
    let _ = fs::remove_file(&disk);
    Ok(outcome)
}

/// Ctrl-C in the guest: a script (fw_cfg, sourced by the device's init
/// before its update) runs `atomup update` once and sends it SIGINT while
/// slot B is mounted and being written; then the init's own update runs.
fn ctrl_c(w: &World, delay_ms: u64) -> Result<(), String> {
    let work = w.dir.join("ctrl-c");
    fs::create_dir_all(&work).unwrap();
    let disk = work.join("disk.img");
    run_ok(
        Command::new("cp")
            .arg("--sparse=always")
            .arg(w.img.join("disk.img"))
            .arg(&disk),
    );
    let script = work.join("ctrl-c.sh");
    fs::write(
        &script,
        format!(
            r#"if [ "$slot" = A ] && [ ! -e /var/ctrl-c-done ]; then
  touch /var/ctrl-c-done; sync
  ( until grep -q " /var/lib/atomup/target " /proc/mounts; do sleep 0.05; done
    usleep {}
    echo "ATOMUP-CTRLC: SIGINT to atomup update while slot B is written"
    kill -INT $(pidof atomup) ) &
  atomup update --server "$SERVER" --channel "$CHANNEL" \
    --trusted-keys /etc/atomup/trusted.pub --state-dir "$state" \
    --machine-id "$state/machine-id" --from-root /
  echo "ATOMUP-CTRLC: the interrupted update exited with status $?"
  wait
fi
"#,
            delay_ms * 1000
        ),
    )
    .unwrap();
    let log = work.join("console.log");
    let mut vm = start_vm(w, &disk, &log, Some(&script), VM_LIMIT);
    let status = vm.wait().unwrap();
    let console = String::from_utf8_lossy(&fs::read(&log).unwrap_or_default()).into_owned();
    if !console.contains("ATOMUP-CTRLC: the interrupted update exited with status 130") {
        return Err(format!(
            "the update was not interrupted by SIGINT:\n{}",
            console_tail(&log)
        ));
    }
    if !status.success() || !console.contains("installed version 2") {
        return Err(format!(
            "update after Ctrl-C did not complete ({status}):\n{}",
            console_tail(&log)
        ));
    }
    check_done(w, &disk, &log, &work)
}

/// A power cut at a random moment of the download, the apply, the sync,
/// the env flip or the trial boot of a real device's update leaves it
/// booting a verified slot with its running slot bit-identical, and it
/// completes the update by itself when the power returns; Ctrl-C during the
/// update is harmless too.
#[test]
fn power_cuts_and_ctrl_c_during_a_real_update_are_safe() {
    if !require_root() {
        return;
    }
    let started = Instant::now();
    let full = crash::full();
    let seed = crash::seed(
        if full {
            "QEMU crash campaign (full)"
        } else {
            "QEMU crash campaign (CI subset)"
        },
        &if full {
            format!("ATOMUP_CRASH_FULL=1 {RERUN}")
        } else {
            RERUN.to_owned()
        },
    );
    let mut rng = Rng::new(seed);
    let w = world();
    eprintln!(
        "world and factory image built in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let n: usize = if full {
        10 * PHASES.len()
    } else {
        std::env::var("ATOMUP_QEMU_CUTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3)
    };
    // Phases: every one equally often (full), or, in a subset smaller than
    // the phases, consecutive ones from a phase drawn by the seed (so the
    // CI runs rotate over all five).
    let first = if full {
        0
    } else {
        rng.below(PHASES.len() as u64) as usize
    };
    let mut phases: Vec<usize> = (0..n)
        .map(|i| PHASES.start + (first + i) % PHASES.len())
        .collect();
    rng.shuffle(&mut phases);
    let jobs: usize = std::env::var("ATOMUP_QEMU_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let permits = Permits {
        free: Mutex::new(jobs.max(1)),
        cv: Condvar::new(),
    };
    let ctrl_c_delay = rng.below(1500);
    let (times, ctrl_c_result) = std::thread::scope(|s| {
        let ctrl = s.spawn(|| {
            permits.take();
            let t = Instant::now();
            let r = ctrl_c(&w, ctrl_c_delay);
            permits.give();
            (r, t.elapsed())
        });
        permits.take();
        let t = Instant::now();
        let times = calibrate(&w);
        permits.give();
        (times.map(|x| (x, t.elapsed())), ctrl.join().unwrap())
    });
    let (times, clean_wall) = times.unwrap_or_else(|e| panic!("{e}"));
    let windows: Vec<String> = (PHASES.start..=PHASES.end)
        .map(|i| {
            format!(
                "{} {:.1} s",
                MARKS[i - 1].0,
                (times[i] - times[i - 1]).as_secs_f64()
            )
        })
        .collect();
    eprintln!(
        "clean run: {:.0} s; phases: {}",
        clean_wall.as_secs_f64(),
        windows.join(", ")
    );
    let (ctrl_c_result, ctrl_wall) = ctrl_c_result;
    eprintln!(
        "Ctrl-C run ({ctrl_c_delay} ms into the apply): {} in {:.0} s",
        if ctrl_c_result.is_ok() {
            "completed"
        } else {
            "FAILED"
        },
        ctrl_wall.as_secs_f64()
    );
    let queue: Mutex<VecDeque<(usize, usize, Duration)>> = Mutex::new(
        phases
            .iter()
            .enumerate()
            .map(|(i, &p)| {
                let span = times[p + 1].saturating_sub(times[p]).as_millis() as u64;
                (i, p, Duration::from_millis(rng.below(span.max(1))))
            })
            .collect(),
    );
    let table = Mutex::new(Table::new(&["boot A", "boot B trial", "boot B", "done"]));
    let failures = Mutex::new(Vec::new());
    let walls = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1) {
            s.spawn(|| loop {
                let Some((i, p, delay)) = queue.lock().unwrap().pop_front() else {
                    break;
                };
                permits.take();
                let t = Instant::now();
                let r = cut(&w, i, p, delay);
                permits.give();
                walls.lock().unwrap().push(t.elapsed());
                let row = MARKS[p].0;
                match r {
                    Ok(o) => {
                        let o: Vec<&str> = o.iter().map(String::as_str).collect();
                        table.lock().unwrap().add(row, &o);
                    }
                    Err(e) => {
                        table.lock().unwrap().add(row, &["VIOLATED"]);
                        failures.lock().unwrap().push(format!(
                            "cut {i} in {} {} ms after its start: {e}",
                            MARKS[p].0,
                            delay.as_millis()
                        ));
                    }
                }
            });
        }
    });
    let table = table.into_inner().unwrap();
    let walls = walls.into_inner().unwrap();
    let mean = walls.iter().map(Duration::as_secs_f64).sum::<f64>() / walls.len().max(1) as f64;
    eprintln!(
        "\n{}",
        table.render(&format!(
            "QEMU crash campaign, seed {seed}: {} cuts in {:.0} s (each cut and its recovery {mean:.0} s on average)",
            table.cuts(),
            started.elapsed().as_secs_f64()
        ))
    );
    let failures = failures.into_inner().unwrap();
    assert!(
        ctrl_c_result.is_ok(),
        "Ctrl-C: {}",
        ctrl_c_result.unwrap_err()
    );
    assert!(
        failures.is_empty(),
        "{} of {} cuts broke an invariant (seed {seed}):\n{}",
        failures.len(),
        table.cuts(),
        failures.join("\n\n")
    );
    if full {
        assert!(table.cuts() >= 50, "a full campaign makes at least 50 cuts");
    }
}
