//! The low-speed abort: a transfer whose average rate stays below `limit`
//! bytes per second for `window` is cut, as OSTree (libcurl's
//! `CURLOPT_LOW_SPEED_LIMIT`/`_TIME`, 1000 B/s for 30 s) does. A link that
//! trickles keeps a socket alive past any idle timeout; this is what ends it.
//! A rate limited by our own bandwidth cap is not "slow": the configuration
//! refuses a limit at or above the cap.

/// Watches one transfer over a monotonic millisecond clock.
#[derive(Clone, Debug)]
pub struct LowSpeed {
    limit: u64,
    window_ms: u64,
    /// Start of the current window: (time, bytes so far).
    mark: (u64, u64),
}

impl LowSpeed {
    pub fn new(limit: u64, window_ms: u64, now_ms: u64) -> LowSpeed {
        LowSpeed {
            limit,
            window_ms: window_ms.max(1),
            mark: (now_ms, 0),
        }
    }

    /// Records that `total` bytes have arrived by `now_ms`; `Err(rate)` when a
    /// whole window passed at an average below the limit (bytes/s).
    pub fn observe(&mut self, now_ms: u64, total: u64) -> Result<(), u64> {
        let (t0, b0) = self.mark;
        let elapsed = now_ms.saturating_sub(t0);
        if elapsed < self.window_ms {
            return Ok(());
        }
        let rate = total.saturating_sub(b0).saturating_mul(1000) / elapsed;
        if rate < self.limit {
            return Err(rate);
        }
        self.mark = (now_ms, total);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A trickle below the limit is cut after one window; a transfer at the
    /// limit, or one that slows only briefly, is not.
    #[test]
    fn a_trickle_is_cut_after_one_window() {
        let mut s = LowSpeed::new(1000, 30_000, 0);
        let mut total = 0;
        let mut cut = None;
        for sec in 1..=60 {
            total += 500;
            if let Err(rate) = s.observe(sec * 1000, total) {
                cut = Some((sec, rate));
                break;
            }
        }
        assert_eq!(cut, Some((30, 500)));

        let mut s = LowSpeed::new(1000, 30_000, 0);
        let mut total = 0;
        for sec in 1..=120u64 {
            // Ten slow seconds in each window of thirty: the average holds.
            total += if sec % 30 < 10 { 100 } else { 1500 };
            assert_eq!(s.observe(sec * 1000, total), Ok(()), "second {sec}");
        }
    }

    /// Nothing arriving at all is below any positive limit.
    #[test]
    fn silence_is_cut() {
        let mut s = LowSpeed::new(1, 5_000, 1_000);
        assert_eq!(s.observe(5_999, 0), Ok(()));
        assert_eq!(s.observe(6_000, 0), Err(0));
    }
}
