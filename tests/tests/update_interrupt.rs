//! Ctrl-C during `atomup update` is harmless (issue 17): SIGINT at a chosen
//! crash point while the inactive slot's device is mounted and half
//! written, then `atomup update` again installs the release. The slot is a
//! real ext4 on a loop device; both runs share one private mount namespace
//! (held open by a sleeping process), as they share the device's mounts.

use atomup_tests::device::{
    env_show, provision, require_root, text, update_base_args, world, LoopFs,
};
use std::ffi::OsString;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A private mount namespace that lives until dropped.
struct MountNs(Child);

impl MountNs {
    fn new() -> MountNs {
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sleep", "600"])
            .stdin(Stdio::null())
            .spawn()
            .expect("unshare");
        let ns = MountNs(child);
        let ours = std::fs::read_link("/proc/self/ns/mnt").unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_link(ns.path()).ok().as_ref() == Some(&ours) {
            assert!(
                Instant::now() < deadline,
                "unshare did not enter a namespace"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        ns
    }

    fn path(&self) -> std::path::PathBuf {
        Path::new("/proc")
            .join(self.0.id().to_string())
            .join("ns/mnt")
    }

    /// `bin args` inside the namespace (nsenter execs it: its pid is the
    /// child's), as seen from our root and working directory, with SIGINT's default action as a terminal's foreground
    /// process has it: a test run started in the background (`cmd &` in a
    /// script, as CI may start it) inherits SIGINT ignored, and the update
    /// would then never see the Ctrl-C this test sends.
    fn command(&self, bin: &Path, args: &[OsString]) -> Command {
        use std::os::unix::process::CommandExt;
        // `--root`/`--wd` keep the sleeper's root and working directory:
        // entering a mount namespace resets them to the namespace's own root,
        // which is not ours inside a chroot (the fresh-machine check runs the
        // suite in one: the agent's path was not found).
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--target={}", self.0.id()))
            .args(["--mount", "--root", "--wd"])
            .arg("--")
            .arg(bin)
            .args(args);
        // SAFETY: signal(2) is async-signal-safe, as pre_exec requires.
        unsafe {
            cmd.pre_exec(|| {
                libc::signal(libc::SIGINT, libc::SIG_DFL);
                Ok(())
            });
        }
        cmd
    }
}

impl Drop for MountNs {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn state_of(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

fn kill(sig: &str, pid: u32) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success(), "kill {sig} {pid}");
}

/// Regression (issue 17): an update interrupted by Ctrl-C while its target
/// device was mounted left that mount behind (SIGINT runs no destructor),
/// and every later update refused the target as "mounted": the device could
/// never update again until rebooted. Now the next update unmounts its own
/// leftover mount point first and installs.
#[test]
fn ctrl_c_during_the_apply_then_update_again_completes() {
    if !require_root() {
        return;
    }
    let w = world(&[]);
    let d = provision(&w, "ctrl-c");
    let fs_b = LoopFs::from_dir(&d.root.join("b.img"), &d.slot_b);
    let ns = MountNs::new();
    let mut args = update_base_args(&w, &d, &w.nginx.url(), "A");
    args.extend([
        "--from-root".into(),
        d.slot_a.clone().into(),
        "--target-device".into(),
        fs_b.dev.clone().into(),
    ]);

    // Stopped at the second object reconciliation puts in place: slot B is
    // out of the boot order, mounted and half written. Then Ctrl-C.
    let mut first = ns
        .command(&atomup_tests::crash::faults_atomup(), &args)
        .env("ATOMUP_FAILPOINT", "apply.reconcile@1!stop")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = first.id();
    let deadline = Instant::now() + Duration::from_secs(60);
    while state_of(pid) != Some('T') {
        if first.try_wait().unwrap().is_some() {
            let out = first.wait_with_output().unwrap();
            panic!("the update ended before its crash point: {}", text(&out));
        }
        assert!(
            Instant::now() < deadline,
            "the update never reached its crash point"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    kill("-INT", pid);
    kill("-CONT", pid);
    let out = first.wait_with_output().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(2),
        "not ended by SIGINT: {}",
        text(&out)
    );
    assert_eq!(
        env_show(&d),
        "ATOMUP_ORDER=A\nATOMUP_TRIAL=\nATOMUP_LEFT=0\n",
        "interrupted after install start: slot B is out of the boot order"
    );

    // Update again: it completes.
    let again = ns
        .command(&atomup_tests::workspace_bin("atomup"), &args)
        .output()
        .unwrap();
    assert!(
        again.status.success(),
        "update after Ctrl-C: {}",
        text(&again)
    );
    assert!(
        text(&again).contains("installed version 2"),
        "{}",
        text(&again)
    );
    assert_eq!(
        env_show(&d),
        "ATOMUP_ORDER=B A\nATOMUP_TRIAL=B\nATOMUP_LEFT=3\n"
    );
}
