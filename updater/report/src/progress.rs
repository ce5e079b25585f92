//! The state of an update in progress and its three renderings: a live line
//! for a terminal ("Receiving 71% (25/35 parts) 2.4 MiB of 3.4 MiB, 18
//! KiB/s, ETA 0:55"), plain log lines at most every few seconds when nobody
//! watches a terminal, and a JSON event per line for programs. Time is a
//! parameter (a monotonic millisecond clock).

use crate::json::Object;

/// What the update is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Release metadata and the delta's superblock: checks before any write.
    Checking,
    /// Downloading the delta's parts.
    Receiving,
    /// Writing the inactive slot.
    Writing,
    /// Hashing the written slot back against the signed commit.
    Verifying,
    /// The /etc merge.
    Merging,
    /// The env write that makes the slot the next boot.
    Finishing,
    Done,
    Failed,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Checking => "checking",
            Phase::Receiving => "receiving",
            Phase::Writing => "writing",
            Phase::Verifying => "verifying",
            Phase::Merging => "merging",
            Phase::Finishing => "finishing",
            Phase::Done => "done",
            Phase::Failed => "failed",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Phase::Checking => "Checking",
            Phase::Receiving => "Receiving",
            Phase::Writing => "Writing",
            Phase::Verifying => "Verifying",
            Phase::Merging => "Merging /etc",
            Phase::Finishing => "Finishing",
            Phase::Done => "Done",
            Phase::Failed => "Failed",
        }
    }
}

/// One update's progress.
#[derive(Clone, Debug)]
pub struct Progress {
    pub phase: Phase,
    /// Slot being written, for "Writing slot B".
    pub slot: Option<char>,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub parts_done: u64,
    pub parts_total: u64,
    /// Smoothed receive rate, bytes per second.
    rate: Option<f64>,
    last: Option<(u64, u64)>,
}

/// Weight of the newest rate sample (per second of sample).
const SMOOTHING: f64 = 0.3;

impl Progress {
    pub fn new(phase: Phase) -> Progress {
        Progress {
            phase,
            slot: None,
            bytes_done: 0,
            bytes_total: 0,
            parts_done: 0,
            parts_total: 0,
            rate: None,
            last: None,
        }
    }

    /// Records that `bytes_done` bytes have arrived by `now_ms`; updates the
    /// smoothed rate from samples at least 200 ms apart.
    pub fn received(&mut self, now_ms: u64, bytes_done: u64) {
        self.bytes_done = bytes_done;
        match self.last {
            None => self.last = Some((now_ms, bytes_done)),
            Some((t, b)) if now_ms >= t + 200 => {
                let secs = (now_ms - t) as f64 / 1000.0;
                let sample = bytes_done.saturating_sub(b) as f64 / secs;
                let w = (SMOOTHING * secs).min(1.0);
                self.rate = Some(match self.rate {
                    None => sample,
                    Some(r) => r + w * (sample - r),
                });
                self.last = Some((now_ms, bytes_done));
            }
            Some(_) => {}
        }
    }

    /// Bytes per second, once measured.
    pub fn rate(&self) -> Option<u64> {
        self.rate.map(|r| r as u64)
    }

    /// Seconds left at the current rate.
    pub fn eta(&self) -> Option<u64> {
        let rate = self.rate.filter(|r| *r >= 1.0)?;
        let left = self.bytes_total.saturating_sub(self.bytes_done);
        Some((left as f64 / rate).ceil() as u64)
    }

    pub fn percent(&self) -> Option<u64> {
        (self.bytes_total > 0)
            .then(|| self.bytes_done.min(self.bytes_total) * 100 / self.bytes_total)
    }

    /// The live terminal line (no newline): the caller writes `\r` + line +
    /// clear-to-end-of-line on stderr.
    pub fn tty_line(&self) -> String {
        let mut s = String::from(self.phase.title());
        match self.phase {
            Phase::Receiving => {
                if let Some(p) = self.percent() {
                    s.push_str(&format!(" {p}%"));
                }
                if self.parts_total > 0 {
                    s.push_str(&format!(
                        " ({}/{} parts)",
                        self.parts_done, self.parts_total
                    ));
                }
                s.push_str(&format!(
                    " {} of {}",
                    human(self.bytes_done),
                    human(self.bytes_total)
                ));
                if let Some(r) = self.rate() {
                    s.push_str(&format!(", {}/s", human(r)));
                }
                if let Some(e) = self.eta() {
                    s.push_str(&format!(", ETA {}", clock(e)));
                }
            }
            Phase::Writing | Phase::Verifying => {
                if let Some(slot) = self.slot {
                    s.push_str(&format!(" slot {slot}"));
                }
                s.push_str(" …");
            }
            _ => s.push_str(" …"),
        }
        s
    }

    /// One JSON event (one line, no newline): phase, bytes, parts, rate, ETA
    /// and an error when the phase is `failed`.
    pub fn json_event(&self, error: Option<&str>) -> String {
        Object::new()
            .field("event", "progress")
            .field("phase", self.phase.name())
            .field("slot", self.slot.map(|c| if c == 'A' { "A" } else { "B" }))
            .field("bytes_done", self.bytes_done)
            .field("bytes_total", self.bytes_total)
            .field("parts_done", self.parts_done)
            .field("parts_total", self.parts_total)
            .field("rate", self.rate())
            .field("eta", self.eta())
            .field("error", error)
            .finish()
    }
}

/// Lets a line through at most once per `every_ms`, and always on a phase change.
#[derive(Clone, Debug)]
pub struct Throttle {
    every_ms: u64,
    last: Option<(u64, Phase)>,
}

impl Throttle {
    pub fn new(every_ms: u64) -> Throttle {
        Throttle {
            every_ms,
            last: None,
        }
    }

    pub fn due(&mut self, now_ms: u64, phase: Phase) -> bool {
        let due = match self.last {
            None => true,
            Some((t, p)) => p != phase || now_ms >= t + self.every_ms,
        };
        if due {
            self.last = Some((now_ms, phase));
        }
        due
    }
}

/// `512 B`, `18 KiB`, `2.4 MiB`, `1.2 GiB`.
pub fn human(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else if v < 10.0 {
        format!("{v:.1} {}", UNITS[u])
    } else {
        format!("{v:.0} {}", UNITS[u])
    }
}

/// `0:55`, `12:03`, `1:02:03`.
pub fn clock(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    if h > 0 {
        format!("{h}:{m:02}:{s:02}")
    } else {
        format!("{m}:{s:02}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The receiving line reads as the issue shows it, with a steady rate.
    #[test]
    fn receiving_line_reads_like_the_example() {
        let mut p = Progress::new(Phase::Receiving);
        p.bytes_total = 3_565_158;
        p.parts_total = 35;
        p.parts_done = 25;
        let rate = 18 * 1024;
        let done = 2_560_000;
        for sec in 0..=138u64 {
            p.received(sec * 1000, done - (138 - sec) * rate);
        }
        assert_eq!(p.rate(), Some(rate));
        assert_eq!(
            p.tty_line(),
            "Receiving 71% (25/35 parts) 2.4 MiB of 3.4 MiB, 18 KiB/s, ETA 0:55"
        );
        p.phase = Phase::Writing;
        p.slot = Some('B');
        assert_eq!(p.tty_line(), "Writing slot B …");
    }

    /// Events parse as JSON with every documented field.
    #[test]
    fn json_events_carry_every_field() {
        let mut p = Progress::new(Phase::Failed);
        p.bytes_total = 10;
        let v: serde_json::Value =
            serde_json::from_str(&p.json_event(Some("link \"down\""))).unwrap();
        for key in [
            "event",
            "phase",
            "slot",
            "bytes_done",
            "bytes_total",
            "parts_done",
            "parts_total",
            "rate",
            "eta",
            "error",
        ] {
            assert!(v.get(key).is_some(), "{key} missing");
        }
        assert_eq!(v["phase"], "failed");
        assert_eq!(v["error"], "link \"down\"");
        assert!(v["rate"].is_null() && v["eta"].is_null());
    }

    /// Log lines are rate-limited but a phase change always shows.
    #[test]
    fn throttle_limits_lines_but_not_phase_changes() {
        let mut t = Throttle::new(5000);
        assert!(t.due(0, Phase::Receiving));
        assert!(!t.due(4999, Phase::Receiving));
        assert!(t.due(5000, Phase::Receiving));
        assert!(t.due(5001, Phase::Writing));
        assert!(!t.due(5002, Phase::Writing));
    }

    #[test]
    fn human_sizes_and_clocks() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(18 * 1024), "18 KiB");
        assert_eq!(human(2_500_000), "2.4 MiB");
        assert_eq!(human(5 << 30), "5.0 GiB");
        assert_eq!(clock(55), "0:55");
        assert_eq!(clock(723), "12:03");
        assert_eq!(clock(3723), "1:02:03");
    }
}
