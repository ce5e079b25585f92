//! The device's checks on fetched release metadata, in the order that keeps a
//! hostile server from getting anything parsed or acted on before the signature
//! holds: size cap, signature over the exact bytes, canonical parse, then the
//! freshness, target and rollback rules (TUF's order, applied to one file).

use crate::format::{hex, Delta, FormatError, Release};
use atomup_ostree::sign::Trust;

/// Signed file = canonical body, then one line per signature.
pub const SIGNATURE_PREFIX: &str = "signature ed25519 ";
pub const MAX_SIGNATURES: usize = 8;

/// How far a release's timestamp may lead the clock of a device whose clock is
/// usable (not behind its trusted time): one day of vendor clock skew.
/// Beyond it the release is refused, not installed (see the README).
pub const MAX_CLOCK_LEAD: u64 = 24 * 3600;
/// How far one release may move the trusted time of a device without a
/// usable clock (its clock is behind its trusted time: no RTC, or reset).
pub const MAX_TRUSTED_ADVANCE: u64 = 7 * 24 * 3600;

/// What the device knows about itself, all of it from its own trusted state.
#[derive(Clone, Debug)]
pub struct DeviceFacts<'a> {
    pub channel: &'a str,
    pub board: &'a str,
    pub current_version: u64,
    pub current_commit: [u8; 32],
    /// Latest time the device has seen vouched for (release timestamps, RTC).
    pub trusted_time: u64,
    /// The highest version this device has ever accepted (installed, pending
    /// or rolled back): no release below it is installed (TUF's rule for
    /// metadata versions), whatever runs now.
    pub highest_version: u64,
    /// Operator's explicit permission to install an older version.
    pub allow_downgrade: bool,
}

/// What the device should do with a release that passed every check.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer<'r> {
    /// The release is the one running: nothing to do.
    UpToDate,
    /// Install `release.commit` with `delta`.
    Update { delta: &'r Delta },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReleaseError {
    #[error("release metadata is {0} bytes, over the cap")]
    TooLarge(usize),
    #[error("release metadata carries no signature")]
    Unsigned,
    #[error("release metadata has a malformed signature line")]
    MalformedSignature,
    #[error("release metadata is not signed by any trusted, non-revoked key")]
    Untrusted,
    #[error("release metadata is malformed")]
    Format(#[source] FormatError),
    #[error("release is for channel `{found}`, this device follows `{expected}`")]
    WrongChannel { expected: String, found: String },
    #[error("release is for board `{found}`, this device is `{expected}`")]
    WrongBoard { expected: String, found: String },
    #[error("release metadata expired at {expires} (trusted time is {now})")]
    Expired { expires: u64, now: u64 },
    #[error("release version {offered} is older than the running {running}: downgrade refused")]
    Downgrade { offered: u64, running: u64 },
    #[error("release version {offered} is older than version {highest}, which this device accepted before: a replayed release is refused")]
    Replayed { offered: u64, highest: u64 },
    #[error("release timestamp {timestamp} is {} s ahead of this device's clock ({clock}): refused (the vendor's clock or key is suspect)", timestamp - clock)]
    FromTheFuture { timestamp: u64, clock: u64 },
    #[error("release version {0} is the running version but names another commit")]
    VersionReused(u64),
    #[error("running version {running} is below the release's minimum {minimum}: install an intermediate release first")]
    TooOldToUpdate { running: u64, minimum: u64 },
    #[error("release offers no delta from commit {0} and none from scratch")]
    NoDelta(String),
}

/// A release whose signature held; the only way to get a `Release` from
/// untrusted bytes on a device. Its field is private: a `Verified` exists
/// only as the result of [`verify_signed`].
#[derive(Debug)]
pub struct Verified {
    release: Release,
}

impl Verified {
    /// The release whose signature held.
    pub fn release(&self) -> &Release {
        &self.release
    }
}

/// Splits a signed release file and checks its signatures over the exact body
/// bytes, then parses the body. Uses the same trusted/revoked key sets as
/// OSTree commits and deltas.
pub fn verify_signed(bytes: &[u8], trust: &Trust) -> Result<Verified, ReleaseError> {
    // 1. Size cap before anything else: metadata is small by design.
    let cap = crate::format::MAX_RELEASE_BYTES + MAX_SIGNATURES * 150;
    if bytes.len() > cap {
        return Err(ReleaseError::TooLarge(bytes.len()));
    }
    let (body, signatures) = split_signatures(bytes)?;
    // 2. Signature over the exact bytes: valid iff any signature verifies with
    //    any trusted key that is not revoked (OSTree's rule for commits too).
    trust
        .verify(body, signatures.iter().map(|s| &s[..]))
        .map_err(|_| ReleaseError::Untrusted)?;
    // 3. Only now parse what the vendor signed.
    let release = Release::parse(body).map_err(ReleaseError::Format)?;
    Ok(Verified { release })
}

/// The canonical body of a signed release file: the bytes before the first
/// signature line (all of it when unsigned). For the publisher's own files;
/// devices go through `verify_signed`.
pub fn unsigned_body(bytes: &[u8]) -> &[u8] {
    let marker = format!("\n{SIGNATURE_PREFIX}");
    match find(bytes, marker.as_bytes()) {
        Some(at) => &bytes[..=at],
        None => bytes,
    }
}

fn split_signatures(bytes: &[u8]) -> Result<(&[u8], Vec<[u8; 64]>), ReleaseError> {
    let body = unsigned_body(bytes);
    if body.len() == bytes.len() {
        return Err(ReleaseError::Unsigned);
    }
    let tail = &bytes[body.len()..];
    let tail = std::str::from_utf8(tail).map_err(|_| ReleaseError::MalformedSignature)?;
    let tail = tail
        .strip_suffix('\n')
        .ok_or(ReleaseError::MalformedSignature)?;
    let mut signatures = Vec::new();
    for line in tail.split('\n') {
        if signatures.len() == MAX_SIGNATURES {
            return Err(ReleaseError::MalformedSignature);
        }
        let hexsig = line
            .strip_prefix(SIGNATURE_PREFIX)
            .ok_or(ReleaseError::MalformedSignature)?;
        signatures.push(parse_hex64(hexsig).ok_or(ReleaseError::MalformedSignature)?);
    }
    Ok((body, signatures))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse_hex64(s: &str) -> Option<[u8; 64]> {
    let mut out = [0u8; 64];
    atomup_ostree::hex::decode_lower(s, &mut out)?;
    Some(out)
}

/// The signature line a publisher appends for `signature` (64 bytes).
pub fn signature_line(signature: &[u8; 64]) -> String {
    format!("{SIGNATURE_PREFIX}{}\n", hex(signature))
}

/// Decides what a verified release means for this device at `now`.
pub fn check_release<'r>(
    verified: &'r Verified,
    facts: &DeviceFacts<'_>,
    now: u64,
) -> Result<Offer<'r>, ReleaseError> {
    let r = &verified.release;
    // The release must be meant for this device (a validly signed release for
    // another board would install a root that cannot boot here).
    if r.channel != facts.channel {
        return Err(ReleaseError::WrongChannel {
            expected: facts.channel.into(),
            found: r.channel.clone(),
        });
    }
    if r.board != facts.board {
        return Err(ReleaseError::WrongBoard {
            expected: facts.board.into(),
            found: r.board.clone(),
        });
    }
    // A timestamp far ahead of a usable clock: a vendor clock slip or a
    // misused key. Installing it would drag the trusted time into the future
    // and make every later release look expired. (Without a usable clock the
    // lead cannot be judged; `advance_trusted_time` bounds its effect.)
    if now >= facts.trusted_time && r.timestamp > now.saturating_add(MAX_CLOCK_LEAD) {
        return Err(ReleaseError::FromTheFuture {
            timestamp: r.timestamp,
            clock: now,
        });
    }
    // Freeze attack: stale metadata replayed forever must stop working. A device
    // without an RTC never lets its clock run behind what it already trusted.
    let now = now.max(facts.trusted_time);
    if r.expires <= now {
        return Err(ReleaseError::Expired {
            expires: r.expires,
            now,
        });
    }
    // Rollback attack: an old, validly signed release must not reinstall
    // known-vulnerable software unless the operator allows it explicitly.
    if r.version == facts.current_version {
        return if r.commit == facts.current_commit {
            Ok(Offer::UpToDate)
        } else {
            Err(ReleaseError::VersionReused(r.version))
        };
    }
    if r.version < facts.current_version && !facts.allow_downgrade {
        return Err(ReleaseError::Downgrade {
            offered: r.version,
            running: facts.current_version,
        });
    }
    // TUF 5.4.3 (rollback attack on versions): never below what this device
    // accepted before, e.g. a newer release waiting on trial in the other slot.
    if r.version < facts.highest_version && !facts.allow_downgrade {
        return Err(ReleaseError::Replayed {
            offered: r.version,
            highest: facts.highest_version,
        });
    }
    if facts.current_version < r.min_from_version {
        return Err(ReleaseError::TooOldToUpdate {
            running: facts.current_version,
            minimum: r.min_from_version,
        });
    }
    let delta = r
        .delta_for(&facts.current_commit)
        .ok_or_else(|| ReleaseError::NoDelta(hex(&facts.current_commit)))?;
    Ok(Offer::Update { delta })
}

/// The trusted time after accepting `verified` at `now`: it never goes
/// backwards, never beyond a usable clock plus [`MAX_CLOCK_LEAD`], and on a
/// device without a usable clock (`now` behind the trusted time) never more
/// than [`MAX_TRUSTED_ADVANCE`] past where it was.
pub fn advance_trusted_time(verified: &Verified, trusted_time: u64, now: u64) -> u64 {
    let bound = if now >= trusted_time {
        now.saturating_add(MAX_CLOCK_LEAD)
    } else {
        trusted_time.saturating_add(MAX_TRUSTED_ADVANCE)
    };
    trusted_time.max(verified.release.timestamp.min(bound))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::tests::sample;
    use crate::format::DeltaSource;
    use ed25519_dalek::{Signer, SigningKey};

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    fn signed(release: &Release, keys: &[&SigningKey]) -> Vec<u8> {
        let body = release.to_canonical();
        let mut out = body.clone();
        for k in keys {
            out.push_str(&signature_line(&k.sign(body.as_bytes()).to_bytes()));
        }
        out.into_bytes()
    }

    fn public_line(n: u8) -> String {
        atomup_ostree::sign::key_lines([n; 32]).1
    }

    fn trusted() -> Trust {
        Trust::from_key_files(&public_line(1), None).unwrap()
    }

    fn trusted_but_revoked() -> Trust {
        Trust::from_key_files(&public_line(1), Some(&public_line(1))).unwrap()
    }

    fn facts() -> DeviceFacts<'static> {
        DeviceFacts {
            channel: "stable",
            board: "qemu-virt",
            current_version: 5,
            current_commit: [0x11; 32],
            trusted_time: 1_700_000_100,
            highest_version: 5,
            allow_downgrade: false,
        }
    }

    fn verdict(release: &Release, facts: &DeviceFacts<'_>, now: u64) -> Result<(), ReleaseError> {
        let v = verify_signed(&signed(release, &[&key(1)]), &trusted())?;
        check_release(&v, facts, now).map(|_| ())
    }

    /// A correctly signed, current release for this device yields the delta from its commit.
    #[test]
    fn valid_release_offers_delta_from_running_commit() {
        let v = verify_signed(&signed(&sample(), &[&key(1)]), &trusted()).unwrap();
        match check_release(&v, &facts(), 1_700_000_200).unwrap() {
            Offer::Update { delta } => assert_eq!(delta.from, DeltaSource::From([0x11; 32])),
            other => panic!("{other:?}"),
        }
    }

    /// Flipping any single bit anywhere in a signed release makes the device refuse it.
    #[test]
    fn tampering_any_byte_is_refused() {
        let good = signed(&sample(), &[&key(1)]);
        for i in 0..good.len() {
            for bit in [0x01, 0x20, 0x80] {
                let mut bad = good.clone();
                bad[i] ^= bit;
                assert!(
                    verify_signed(&bad, &trusted()).is_err(),
                    "flip {bit:#x} at byte {i} accepted"
                );
            }
        }
    }

    /// Every truncation of a signed release is refused (a cut download never installs).
    #[test]
    fn every_truncation_of_a_signed_release_is_refused() {
        let good = signed(&sample(), &[&key(1)]);
        for n in 0..good.len() {
            assert!(
                verify_signed(&good[..n], &trusted()).is_err(),
                "prefix {n} accepted"
            );
        }
    }

    /// Unsigned, wrongly signed and revoked-key releases are refused.
    #[test]
    fn unsigned_wrong_key_and_revoked_key_are_refused() {
        let body = sample().to_canonical().into_bytes();
        assert_eq!(
            verify_signed(&body, &trusted()).unwrap_err(),
            ReleaseError::Unsigned
        );
        let wrong = signed(&sample(), &[&key(2)]);
        assert_eq!(
            verify_signed(&wrong, &trusted()).unwrap_err(),
            ReleaseError::Untrusted
        );
        let good = signed(&sample(), &[&key(1)]);
        assert_eq!(
            verify_signed(&good, &trusted_but_revoked()).unwrap_err(),
            ReleaseError::Untrusted
        );
    }

    /// During key rotation a file signed by old and new keys verifies with either.
    #[test]
    fn any_trusted_signature_suffices() {
        let both = signed(&sample(), &[&key(2), &key(1)]);
        assert!(verify_signed(&both, &trusted()).is_ok());
    }

    /// Expired metadata is refused, also when the device clock is behind its trusted time.
    #[test]
    fn expired_release_is_refused() {
        let r = sample();
        assert!(matches!(
            verdict(&r, &facts(), r.expires),
            Err(ReleaseError::Expired { .. })
        ));
        let late = DeviceFacts {
            trusted_time: r.expires + 1,
            ..facts()
        };
        // No RTC: the clock says 1970, the trusted time says the release is stale.
        assert!(matches!(
            verdict(&r, &late, 0),
            Err(ReleaseError::Expired { .. })
        ));
        assert!(verdict(&r, &facts(), r.expires - 1).is_ok());
    }

    /// A release for another channel or board is refused even when validly signed.
    #[test]
    fn wrong_channel_or_board_is_refused() {
        let f = DeviceFacts {
            channel: "beta",
            ..facts()
        };
        assert!(matches!(
            verdict(&sample(), &f, 1_700_000_200),
            Err(ReleaseError::WrongChannel { .. })
        ));
        let f = DeviceFacts {
            board: "rpi4",
            ..facts()
        };
        assert!(matches!(
            verdict(&sample(), &f, 1_700_000_200),
            Err(ReleaseError::WrongBoard { .. })
        ));
    }

    /// Going backwards in version is refused unless explicitly allowed.
    #[test]
    fn downgrade_is_refused_unless_allowed() {
        let f = DeviceFacts {
            current_version: 9,
            ..facts()
        };
        assert_eq!(
            verdict(&sample(), &f, 1_700_000_200),
            Err(ReleaseError::Downgrade {
                offered: 7,
                running: 9
            })
        );
        let f = DeviceFacts {
            current_version: 9,
            allow_downgrade: true,
            ..facts()
        };
        assert!(verdict(&sample(), &f, 1_700_000_200).is_ok());
    }

    /// The same version naming a different commit is refused; the same commit is up to date.
    #[test]
    fn same_version_is_up_to_date_or_refused() {
        let f = DeviceFacts {
            current_version: 7,
            current_commit: [0xab; 32],
            ..facts()
        };
        let v = verify_signed(&signed(&sample(), &[&key(1)]), &trusted()).unwrap();
        assert_eq!(check_release(&v, &f, 1_700_000_200), Ok(Offer::UpToDate));
        let f = DeviceFacts {
            current_version: 7,
            ..facts()
        };
        assert_eq!(
            verdict(&sample(), &f, 1_700_000_200),
            Err(ReleaseError::VersionReused(7))
        );
    }

    /// A device below the release's minimum version must take an intermediate release.
    #[test]
    fn too_old_device_is_sent_to_an_intermediate_release() {
        let f = DeviceFacts {
            current_version: 2,
            ..facts()
        };
        assert_eq!(
            verdict(&sample(), &f, 1_700_000_200),
            Err(ReleaseError::TooOldToUpdate {
                running: 2,
                minimum: 3
            })
        );
    }

    /// Without a matching or from-scratch delta the device has nothing to fetch.
    #[test]
    fn no_usable_delta_is_an_error() {
        let mut r = sample();
        r.deltas.retain(|d| d.from != DeltaSource::Scratch);
        let f = DeviceFacts {
            current_commit: [0x22; 32],
            ..facts()
        };
        assert!(matches!(
            verdict(&r, &f, 1_700_000_200),
            Err(ReleaseError::NoDelta(_))
        ));
    }

    /// Trusted time only moves forward.
    #[test]
    fn trusted_time_never_goes_backwards() {
        let v = verify_signed(&signed(&sample(), &[&key(1)]), &trusted()).unwrap();
        assert_eq!(advance_trusted_time(&v, 0, 1_700_000_000), 1_700_000_000);
        assert_eq!(
            advance_trusted_time(&v, 1_800_000_000, 1_800_000_000),
            1_800_000_000
        );
    }

    /// Regression (issue 11.4a): a validly signed release stamped in 2100
    /// moved the trusted time there and every later release read as expired.
    /// With a usable clock it is refused; without one it moves the trusted
    /// time by at most a week, and a release published a little later is
    /// still accepted.
    #[test]
    fn a_release_from_the_future_cannot_poison_the_trusted_time() {
        const Y2100: u64 = 4_102_444_800;
        let mut r = sample();
        r.timestamp = Y2100;
        r.expires = Y2100 + 30 * 86_400;
        let clock = 1_700_000_200;
        assert_eq!(
            verdict(&r, &facts(), clock),
            Err(ReleaseError::FromTheFuture {
                timestamp: Y2100,
                clock
            })
        );
        // A day of skew is tolerated.
        let mut near = sample();
        near.timestamp = clock + MAX_CLOCK_LEAD;
        near.expires = near.timestamp + 86_400;
        assert!(verdict(&near, &facts(), clock).is_ok());
        // No usable clock (it says 1970): installable, trusted time capped.
        let v = verify_signed(&signed(&r, &[&key(1)]), &trusted()).unwrap();
        assert!(check_release(&v, &facts(), 0).is_ok());
        let t = advance_trusted_time(&v, 1_700_000_100, 0);
        assert_eq!(t, 1_700_000_100 + MAX_TRUSTED_ADVANCE);
        // The next honest release (published a day after the last trusted
        // time, valid 30 days) is not expired against the poisoned time.
        let mut next = sample();
        next.timestamp = 1_700_000_100 + 86_400;
        next.expires = next.timestamp + 30 * 86_400;
        let f = DeviceFacts {
            trusted_time: t,
            ..facts()
        };
        assert!(verdict(&next, &f, 0).is_ok());
        // With a usable clock the bound is the clock plus the skew.
        assert_eq!(advance_trusted_time(&v, 0, clock), clock + MAX_CLOCK_LEAD);
    }

    /// Regression (issue 11.4b): a replayed, validly signed older release
    /// replaced a newer one waiting on trial. Nothing below the highest
    /// accepted version installs, unless downgrades are allowed.
    #[test]
    fn a_release_below_the_highest_accepted_version_is_refused() {
        let f = DeviceFacts {
            current_version: 3,
            highest_version: 9,
            ..facts()
        };
        assert_eq!(
            verdict(&sample(), &f, 1_700_000_200),
            Err(ReleaseError::Replayed {
                offered: 7,
                highest: 9
            })
        );
        let f = DeviceFacts {
            allow_downgrade: true,
            ..f
        };
        assert!(verdict(&sample(), &f, 1_700_000_200).is_ok());
        let f = DeviceFacts {
            current_version: 3,
            highest_version: 7,
            ..facts()
        };
        assert!(verdict(&sample(), &f, 1_700_000_200).is_ok());
    }
}
