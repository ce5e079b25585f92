//! The daemon's work in a child process: each network poll (and each
//! install from a stick) runs in a `fork` of the sleeping daemon, which
//! waits for it, forwards SIGTERM/SIGINT to it and reads back the one line
//! it needs (installed what into which slot, or failed). Why: an idle
//! daemon's memory is the pages its own process ever touched (VmHWM), and
//! a poll touches the TLS, HTTP, signature, delta and slot-writing code,
//! about a MiB of text and rodata that then stays resident for the whole
//! sleep. In a child those pages are the child's and go when it exits; the
//! daemon keeps only its loop, its configuration and its signals. The
//! poll's own peak (`wait4`'s `ru_maxrss`) is logged after each poll, so
//! its cost stays visible.
//!
//! Crash guarantees are the poll's own (`update.rs`): the child is the same
//! code as `atomup update`. A child whose daemon died (kill -9, OOM) gets
//! SIGTERM (`PR_SET_PDEATHSIG`) and stops at its next safe point, as the
//! daemon's own SIGTERM would stop it: never a poll nobody waits for. A
//! child that dies (a signal, an abort) is a failed poll: the daemon backs
//! off and polls again, it does not die with it.

use crate::signals;
use std::io::{Read, Write};
use std::time::Duration;

/// How a child ended: the line it sent (empty when it sent none, as a
/// child stopped in the middle of a slot write exits without one) and its
/// peak resident memory.
pub struct Ended {
    pub line: String,
    /// Whether it exited 0 (not by a signal, not with an error code).
    pub clean: bool,
    /// How it ended, for the log when it is not clean.
    pub how: String,
    /// The child's peak resident memory; `None` when it ran in the daemon.
    pub peak_kib: Option<u64>,
}

/// Runs `work` in a child process and waits for it; `work` returns the line
/// sent back (at most a few dozen bytes: it fits a pipe's buffer, so the
/// child never blocks on it). While it waits the daemon forwards a stop
/// request to the child once, and otherwise only sleeps in 100 ms steps.
pub fn run(work: impl FnOnce() -> String) -> std::io::Result<Ended> {
    if threads() != Some(1) {
        // A fork now could copy a lock another thread holds (the child
        // would hang on it): run in this process instead, as the daemon
        // did before it forked; only the memory benefit is lost.
        log::warn!(
            "the daemon has other threads (or no /proc to tell): this one runs in the daemon itself"
        );
        let line = work();
        return Ok(Ended {
            line,
            clean: true,
            how: "in the daemon itself".into(),
            peak_kib: None,
        });
    }
    let (mut reader, writer) = pipe()?;
    // Nothing buffered may be written twice (once by each process).
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    let parent = rustix::process::getpid();
    // SAFETY: the daemon is single-threaded when it forks (checked above;
    // its threads are the scoped ones inside a poll or an install, all
    // joined before they return and run in the child, and the LED's, which
    // it stops before each poll and install), so the child may allocate and
    // take locks: no other thread held one at the fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if pid == 0 {
        drop(reader);
        child(parent, writer, work);
    }
    drop(writer);
    let mut forwarded = false;
    let (status, usage) = loop {
        let mut status = 0;
        // SAFETY: a zeroed rusage is a valid out-parameter.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: plain wait4 on our own child with valid out-pointers.
        let got = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if got == pid {
            break (status, usage);
        }
        if got < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        if signals::stop_requested() && !forwarded {
            // SAFETY: a signal to our own, not yet reaped, child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            forwarded = true;
        }
        let _ = rustix::thread::nanosleep(&rustix::thread::Timespec {
            tv_sec: 0,
            tv_nsec: Duration::from_millis(100).as_nanos() as _,
        });
    };
    let mut line = String::new();
    let _ = reader.read_to_string(&mut line);
    let how = if libc::WIFEXITED(status) {
        format!("exit code {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("signal {}", libc::WTERMSIG(status))
    } else {
        format!("wait status {status}")
    };
    Ok(Ended {
        line,
        clean: libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        how,
        peak_kib: Some(usage.ru_maxrss.max(0) as u64),
    })
}

/// The child's side. Never inlined: `scripts/link-order` finds where a
/// child starts in a log of the daemon by this function's name.
#[inline(never)]
fn child(
    parent: rustix::process::Pid,
    mut writer: std::fs::File,
    work: impl FnOnce() -> String,
) -> ! {
    // The daemon's death is a stop request; a death before this call
    // shows as a new parent.
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM));
    if rustix::process::getppid() != Some(parent) {
        signals::STOP.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    let line = work();
    let _ = writer.write_all(line.as_bytes());
    drop(writer);
    // `exit` flushes stdout; no destructor of the daemon's state runs.
    std::process::exit(0);
}

/// The threads of this process (`num_threads`, the 20th field of
/// `/proc/self/stat`, counted after the `)` that ends the command name);
/// `None` when unreadable. A small file read, the way the daemon already reads its
/// configuration, so the sleeping daemon's code stays where it is.
fn threads() -> Option<usize> {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            rest.split_whitespace().nth(17)?.parse().ok()
        })
}

/// A close-on-exec pipe, as (read end, write end).
fn pipe() -> std::io::Result<(std::fs::File, std::fs::File)> {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds on success, each owned by one File.
    unsafe {
        if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok((
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test harness runs each test on a thread of its own: a process
    /// with threads never forks, the work runs in it.
    #[test]
    fn with_other_threads_the_work_runs_in_this_process() {
        assert!(threads() > Some(1));
        let me = std::process::id();
        let ended = run(|| std::process::id().to_string()).unwrap();
        assert_eq!(ended.line, me.to_string());
        assert!(ended.clean);
    }
}
