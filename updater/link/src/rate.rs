//! A bandwidth cap as a token bucket. Tokens are bytes; they accrue at `rate`
//! bytes per second up to `burst`, and a transfer may take only what the
//! bucket holds. The bucket belongs to the fetcher, not to one request, so the
//! cap holds across retries and Range resumes: a reconnect does not get a
//! fresh allowance.

/// A token bucket over a monotonic millisecond clock.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate: u64,
    burst: u64,
    /// Tokens, in thousandths of a byte (so a 1 ms step at low rates still counts).
    milli_tokens: u64,
    last_ms: u64,
}

impl TokenBucket {
    /// A bucket that allows `rate` bytes per second on average, holding at
    /// most `burst` bytes (at least one byte). It starts full.
    pub fn new(rate: u64, burst: u64, now_ms: u64) -> TokenBucket {
        let rate = rate.max(1);
        let burst = burst.max(1);
        TokenBucket {
            rate,
            burst,
            milli_tokens: burst.saturating_mul(1000),
            last_ms: now_ms,
        }
    }

    /// The bucket for a cap of `rate` bytes/s: a burst of a quarter second,
    /// at least 4 KiB, so the measured rate stays within a few percent of the
    /// cap over any window of a few seconds while reads stay a useful size.
    pub fn for_cap(rate: u64, now_ms: u64) -> TokenBucket {
        TokenBucket::new(rate, (rate / 4).max(4096), now_ms)
    }

    fn refill(&mut self, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(self.last_ms);
        self.last_ms = self.last_ms.max(now_ms);
        // rate bytes/s = rate milli-tokens per ms.
        let add = elapsed.saturating_mul(self.rate);
        self.milli_tokens = self
            .milli_tokens
            .saturating_add(add)
            .min(self.burst.saturating_mul(1000));
    }

    /// How many of `want` bytes may be read now (0 = wait first, see
    /// [`TokenBucket::wait_ms`]). The bytes granted are taken from the bucket.
    pub fn take(&mut self, now_ms: u64, want: u64) -> u64 {
        self.refill(now_ms);
        let n = want.min(self.milli_tokens / 1000);
        self.milli_tokens -= n * 1000;
        n
    }

    /// Milliseconds until `want` bytes (at most the burst) are available.
    pub fn wait_ms(&mut self, now_ms: u64, want: u64) -> u64 {
        self.refill(now_ms);
        let need = want.clamp(1, self.burst).saturating_mul(1000);
        need.saturating_sub(self.milli_tokens).div_ceil(self.rate)
    }

    /// The largest read that makes sense now: what the bucket holds, at least
    /// one byte.
    pub fn burst(&self) -> u64 {
        self.burst
    }
}

/// Smallest socket receive buffer for a capped link, in the kernel's
/// accounting (Linux doubles what `SO_RCVBUF` asks for and counts packet
/// overhead in it): a few reads' worth.
pub const MIN_RECEIVE_BUFFER: u64 = 16 * 1024;
/// Largest: a bound, never more than the kernel would autotune to.
pub const MAX_RECEIVE_BUFFER: u64 = 4 * 1024 * 1024;

/// The largest receive buffer a link capped at `rate` bytes/s needs: a
/// quarter second of the cap (enough for a 250 ms round trip), within
/// [`MIN_RECEIVE_BUFFER`]..=[`MAX_RECEIVE_BUFFER`]. Set before connect, so
/// the window scale the SYN offers fits it.
pub fn receive_buffer_max(rate: u64) -> u64 {
    (rate / 4).clamp(MIN_RECEIVE_BUFFER, MAX_RECEIVE_BUFFER)
}

/// The receive buffer for a link capped at `rate` bytes/s whose round trip
/// took `rtt_us` microseconds (the connect's): twice the bandwidth-delay
/// product at the cap (the sender keeps the pipe full across our paced
/// reads), within [`MIN_RECEIVE_BUFFER`]..=[`receive_buffer_max`].
///
/// What the kernel holds but the agent has not read yet is lost when the
/// agent is killed (and paid for again after the restart), so the buffer is
/// no bigger than the cap needs: a bigger one only lets the sender run
/// further ahead of a reader that the cap holds back.
pub fn receive_buffer(rate: u64, rtt_us: u64) -> u64 {
    let bdp = rate.saturating_mul(rtt_us) / 1_000_000;
    bdp.saturating_mul(2)
        .clamp(MIN_RECEIVE_BUFFER, receive_buffer_max(rate))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Over a long transfer the bytes granted per second equal the cap (within
    /// the one burst the bucket starts with).
    #[test]
    fn long_run_rate_equals_the_cap() {
        let rate = 50_000;
        let mut b = TokenBucket::for_cap(rate, 0);
        let (mut now, mut got) = (0u64, 0u64);
        while now < 60_000 {
            let n = b.take(now, 16 * 1024);
            got += n;
            if n == 0 {
                now += b.wait_ms(now, 16 * 1024).max(1);
            }
        }
        let expected = rate * 60 + b.burst();
        assert!(
            got <= expected && got >= rate * 60 * 99 / 100,
            "{got} vs {expected}"
        );
    }

    /// A pause does not bank more than one burst: the cap holds right after an
    /// idle period or a reconnect.
    #[test]
    fn idle_time_banks_at_most_one_burst() {
        let mut b = TokenBucket::new(1000, 2000, 0);
        assert_eq!(b.take(0, 10_000), 2000);
        assert_eq!(b.take(0, 1), 0);
        assert_eq!(b.take(3_600_000, 10_000), 2000, "an hour idle = one burst");
        assert_eq!(b.wait_ms(3_600_000, 500), 500);
        assert_eq!(b.take(3_600_500, 10_000), 500);
    }

    /// Low rates still progress (sub-byte accrual per millisecond is kept), and
    /// a clock that steps back is treated as no time passing.
    #[test]
    fn low_rates_and_clock_steps_back() {
        let mut b = TokenBucket::new(3, 1, 0);
        assert_eq!(b.take(0, 10), 1);
        assert_eq!(b.wait_ms(0, 1), 334);
        assert_eq!(b.take(333, 1), 0);
        assert_eq!(b.take(334, 1), 1);
        assert_eq!(b.take(100, 1), 0, "clock went back: nothing accrues");
    }

    /// The receive buffer for a capped link is twice the bandwidth-delay
    /// product at the cap, never under the floor (loopback) and never over a
    /// quarter second of the cap (a satellite link), and the largest one is
    /// itself bounded both ways.
    #[test]
    fn receive_buffer_is_twice_the_capped_bdp_within_bounds() {
        let mib = 1024 * 1024;
        // 2 MiB/s over a 50 ms round trip: 100 KiB in flight, 200 KiB.
        assert_eq!(
            receive_buffer(2 * mib, 50_000),
            2 * (2 * mib * 50_000 / 1_000_000)
        );
        // Loopback (30 us): the floor.
        assert_eq!(receive_buffer(2 * mib, 30), MIN_RECEIVE_BUFFER);
        // A 2 s round trip: a quarter second of the cap.
        assert_eq!(receive_buffer(2 * mib, 2_000_000), mib / 2);
        assert_eq!(receive_buffer_max(2 * mib), mib / 2);
        // A slow cap: the floor even for a long round trip.
        assert_eq!(receive_buffer(10_000, 1_000_000), MIN_RECEIVE_BUFFER);
        assert_eq!(receive_buffer_max(1), MIN_RECEIVE_BUFFER);
        assert_eq!(receive_buffer_max(u64::MAX), MAX_RECEIVE_BUFFER);
        assert_eq!(receive_buffer(u64::MAX, u64::MAX), MAX_RECEIVE_BUFFER);
    }
}
