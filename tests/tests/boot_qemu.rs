//! Real U-Boot (Debian's qemu_arm64 build) and real GRUB (arm64-efi on AAVMF)
//! run the A/B scripts from bootloader-hooks/ in QEMU aarch64 with a real
//! Debian kernel, on env states written by our CLI (`atomup`) and by the
//! upstream tools (`fw_setenv`, `grub-editenv`). After each run the env is read
//! back on the host with the upstream tools, so the bootloader's writes are
//! checked by a second implementation. Every test boots 1-3 times.
//!
//! The health scenarios (last section) boot a device image instead: the board
//! profile, the busybox init scripts and vendor checks in both slots, and the
//! guest's own `atomup health` decides (required fails, only wanted fail, a
//! hang the watchdog resets), on U-Boot and GRUB.
//!
//! Images are built once per test binary by `qemu/build-image.sh` (under the
//! target dir, `boot-tests/`); each test boots its own copy. At most two VMs
//! run at once (`ATOMUP_QEMU_JOBS` overrides), as the CI machine has 2 cores.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Instant;

use atomup_tests::{require_tool, target_dir, workspace_bin, workspace_root};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Loader {
    UBoot,
    Grub,
}

impl Loader {
    fn name(self) -> &'static str {
        match self {
            Loader::UBoot => "uboot",
            Loader::Grub => "grub",
        }
    }
}

/// Who writes the env state a test starts from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Writer {
    /// `fw_setenv` / `grub-editenv`
    Upstream,
    /// our `atomup env set`
    Atomup,
}

/// One A/B state as the contract defines it.
#[derive(Clone, PartialEq, Eq, Debug)]
struct AbState {
    order: String,
    trial: String,
    left: String,
}

fn st(order: &str, trial: &str, left: &str) -> AbState {
    AbState {
        order: order.into(),
        trial: trial.into(),
        left: left.into(),
    }
}

/// One `ATOMUP-BOOTED` line printed by the guest's /sbin/init.
#[derive(Clone, PartialEq, Eq, Debug)]
struct Booted {
    slot: String,
    trial: bool,
    fallback: bool,
    image: String,
}

fn booted(slot: &str, trial: bool, fallback: bool) -> Booted {
    Booted {
        slot: slot.into(),
        trial,
        fallback,
        image: slot.into(),
    }
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn require_tools() {
    for tool in [
        "qemu-system-aarch64",
        "qemu-aarch64-static",
        "fw_setenv",
        "fw_printenv",
        "grub-editenv",
        "grub-mkstandalone",
        "mkimage",
        "mkenvimage",
        "mcopy",
        "mkfs.vfat",
        "mkfs.ext4",
        "sgdisk",
        "cpio",
        "depmod",
    ] {
        require_tool(tool);
    }
}

/// The image for `loader`, built once per test binary, with the static
/// aarch64 `atomup` in both slots' /usr/bin (one image for every scenario:
/// image builds cost more than the extra 2 MB).
fn base_image(loader: Loader) -> &'static Path {
    static UBOOT: OnceLock<PathBuf> = OnceLock::new();
    static GRUB: OnceLock<PathBuf> = OnceLock::new();
    let cell = match loader {
        Loader::UBoot => &UBOOT,
        Loader::Grub => &GRUB,
    };
    cell.get_or_init(|| {
        let bin = guest_atomup().to_string_lossy().into_owned();
        build_image(
            loader,
            &format!("base-{}", loader.name()),
            &["--guest-bin", &bin],
        )
    })
}

fn build_image(loader: Loader, name: &str, extra: &[&str]) -> PathBuf {
    require_tools();
    let out = target_dir().join("boot-tests").join(name);
    let started = Instant::now();
    run(
        Command::new(workspace_root().join("qemu/build-image.sh"))
            .args(["--bootloader", loader.name()])
            .args(extra)
            .arg("--out")
            .arg(&out),
        "qemu/build-image.sh",
    );
    eprintln!(
        "built {name} image in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    out
}

/// The device binary, static aarch64 musl (cargo is a no-op when it is fresh).
fn guest_atomup() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let triple = "aarch64-unknown-linux-musl";
        let started = Instant::now();
        run(
            Command::new(env!("CARGO"))
                .args([
                    "build",
                    "--quiet",
                    "--release",
                    "--target",
                    triple,
                    "-p",
                    "atomup",
                ])
                .current_dir(workspace_root()),
            "cargo build of the aarch64 atomup",
        );
        eprintln!(
            "aarch64 atomup ready in {:.1}s",
            started.elapsed().as_secs_f64()
        );
        target_dir().join(triple).join("release").join("atomup")
    })
    .clone()
}

/// Counting semaphore: at most N QEMU processes at once.
fn vm_permit() -> impl Drop {
    struct Permit;
    static STATE: OnceLock<(Mutex<usize>, Condvar)> = OnceLock::new();
    fn state() -> &'static (Mutex<usize>, Condvar) {
        STATE.get_or_init(|| (Mutex::new(0), Condvar::new()))
    }
    impl Drop for Permit {
        fn drop(&mut self) {
            let (lock, cv) = state();
            *lock.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
            cv.notify_one();
        }
    }
    let max: usize = std::env::var("ATOMUP_QEMU_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let (lock, cv) = state();
    let mut running = lock.lock().unwrap_or_else(|e| e.into_inner());
    while *running >= max.max(1) {
        running = cv.wait(running).unwrap_or_else(|e| e.into_inner());
    }
    *running += 1;
    Permit
}

/// One test's private copy of an image, plus host-side env access.
struct Machine {
    loader: Loader,
    dir: PathBuf,
    esp_offset: u64,
}

const UBOOT_ENV1: u64 = 0x80000;
const UBOOT_ENV2: u64 = 0x84000;
const UBOOT_ENV_SIZE: u64 = 0x4000;

impl Machine {
    fn new(loader: Loader, name: &str) -> Machine {
        Machine::of_image(loader, base_image(loader), name)
    }

    /// A private copy of the image in `base`.
    fn of_image(loader: Loader, base: &Path, name: &str) -> Machine {
        let dir = target_dir().join("boot-tests").join("runs").join(name);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("esp/grub")).unwrap();
        let files: &[&str] = match loader {
            Loader::UBoot => &["disk.img", "layout.env", "flash1.img", "uboot-env.txt"],
            Loader::Grub => &["disk.img", "layout.env", "vars.fd"],
        };
        for f in files {
            run(
                Command::new("cp")
                    .arg("--sparse=always")
                    .arg(base.join(f))
                    .arg(dir.join(f)),
                "copying the base image",
            );
        }
        let layout = fs::read_to_string(dir.join("layout.env")).unwrap();
        let esp_offset = layout
            .lines()
            .find_map(|l| l.strip_prefix("ESP_OFFSET="))
            .and_then(|v| v.parse().ok())
            .expect("ESP_OFFSET in layout.env");
        let m = Machine {
            loader,
            dir,
            esp_offset,
        };
        if loader == Loader::UBoot {
            let disk = m.disk();
            let d = disk.display();
            fs::write(
                m.dir.join("fw_env.config"),
                format!("{d} 0x80000 0x4000\n{d} 0x84000 0x4000\n"),
            )
            .unwrap();
        }
        m
    }

    fn disk(&self) -> PathBuf {
        self.dir.join("disk.img")
    }

    /// Boots until the guest powers off; `script` is sourced by the guest's
    /// init (see qemu/guest/test-init.sh). Returns the console text.
    fn boot(&self, script: Option<&str>, boots: u64) -> String {
        self.boot_with(script, boots, false)
    }

    /// As `boot`, optionally with an i6300esb watchdog that resets the VM.
    fn boot_with(&self, script: Option<&str>, boots: u64, watchdog: bool) -> String {
        self.boot_vm(script, boots, watchdog, &[])
    }

    /// As `boot_with`, with more `qemu/run-vm.sh` options.
    fn boot_vm(&self, script: Option<&str>, boots: u64, watchdog: bool, extra: &[&str]) -> String {
        let log = self.dir.join("console.log");
        let _ = fs::remove_file(&log);
        let mut cmd = Command::new(workspace_root().join("qemu/run-vm.sh"));
        cmd.arg("--dir").arg(&self.dir).arg("--log").arg(&log);
        cmd.args(extra);
        // Generous per-boot allowance: the CI machine is shared with builds.
        cmd.args(["--timeout", &(30 + 90 * boots).to_string()]);
        if watchdog {
            cmd.arg("--watchdog");
        }
        if let Some(s) = script {
            let path = self.dir.join("test.sh");
            fs::write(&path, s).unwrap();
            cmd.arg("--script").arg(path);
        }
        let permit = vm_permit();
        let started = Instant::now();
        let status = cmd.status().expect("running qemu/run-vm.sh");
        drop(permit);
        let console = String::from_utf8_lossy(&fs::read(&log).unwrap_or_default()).into_owned();
        eprintln!(
            "{}: {} boot(s) in {:.1}s",
            self.dir.file_name().unwrap().to_string_lossy(),
            boots,
            started.elapsed().as_secs_f64()
        );
        let tail: String = {
            let lines: Vec<&str> = console.lines().collect();
            lines[lines.len().saturating_sub(60)..].join("\n")
        };
        assert!(
            status.success(),
            "VM did not power off cleanly ({status}); console tail:\n{tail}"
        );
        console
    }

    // ---- U-Boot raw env -----------------------------------------------------

    fn uboot_fw_config(&self) -> PathBuf {
        self.dir.join("fw_env.config")
    }

    fn uboot_env_bytes(&self) -> Vec<u8> {
        let disk = fs::read(self.disk()).unwrap();
        disk[UBOOT_ENV1 as usize..(UBOOT_ENV2 + UBOOT_ENV_SIZE) as usize].to_vec()
    }

    fn uboot_flags(&self) -> (u8, u8) {
        let b = self.uboot_env_bytes();
        (b[4], b[(UBOOT_ENV2 - UBOOT_ENV1) as usize + 4])
    }

    /// Switches this machine to the saveenv variant of the U-Boot script, with
    /// `vars` added to U-Boot's own env (flash1.img, attached read-only, so
    /// every saveenv fails as on a board whose env storage broke).
    fn uboot_use_saveenv_variant(&self, vars: &[(&str, &str)]) {
        let scr = self.dir.join("boot.scr");
        run(
            Command::new("mkimage")
                .args([
                    "-A", "arm64", "-O", "linux", "-T", "script", "-C", "none", "-d",
                ])
                .arg(workspace_root().join("bootloader-hooks/uboot/atomup-saveenv.cmd"))
                .arg(&scr),
            "mkimage",
        );
        run(
            Command::new("mcopy")
                .args(["-o", "-i", &self.esp_image()])
                .arg(&scr)
                .arg("::/boot.scr"),
            "mcopy boot.scr",
        );
        let mut env = fs::read_to_string(self.dir.join("uboot-env.txt")).unwrap();
        for (k, v) in vars {
            env.push_str(&format!("{k}={v}\n"));
        }
        fs::write(self.dir.join("uboot-env-ab.txt"), env).unwrap();
        let bin = self.dir.join("uboot-env.bin");
        run(
            Command::new("mkenvimage")
                .args(["-s", "0x40000", "-o"])
                .arg(&bin)
                .arg(self.dir.join("uboot-env-ab.txt")),
            "mkenvimage",
        );
        let mut flash = fs::read(&bin).unwrap();
        flash.resize(64 << 20, 0);
        fs::write(self.dir.join("flash1.img"), flash).unwrap();
    }

    /// Writes `count` states with fw_setenv, each one a new copy (flags + 1).
    fn uboot_fw_setenv_many(&self, s: &AbState, count: usize) {
        for _ in 0..count {
            self.set_state(Writer::Upstream, s);
        }
    }

    // ---- GRUB env files on the ESP ------------------------------------------

    fn esp_image(&self) -> String {
        format!("{}@@{}", self.disk().display(), self.esp_offset)
    }

    fn grub_file(&self, name: &str) -> PathBuf {
        self.dir.join("esp/grub").join(name)
    }

    /// Copies grub/grubenv and grub/grubenv2 out of the ESP (missing ones are removed locally).
    fn grub_pull(&self) {
        for name in ["grubenv", "grubenv2"] {
            let local = self.grub_file(name);
            let _ = fs::remove_file(&local);
            let _ = Command::new("mcopy")
                .args(["-n", "-o", "-i", &self.esp_image()])
                .arg(format!("::/grub/{name}"))
                .arg(&local)
                .output();
        }
    }

    fn grub_push(&self) {
        for name in ["grubenv", "grubenv2"] {
            let local = self.grub_file(name);
            if local.exists() {
                run(
                    Command::new("mcopy")
                        .args(["-o", "-i", &self.esp_image()])
                        .arg(&local)
                        .arg(format!("::/grub/{name}")),
                    "mcopy into the ESP",
                );
            } else {
                let _ = Command::new("mdel")
                    .args(["-i", &self.esp_image()])
                    .arg(format!("::/grub/{name}"))
                    .output();
            }
        }
    }

    fn grub_bytes(&self) -> Vec<u8> {
        self.grub_pull();
        let mut all = Vec::new();
        for name in ["grubenv", "grubenv2"] {
            all.extend(fs::read(self.grub_file(name)).unwrap_or_default());
        }
        all
    }

    fn env_bytes(&self) -> Vec<u8> {
        match self.loader {
            Loader::UBoot => self.uboot_env_bytes(),
            Loader::Grub => self.grub_bytes(),
        }
    }

    // ---- writing a state ----------------------------------------------------

    fn set_state(&self, writer: Writer, s: &AbState) {
        match (self.loader, writer) {
            (Loader::UBoot, Writer::Upstream) => {
                let script = self.dir.join("fw_setenv.script");
                fs::write(
                    &script,
                    format!(
                        "ATOMUP_ORDER={}\nATOMUP_TRIAL={}\nATOMUP_LEFT={}\n",
                        s.order, s.trial, s.left
                    ),
                )
                .unwrap();
                run(
                    Command::new("fw_setenv")
                        .arg("-c")
                        .arg(self.uboot_fw_config())
                        .arg("-s")
                        .arg(&script),
                    "fw_setenv",
                );
            }
            (Loader::Grub, Writer::Upstream) => {
                // The scheme's agent-side write with grub-editenv: the
                // non-current file gets SEQ = max + 1 and a fresh seal.
                self.grub_pull();
                let files = self.grub_files();
                let max_seq = files.iter().flatten().map(|f| f.seq).max().unwrap_or(0);
                let target = match grub_current(&files) {
                    Some(0) => "grubenv2",
                    _ => "grubenv",
                };
                let seq = max_seq + 1;
                let path = self.grub_file(target);
                run(
                    Command::new("grub-editenv").arg(&path).arg("create"),
                    "grub-editenv create",
                );
                run(
                    Command::new("grub-editenv").arg(&path).arg("set").args([
                        format!("ATOMUP_SEQ={seq}"),
                        format!("ATOMUP_ORDER={}", s.order),
                        format!("ATOMUP_TRIAL={}", s.trial),
                        format!("ATOMUP_LEFT={}", s.left),
                        format!("ATOMUP_SEAL={seq}:{}:{}:{}", s.order, s.trial, s.left),
                    ]),
                    "grub-editenv set",
                );
                self.grub_push();
            }
            (_, Writer::Atomup) => {
                let trial = if s.trial.is_empty() {
                    "none"
                } else {
                    s.trial.as_str()
                };
                self.atomup(&[
                    "env", "set", "--order", &s.order, "--trial", trial, "--left", &s.left,
                ]);
            }
        }
    }

    /// Runs our CLI against this machine's env (GRUB: on the files copied out
    /// of the ESP, copied back afterwards).
    fn atomup(&self, args: &[&str]) -> String {
        let mut cmd = Command::new(workspace_bin("atomup"));
        cmd.args(args);
        match self.loader {
            Loader::UBoot => {
                cmd.arg("--env-image").arg(self.disk());
                run(&mut cmd, "atomup")
            }
            Loader::Grub => {
                self.grub_pull();
                cmd.arg("--grubenv").arg(self.grub_file("grubenv"));
                let out = run(&mut cmd, "atomup");
                self.grub_push();
                out
            }
        }
    }

    // ---- reading the state back with the upstream tools -----------------------

    fn grub_files(&self) -> [Option<GrubFile>; 2] {
        ["grubenv", "grubenv2"].map(|name| {
            let path = self.grub_file(name);
            if !path.exists() {
                return None;
            }
            let out = Command::new("grub-editenv")
                .arg(&path)
                .arg("list")
                .output()
                .ok()?;
            if !out.status.success() {
                return None;
            }
            GrubFile::parse(&String::from_utf8_lossy(&out.stdout))
        })
    }

    /// The state an upstream reader sees: `fw_printenv`, or `grub-editenv list`
    /// of both files with the scheme's choice of the current one.
    fn upstream_state(&self) -> Option<AbState> {
        match self.loader {
            Loader::UBoot => {
                let out = Command::new("fw_printenv")
                    .arg("-c")
                    .arg(self.uboot_fw_config())
                    .output()
                    .ok()?;
                if !out.status.success() {
                    return None;
                }
                let vars: BTreeMap<String, String> = String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter_map(|l| {
                        l.split_once('=')
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                    })
                    .collect();
                let get = |k: &str| vars.get(k).cloned().unwrap_or_default();
                vars.get("ATOMUP_ORDER")?;
                Some(st(
                    &get("ATOMUP_ORDER"),
                    &get("ATOMUP_TRIAL"),
                    &get("ATOMUP_LEFT"),
                ))
            }
            Loader::Grub => {
                self.grub_pull();
                let files = self.grub_files();
                let cur = grub_current(&files)?;
                files[cur].as_ref().map(|f| f.state.clone())
            }
        }
    }

    /// The state our CLI reads (`atomup env show`).
    fn atomup_state(&self) -> AbState {
        let out = self.atomup(&["env", "show"]);
        let get = |k: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .unwrap_or_default()
                .to_string()
        };
        st(
            &get("ATOMUP_ORDER"),
            &get("ATOMUP_TRIAL"),
            &get("ATOMUP_LEFT"),
        )
    }
}

/// One grubenv file of the two-file scheme, as `grub-editenv list` shows it.
#[derive(Clone, Debug)]
struct GrubFile {
    seq: u64,
    state: AbState,
}

impl GrubFile {
    /// Valid only when the values reproduce the seal (bootloader-hooks/README.md).
    fn parse(list: &str) -> Option<GrubFile> {
        let vars: BTreeMap<&str, &str> = list.lines().filter_map(|l| l.split_once('=')).collect();
        let seq_text = *vars.get("ATOMUP_SEQ")?;
        let seq: u64 = seq_text.parse().ok()?;
        let state = st(
            vars.get("ATOMUP_ORDER")?,
            vars.get("ATOMUP_TRIAL")?,
            vars.get("ATOMUP_LEFT")?,
        );
        let seal = format!("{seq_text}:{}:{}:{}", state.order, state.trial, state.left);
        (vars.get("ATOMUP_SEAL") == Some(&seal.as_str())).then_some(GrubFile { seq, state })
    }
}

/// Index of the current file: higher SEQ, then lower LEFT, then file 1.
fn grub_current(files: &[Option<GrubFile>; 2]) -> Option<usize> {
    match files {
        [Some(a), Some(b)] => {
            if b.seq > a.seq || (b.seq == a.seq && b.state.left < a.state.left) {
                Some(1)
            } else {
                Some(0)
            }
        }
        [Some(_), None] => Some(0),
        [None, Some(_)] => Some(1),
        [None, None] => None,
    }
}

fn booted_lines(console: &str) -> Vec<Booted> {
    console
        .lines()
        .filter_map(|l| {
            l.find("ATOMUP-BOOTED ")
                .map(|i| &l[i + "ATOMUP-BOOTED ".len()..])
        })
        .map(|rest| {
            let field = |k: &str| {
                rest.split_whitespace()
                    .find_map(|w| w.strip_prefix(&format!("{k}=")))
                    .unwrap_or_default()
                    .to_string()
            };
            Booted {
                slot: field("slot"),
                trial: field("trial") == "1",
                fallback: field("fallback") == "1",
                image: field("image"),
            }
        })
        .collect()
}

fn bootloader_writes(loader: Loader, console: &str) -> usize {
    let marker = match loader {
        Loader::UBoot => "ATOMUP-UBOOT: wrote",
        Loader::Grub => "ATOMUP-GRUB: wrote",
    };
    console.matches(marker).count()
}

/// Guest script: slot B's userspace is broken (init exits -> kernel panic -> reboot).
const B_IS_BAD: &str =
    "if [ \"$slot\" = B ]; then echo \"TEST: slot B image is bad\"; exit 1; fi\n";

// ---- scenarios, shared by both bootloaders -------------------------------------

/// A trial boot decrements LEFT once, boots the trial slot with atomup.trial=1,
/// and the host's upstream reader and our CLI both see LEFT - 1.
fn trial_boot_decrements_left(loader: Loader, writer: Writer) {
    let m = Machine::new(
        loader,
        &format!("{}-trial-decrement-{writer:?}", loader.name()),
    );
    match writer {
        Writer::Upstream => m.set_state(writer, &st("B A", "B", "3")),
        // The real transition the agent performs after writing slot B.
        Writer::Atomup => {
            m.atomup(&["install-done", "--slot", "B"]);
        }
    }
    assert_eq!(m.upstream_state(), Some(st("B A", "B", "3")));
    let console = m.boot(None, 1);
    assert_eq!(
        booted_lines(&console),
        vec![booted("B", true, false)],
        "{console}"
    );
    assert_eq!(bootloader_writes(loader, &console), 1);
    assert_eq!(m.upstream_state(), Some(st("B A", "B", "2")));
    assert_eq!(m.atomup_state(), st("B A", "B", "2"));
}

/// A confirmed slot boots with no env write at all: the env bytes are identical.
fn confirmed_boot_writes_nothing(loader: Loader) {
    let m = Machine::new(loader, &format!("{}-confirmed-no-write", loader.name()));
    m.set_state(Writer::Atomup, &st("B A", "", "0"));
    let before = m.env_bytes();
    let console = m.boot(None, 1);
    assert_eq!(
        booted_lines(&console),
        vec![booted("B", false, false)],
        "{console}"
    );
    assert_eq!(bootloader_writes(loader, &console), 0);
    assert!(
        m.env_bytes() == before,
        "env bytes changed on a confirmed boot"
    );
}

/// A trial slot that panics every boot is tried LEFT times, then the confirmed
/// slot boots; the env ends with LEFT=0 and the trial still recorded (for the
/// agent to detect the fallback).
fn exhausted_trial_falls_back(loader: Loader) {
    let m = Machine::new(
        loader,
        &format!("{}-fallback-after-attempts", loader.name()),
    );
    m.atomup(&["install-done", "--slot", "B", "--attempts", "2"]);
    assert_eq!(m.atomup_state(), st("B A", "B", "2"));
    let console = m.boot(Some(B_IS_BAD), 3);
    assert_eq!(
        booted_lines(&console),
        vec![
            booted("B", true, false),
            booted("B", true, false),
            booted("A", false, false)
        ],
        "{console}"
    );
    assert_eq!(bootloader_writes(loader, &console), 2);
    assert_eq!(m.upstream_state(), Some(st("B A", "B", "0")));
    // The agent's view: booted A while B was on trial with nothing left.
    assert_eq!(m.atomup_state(), st("B A", "B", "0"));
}

/// The newer copy is corrupt: the bootloader uses the older valid copy (a
/// trial of B) and records the attempt over the corrupt copy.
fn corrupt_newer_copy_uses_older(loader: Loader) {
    let m = Machine::new(loader, &format!("{}-corrupt-newer-copy", loader.name()));
    m.set_state(Writer::Upstream, &st("B A", "B", "3"));
    m.set_state(Writer::Upstream, &st("A B", "", "0"));
    assert_eq!(m.upstream_state(), Some(st("A B", "", "0")));
    match loader {
        Loader::UBoot => {
            // Flip one data byte of the newer copy: its CRC no longer matches.
            let (f1, f2) = m.uboot_flags();
            let newer = if f2 == f1.wrapping_add(1) {
                UBOOT_ENV2
            } else {
                UBOOT_ENV1
            };
            let mut disk = fs::read(m.disk()).unwrap();
            disk[newer as usize + 5] ^= 0x20;
            fs::write(m.disk(), disk).unwrap();
        }
        Loader::Grub => {
            // A torn write: the newer file's ORDER changed but its seal did not.
            m.grub_pull();
            let cur = grub_current(&m.grub_files()).unwrap();
            let name = ["grubenv", "grubenv2"][cur];
            let path = m.grub_file(name);
            let text = fs::read(&path).unwrap();
            let at = text
                .windows(15)
                .position(|w| w == b"ATOMUP_ORDER=A ")
                .unwrap()
                + 13;
            let mut torn = text.clone();
            torn[at] = b'B';
            fs::write(&path, torn).unwrap();
            m.grub_push();
        }
    }
    assert_eq!(
        m.upstream_state(),
        Some(st("B A", "B", "3")),
        "upstream reader falls back to the older copy"
    );
    let console = m.boot(None, 1);
    assert_eq!(
        booted_lines(&console),
        vec![booted("B", true, false)],
        "{console}"
    );
    assert_eq!(bootloader_writes(loader, &console), 1);
    assert_eq!(m.upstream_state(), Some(st("B A", "B", "2")));
}

/// No valid env at all: slot A boots as the last resort with atomup.fallback=1,
/// and nothing is written.
fn blank_env_boots_a_as_fallback(loader: Loader) {
    let m = Machine::new(loader, &format!("{}-blank-env", loader.name()));
    match loader {
        Loader::UBoot => {
            let mut disk = fs::read(m.disk()).unwrap();
            disk[UBOOT_ENV1 as usize..(UBOOT_ENV2 + UBOOT_ENV_SIZE) as usize].fill(0);
            fs::write(m.disk(), disk).unwrap();
        }
        Loader::Grub => {
            // Both files present but empty blocks (as `grub-editenv create` leaves them).
            for name in ["grubenv", "grubenv2"] {
                let path = m.grub_file(name);
                let _ = fs::remove_file(&path);
                run(
                    Command::new("grub-editenv").arg(&path).arg("create"),
                    "grub-editenv create",
                );
            }
            m.grub_push();
        }
    }
    assert_eq!(m.upstream_state(), None);
    let before = m.env_bytes();
    let console = m.boot(None, 1);
    assert_eq!(
        booted_lines(&console),
        vec![booted("A", false, true)],
        "{console}"
    );
    assert_eq!(bootloader_writes(loader, &console), 0);
    assert!(
        m.env_bytes() == before,
        "env bytes changed on a fallback boot"
    );
}

// ---- U-Boot ----------------------------------------------------------------------

#[test]
fn uboot_trial_boot_decrements_left_fw_setenv_state() {
    trial_boot_decrements_left(Loader::UBoot, Writer::Upstream);
}

#[test]
fn uboot_trial_boot_decrements_left_atomup_install_done() {
    trial_boot_decrements_left(Loader::UBoot, Writer::Atomup);
}

#[test]
fn uboot_confirmed_boot_writes_nothing() {
    confirmed_boot_writes_nothing(Loader::UBoot);
}

#[test]
fn uboot_exhausted_trial_falls_back_to_confirmed_slot() {
    exhausted_trial_falls_back(Loader::UBoot);
}

#[test]
fn uboot_corrupt_newer_copy_uses_older_copy() {
    corrupt_newer_copy_uses_older(Loader::UBoot);
}

#[test]
fn uboot_blank_env_boots_a_as_fallback() {
    blank_env_boots_a_as_fallback(Loader::UBoot);
}

/// The flags byte wraps: the copy with flags 0x00 is newer than the one with
/// 0xff. U-Boot must use the 0x00 copy (a trial of B) and write the other copy
/// with flags 0x01, and fw_printenv must agree afterwards.
#[test]
fn uboot_flags_wrap_newer_copy_is_zero() {
    let m = Machine::new(Loader::UBoot, "uboot-flags-wrap");
    // Base image: copy 1 blank, copy 2 flags 1. fw_setenv write k goes to
    // copy 1 (k odd) or 2 (k even) with flags 1 + k: write 254 puts 0xff into
    // copy 2, write 255 wraps copy 1 to 0x00.
    m.uboot_fw_setenv_many(&st("A B", "", "0"), 254);
    m.set_state(Writer::Upstream, &st("B A", "B", "3"));
    assert_eq!(m.uboot_flags(), (0x00, 0xff));
    assert_eq!(m.upstream_state(), Some(st("B A", "B", "3")));
    let console = m.boot(None, 1);
    assert!(
        console.contains("ATOMUP-UBOOT: env copy=1 flags=0/ff "),
        "{console}"
    );
    assert_eq!(
        booted_lines(&console),
        vec![booted("B", true, false)],
        "{console}"
    );
    assert!(
        console.contains("ATOMUP-UBOOT: wrote copy=2 flags=1 LEFT=2"),
        "{console}"
    );
    assert_eq!(m.uboot_flags(), (0x00, 0x01));
    assert_eq!(m.upstream_state(), Some(st("B A", "B", "2")));
}

/// A trial slot that hangs (no panic) is reset by the hardware watchdog; the
/// attempt was counted before boot, so with LEFT=1 the next boot falls back.
#[test]
fn uboot_hanging_trial_is_reset_by_watchdog_then_falls_back() {
    let m = Machine::new(Loader::UBoot, "uboot-watchdog-hang");
    m.atomup(&["install-done", "--slot", "B", "--attempts", "1"]);
    // busybox watchdog: 3 s timeout, feeds once, then the slot "hangs".
    let hang = "if [ \"$slot\" = B ]; then watchdog -T 3 -t 600 /dev/watchdog; echo 'TEST: B hangs'; sleep 600; fi\n";
    let console = m.boot_with(Some(hang), 2, true);
    assert!(console.contains("TEST: B hangs"), "{console}");
    assert_eq!(
        booted_lines(&console),
        vec![booted("B", true, false), booted("A", false, false)],
        "{console}"
    );
    assert_eq!(bootloader_writes(Loader::UBoot, &console), 1);
    assert_eq!(m.upstream_state(), Some(st("B A", "B", "0")));
}

/// saveenv variant (A/B vars in U-Boot's own env): a confirmed slot boots with
/// no save at all.
#[test]
fn uboot_saveenv_variant_confirmed_boot_does_not_save() {
    let m = Machine::new(Loader::UBoot, "uboot-saveenv-confirmed");
    m.uboot_use_saveenv_variant(&[("ATOMUP_ORDER", "B A")]);
    let console = m.boot(None, 1);
    assert_eq!(
        booted_lines(&console),
        vec![booted("B", false, false)],
        "{console}"
    );
    assert!(!console.contains("Saving Environment"), "{console}");
}

/// saveenv variant: when the attempt cannot be recorded (saveenv fails, as on
/// QEMU's read-only pflash), the trial slot is not booted (it could boot-loop
/// uncounted); the next slot in ORDER boots instead.
#[test]
fn uboot_saveenv_variant_unrecordable_attempt_skips_trial() {
    let m = Machine::new(Loader::UBoot, "uboot-saveenv-save-fails");
    m.uboot_use_saveenv_variant(&[
        ("ATOMUP_ORDER", "B A"),
        ("ATOMUP_TRIAL", "B"),
        ("ATOMUP_LEFT", "3"),
    ]);
    let before = fs::read(m.dir.join("flash1.img")).unwrap();
    let console = m.boot(None, 1);
    assert!(console.contains("Saving Environment"), "{console}");
    assert!(
        console.contains("could not record the attempt, not booting trial slot B"),
        "{console}"
    );
    assert_eq!(
        booted_lines(&console),
        vec![booted("A", false, false)],
        "{console}"
    );
    assert!(fs::read(m.dir.join("flash1.img")).unwrap() == before);
}

// ---- GRUB ------------------------------------------------------------------------

#[test]
fn grub_trial_boot_decrements_left_grub_editenv_state() {
    trial_boot_decrements_left(Loader::Grub, Writer::Upstream);
}

#[test]
fn grub_trial_boot_decrements_left_atomup_install_done() {
    trial_boot_decrements_left(Loader::Grub, Writer::Atomup);
}

#[test]
fn grub_confirmed_boot_writes_nothing() {
    confirmed_boot_writes_nothing(Loader::Grub);
}

#[test]
fn grub_exhausted_trial_falls_back_to_confirmed_slot() {
    exhausted_trial_falls_back(Loader::Grub);
}

#[test]
fn grub_corrupt_newer_file_uses_older_file() {
    corrupt_newer_copy_uses_older(Loader::Grub);
}

#[test]
fn grub_blank_env_boots_a_as_fallback() {
    blank_env_boots_a_as_fallback(Loader::Grub);
}

/// GRUB cannot record the attempt (the non-current grubenv file is missing, so
/// save_env fails): the trial slot is not booted, the confirmed slot is.
#[test]
fn grub_unrecordable_attempt_skips_trial() {
    let m = Machine::new(Loader::Grub, "grub-save-fails");
    m.atomup(&["install-done", "--slot", "B"]);
    m.grub_pull();
    let cur = grub_current(&m.grub_files()).unwrap();
    fs::remove_file(m.grub_file(["grubenv2", "grubenv"][cur])).unwrap();
    m.grub_push();
    assert_eq!(m.upstream_state(), Some(st("B A", "B", "3")));
    let before = m.env_bytes();
    let console = m.boot(None, 1);
    assert!(
        console.contains("could not record the attempt, not booting trial slot B"),
        "{console}"
    );
    assert_eq!(
        booted_lines(&console),
        vec![booted("A", false, false)],
        "{console}"
    );
    assert!(
        m.env_bytes() == before,
        "env changed although the write failed"
    );
}

/// Guest script: on the trial boot, the device binary confirms the slot
/// (`atomup mark-good`, env found through /etc/fw_env.config or the mounted
/// ESP, booted slot from /proc/cmdline) and reboots; the next boot is a
/// confirmed boot.
fn mark_good_script(loader: Loader) -> String {
    let (mount, env, umount) = match loader {
        Loader::UBoot => ("", "", ""),
        Loader::Grub => (
            "mkdir -p /tmp/esp; mount -t vfat /dev/vda1 /tmp/esp || echo 'TEST: mount ESP FAILED'",
            " --grubenv /tmp/esp/grub/grubenv",
            "umount /tmp/esp",
        ),
    };
    [
        mount.to_string(),
        "if [ \"$trial\" = 1 ]; then".into(),
        format!("  atomup mark-good --state-dir /tmp/state{env} || echo 'TEST: mark-good FAILED'"),
        format!("  atomup status --state-dir /tmp/state{env}"),
        format!("  {umount}"),
        "  echo 'TEST: reboot'; sync; reboot -f; sleep 30".into(),
        "fi".into(),
        format!("atomup status --state-dir /tmp/state{env} || echo 'TEST: status FAILED'"),
        umount.to_string(),
        String::new(),
    ]
    .join("\n")
}

/// End to end on the device side: install-done on the host, trial boot, the
/// guest's own `atomup mark-good` clears the trial with one env write, the next
/// boot is confirmed and writes nothing.
fn guest_mark_good_confirms_trial(loader: Loader) {
    let m = Machine::new(loader, &format!("{}-guest-mark-good", loader.name()));
    m.atomup(&["install-done", "--slot", "B"]);
    let console = m.boot(Some(&mark_good_script(loader)), 2);
    assert!(!console.contains("TEST: mark-good FAILED"), "{console}");
    assert!(!console.contains("FAILED"), "{console}");
    assert!(console.contains("slot B confirmed good"), "{console}");
    assert_eq!(
        booted_lines(&console),
        vec![booted("B", true, false), booted("B", false, false)],
        "{console}"
    );
    assert_eq!(bootloader_writes(loader, &console), 1);
    assert_eq!(m.upstream_state(), Some(st("B A", "", "0")));
}

#[test]
fn uboot_guest_atomup_mark_good_confirms_trial() {
    guest_mark_good_confirms_trial(Loader::UBoot);
}

#[test]
fn grub_guest_atomup_mark_good_confirms_trial() {
    guest_mark_good_confirms_trial(Loader::Grub);
}

// ---- health checks on the device (issue 15) --------------------------------------
//
// A device image like a vendor's: the board profile of its bootloader
// (board-support/profiles), the busybox init scripts (updater/agent/dist/sysvinit),
// a vendor configuration (a service pidfile to watch, 30 s per check, 1 MiB free)
// and two vendor checks whose outcome the guest script picks ($SCENARIO); the data
// partition holds the slot records (A version 1, B version 2). No env option is given
// to any atomup command in the guest: the profile says where the env is.

/// The vendor's checks: what `$SCENARIO` says. `hang` stops the agent itself
/// (SIGSTOP of its parent): a hang no per-check time limit can end, so only
/// the watchdog can.
const SCENARIO_REQUIRED: &str = r#"#!/bin/sh
# Test vendor check: its outcome is the boot test's $SCENARIO.
echo "required check: scenario ${SCENARIO:-pass}"
case "${SCENARIO:-pass}" in
  fail-required) echo "the application did not come up" >&2; exit 1 ;;
  hang) echo "stopping the agent: a hang it cannot time out"; kill -STOP "$PPID"; sleep 600 ;;
esac
exit 0
"#;
const SCENARIO_WANTED: &str = r#"#!/bin/sh
# Test vendor check (wanted): fails in the fail-wanted scenario.
case "${SCENARIO:-pass}" in
  fail-wanted) echo "the optional uplink is down" >&2; exit 1 ;;
esac
exit 0
"#;

/// The health image of `loader`, built once per test binary.
fn health_image(loader: Loader) -> &'static Path {
    static UBOOT: OnceLock<PathBuf> = OnceLock::new();
    static GRUB: OnceLock<PathBuf> = OnceLock::new();
    let cell = match loader {
        Loader::UBoot => &UBOOT,
        Loader::Grub => &GRUB,
    };
    cell.get_or_init(|| {
        let root = workspace_root();
        let work = target_dir()
            .join("boot-tests")
            .join(format!("health-parts-{}", loader.name()));
        let _ = fs::remove_dir_all(&work);
        let tree = work.join("tree");
        let profile = match loader {
            Loader::UBoot => "qemu-virt-uboot",
            Loader::Grub => "qemu-virt-grub-efi",
        };
        let put = |rel: &str, body: &[u8], mode: u32| {
            use std::os::unix::fs::PermissionsExt;
            let p = tree.join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, body).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        };
        let read = |rel: &str| fs::read(root.join(rel)).unwrap();
        put(
            "etc/atomup/board.conf",
            &read(&format!("board-support/profiles/{profile}/board.conf")),
            0o644,
        );
        for s in ["S01atomup-watchdog", "S99atomup-health"] {
            put(
                &format!("etc/init.d/{s}"),
                &read(&format!("updater/agent/dist/sysvinit/{s}")),
                0o755,
            );
        }
        put(
            "etc/default/atomup-health",
            b"REBOOT=\"reboot -f\"\nRUN_DIR=/tmp/atomup\n",
            0o644,
        );
        put(
            "usr/lib/atomup/config.d/00-vendor.toml",
            b"[health]\ntimeout = \"30s\"\nmin_free = \"1MiB\"\nservices = [\"/tmp/test-service.pid\"]\n",
            0o644,
        );
        put(
            "usr/lib/atomup/health.d/required.d/50-scenario",
            SCENARIO_REQUIRED.as_bytes(),
            0o755,
        );
        put(
            "usr/lib/atomup/health.d/wanted.d/50-scenario-wanted",
            SCENARIO_WANTED.as_bytes(),
            0o755,
        );
        fs::create_dir_all(tree.join("boot/efi")).unwrap();
        let data = work.join("data/lib/atomup/slots");
        fs::create_dir_all(&data).unwrap();
        for (slot, v, c) in [("A", 1, "aa"), ("B", 2, "bb")] {
            fs::write(
                data.join(slot),
                format!("format=2\ncommit={}\nversion={v}\n", c.repeat(32)),
            )
            .unwrap();
        }
        let bin = guest_atomup().to_string_lossy().into_owned();
        build_image(
            loader,
            &format!("health-{}", loader.name()),
            &[
                "--guest-bin",
                &bin,
                "--extra-tree",
                &tree.to_string_lossy(),
                "--data-dir",
                &work.join("data").to_string_lossy(),
            ],
        )
    })
}

/// The guest's boot, as a busybox device runs it: the early watchdog script,
/// /var (and the ESP) mounted, the watched service started, the health
/// script last; then what the device reports. `site` is an extra site
/// configuration for this scenario.
fn health_script(loader: Loader, scenario: &str, site: Option<&str>) -> String {
    let mut s = format!("export SCENARIO={scenario}\n/etc/init.d/S01atomup-watchdog start\n");
    s.push_str("mount -t ext4 /dev/vda4 /var || echo 'TEST: mount /var FAILED'\n");
    if loader == Loader::Grub {
        s.push_str(
            "mount -t vfat -o rw,sync /dev/vda1 /boot/efi || echo 'TEST: mount ESP FAILED'\n",
        );
    }
    s.push_str("sleep 100000 </dev/null >/dev/null 2>&1 &\necho $! >/tmp/test-service.pid\n");
    if let Some(toml) = site {
        s.push_str(&format!(
            "mkdir -p /tmp/site-config\ncat >/tmp/site-config/50-site.toml <<'TOML'\n{toml}TOML\n\
             printf 'HEALTH_ARGS=\"--config-dir /usr/lib/atomup/config.d --config-dir /tmp/site-config\"\\n\
             REBOOT=\"reboot -f\"\\nRUN_DIR=/tmp/atomup\\n' >/tmp/defaults\n\
             export ATOMUP_DEFAULTS=/tmp/defaults\n\
             export ATOMUP='atomup --config-dir /usr/lib/atomup/config.d --config-dir /tmp/site-config'\n"
        ));
    }
    s.push_str(
        "/etc/init.d/S99atomup-health start; echo \"TEST: health exit $?\"\n\
         [ -e /tmp/atomup/boot-complete ] && echo 'TEST: boot complete'\n\
         atomup status || echo 'TEST: status FAILED'\n\
         echo \"TEST-JSON: $(atomup status --json)\"\n\
         atomup board check || echo 'TEST: board check FAILED'\n\
         for f in /var/lib/atomup/reports/*.json; do [ -f \"$f\" ] && echo \"TEST-REPORT: $(cat \"$f\")\"; done\n",
    );
    if loader == Loader::Grub {
        // The board.conf-only GRUB device: mark-good and status find the
        // grubenv pair on the mounted ESP from the profile alone.
        s.push_str("atomup mark-good || echo 'TEST: mark-good FAILED'\numount /boot/efi\n");
    }
    s.push_str("umount /var\n");
    s
}

/// The status JSON the guest printed last.
fn guest_status_json(console: &str) -> serde_json::Value {
    let line = console
        .lines()
        .filter_map(|l| l.strip_prefix("TEST-JSON: "))
        .next_back()
        .unwrap_or_else(|| panic!("no status JSON in:\n{console}"));
    serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{e}: {line}"))
}

/// The reports queued on the device (`server.report_url` set by the site
/// configuration, nothing listens), as the guest printed them on its last boot.
fn guest_reports(console: &str) -> Vec<serde_json::Value> {
    let start = console.rfind("TEST: health exit").unwrap_or(0);
    console[start..]
        .lines()
        .filter_map(|l| l.strip_prefix("TEST-REPORT: "))
        .map(|l| serde_json::from_str(l.trim()).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The site configuration of the scenarios that prove the reports.
const SITE_REPORTS: &str = "[server]\nurl = \"http://10.0.2.2:18080/repo\"\nchannel = \"stable\"\n\
     report_url = \"http://10.0.2.2:18080/report\"\n";

/// Line 0 levels of the PL061 (the profile's LED), in order.
fn led_levels(trace: &Path) -> Vec<u8> {
    fs::read_to_string(trace)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once("setting output 0 to "))
        .filter_map(|(_, v)| v.trim().parse().ok())
        .collect()
}

fn timed<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let r = f();
    eprintln!("SCENARIO {what}: {:.1}s", t.elapsed().as_secs_f64());
    r
}

/// A required check fails on the trial boot: the slot is marked bad with the
/// check's reason, the device reboots into A, and A reports "rolled back from
/// version 2 (reason)".
fn required_check_fails_rolls_back(loader: Loader) {
    let m = Machine::of_image(
        loader,
        health_image(loader),
        &format!("{}-health-required-fails", loader.name()),
    );
    m.atomup(&["install-done", "--slot", "B"]);
    let console = timed(&format!("{}: required check fails", loader.name()), || {
        m.boot_with(
            Some(&health_script(loader, "fail-required", Some(SITE_REPORTS))),
            2,
            true,
        )
    });
    assert_eq!(
        booted_lines(&console),
        vec![booted("B", true, false), booted("A", false, false)],
        "{console}"
    );
    let reason = "required check 50-scenario failed: exit status 1";
    assert!(
        console.contains(&format!("health: slot B FAILED: {reason}")),
        "{console}"
    );
    assert!(
        console.contains(&format!(
            "Rollback: rolled back from version 2 ({reason}); slot B"
        )),
        "{console}"
    );
    let j = guest_status_json(&console);
    assert_eq!(j["rollbacks"][0]["reason"], reason);
    assert_eq!(j["rollbacks"][0]["version"], 2);
    assert_eq!(j["health"]["verdict"], "failed");
    // The report slot B's verdict queued, still there on A's boot.
    let r = guest_reports(&console);
    assert_eq!(r.len(), 1, "{console}");
    assert_eq!(r[0]["event"], "rolled-back");
    assert_eq!(r[0]["booted_slot"], "B");
    assert_eq!(r[0]["rollbacks"][0]["reason"], reason);
    assert_eq!(r[0]["rollbacks"][0]["version"], 2);
    assert_eq!(
        r[0]["last_error"],
        format!("slot B failed on its trial boot: {reason}")
    );
    assert_eq!(m.upstream_state(), Some(st("A", "", "0")));
    assert_eq!(bootloader_writes(loader, &console), 1);
}

/// Only wanted checks fail (the vendor's wanted check and the built-in
/// server check, the VM has no network): the slot is confirmed, the
/// failures are in the status JSON a report carries, the boot-complete
/// marker is written, and the profile's LED (the PL061's line 0) blinked
/// "on trial" and was left on ("confirmed"). On GRUB, every command found
/// the env through the board profile alone. The next boot, confirmed, writes
/// nothing to the env.
fn only_wanted_checks_fail_confirms(loader: Loader) {
    let m = Machine::of_image(
        loader,
        health_image(loader),
        &format!("{}-health-wanted-fails", loader.name()),
    );
    m.atomup(&["install-done", "--slot", "B"]);
    let trace = m.dir.join("gpio.log");
    let _ = fs::remove_file(&trace);
    let site = SITE_REPORTS;
    let console = timed(
        &format!("{}: only wanted checks fail", loader.name()),
        || {
            m.boot_vm(
                Some(&health_script(loader, "fail-wanted", Some(site))),
                1,
                true,
                &["--gpio-trace", &trace.to_string_lossy()],
            )
        },
    );
    assert_eq!(
        booted_lines(&console),
        vec![booted("B", true, false)],
        "{console}"
    );
    for want in [
        "health: watchdog /dev/watchdog armed for slot B's trial",
        "health: required atomup:read-only-root passed",
        "health: required atomup:data-partition passed",
        "health: required atomup:services passed",
        "health: wanted atomup:server-reachable FAILED",
        "health: wanted 50-scenario-wanted FAILED (",
        "wanted check(s) failed, recorded and reported: atomup:server-reachable, 50-scenario-wanted",
        "slot B confirmed good",
        "TEST: health exit 0",
        "TEST: boot complete",
        "board check: /etc/atomup/board.conf matches this system",
    ] {
        assert!(console.contains(want), "no `{want}` in:\n{console}");
    }
    assert!(
        !console.contains("FAILED\n") && !console.contains("TEST: board check FAILED"),
        "{console}"
    );
    let j = guest_status_json(&console);
    let h = &j["health"];
    assert_eq!(h["verdict"], "passed");
    let failed: Vec<&str> = h["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["outcome"] == "failed")
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(failed, ["atomup:server-reachable", "50-scenario-wanted"]);
    // The confirmation's report carries the failed wanted checks.
    let r = guest_reports(&console);
    assert_eq!(r.len(), 1, "{console}");
    assert_eq!(r[0]["event"], "confirmed");
    assert_eq!(r[0]["health"]["verdict"], "passed");
    let reported: Vec<&str> = r[0]["health"]["failed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(reported, failed);
    let w = h["checks"].as_array().unwrap().last().unwrap();
    assert_eq!(
        (&w["kind"], &w["output"]),
        (&"wanted".into(), &"the optional uplink is down\n".into())
    );
    if loader == Loader::Grub {
        assert!(
            console
                .contains("ok    ESP: /boot/efi/grub is on /boot/efi (vfat /dev/vda1), read-write"),
            "{console}"
        );
        assert!(
            console.contains("slot B is confirmed (not on trial): nothing to write"),
            "{console}"
        );
        assert!(!console.contains("TEST: mark-good FAILED"), "{console}");
    }
    assert!(console.contains("Boot order: B A"), "{console}");
    assert_eq!(m.upstream_state(), Some(st("B A", "", "0")));
    let led = led_levels(&trace);
    // The trial's blink then the confirmed steady light: at least one whole
    // blink (off, on, off) before the final on. How many blinks the trace
    // holds depends on how long the trial ran (an idle machine: [0, 1, 0, 1]).
    let toggles = led.windows(2).filter(|w| w[0] != w[1]).count();
    assert!(
        toggles >= 3 && led.last() == Some(&1),
        "LED line 0: {led:?}"
    );

    // The next boot is a confirmed one: the whole boot integration runs
    // again (early watchdog script, health, status, board check, and on
    // GRUB mark-good) and writes nothing to the env, nor reports anything.
    let before = m.env_bytes();
    let console = timed(
        &format!("{}: the next, confirmed boot", loader.name()),
        || m.boot_with(Some(&health_script(loader, "pass", Some(site))), 1, true),
    );
    assert_eq!(
        booted_lines(&console),
        vec![booted("B", false, false)],
        "{console}"
    );
    assert!(
        console.contains("slot B is confirmed (not on trial): nothing to write")
            && console.contains("TEST: health exit 0")
            && console.contains("TEST: boot complete"),
        "{console}"
    );
    assert!(!console.contains("armed for slot B"), "{console}");
    assert_eq!(bootloader_writes(loader, &console), 0, "{console}");
    assert!(
        m.env_bytes() == before,
        "env bytes changed on a confirmed boot"
    );
    assert_eq!(guest_reports(&console).len(), 1, "{console}");
}

/// A check hangs the trial (it stops the agent): nothing feeds the watchdog,
/// the board resets, the bootloader counts the attempt; after both attempts
/// the confirmed slot boots and records the rollback with the check the
/// board reset in.
fn hanging_check_watchdog_resets_then_falls_back(loader: Loader) {
    let m = Machine::of_image(
        loader,
        health_image(loader),
        &format!("{}-health-hang", loader.name()),
    );
    m.atomup(&["install-done", "--slot", "B", "--attempts", "2"]);
    let console = timed(&format!("{}: hanging check", loader.name()), || {
        m.boot_with(Some(&health_script(loader, "hang", None)), 3, true)
    });
    assert_eq!(
        booted_lines(&console),
        vec![
            booted("B", true, false),
            booted("B", true, false),
            booted("A", false, false)
        ],
        "{console}"
    );
    // The check's own output went to the agent, which never got to keep it:
    // each trial got as far as the checks, the board reset in them.
    assert_eq!(
        console.matches("armed for slot B's checks").count(),
        2,
        "{console}"
    );
    assert!(
        !console.contains("health: required 50-scenario"),
        "{console}"
    );
    assert_eq!(bootloader_writes(loader, &console), 2);
    let reason = "ran out of boot attempts: its last health run";
    assert!(
        console.contains("rollback detected: slot B ran out of attempts"),
        "{console}"
    );
    assert!(
        console.contains(
            "never finished, the board reset during required check 50-scenario (watchdog)"
        ),
        "{console}"
    );
    let j = guest_status_json(&console);
    let r = j["rollbacks"][0]["reason"].as_str().unwrap();
    assert!(r.starts_with(reason) && r.contains("50-scenario"), "{r}");
    assert_eq!(j["rollbacks"][0]["version"], 2);
    assert_eq!(m.upstream_state(), Some(st("A", "", "0")));
}

#[test]
fn uboot_health_required_check_fails_rolls_back_with_reason() {
    required_check_fails_rolls_back(Loader::UBoot);
}

#[test]
fn grub_health_required_check_fails_rolls_back_with_reason() {
    required_check_fails_rolls_back(Loader::Grub);
}

#[test]
fn uboot_health_only_wanted_checks_fail_confirms_and_reports() {
    only_wanted_checks_fail_confirms(Loader::UBoot);
}

#[test]
fn grub_board_conf_only_device_confirms_with_wanted_failures_reported() {
    only_wanted_checks_fail_confirms(Loader::Grub);
}

#[test]
fn uboot_health_hanging_check_watchdog_resets_then_falls_back() {
    hanging_check_watchdog_resets_then_falls_back(Loader::UBoot);
}

#[test]
fn grub_health_hanging_check_watchdog_resets_then_falls_back() {
    hanging_check_watchdog_resets_then_falls_back(Loader::Grub);
}
