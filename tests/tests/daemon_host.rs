//! `atomup daemon` on the host against a real nginx on loopback: releases
//! published in sequence are installed in turn (with the reboot policy's
//! command between them); SIGTERM in the middle of a download or of the
//! apply stops it at the next safe point with exit 0 and a bootable device,
//! and the next start completes the update (resuming the download with a
//! Range request); SIGHUP picks up a new channel.

use atomup_tests::device::{atomup_bounded, env_args, provision, release, text, T0};
use atomup_tests::ostree_fixture::{assert_same_tree, atomup, tree_digest};
use atomup_tests::service::{
    agent_args, big_world, cache_entries, daemon_completes_into_b, daemon_mid_download,
    delta_bytes, env_line, reboots, serve, shared_big_world, wait_until, Agent, Conf, ReportSink,
};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const MINUTE: Duration = Duration::from_secs(60);

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

/// v2 is installed into B and the reboot command runs; after B boots and is
/// confirmed, v3 (published meanwhile) is installed into A by the next start.
/// Each SIGTERM ends the daemon with exit 0; the cache is cleared after each
/// install, with the bytes freed reported.
#[test]
fn daemon_installs_releases_published_in_sequence() {
    let (w, v3) = big_world("daemon-seq");
    let d = provision(&w, "dev");
    Conf::new(&w, &d, &w.nginx.url()).write();
    let mut a = Agent::spawn(&agent_args(&d, "daemon", "A", &[]));
    a.wait_for("into slot B", MINUTE);
    wait_until("the reboot command", MINUTE, || reboots(&d) == 1);
    a.signal("TERM");
    assert!(a.wait_exit(MINUTE).success(), "{}", a.output());
    let out = a.output();
    assert!(out.contains("rebooting into slot B (version 2)"), "{out}");
    assert!(out.contains("stopped by signal"), "{out}");
    let freed = format!(
        "download cache cleared: {} bytes freed",
        delta_bytes(&w, &w.v1, &w.v2)
    );
    assert!(out.contains(&freed), "{freed}: {out}");
    assert_eq!(cache_entries(&d), vec![]);
    assert_eq!(
        env_line(&d),
        "ATOMUP_ORDER=B A;ATOMUP_TRIAL=B;ATOMUP_LEFT=3"
    );
    assert_same_tree(&d.slot_b, &checkout(&w, &w.v2));

    // The bootloader boots B on trial and its health check passes.
    let ok = atomup(env_args(&d, &["mark-good", "--booted-slot", "B"]));
    assert!(ok.status.success());
    release(&w.repo, &w.keys, 3, &v3, T0 + 1, &[]);
    let mut a = Agent::spawn(&agent_args(&d, "daemon", "B", &[]));
    a.wait_for("installed version 3", MINUTE);
    wait_until("the second reboot command", MINUTE, || reboots(&d) == 2);
    a.signal("TERM");
    assert!(a.wait_exit(MINUTE).success(), "{}", a.output());
    assert_eq!(
        env_line(&d),
        "ATOMUP_ORDER=A B;ATOMUP_TRIAL=A;ATOMUP_LEFT=3"
    );
    assert_same_tree(&d.slot_a, &checkout(&w, &v3));
    assert_same_tree(&d.slot_b, &checkout(&w, &w.v2));
}

/// SIGTERM in the middle of a download: exit 0, the partial kept, env and
/// slots untouched; the next start resumes with a Range request from the
/// bytes on disk and completes the update.
#[test]
fn sigterm_mid_download_keeps_the_partial_and_the_next_start_resumes() {
    let (w, _) = shared_big_world();
    let d = provision(w, "term-dl");
    let nginx = serve(w, &d.root);
    let (env0, a0, b0) = (env_line(&d), tree_digest(&d.slot_a), tree_digest(&d.slot_b));
    let mut a = daemon_mid_download(w, &d, &nginx);
    let started = Instant::now();
    a.signal("TERM");
    assert!(a.wait_exit(MINUTE).success(), "{}", a.output());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(a.output().contains("stopped by signal"), "{}", a.output());
    assert_eq!(env_line(&d), env0);
    assert_eq!((tree_digest(&d.slot_a), tree_digest(&d.slot_b)), (a0, b0));
    let (partial, have) = cache_entries(&d)
        .into_iter()
        .find(|(n, _)| n.ends_with(".partial"))
        .expect("the partial was kept");
    assert!(have > 0, "{partial} is empty");

    daemon_completes_into_b(&d);
    assert_same_tree(&d.slot_b, &checkout(w, &w.v2));
    // The interrupted part: fetched whole once, then continued from the
    // bytes on disk, never started over.
    let log = nginx.requests();
    let resumed: Vec<&String> = log
        .iter()
        .filter(|l| l.starts_with(&format!("206 \"bytes={have}-\"")))
        .collect();
    assert_eq!(resumed.len(), 1, "no Range request from {have}: {log:#?}");
    let part = resumed[0].split(' ').nth(3).unwrap();
    let fetches: Vec<&String> = log.iter().filter(|l| l.ends_with(part)).collect();
    assert_eq!(fetches.len(), 2, "{part} fetched again: {log:#?}");
    assert!(fetches[0].starts_with("200 \"-\""), "{log:#?}");
}

/// SIGTERM while the slot is written: exit 0, the slot stays out of the boot
/// order (the running slot A boots, untouched); the next start writes it again.
#[test]
fn sigterm_mid_apply_leaves_the_slot_out_of_the_order_and_the_next_start_completes() {
    let (w, _) = shared_big_world();
    let d = provision(w, "term-apply");
    let nginx = serve(w, &d.root);
    Conf::new(w, &d, &nginx.url()).write();
    let a0 = tree_digest(&d.slot_a);
    let mut a = Agent::spawn(&agent_args(&d, "daemon", "A", &["--json"]));
    a.wait_for("\"phase\":\"writing\"", MINUTE);
    a.signal("TERM");
    assert!(a.wait_exit(MINUTE).success(), "{}", a.output());
    let out = a.output();
    assert!(
        out.contains("stopped while slot B was written: it stays out of the boot order"),
        "{out}"
    );
    assert_eq!(env_line(&d), "ATOMUP_ORDER=A;ATOMUP_TRIAL=;ATOMUP_LEFT=0");
    assert_eq!(tree_digest(&d.slot_a), a0);
    let rec = std::fs::read_to_string(d.state.join("slots/B")).unwrap();
    assert!(rec.contains("status=installing"), "{rec}");

    daemon_completes_into_b(&d);
    assert_eq!(
        env_line(&d),
        "ATOMUP_ORDER=B A;ATOMUP_TRIAL=B;ATOMUP_LEFT=3"
    );
    assert_same_tree(&d.slot_b, &checkout(w, &w.v2));
}

/// SIGHUP reloads the configuration and polls at once: a daemon on a
/// channel without releases picks up the new channel and installs from it;
/// an invalid configuration is refused and the running one kept.
#[test]
fn sighup_picks_up_a_new_channel() {
    let (w, _) = shared_big_world();
    let d = provision(w, "hup");
    let nginx = serve(w, &d.root);
    let conf = || Conf::new(w, &d, &nginx.url());
    conf().server("channel", "\"beta\"").write();
    let mut a = Agent::spawn(&agent_args(&d, "daemon", "A", &[]));
    a.wait_for("HTTP 404", MINUTE);
    let next = a.wait_for("next poll in", MINUTE);
    // A failed poll backs off from a minute (60 s at most at the first failure).
    let secs: u64 = next.split_whitespace().nth(4).unwrap().parse().unwrap();
    assert!((30..=60).contains(&secs), "{next}");

    std::fs::write(
        d.root.join("config.d/60-broken.toml"),
        "[link]\nretries = \"many\"\n",
    )
    .unwrap();
    a.signal("HUP");
    a.wait_for("configuration reload refused", MINUTE);
    std::fs::remove_file(d.root.join("config.d/60-broken.toml")).unwrap();

    conf().write();
    a.signal("HUP");
    a.wait_for("configuration reloaded: server", MINUTE);
    a.wait_for("into slot B", MINUTE);
    a.signal("TERM");
    assert!(a.wait_exit(MINUTE).success(), "{}", a.output());
    assert_eq!(
        env_line(&d),
        "ATOMUP_ORDER=B A;ATOMUP_TRIAL=B;ATOMUP_LEFT=3"
    );
}

/// Reports reach a test HTTP endpoint with the documented schema (README of
/// atomup-report); while the endpoint is down they queue in the state
/// directory, and once it is back they are delivered in the order made.
/// Regression: with a report URL set, `mark-good` hung (60 s, then failed):
/// its confirmation report loaded the env again while the confirmation
/// still held the env's lock.
#[test]
fn reports_queue_while_the_endpoint_is_down_and_arrive_in_order() {
    let (w, _) = shared_big_world();
    let d = provision(w, "reports");
    let nginx = serve(w, &d.root);
    let sink = ReportSink::start(false);
    let conf = Conf::new(w, &d, &nginx.url())
        .server("report_url", &format!("{:?}", sink.url()))
        .write();
    let out = atomup_bounded(agent_args(&d, "update", "A", &[]));
    assert!(out.status.success(), "{}", text(&out));
    assert!(sink.received().is_empty());
    let queued = || std::fs::read_dir(d.state.join("reports")).unwrap().count();
    assert!(queued() >= 1, "the installed report was not queued");

    // B boots on trial and is confirmed: a second report, queued behind the first.
    let mut good = vec!["--config-dir".into(), conf.clone().into_os_string()];
    good.extend(env_args(&d, &["mark-good", "--booted-slot", "B"]));
    let ok = atomup_bounded(good);
    assert!(ok.status.success(), "{}", text(&ok));
    assert!(sink.received().is_empty());

    sink.set_up(true);
    let out = atomup_bounded(agent_args(&d, "update", "B", &[]));
    assert!(out.status.success(), "{}", text(&out));
    let got = sink.received();
    assert_eq!(got.len(), 2, "{got:#?}\n{}", text(&out));
    let docs: Vec<serde_json::Value> = got
        .iter()
        .map(|b| serde_json::from_str(b).unwrap())
        .collect();
    let events: Vec<&str> = docs.iter().map(|d| d["event"].as_str().unwrap()).collect();
    assert_eq!(events, ["installed", "confirmed"]);
    for doc in &docs {
        assert_eq!(doc["schema"], 1, "{doc}");
        let id = doc["device_id"].as_str().unwrap();
        assert!(
            id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{doc}"
        );
        assert_eq!(doc["channel"], "stable", "{doc}");
        for key in [
            "at",
            "agent_version",
            "board",
            "booted_slot",
            "commit",
            "version",
            "pending_version",
            "last_error",
            "rollbacks",
            "budget",
            "reports_dropped",
        ] {
            assert!(doc.get(key).is_some(), "{key} missing: {doc}");
        }
    }
    // Installed: booted A runs v1, v2 pending; confirmed: B runs v2.
    assert_eq!(docs[0]["booted_slot"], "A");
    assert_eq!(docs[0]["version"], 1);
    assert_eq!(docs[0]["pending_version"], 2);
    assert_eq!(docs[1]["booted_slot"], "B");
    assert_eq!(docs[1]["version"], 2);
    assert_eq!(docs[1]["commit"], w.v2.as_str());
    assert_eq!(queued(), 0);
}
