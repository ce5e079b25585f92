//! Children that end with the test process. A server a test fixture starts
//! and keeps in a static (a shared world, never dropped) would otherwise
//! outlive the test binary: it holds the binary's stdout open (so
//! `cargo test | grep` never ends) and its port. Each child gets
//! `PR_SET_PDEATHSIG` (SIGKILL). That signal follows the death of the
//! *thread* that forked it, and test threads end with their test, so every
//! fork happens on one spawner thread that lives as long as the process.

use std::process::{Child, Command};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Mutex, OnceLock};

type Job = (Command, Sender<std::io::Result<Child>>);

fn spawner() -> &'static Mutex<Sender<Job>> {
    static TX: OnceLock<Mutex<Sender<Job>>> = OnceLock::new();
    TX.get_or_init(|| {
        let (tx, rx) = channel::<Job>();
        std::thread::Builder::new()
            .name("reaped-spawner".into())
            // The sender is a static, so `rx` never closes: the thread lives
            // until the process exits.
            .spawn(move || {
                for (mut cmd, back) in rx {
                    let _ = back.send(cmd.spawn());
                }
            })
            .expect("starting the spawner thread");
        Mutex::new(tx)
    })
}

/// Spawns `cmd` so that it is killed when this process ends.
pub fn spawn(mut cmd: Command) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe, as pre_exec requires.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (back, answer) = channel();
    spawner()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, back))
        .expect("the spawner thread is gone");
    answer.recv().expect("the spawner thread is gone")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child spawned from a thread that then ends keeps running (the
    /// death signal follows the spawner thread, not the caller's).
    #[test]
    fn a_child_outlives_the_thread_that_asked_for_it() {
        let mut child = std::thread::spawn(|| {
            let mut cmd = Command::new("sleep");
            cmd.arg("30");
            spawn(cmd).unwrap()
        })
        .join()
        .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(
            child.try_wait().unwrap().is_none(),
            "the child died with the caller's thread"
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
