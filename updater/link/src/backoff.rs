//! How long to wait: before retry n of a failed transfer, after a failed
//! poll, and between polls. Exponential backoff with full jitter (the wait is
//! uniform in `[0, min(cap, base·2^n)]`), so a fleet that lost its server at
//! the same moment does not come back in lockstep; polls add a random jitter
//! to the interval for the same reason.

use std::time::Duration;

/// A random fraction in `[0, 1]` from a `u64` the caller drew.
fn fraction(random: u64) -> f64 {
    random as f64 / u64::MAX as f64
}

/// The wait before retry `n` (1 = the first retry): uniform in
/// `[0, min(cap, base·2^(n-1))]`, and never less than `base / 2` so a burst of
/// failures cannot spin.
pub fn retry_wait(n: u32, base: Duration, cap: Duration, random: u64) -> Duration {
    let exp = n.saturating_sub(1).min(32);
    let ceiling = base
        .saturating_mul(1u32 << exp.min(31))
        .min(cap)
        .max(base / 2);
    let wait = ceiling.mul_f64(fraction(random));
    wait.max(base / 2).min(cap.max(base / 2))
}

/// The wait after `failures` failed polls in a row (0 = the last poll
/// worked): the poll interval plus jitter when nothing failed; otherwise
/// exponential from one minute, capped at `cap`, and never longer than the
/// normal interval (a failing server is not polled less often than a
/// working one).
pub fn poll_wait(
    failures: u32,
    interval: Duration,
    jitter: Duration,
    cap: Duration,
    random: u64,
) -> Duration {
    if failures == 0 {
        return interval + jitter.mul_f64(fraction(random));
    }
    let cap = cap.min(interval);
    retry_wait(failures, Duration::from_secs(60), cap, random)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    /// Retry waits grow exponentially, stay within [base/2, cap], and the
    /// random draw spreads them over the whole range.
    #[test]
    fn retry_waits_grow_exponentially_within_bounds() {
        let (base, cap) = (S(2), S(60));
        for n in 1..40 {
            for r in [0, u64::MAX / 3, u64::MAX] {
                let w = retry_wait(n, base, cap, r);
                assert!(w >= S(1) && w <= cap, "n={n} r={r} w={w:?}");
            }
        }
        assert_eq!(retry_wait(1, base, cap, u64::MAX), S(2));
        assert_eq!(retry_wait(3, base, cap, u64::MAX), S(8));
        assert_eq!(retry_wait(10, base, cap, u64::MAX), S(60));
        assert_eq!(retry_wait(10, base, cap, 0), S(1));
        let mid = retry_wait(6, base, cap, u64::MAX / 2);
        assert!(mid > S(29) && mid < S(31), "{mid:?}");
    }

    /// A healthy poll waits interval + jitter; failed polls back off from a
    /// minute but never past the normal interval or the cap.
    #[test]
    fn poll_waits_jitter_and_back_off() {
        let (interval, jitter, cap) = (S(3600), S(600), S(7200));
        assert_eq!(poll_wait(0, interval, jitter, cap, 0), S(3600));
        assert_eq!(poll_wait(0, interval, jitter, cap, u64::MAX), S(4200));
        assert_eq!(poll_wait(1, interval, jitter, cap, u64::MAX), S(60));
        assert_eq!(poll_wait(4, interval, jitter, cap, u64::MAX), S(480));
        assert_eq!(poll_wait(30, interval, jitter, cap, u64::MAX), S(3600));
        assert_eq!(poll_wait(30, interval, jitter, S(900), u64::MAX), S(900));
    }
}
