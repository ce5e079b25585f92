//! The release metadata text format. One canonical byte form per release, so the
//! signature covers exactly what the parser accepts: the parser re-serializes what
//! it read and refuses input that differs by a single byte (extra spaces, leading
//! zeros, upper-case hex, reordered lines, CRLF, unknown keys).

use std::fmt::Write as _;

/// The first line of every release file; the number is the format version.
pub const MAGIC: &str = "atomup-release 1";
/// A release file larger than this is refused before parsing (devices fetch it
/// over metered links and keep it in RAM).
pub const MAX_RELEASE_BYTES: usize = 64 * 1024;
pub const MAX_DELTAS: usize = 64;
pub const MAX_WAVES: usize = 32;
/// Rollout shares are in basis points: 10000 = the whole fleet.
pub const FULL_SHARE: u16 = 10_000;
/// Longest a release may be valid (`expires - timestamp`): 90 days, TUF's
/// default for its targets role. It bounds how long a frozen (replayed)
/// release keeps a device from hearing of a newer one, and how far one
/// release can push a device's trusted time (see the crate README).
pub const MAX_VALIDITY: u64 = 90 * 24 * 3600;

/// Where a channel's current release for a board lives in a repository; the
/// publisher writes it, devices fetch it. Earlier releases are kept beside it
/// as `history/<version>` for auditing and pruning.
pub fn release_path(channel: &str, board: &str) -> String {
    format!("atomup/{channel}/{board}/release")
}

/// One release of one board on one channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Release {
    pub channel: String,
    pub board: String,
    /// Monotonic across a channel: devices refuse to go backwards.
    pub version: u64,
    /// The OSTree commit (sha256) the release installs.
    pub commit: [u8; 32],
    /// When the vendor published it (unix seconds); also advances a device's trusted time.
    pub timestamp: u64,
    /// After this instant (unix seconds) devices refuse the metadata (freeze attacks).
    pub expires: u64,
    /// Devices running an older version must first install an intermediate release.
    pub min_from_version: u64,
    /// Static deltas the device may fetch, sorted by source, at most one per source.
    pub deltas: Vec<Delta>,
    /// Rollout plan; empty means the whole fleet at once.
    pub waves: Vec<Wave>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum DeltaSource {
    /// A from-scratch delta: installs without any old content.
    Scratch,
    /// A delta from this commit: the device must be running it.
    From([u8; 32]),
}

/// Where a delta lives in the repository and how to check it before use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delta {
    pub from: DeltaSource,
    /// Directory of the delta relative to the repository root (`deltas/…`).
    pub path: String,
    /// Exact size of the (signed) superblock file: the download cap for it.
    pub superblock_size: u64,
    /// sha256 of the superblock file: checked before it is parsed.
    pub superblock_sha256: [u8; 32],
    /// Bytes of all parts: what the device will download in total.
    pub parts_size: u64,
}

impl Delta {
    /// The commit a device must run to use this delta; `None` for from-scratch.
    pub fn source_commit(&self) -> Option<[u8; 32]> {
        match self.from {
            DeltaSource::From(c) => Some(c),
            DeltaSource::Scratch => None,
        }
    }
}

/// From `start` (unix seconds) on, devices whose bucket is below `share` may update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wave {
    pub start: u64,
    pub share: u16,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("release metadata is {0} bytes, over the {MAX_RELEASE_BYTES}-byte cap")]
    TooLarge(usize),
    #[error("release metadata is not UTF-8 text")]
    NotText,
    #[error("release metadata does not start with `{MAGIC}`")]
    BadMagic,
    #[error("line {line}: expected `{expected} …`")]
    MissingField { line: usize, expected: &'static str },
    #[error("line {line}: invalid {what}")]
    Invalid { line: usize, what: &'static str },
    #[error("invalid {what}")]
    InvalidValue { what: &'static str },
    #[error("line {line}: unexpected content after the last field")]
    Trailing { line: usize },
    #[error("more than {0} entries of one kind")]
    TooMany(usize),
    #[error("deltas must be sorted by source with at most one per source")]
    DeltasUnsorted,
    #[error(
        "waves must start strictly later and cover a strictly larger share, up to {FULL_SHARE}"
    )]
    WavesUnordered,
    #[error("release expires before it was published")]
    ExpiresBeforeTimestamp,
    #[error("release is valid for {0} s, more than the {MAX_VALIDITY} s allowed")]
    ValidityTooLong(u64),
    #[error("release metadata is not in canonical form (spacing, order, case or leading zeros)")]
    NotCanonical,
}

impl Release {
    /// The canonical bytes: what the vendor signs and the device checks.
    pub fn to_canonical(&self) -> String {
        let mut s = String::with_capacity(256 + 200 * self.deltas.len());
        // Writing to a String cannot fail.
        let _ = writeln!(s, "{MAGIC}");
        let _ = writeln!(s, "channel {}", self.channel);
        let _ = writeln!(s, "board {}", self.board);
        let _ = writeln!(s, "version {}", self.version);
        let _ = writeln!(s, "commit {}", hex(&self.commit));
        let _ = writeln!(s, "timestamp {}", self.timestamp);
        let _ = writeln!(s, "expires {}", self.expires);
        let _ = writeln!(s, "min-from-version {}", self.min_from_version);
        for d in &self.deltas {
            let from = match d.from {
                DeltaSource::Scratch => "scratch".to_owned(),
                DeltaSource::From(c) => hex(&c),
            };
            let _ = writeln!(
                s,
                "delta {from} {} {} {} {}",
                d.path,
                d.superblock_size,
                hex(&d.superblock_sha256),
                d.parts_size
            );
        }
        for w in &self.waves {
            let _ = writeln!(s, "wave {} {}", w.start, w.share);
        }
        s
    }

    /// Parses canonical release bytes (the body, without signature lines).
    pub fn parse(bytes: &[u8]) -> Result<Release, FormatError> {
        if bytes.len() > MAX_RELEASE_BYTES {
            return Err(FormatError::TooLarge(bytes.len()));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| FormatError::NotText)?;
        let mut lines = Lines::new(text);
        if lines.next_line() != Some(MAGIC) {
            return Err(FormatError::BadMagic);
        }
        let channel = lines.field("channel", parse_label)?;
        let board = lines.field("board", parse_label)?;
        let version = lines.field("version", parse_u64)?;
        let commit = lines.field("commit", parse_hex32)?;
        let timestamp = lines.field("timestamp", parse_u64)?;
        let expires = lines.field("expires", parse_u64)?;
        let min_from_version = lines.field("min-from-version", parse_u64)?;
        let mut deltas = Vec::new();
        while lines.peek_key() == Some("delta") {
            if deltas.len() == MAX_DELTAS {
                return Err(FormatError::TooMany(MAX_DELTAS));
            }
            deltas.push(lines.field("delta", parse_delta)?);
        }
        let mut waves = Vec::new();
        while lines.peek_key() == Some("wave") {
            if waves.len() == MAX_WAVES {
                return Err(FormatError::TooMany(MAX_WAVES));
            }
            waves.push(lines.field("wave", parse_wave)?);
        }
        if lines.next_line().is_some() {
            return Err(FormatError::Trailing { line: lines.number });
        }
        let release = Release {
            channel,
            board,
            version,
            commit,
            timestamp,
            expires,
            min_from_version,
            deltas,
            waves,
        };
        release.validate()?;
        // Canonical form: one accepted byte string per release, so what was signed
        // is exactly what every device reads.
        if release.to_canonical().as_bytes() != bytes {
            return Err(FormatError::NotCanonical);
        }
        Ok(release)
    }

    /// Rules a publisher must follow too: checked before signing and after parsing.
    pub fn validate(&self) -> Result<(), FormatError> {
        let bad = |what| FormatError::InvalidValue { what };
        if parse_label(&self.channel).is_none() {
            return Err(bad("channel"));
        }
        if parse_label(&self.board).is_none() {
            return Err(bad("board"));
        }
        if self.expires <= self.timestamp {
            return Err(FormatError::ExpiresBeforeTimestamp);
        }
        if self.expires - self.timestamp > MAX_VALIDITY {
            return Err(FormatError::ValidityTooLong(self.expires - self.timestamp));
        }
        if self.deltas.len() > MAX_DELTAS || self.waves.len() > MAX_WAVES {
            return Err(FormatError::TooMany(MAX_DELTAS.max(MAX_WAVES)));
        }
        if self.deltas.iter().any(|d| !is_safe_path(&d.path)) {
            return Err(bad("delta path"));
        }
        if self.deltas.windows(2).any(|w| w[0].from >= w[1].from) {
            return Err(FormatError::DeltasUnsorted);
        }
        let share_ok = |w: &Wave| (1..=FULL_SHARE).contains(&w.share);
        if !self.waves.iter().all(share_ok)
            || self
                .waves
                .windows(2)
                .any(|w| w[0].start >= w[1].start || w[0].share >= w[1].share)
        {
            return Err(FormatError::WavesUnordered);
        }
        Ok(())
    }

    /// The delta a device running `commit` should fetch: one from its commit if
    /// published, else the from-scratch one.
    pub fn delta_for(&self, commit: &[u8; 32]) -> Option<&Delta> {
        self.deltas
            .iter()
            .find(|d| d.from == DeltaSource::From(*commit))
            .or_else(|| self.deltas.iter().find(|d| d.from == DeltaSource::Scratch))
    }
}

/// Line reader that remembers line numbers for errors.
struct Lines<'a> {
    rest: &'a str,
    number: usize,
}

impl<'a> Lines<'a> {
    fn new(text: &'a str) -> Self {
        Lines {
            rest: text,
            number: 0,
        }
    }

    fn next_line(&mut self) -> Option<&'a str> {
        if self.rest.is_empty() {
            return None;
        }
        self.number += 1;
        let (line, rest) = self.rest.split_once('\n').unwrap_or((self.rest, ""));
        self.rest = rest;
        Some(line)
    }

    fn peek_key(&self) -> Option<&'a str> {
        let line = self.rest.split('\n').next()?;
        line.split(' ').next()
    }

    fn field<T>(
        &mut self,
        key: &'static str,
        parse: impl Fn(&'a str) -> Option<T>,
    ) -> Result<T, FormatError> {
        let line = self.next_line();
        let number = self.number;
        let value = line
            .and_then(|l| l.strip_prefix(key))
            .and_then(|l| l.strip_prefix(' '))
            .ok_or(FormatError::MissingField {
                line: number,
                expected: key,
            })?;
        parse(value).ok_or(FormatError::Invalid {
            line: number,
            what: key,
        })
    }
}

fn parse_label(s: &str) -> Option<String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    ok.then(|| s.to_owned())
}

fn parse_u64(s: &str) -> Option<u64> {
    // Canonical decimal only: no sign, no leading zeros (checked by re-serializing).
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    atomup_ostree::hex::decode_lower(s, &mut out)?;
    Some(out)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    atomup_ostree::hex::encode(bytes)
}

/// A repository-relative path of plain names: no absolute path, no `.`/`..`,
/// nothing a device could be tricked into resolving outside the repository.
/// The characters are those of OSTree's delta names (modified base64: `+`,
/// `_`, alphanumerics) and `.`/`-`.
fn is_safe_path(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 255
        && p.split('/').all(|c| {
            !c.is_empty()
                && c != "."
                && c != ".."
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-+".contains(&b))
        })
}

fn parse_delta(s: &str) -> Option<Delta> {
    let mut it = s.split(' ');
    let from = match it.next()? {
        "scratch" => DeltaSource::Scratch,
        hex => DeltaSource::From(parse_hex32(hex)?),
    };
    let path = it.next()?;
    if !is_safe_path(path) {
        return None;
    }
    let delta = Delta {
        from,
        path: path.to_owned(),
        superblock_size: parse_u64(it.next()?)?,
        superblock_sha256: parse_hex32(it.next()?)?,
        parts_size: parse_u64(it.next()?)?,
    };
    it.next().is_none().then_some(delta)
}

fn parse_wave(s: &str) -> Option<Wave> {
    let (start, share) = s.split_once(' ')?;
    let share: u16 = parse_u64(share)?.try_into().ok()?;
    Some(Wave {
        start: parse_u64(start)?,
        share,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn sample() -> Release {
        Release {
            channel: "stable".into(),
            board: "qemu-virt".into(),
            version: 7,
            commit: [0xab; 32],
            timestamp: 1_700_000_000,
            expires: 1_700_604_800,
            min_from_version: 3,
            deltas: vec![
                Delta {
                    from: DeltaSource::Scratch,
                    path: "deltas/q8/abc".into(),
                    superblock_size: 1234,
                    superblock_sha256: [1; 32],
                    parts_size: 99_000,
                },
                Delta {
                    from: DeltaSource::From([0x11; 32]),
                    path: "deltas/E+/xy_z-abc".into(),
                    superblock_size: 800,
                    superblock_sha256: [2; 32],
                    parts_size: 4_000,
                },
            ],
            waves: vec![
                Wave {
                    start: 1_700_000_000,
                    share: 100,
                },
                Wave {
                    start: 1_700_086_400,
                    share: 10_000,
                },
            ],
        }
    }

    /// A release survives serialize → parse → serialize byte for byte.
    #[test]
    fn round_trip_is_byte_exact() {
        let text = sample().to_canonical();
        let parsed = Release::parse(text.as_bytes()).unwrap();
        assert_eq!(parsed, sample());
        assert_eq!(parsed.to_canonical(), text);
    }

    /// Every non-canonical spelling of a valid release is refused.
    #[test]
    fn non_canonical_spellings_are_refused() {
        let text = sample().to_canonical();
        let variants = [
            text.replace("version 7", "version 07"),
            text.replace("version 7", "version  7"),
            text.replace('\n', "\r\n"),
            text.replace(&hex(&[0xab; 32]), &hex(&[0xab; 32]).to_uppercase()),
            text.trim_end().to_owned(),
            format!("{text}\n"),
            text.replace("version 7\n", "version 7\nextra 1\n"),
            text.replace(
                "channel stable\nboard qemu-virt\n",
                "board qemu-virt\nchannel stable\n",
            ),
        ];
        for v in variants {
            assert!(Release::parse(v.as_bytes()).is_err(), "accepted: {v:?}");
        }
    }

    /// Delta paths that could point outside the repository are refused.
    #[test]
    fn delta_paths_with_traversal_are_refused() {
        for path in ["../x", "/abs", "a//b", "a/./b", "a b", "a\\b", ""] {
            let mut r = sample();
            r.deltas[0].path = path.into();
            let text = r.to_canonical();
            assert!(
                Release::parse(text.as_bytes()).is_err(),
                "accepted {path:?}"
            );
        }
    }

    /// Waves must grow in time and share; shares stay within 1..=10000.
    #[test]
    fn unordered_waves_are_refused() {
        for waves in [
            vec![
                Wave {
                    start: 5,
                    share: 100,
                },
                Wave {
                    start: 5,
                    share: 200,
                },
            ],
            vec![
                Wave {
                    start: 5,
                    share: 200,
                },
                Wave {
                    start: 6,
                    share: 200,
                },
            ],
            vec![Wave { start: 5, share: 0 }],
            vec![Wave {
                start: 5,
                share: 10_001,
            }],
        ] {
            let mut r = sample();
            r.waves = waves;
            assert_eq!(r.validate(), Err(FormatError::WavesUnordered));
        }
    }

    /// Deltas out of order or duplicated per source are refused.
    #[test]
    fn duplicate_delta_sources_are_refused() {
        let mut r = sample();
        r.deltas.swap(0, 1);
        assert_eq!(r.validate(), Err(FormatError::DeltasUnsorted));
        let mut r = sample();
        r.deltas[1].from = DeltaSource::Scratch;
        assert_eq!(r.validate(), Err(FormatError::DeltasUnsorted));
    }

    /// The device picks the delta from its own commit, else the from-scratch one.
    #[test]
    fn delta_for_prefers_the_running_commit() {
        let r = sample();
        assert_eq!(r.delta_for(&[0x11; 32]).unwrap().path, "deltas/E+/xy_z-abc");
        assert_eq!(r.delta_for(&[0x22; 32]).unwrap().from, DeltaSource::Scratch);
    }

    /// A validity above 90 days is refused (publisher and device alike).
    #[test]
    fn validity_beyond_the_bound_is_refused() {
        let mut r = sample();
        r.expires = r.timestamp + MAX_VALIDITY;
        assert_eq!(r.validate(), Ok(()));
        r.expires += 1;
        assert_eq!(
            r.validate(),
            Err(FormatError::ValidityTooLong(MAX_VALIDITY + 1))
        );
        assert!(Release::parse(r.to_canonical().as_bytes()).is_err());
    }

    /// Oversized input is refused before any parsing.
    #[test]
    fn oversized_metadata_is_refused() {
        let big = vec![b'a'; MAX_RELEASE_BYTES + 1];
        assert_eq!(
            Release::parse(&big),
            Err(FormatError::TooLarge(MAX_RELEASE_BYTES + 1))
        );
    }

    /// A release cut anywhere but after a whole delta or wave line is refused, without
    /// panicking. (Dropping whole trailing lines is caught by the signature, see `check`.)
    #[test]
    fn truncation_inside_a_line_is_refused() {
        let text = sample().to_canonical();
        for n in 0..text.len() {
            let prefix = &text.as_bytes()[..n];
            let accepted = Release::parse(prefix).is_ok();
            let whole_optional_line =
                prefix.ends_with(b"\n") && n > text.find("\ndelta ").unwrap_or(usize::MAX);
            assert!(!accepted || whole_optional_line, "prefix {n} accepted");
        }
    }
}
