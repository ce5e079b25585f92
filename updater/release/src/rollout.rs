//! Phased rollouts. A vendor releases to a growing share of the fleet over time;
//! which devices go first must be stable (the same canaries every time, so one
//! flaky device cannot stall every wave) and computable offline by each device
//! from its own seed, without the server knowing or tracking devices.

use crate::format::{Wave, FULL_SHARE};
use sha2::{Digest, Sha256};

/// A device's stable rollout identity: sha256 of something unique and
/// persistent on the device (e.g. `/etc/machine-id`), never sent anywhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RolloutSeed(pub [u8; 32]);

impl RolloutSeed {
    pub fn from_machine_id(id: &[u8]) -> Self {
        RolloutSeed(Sha256::digest(id).into())
    }
}

/// The device's bucket in `0..10000`; a wave with share `s` admits buckets `< s`.
pub fn bucket_of(seed: &RolloutSeed) -> u16 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&seed.0[..8]);
    // The modulo bias of 2^64 mod 10000 is below 1e-15: irrelevant for shares.
    (u64::from_be_bytes(first) % u64::from(FULL_SHARE)) as u16
}

/// Whether the rollout admits this device at `now`. No waves = everyone, now.
pub fn is_eligible(waves: &[Wave], seed: &RolloutSeed, now: u64) -> bool {
    eligible_at(waves, seed).is_some_and(|t| t <= now)
}

/// The first instant at which the rollout admits this device, or `None` if no
/// wave (yet) covers its bucket.
pub fn eligible_at(waves: &[Wave], seed: &RolloutSeed) -> Option<u64> {
    if waves.is_empty() {
        return Some(0);
    }
    let bucket = bucket_of(seed);
    waves.iter().find(|w| bucket < w.share).map(|w| w.start)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A seed whose bucket is exactly `b` (the first 8 bytes are the bucket).
    fn seed_in_bucket(b: u16) -> RolloutSeed {
        let mut s = [0u8; 32];
        s[6..8].copy_from_slice(&b.to_be_bytes());
        RolloutSeed(s)
    }

    const PLAN: [Wave; 3] = [
        Wave {
            start: 1000,
            share: 100,
        },
        Wave {
            start: 2000,
            share: 5000,
        },
        Wave {
            start: 3000,
            share: 10_000,
        },
    ];

    /// A device in the first wave is admitted at its start and not a second before.
    #[test]
    fn first_wave_opens_exactly_at_its_start() {
        let s = seed_in_bucket(99);
        assert!(!is_eligible(&PLAN, &s, 999));
        assert!(is_eligible(&PLAN, &s, 1000));
    }

    /// The share boundary is exclusive: bucket == share waits for the next wave.
    #[test]
    fn share_boundary_is_exclusive() {
        assert_eq!(eligible_at(&PLAN, &seed_in_bucket(99)), Some(1000));
        assert_eq!(eligible_at(&PLAN, &seed_in_bucket(100)), Some(2000));
        assert_eq!(eligible_at(&PLAN, &seed_in_bucket(4999)), Some(2000));
        assert_eq!(eligible_at(&PLAN, &seed_in_bucket(5000)), Some(3000));
        assert_eq!(eligible_at(&PLAN, &seed_in_bucket(9999)), Some(3000));
        assert!(!is_eligible(&PLAN, &seed_in_bucket(5000), 2999));
        assert!(is_eligible(&PLAN, &seed_in_bucket(5000), 3000));
    }

    /// A rollout paused at a partial share never admits the devices above it.
    #[test]
    fn paused_rollout_admits_nobody_above_its_share() {
        let paused = [Wave {
            start: 10,
            share: 2500,
        }];
        assert_eq!(eligible_at(&paused, &seed_in_bucket(2500)), None);
        assert!(!is_eligible(&paused, &seed_in_bucket(2500), u64::MAX));
    }

    /// Without waves the whole fleet is admitted at once.
    #[test]
    fn no_waves_means_everyone_now() {
        assert!(is_eligible(&[], &seed_in_bucket(9999), 0));
    }

    /// Buckets are a pure function of the seed and spread over the fleet.
    #[test]
    fn buckets_are_stable_and_spread() {
        let a = RolloutSeed::from_machine_id(b"device-a\n");
        assert_eq!(
            bucket_of(&a),
            bucket_of(&RolloutSeed::from_machine_id(b"device-a\n"))
        );
        let mut first_wave = 0;
        for i in 0..10_000u32 {
            let s = RolloutSeed::from_machine_id(format!("dev{i}").as_bytes());
            if bucket_of(&s) < 1000 {
                first_wave += 1;
            }
        }
        // 10% wave over 10000 devices: binomial sd is 30, so this cannot flake.
        assert!((850..1150).contains(&first_wave), "{first_wave}");
    }
}
