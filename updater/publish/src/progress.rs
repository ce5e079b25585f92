//! Progress for long publisher runs (committing a root tree, generating
//! deltas): counts and bytes on stderr, at most once a second so a large tree
//! does not drown the terminal or a CI log, then one summary line.

use std::time::{Duration, Instant};

pub struct Progress {
    what: &'static str,
    start: Instant,
    last: Instant,
    enabled: bool,
    pub items: u64,
    pub bytes: u64,
}

const EVERY: Duration = Duration::from_secs(1);

impl Progress {
    pub fn new(what: &'static str, enabled: bool) -> Self {
        let now = Instant::now();
        Progress {
            what,
            start: now,
            last: now,
            enabled,
            items: 0,
            bytes: 0,
        }
    }

    /// Counts one item of `bytes` and prints a line if a second has passed.
    pub fn tick(&mut self, bytes: u64) {
        self.items += 1;
        self.bytes += bytes;
        if self.enabled && self.last.elapsed() >= EVERY {
            self.last = Instant::now();
            eprintln!(
                "{}: {} items, {} so far",
                self.what,
                self.items,
                human(self.bytes)
            );
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }
}

/// Bytes in binary units with one decimal.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    /// Units switch at 1024 and keep one decimal.
    #[test]
    fn human_units() {
        assert_eq!(super::human(0), "0 B");
        assert_eq!(super::human(1023), "1023 B");
        assert_eq!(super::human(1536), "1.5 KiB");
        assert_eq!(super::human(5 << 20), "5.0 MiB");
    }
}
