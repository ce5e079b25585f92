//! Running one check within its time limit, with its output captured.
//!
//! A script runs as its own process group with stdin from `/dev/null` and
//! stdout and stderr into one pipe, which is read without blocking while the
//! check runs: a check that writes without end is kept to the first
//! [`HEAD`] and the last [`TAIL`] bytes (the rest counted), and a grandchild
//! that keeps the pipe open after the check exited cannot hold the run. Past
//! its limit the whole group is killed (`SIGKILL`), then reaped.
//!
//! The caller's `tick` runs every [`TICK`] while a check is within its limit
//! (the watchdog is fed there). Once a check is past its limit and killed,
//! `tick` is no longer called while the kill is reaped: a check that cannot
//! even be killed (stuck in the kernel) stops the feeding, and the watchdog
//! resets the board.

use crate::builtin::Builtin;
use crate::record::Outcome;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// How often `tick` runs and the pipe is read.
pub const TICK: Duration = Duration::from_millis(50);
/// First bytes of a check's output kept.
pub const HEAD: usize = 4 * 1024;
/// Last bytes of a check's output kept.
pub const TAIL: usize = 12 * 1024;

/// A check's output, bounded: the first [`HEAD`] and last [`TAIL`] bytes.
#[derive(Default)]
pub struct Capture {
    head: Vec<u8>,
    tail: std::collections::VecDeque<u8>,
    dropped: u64,
}

impl Capture {
    pub fn push(&mut self, mut data: &[u8]) {
        let room = HEAD - self.head.len();
        let n = room.min(data.len());
        self.head.extend_from_slice(&data[..n]);
        data = &data[n..];
        for &b in data {
            if self.tail.len() == TAIL {
                self.tail.pop_front();
                self.dropped += 1;
            }
            self.tail.push_back(b);
        }
    }

    /// The kept bytes, with a marker where bytes were left out.
    pub fn into_bytes(self) -> Vec<u8> {
        let mut out = self.head;
        if self.dropped > 0 {
            out.extend_from_slice(
                format!("\n[... {} bytes left out ...]\n", self.dropped).as_bytes(),
            );
        }
        out.extend(self.tail);
        out
    }
}

/// What one check did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ran {
    pub outcome: Outcome,
    pub millis: u64,
    /// One line: exit status, timeout, what a built-in found or why it failed.
    pub detail: String,
    /// The output (scripts) or the finding (built-ins).
    pub output: Vec<u8>,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Whole seconds, rounded up.
fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs() + u64::from(d.subsec_nanos() > 0))
}

/// Reads what the pipe holds now, without blocking.
fn drain(pipe: &mut std::fs::File, out: &mut Capture) {
    let mut buf = [0u8; 4096];
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => out.push(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return, // WouldBlock: nothing more for now
        }
    }
}

/// Runs the script at `path` (environment inherited).
pub fn script(path: &Path, limit: Duration, tick: &mut dyn FnMut()) -> Ran {
    let start = Instant::now();
    let not_run = |detail: String| Ran {
        outcome: Outcome::Failed,
        millis: millis(start.elapsed()),
        detail,
        output: Vec::new(),
    };
    let (read_end, write_end) = match rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC) {
        Ok(p) => p,
        Err(e) => return not_run(format!("cannot make a pipe: {e}")),
    };
    let stderr_end = match write_end.try_clone() {
        Ok(f) => f,
        Err(e) => return not_run(format!("cannot make a pipe: {e}")),
    };
    if let Err(e) = rustix::fs::fcntl_setfl(&read_end, rustix::fs::OFlags::NONBLOCK) {
        return not_run(format!("cannot make a pipe: {e}"));
    }
    let mut pipe = std::fs::File::from(read_end);
    let mut cmd = std::process::Command::new(path);
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::from(write_end))
        .stderr(std::process::Stdio::from(stderr_end))
        .process_group(0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return not_run(format!("cannot run: {e}")),
    };
    // The write ends now live only in the child (the Command held ours).
    drop(cmd);
    let mut out = Capture::default();
    let status = loop {
        tick();
        drain(&mut pipe, &mut out);
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() > limit => {
                if let Some(pgid) = rustix::process::Pid::from_raw(child.id() as i32) {
                    let _ =
                        rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
                }
                let _ = child.kill();
                // No tick from here: see the module doc.
                let _ = child.wait();
                drain(&mut pipe, &mut out);
                return Ran {
                    outcome: Outcome::TimedOut,
                    millis: millis(start.elapsed()),
                    detail: format!("did not finish within {} (killed)", secs(limit)),
                    output: out.into_bytes(),
                };
            }
            Ok(None) => std::thread::sleep(TICK),
            Err(e) => return not_run(format!("waiting for it: {e}")),
        }
    };
    drain(&mut pipe, &mut out);
    Ran {
        outcome: if status.success() {
            Outcome::Passed
        } else {
            Outcome::Failed
        },
        millis: millis(start.elapsed()),
        detail: status_text(status),
        output: out.into_bytes(),
    }
}

fn status_text(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => status.to_string(),
    }
}

/// Runs a built-in on a thread of its own, under the same limit and ticks.
/// A built-in past its limit is abandoned (a thread cannot be killed; it
/// ends with the process).
pub fn builtin(b: &Builtin, limit: Duration, tick: &mut dyn FnMut()) -> Ran {
    let start = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    let job = b.clone();
    let spawned = std::thread::Builder::new()
        .name("health-builtin".into())
        .spawn(move || {
            let _ = tx.send(job.run(limit));
        });
    if let Err(e) = spawned {
        return Ran {
            outcome: Outcome::Failed,
            millis: 0,
            detail: format!("cannot start: {e}"),
            output: Vec::new(),
        };
    }
    loop {
        tick();
        match rx.recv_timeout(TICK) {
            Ok(result) => {
                let (outcome, detail) = match result {
                    Ok(found) => (Outcome::Passed, found),
                    Err(why) => (Outcome::Failed, why),
                };
                return Ran {
                    outcome,
                    millis: millis(start.elapsed()),
                    output: format!("{detail}\n").into_bytes(),
                    detail,
                };
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) if start.elapsed() > limit => {
                return Ran {
                    outcome: Outcome::TimedOut,
                    millis: millis(start.elapsed()),
                    detail: format!("did not finish within {}", secs(limit)),
                    output: Vec::new(),
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Ran {
                    outcome: Outcome::Failed,
                    millis: millis(start.elapsed()),
                    detail: "the check panicked".into(),
                    output: Vec::new(),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Output beyond the bounds keeps its head and tail and says how much
    /// was left out.
    #[test]
    fn capture_keeps_head_and_tail() {
        let mut c = Capture::default();
        c.push(&vec![b'h'; HEAD]);
        c.push(&vec![b'm'; 1000]);
        c.push(&vec![b't'; TAIL]);
        let b = c.into_bytes();
        assert!(b.starts_with(&vec![b'h'; HEAD]));
        assert!(b.ends_with(&vec![b't'; TAIL]));
        let text = String::from_utf8_lossy(&b);
        assert!(text.contains("[... 1000 bytes left out ...]"), "marker");
        let mut small = Capture::default();
        small.push(b"hello\n");
        assert_eq!(small.into_bytes(), b"hello\n");
    }
}
