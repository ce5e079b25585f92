//! The daemon runs each poll in a child process (`updater/agent/src/worker.rs`,
//! so that the sleeping daemon holds only its own few pages). Against a real
//! nginx on loopback, with the download capped so the poll is caught in the
//! middle:
//! - a poll child that dies (kill -9) is a failed poll: the daemon says so,
//!   backs off and keeps running, the device untouched, the partial kept;
//! - a daemon killed with -9 takes its poll child with it (the child gets
//!   SIGTERM from the kernel and stops at its next read): nothing keeps
//!   downloading behind a restarted daemon, and the next start resumes and
//!   completes the update.

use atomup_tests::ostree_fixture::tree_digest;
use atomup_tests::service::{
    daemon_completes_into_b, daemon_mid_download, env_line, partial_bytes, serve, shared_big_world,
    wait_until,
};
use std::time::Duration;

const MINUTE: Duration = Duration::from_secs(60);

/// The child processes of `pid` (`/proc/PID/task/PID/children`).
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn alive(pid: u32) -> bool {
    // A zombie (exited, not reaped) is not running.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

#[test]
fn a_poll_child_killed_with_9_is_a_failed_poll_and_the_daemon_keeps_running() {
    let (w, _) = shared_big_world();
    let d = atomup_tests::device::provision(w, "child-killed");
    let nginx = serve(w, &d.root);
    let (env0, a0, b0) = (env_line(&d), tree_digest(&d.slot_a), tree_digest(&d.slot_b));
    let mut a = daemon_mid_download(w, &d, &nginx);
    let kids = children(a.pid());
    assert_eq!(kids.len(), 1, "one poll child: {kids:?}");
    let ok = std::process::Command::new("kill")
        .args(["-KILL", &kids[0].to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let line = a.wait_for("the poll process ended with", MINUTE);
    assert!(
        line.contains("signal 9 and no result: counted as a failure"),
        "{line}"
    );
    // It backs off as after any failed poll (from a minute), still running.
    let next = a.wait_for("next poll in", MINUTE);
    assert!(next.contains("(1 failed in a row)"), "{next}");
    assert!(a.child.try_wait().unwrap().is_none(), "the daemon died");
    assert_eq!(env_line(&d), env0);
    assert_eq!((tree_digest(&d.slot_a), tree_digest(&d.slot_b)), (a0, b0));
    assert!(partial_bytes(&d) > 0, "the partial was not kept");
    a.signal("TERM");
    assert!(a.wait_exit(MINUTE).success(), "{}", a.output());
}

#[test]
fn a_daemon_killed_with_9_takes_its_poll_child_along_and_the_next_start_completes() {
    let (w, _) = shared_big_world();
    let d = atomup_tests::device::provision(w, "daemon-killed");
    let nginx = serve(w, &d.root);
    let a0 = tree_digest(&d.slot_a);
    let mut a = daemon_mid_download(w, &d, &nginx);
    let kids = children(a.pid());
    assert_eq!(kids.len(), 1, "one poll child: {kids:?}");
    a.signal("KILL");
    let _ = a.wait_exit(MINUTE);
    // The orphaned child got SIGTERM: it stops at its next read (within the
    // stall checks' granularity), keeping its synced partial.
    wait_until("the poll child stopped", Duration::from_secs(10), || {
        !alive(kids[0])
    });
    let have = partial_bytes(&d);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(partial_bytes(&d), have, "something still downloads");
    assert!(
        env_line(&d).starts_with("ATOMUP_ORDER=A;"),
        "{}",
        env_line(&d)
    );
    assert_eq!(tree_digest(&d.slot_a), a0);

    daemon_completes_into_b(&d);
    assert_eq!(
        env_line(&d),
        "ATOMUP_ORDER=B A;ATOMUP_TRIAL=B;ATOMUP_LEFT=3"
    );
    assert_eq!(tree_digest(&d.slot_a), a0);
}
