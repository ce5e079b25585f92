//! Benchmark of the agent as a service (run by `bench/service.sh`, not a
//! test: it prints figures and asserts only that the runs it measures
//! completed). With a given agent build (`--agent`, the device's own static
//! musl release build) against nginx on loopback, an 8 MiB delta in 8 parts:
//!
//! - wire efficiency (bytes the client received through the counting proxy,
//!   headers and release metadata included / delta bytes): a clean link; a
//!   link cut every 256 KiB; 10 kill -9 of the agent in the middle of the
//!   download, each followed by a restart (bandwidth capped so the kills land
//!   in the download);
//! - peak RSS of a whole update (GNU time's maximum resident set size);
//! - the idle daemon: VmHWM (peak) and VmRSS once its poll found nothing to
//!   do, and the peak of that poll (it runs in a child process).

use atomup_tests::device::{env_args, provision, Device, World};
use atomup_tests::nginx::{Faults, FlakyProxy, Nginx};
use atomup_tests::ostree_fixture::atomup;
use atomup_tests::service::{agent_args, delta_bytes, partial_bytes, world_with, Agent, Conf};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const BLOBS: usize = 8;
const BLOB: usize = 1 << 20;

fn arg(name: &str) -> Option<String> {
    let mut it = std::env::args();
    while let Some(a) = it.next() {
        if a == name {
            return it.next();
        }
    }
    None
}

/// `update` with `bin`, under GNU time: (success, max RSS in KiB, output).
fn timed_update(bin: &Path, d: &Device) -> (bool, u64, String) {
    let out = Command::new("/usr/bin/time")
        .args(["-f", "maxrss_kib=%M"])
        .arg(bin)
        .args(agent_args(d, "update", "A", &[]))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let rss = err
        .lines()
        .find_map(|l| l.strip_prefix("maxrss_kib="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let text = format!("{}{err}", String::from_utf8_lossy(&out.stdout));
    (out.status.success(), rss, text)
}

fn device(w: &World, name: &str, server: &str, link: &str) -> Device {
    let d = provision(w, name);
    Conf::new(w, &d, server).with(link).write();
    d
}

fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    let bin = PathBuf::from(arg("--agent").expect("--agent PATH (the device build of atomup)"));
    // `--only wire` or `--only idle`: one half of the figures (default both).
    let only = arg("--only");
    let run = |part: &str| only.as_deref().is_none_or(|o| o == part);
    let (w, _) = world_with("service-bench", BLOBS, BLOB);
    let delta = delta_bytes(&w, &w.v1, &w.v2);
    let nginx = Nginx::serve(&w.repo.path, &w.dir.join("bench-nginx"));
    println!(
        "agent: {} ({} bytes)",
        bin.display(),
        std::fs::metadata(&bin).unwrap().len()
    );
    println!("delta v1 -> v2: {delta} bytes ({BLOBS} parts of about {BLOB} bytes)");

    if run("wire") {
        wire(&bin, &w, delta, &nginx);
    }
    if run("idle") {
        idle(&bin, &w, &nginx);
    }
}

/// Stages 1-3b: the wire figures.
fn wire(bin: &Path, w: &World, delta: u64, nginx: &Nginx) {
    // 1. A clean link: the baseline, and the whole update's peak RSS.
    let proxy = FlakyProxy::with_faults(nginx.port, Faults::default());
    let d = device(w, "clean", &proxy.url(), "");
    let (ok, rss, text) = timed_update(bin, &d);
    assert!(ok, "{text}");
    wire_line(
        "clean link",
        &proxy,
        delta,
        &format!("; update peak RSS {rss} KiB"),
    );

    // 2. A disconnect every 256 KiB.
    let proxy = FlakyProxy::with_faults(
        nginx.port,
        Faults {
            cut_after: Some(256 * 1024),
            ..Faults::default()
        },
    );
    let d = device(w, "cut256", &proxy.url(), "[link]\nretries = 100\n");
    let (ok, rss, text) = timed_update(bin, &d);
    assert!(ok, "{text}");
    wire_line(
        "cut every 256 KiB",
        &proxy,
        delta,
        &format!("; update peak RSS {rss} KiB"),
    );

    // 3. 10 kill -9 in the middle of the download, each restarted.
    let proxy = FlakyProxy::with_faults(nginx.port, Faults::default());
    let d = device(w, "kill9", &proxy.url(), "[link]\nbandwidth = \"2MiB\"\n");
    let step = delta / 11;
    kill_ten_times(bin, &d, step);
    let (ok, _, text) = timed_update(bin, &d);
    assert!(ok, "{text}");
    wire_line("10 kill -9 + restarts", &proxy, delta, "");

    // 3b. The same 10 kills on a link whose bottleneck is the link itself
    //     (the proxy forwards 160 KiB/s), not the agent's own cap: what is in
    //     flight at a kill is what a real slow link holds, not a loopback
    //     socket buffer filled faster than the capped agent reads it.
    let proxy = FlakyProxy::with_faults(
        nginx.port,
        Faults {
            trickle: Some(160 * 1024),
            ..Faults::default()
        },
    );
    let d = device(w, "kill9-link", &proxy.url(), "");
    kill_ten_times(bin, &d, step);
    let (ok, _, text) = timed_update(bin, &d);
    assert!(ok, "{text}");
    wire_line("10 kill -9, slow link", &proxy, delta, "");
}

/// One wire figure: the bytes the proxy wrote to the agent's connections
/// (into their send buffers) and the bytes its TCP transmitted, each over
/// the delta's bytes. They differ only where the agent was killed with the
/// proxy's send buffer full: those bytes were written but never crossed the
/// wire.
fn wire_line(label: &str, proxy: &FlakyProxy, delta: u64, extra: &str) {
    let ratio = |wire: u64| wire as f64 / delta as f64;
    let (sent, written) = (proxy.transmitted(), proxy.forwarded());
    println!(
        "{:<22} {sent:>9} bytes on the wire (TCP sent), ratio {:.4}; {written:>9} written by the proxy, ratio {:.4}; {} connections{extra}",
        format!("{label}:"),
        ratio(sent),
        ratio(written),
        proxy.connections()
    );
}

/// Stage 4: the idle daemon.
fn idle(bin: &Path, w: &World, nginx: &Nginx) {
    // 4. The idle daemon: the device of 1 booted into B and confirmed, its
    //    poll finds v2 installed; then it sleeps until the next poll.
    let d = device(w, "idle", &nginx.url(), "");
    let (ok, _, text) = timed_update(bin, &d);
    assert!(ok, "{text}");
    let good = atomup(env_args(&d, &["mark-good", "--booted-slot", "B"]));
    assert!(good.status.success());
    let a = Agent::spawn_bin(bin, &agent_args(&d, "daemon", "B", &[]));
    a.wait_for("next poll in", Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(200));
    let (hwm, rss) = (status_kib(a.pid(), "VmHWM:"), status_kib(a.pid(), "VmRSS:"));
    assert!(a.output().contains("up to date"), "{}", a.output());
    println!(
        "idle daemon (after an up-to-date poll): peak RSS (VmHWM) {hwm} KiB, RSS now {rss} KiB"
    );
    // The poll ran in a child process (the daemon's `worker.rs`), which
    // logged its own peak: what a poll costs while it runs.
    let child = a.wait_for("poll process peak RSS", Duration::from_secs(5));
    println!(
        "its up-to-date poll, in a child process: {}",
        child.trim_start_matches("info: ")
    );
    println!("idle daemon's resident pages now, by mapping (/proc/PID/smaps Rss):");
    for (name, kib) in smaps_breakdown(a.pid(), "Rss:") {
        println!("  {kib:>6} KiB  {name}");
    }
    // Which of them one more poll touches: the accessed bits cleared, a
    // SIGHUP (reload, poll at once), then the pages referenced since. The
    // kernel maps file pages around each one faulted (fault-around), so the
    // resident text is more than the code that ran.
    std::fs::write(format!("/proc/{}/clear_refs", a.pid()), "1").unwrap();
    a.signal("HUP");
    a.wait_for("configuration reloaded", Duration::from_secs(60));
    let polls = |a: &Agent| a.output().matches("next poll in").count();
    let start = Instant::now();
    while polls(&a) < 2 && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("pages one more poll referenced (SIGHUP after clear_refs; smaps Referenced):");
    for (name, kib) in smaps_breakdown(a.pid(), "Referenced:") {
        println!("  {kib:>6} KiB  {name}");
    }
    a.signal("TERM");
}

/// The KiB of `field` (`Rss:`, `Referenced:`) of each mapping of `pid` (by
/// name: the binary's segments by permissions, `[heap]`, `[stack]`,
/// anonymous maps), largest first: what the idle RSS consists of.
fn smaps_breakdown(pid: u32, field: &str) -> Vec<(String, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut out: Vec<(String, u64)> = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            let perms = words.next().unwrap_or("");
            let path = line.split_whitespace().nth(5).unwrap_or("[anon]");
            let path = path.rsplit('/').next().unwrap_or(path);
            current = format!("{path} {perms}");
        } else if first == field {
            let kib: u64 = words.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            match out.iter_mut().find(|(n, _)| *n == current) {
                Some(e) => e.1 += kib,
                None => out.push((current.clone(), kib)),
            }
        }
    }
    out.retain(|(_, kib)| *kib > 0);
    out.sort_by_key(|e| std::cmp::Reverse(e.1));
    out
}

/// Runs the agent and kills it (-9) each time the download passed the next
/// multiple of `step` bytes, ten times.
fn kill_ten_times(bin: &Path, d: &Device, step: u64) {
    for k in 1..=10u64 {
        let a = Agent::spawn_bin(bin, &agent_args(d, "update", "A", &[]));
        let start = Instant::now();
        while partial_bytes(d) + complete_parts(d) < k * step {
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "no progress: {}",
                a.output()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        a.signal("KILL");
        drop(a);
    }
}

/// Bytes of finished downloads in the cache (parts done in earlier runs).
fn complete_parts(d: &Device) -> u64 {
    atomup_tests::service::cache_entries(d)
        .iter()
        .filter(|(n, _)| !n.ends_with(".partial"))
        .map(|(_, l)| l)
        .sum()
}
