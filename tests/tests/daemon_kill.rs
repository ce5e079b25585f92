//! kill -9 of the agent at seeded random moments across download and
//! install, against a real nginx on loopback: after every kill the env is
//! valid and the running slot A is untouched, and the restarted agent
//! completes the update. A download killed in the middle continues with a
//! Range request from the bytes on disk, never from the start.
//!
//! CI runs a seeded subset (`ATOMUP_KILL_TRIALS`, default 12); the full
//! campaign is
//! `ATOMUP_KILL_TRIALS=100 cargo test -p atomup-tests --test daemon_kill -- --nocapture`,
//! and `ATOMUP_KILL_SEED=<n>` replays a printed seed.

use atomup_tests::device::{atomup_bounded, provision, text, Device};
use atomup_tests::ostree_fixture::tree_digest;
use atomup_tests::service::{
    agent_args, cache_entries, env_line, partial_bytes, serve, shared_big_world, Agent, Conf,
    Pristine,
};
use std::time::{Duration, Instant};

const INSTALLED: &str = "ATOMUP_ORDER=B A;ATOMUP_TRIAL=B;ATOMUP_LEFT=3";
const MINUTE: Duration = Duration::from_secs(60);

/// splitmix64: a small seeded generator (the moments must replay from the seed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a number"))
    })
}

/// Where a killed run left the device: what the next start finds.
fn stage(d: &Device) -> &'static str {
    let rec = std::fs::read_to_string(d.state.join("slots/B")).unwrap_or_default();
    if env_line(d) == INSTALLED {
        "installed"
    } else if rec.contains("status=installing") {
        "apply"
    } else if partial_bytes(d) > 0 || !cache_entries(d).is_empty() {
        "download"
    } else {
        "metadata"
    }
}

/// kill -9 at seeded random moments of an update (download capped so it
/// lasts about as long as the apply): every kill leaves a valid env naming
/// only A first (or the finished install), slot A untouched, and every
/// restart completes the update with slot B exactly v2.
#[test]
fn kill_9_at_random_moments_and_every_restart_completes_the_update() {
    let (w, _) = shared_big_world();
    let d = provision(w, "kill9");
    // nginx works outside the device's directory, which each trial restores.
    let nginx = serve(w, &w.dir.join("kill9-nginx"));
    Conf::new(w, &d, &nginx.url())
        .with("[link]\nbandwidth = \"2MiB\"\n")
        .write();
    let pristine = Pristine::save(&d);
    let a0 = tree_digest(&d.slot_a);

    // One uninterrupted update: the span the moments are drawn from, and
    // the slot B every restart must produce.
    let start = Instant::now();
    let out = atomup_bounded(agent_args(&d, "update", "A", &[]));
    let span = start.elapsed();
    assert!(out.status.success(), "{}", text(&out));
    let b_done = tree_digest(&d.slot_b);

    let trials = env_number("ATOMUP_KILL_TRIALS").unwrap_or(12);
    let seed = env_number("ATOMUP_KILL_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    });
    eprintln!(
        "kill -9 campaign: {trials} trials, seed {seed} (ATOMUP_KILL_SEED={seed} replays it), span {span:?}"
    );
    let mut rng = Rng(seed);
    let mut stages = std::collections::BTreeMap::new();
    let span_us = span.as_micros() as u64;
    for trial in 0..trials {
        pristine.restore(&d);
        let at = Duration::from_micros(rng.next() % span_us.max(1));
        let mut agent = Agent::spawn(&agent_args(&d, "update", "A", &[]));
        std::thread::sleep(at);
        agent.signal("KILL");
        let _ = agent.wait_exit(MINUTE);
        let where_ = stage(&d);
        *stages.entry(where_).or_insert(0u32) += 1;
        let ctx = format!("trial {trial} (seed {seed}), killed at {at:?} in {where_}");
        let env = env_line(&d);
        assert!(
            env == INSTALLED || env.starts_with("ATOMUP_ORDER=A;"),
            "{ctx}: env {env}"
        );
        assert_eq!(tree_digest(&d.slot_a), a0, "{ctx}: slot A changed");

        let out = atomup_bounded(agent_args(&d, "update", "A", &[]));
        assert!(out.status.success(), "{ctx}: {}", text(&out));
        assert_eq!(env_line(&d), INSTALLED, "{ctx}: {}", text(&out));
        assert_eq!(tree_digest(&d.slot_b), b_done, "{ctx}: slot B differs");
        assert_eq!(tree_digest(&d.slot_a), a0, "{ctx}: slot A changed");
    }
    eprintln!("kill -9 campaign done: {trials} kills, seed {seed}, by stage {stages:?}");
}

/// kill -9 in the middle of a download (the partial on disk, fsynced every
/// MiB): the next start continues it with a Range request from the bytes
/// the file holds, and the part is never fetched from its start again.
#[test]
fn kill_9_mid_download_resumes_with_a_range_request_from_the_bytes_on_disk() {
    let (w, _) = shared_big_world();
    let d = provision(w, "kill9-range");
    let nginx = serve(w, &d.root);
    Conf::new(w, &d, &nginx.url())
        .with("[link]\nbandwidth = \"512KiB\"\n")
        .write();
    let mut agent = Agent::spawn(&agent_args(&d, "update", "A", &[]));
    let start = Instant::now();
    while partial_bytes(&d) < 256 * 1024 {
        assert!(start.elapsed() < MINUTE, "no partial: {}", agent.output());
        std::thread::sleep(Duration::from_millis(5));
    }
    agent.signal("KILL");
    let _ = agent.wait_exit(MINUTE);
    let have = partial_bytes(&d);
    let out = atomup_bounded(agent_args(&d, "update", "A", &[]));
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(env_line(&d), INSTALLED);
    let log = nginx.requests();
    let resumed: Vec<&String> = log
        .iter()
        .filter(|l| l.starts_with(&format!("206 \"bytes={have}-\"")))
        .collect();
    assert_eq!(resumed.len(), 1, "no Range request from {have}: {log:#?}");
    let part = resumed[0].split(' ').nth(3).unwrap();
    let fetches = log.iter().filter(|l| l.ends_with(part)).count();
    assert_eq!(fetches, 2, "{part} fetched again from the start: {log:#?}");
}
