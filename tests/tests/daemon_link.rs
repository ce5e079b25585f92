//! The agent on constrained and faulty links, against a real nginx on
//! loopback: data budgets refuse before the delta's first byte, and a
//! fault-injecting proxy between agent and nginx (cuts every 256 KiB,
//! stalls past the stall timeout, 5xx bursts, a trickle below the low-speed
//! limit, a truncated body, corrupted bytes) ends each update in a completed
//! install or a clear error, within bounded time.

use atomup_tests::device::{atomup_bounded, provision, text, Untouched};
use atomup_tests::nginx::{Faults, FlakyProxy};
use atomup_tests::ostree_fixture::assert_same_tree;
use atomup_tests::service::{agent_args, delta_bytes, env_line, serve, shared_big_world, Conf};
use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

/// The world's checkout of `commit`, made once. Tests run in parallel on
/// one shared world: without the lock two of them checked out the same
/// commit at once and the second failed ("mkdirat: File exists"), or saw a
/// half-written tree.
fn checkout(w: &atomup_tests::device::World, commit: &str) -> PathBuf {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _held = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dest = w.dir.join(format!("checkout-{commit}"));
    if !dest.exists() {
        w.repo.checkout(commit, &dest);
    }
    dest
}

/// `atomup update` for `d` booted from A; fails the test after 2 minutes.
fn update(d: &atomup_tests::device::Device) -> (Output, Duration) {
    let start = Instant::now();
    let out = atomup_bounded(agent_args(d, "update", "A", &[]));
    (out, start.elapsed())
}

const INSTALLED: &str = "ATOMUP_ORDER=B A;ATOMUP_TRIAL=B;ATOMUP_LEFT=3";

/// A release whose delta is over the per-update budget is refused with both
/// numbers, and nothing past the release metadata is fetched.
#[test]
fn over_budget_release_is_refused_with_both_numbers_and_nothing_past_the_metadata() {
    let (w, _) = shared_big_world();
    let d = provision(w, "budget-update");
    let nginx = serve(w, &d.root);
    Conf::new(w, &d, &nginx.url())
        .with("[link]\nupdate_budget = 100000\n")
        .write();
    let before = Untouched::snap(&d);
    let (out, _) = update(&d);
    assert!(!out.status.success(), "{}", text(&out));
    let need = delta_bytes(w, &w.v1, &w.v2);
    let msg = format!("the update needs {need} bytes, over the per-update budget of 100000 bytes");
    assert!(text(&out).contains(&msg), "{msg}: {}", text(&out));
    before.assert_same(&d);
    let log = nginx.requests();
    assert!(!log.is_empty(), "the metadata was not fetched");
    assert!(
        log.iter().all(|l| !l.contains("/deltas/")),
        "a delta was fetched: {log:#?}"
    );
}

/// The monthly budget counts the metadata already fetched this month,
/// persisted in the state directory from one run (boot) to the next; a
/// release over it is refused with the need, the use and the ceiling.
/// Regression: the metadata's bytes were written to the record only when a
/// delta download followed, so a refused (or up-to-date) poll used the link
/// without the month's record saying so.
#[test]
fn monthly_budget_persists_across_runs_and_refuses_with_its_numbers() {
    let (w, _) = shared_big_world();
    let d = provision(w, "budget-month");
    let nginx = serve(w, &d.root);
    Conf::new(w, &d, &nginx.url())
        .with("[link]\nmonthly_budget = 100000\n")
        .write();
    let need = delta_bytes(w, &w.v1, &w.v2);
    let used = |out: &Output| -> u64 {
        let t = text(out);
        let after = t
            .split(&format!("the update needs {need} bytes and "))
            .nth(1)
            .unwrap_or_else(|| panic!("no monthly refusal: {t}"));
        after.split(' ').next().unwrap().parse().unwrap()
    };
    let (first, _) = update(&d);
    assert!(!first.status.success());
    assert!(
        text(&first).contains("over the monthly budget of 100000 bytes"),
        "{}",
        text(&first)
    );
    let (second, _) = update(&d);
    let (u1, u2) = (used(&first), used(&second));
    // Each run fetched the release metadata once more, and it was recorded.
    assert!(u1 > 0 && u2 == 2 * u1, "{u1} then {u2}");
    let record = std::fs::read_to_string(d.state.join("budget")).unwrap();
    assert!(record.contains(&format!("bytes={u2}\n")), "{record}");
    assert!(nginx.requests().iter().all(|l| !l.contains("/deltas/")));
}

/// Runs an update of a fresh device through a proxy with `faults`.
fn through(
    name: &str,
    faults: Faults,
    link: &str,
) -> (atomup_tests::device::Device, Output, Duration, FlakyProxy) {
    let (w, _) = shared_big_world();
    let d = provision(w, name);
    let nginx = serve(w, &d.root);
    let proxy = FlakyProxy::with_faults(nginx.port, faults);
    Conf::new(w, &d, &proxy.url()).with(link).write();
    let (out, took) = update(&d);
    // nginx must outlive the proxy's connections: keep it until here.
    drop(nginx);
    (d, out, took, proxy)
}

/// A link that cuts every connection after 256 KiB still installs: each
/// cut is resumed from the bytes on disk, so the wire carries the delta
/// about once (headers and the metadata aside).
#[test]
fn a_disconnect_every_256_kib_still_installs_paying_each_byte_once() {
    let (w, _) = shared_big_world();
    let faults = Faults {
        cut_after: Some(256 * 1024),
        ..Faults::default()
    };
    let (d, out, _, proxy) = through("cut-256k", faults, "[link]\nretries = 50\n");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(env_line(&d), INSTALLED);
    assert_same_tree(&d.slot_b, &checkout(w, &w.v2));
    let delta = delta_bytes(w, &w.v1, &w.v2);
    let ratio = proxy.forwarded() as f64 / delta as f64;
    eprintln!(
        "{} bytes on the wire for a {delta}-byte delta: {ratio:.4}, {} connections",
        proxy.forwarded(),
        proxy.connections()
    );
    assert!(
        proxy.connections() >= 4,
        "{} connections",
        proxy.connections()
    );
    assert!(ratio < 1.05, "ratio {ratio:.4}");
}

/// A link that stalls longer than the stall timeout is cut and retried;
/// the update completes well within bounded time.
#[test]
fn a_stall_longer_than_the_stall_timeout_is_cut_and_the_update_completes() {
    let (w, _) = shared_big_world();
    let faults = Faults {
        stall: Some((100 * 1024, Duration::from_secs(30))),
        stalls: 1,
        ..Faults::default()
    };
    let (d, out, took, _) = through("stall", faults, "[link]\nstall_timeout = \"2s\"\n");
    assert!(out.status.success(), "{}", text(&out));
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert_eq!(env_line(&d), INSTALLED);
    assert_same_tree(&d.slot_b, &checkout(w, &w.v2));
}

/// A burst of 503 answers is retried with backoff; the update completes.
#[test]
fn a_burst_of_503_answers_is_retried_and_the_update_completes() {
    let (w, _) = shared_big_world();
    let faults = Faults {
        status_burst: Some((503, 3)),
        ..Faults::default()
    };
    let (d, out, took, _) = through("burst", faults, "");
    assert!(out.status.success(), "{}", text(&out));
    assert!(took < Duration::from_secs(30), "took {took:?}");
    assert!(text(&out).contains("503"), "{}", text(&out));
    assert_eq!(env_line(&d), INSTALLED);
    assert_same_tree(&d.slot_b, &checkout(w, &w.v2));
}

/// A trickle below the low-speed limit is cut after its window and, once
/// the retries are spent, the update fails with a message naming the limit,
/// the env and slots untouched.
#[test]
fn a_trickle_below_the_low_speed_limit_fails_clearly_in_bounded_time() {
    let faults = Faults {
        trickle: Some(500),
        ..Faults::default()
    };
    let (w, _) = shared_big_world();
    let d = provision(w, "trickle");
    let nginx = serve(w, &d.root);
    let proxy = FlakyProxy::with_faults(nginx.port, faults);
    Conf::new(w, &d, &proxy.url())
        .with("[link]\nlow_speed_limit = 1000\nlow_speed_time = \"2s\"\nretries = 2\n")
        .write();
    let before = Untouched::snap(&d);
    let (out, took) = update(&d);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(took < Duration::from_secs(30), "took {took:?}");
    assert!(
        text(&out).contains("slower than 1000 bytes/s for 2 s"),
        "{}",
        text(&out)
    );
    before.assert_same(&d);
}

/// A body cut short (the connection closed before its length) is resumed
/// where it ended; the update completes.
#[test]
fn a_truncated_body_is_resumed_and_the_update_completes() {
    let (w, _) = shared_big_world();
    let faults = Faults {
        cut_after: Some(300 * 1024),
        cuts: Some(1),
        ..Faults::default()
    };
    let (d, out, _, proxy) = through("truncated", faults, "");
    assert!(out.status.success(), "{}", text(&out));
    assert!(proxy.connections() >= 3, "{}", proxy.connections());
    assert_eq!(env_line(&d), INSTALLED);
    assert_same_tree(&d.slot_b, &checkout(w, &w.v2));
}

/// A delta part whose bytes are corrupted on every transfer never verifies:
/// the update fails with a digest error in bounded time, and the env and
/// the slots are as they were (the part is checked before the slot is).
#[test]
fn corrupted_bytes_in_a_part_fail_clearly_and_nothing_changes() {
    let (w, _) = shared_big_world();
    let part = format!(
        "{}/0",
        atomup_ostree::delta::delta_path(
            Some(&atomup_ostree::ObjectId::from_hex(&w.v1).unwrap()),
            &atomup_ostree::ObjectId::from_hex(&w.v2).unwrap()
        )
    );
    let faults = Faults {
        corrupt: Some((part, 1000)),
        ..Faults::default()
    };
    let d = provision(w, "corrupt");
    let nginx = serve(w, &d.root);
    let proxy = FlakyProxy::with_faults(nginx.port, faults);
    Conf::new(w, &d, &proxy.url())
        .with("[link]\nretries = 3\n")
        .write();
    let before = Untouched::snap(&d);
    let (out, took) = update(&d);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(took < Duration::from_secs(30), "took {took:?}");
    let t = text(&out).to_lowercase();
    assert!(t.contains("sha256") || t.contains("digest"), "{t}");
    before.assert_same(&d);
}
