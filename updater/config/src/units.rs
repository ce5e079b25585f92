//! The two kinds of quantity a configuration holds besides strings and
//! paths: durations and byte counts. Both accept a bare integer (seconds,
//! bytes) or a string with a unit, and print back in the largest unit that
//! states them exactly, so `atomup config` shows what the device will use.

use std::fmt;

/// A duration in whole seconds: `90`, `"90s"`, `"15m"`, `"6h"`, `"1d"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Seconds(pub u64);

/// A byte count: `65536`, `"64KiB"`, `"10MiB"`, `"1GiB"`, `"500kB"`, `"2MB"`, `"1GB"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bytes(pub u64);

const TIME_UNITS: [(&str, u64); 4] = [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)];
const BYTE_UNITS: [(&str, u64); 6] = [
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("GB", 1_000_000_000),
    ("MB", 1_000_000),
    ("kB", 1_000),
];

fn parse_with(text: &str, units: &[(&str, u64)], what: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let bad = || {
        let names: Vec<&str> = units.iter().map(|u| u.0).collect();
        format!(
            "`{text}` is not a {what} (a whole number with one of the units {})",
            names.join(", ")
        )
    };
    if digits.is_empty() {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let unit = unit.trim();
    let scale = if unit.is_empty() {
        1
    } else {
        units.iter().find(|u| u.0 == unit).ok_or_else(bad)?.1
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("`{text}` is too large"))
}

impl Seconds {
    pub fn parse(text: &str) -> Result<Seconds, String> {
        parse_with(text, &TIME_UNITS, "duration").map(Seconds)
    }

    pub fn as_duration(self) -> std::time::Duration {
        std::time::Duration::from_secs(self.0)
    }
}

impl Bytes {
    pub fn parse(text: &str) -> Result<Bytes, String> {
        parse_with(text, &BYTE_UNITS, "byte count").map(Bytes)
    }
}

fn show(n: u64, units: &[(&str, u64)], bare: &str, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    for (name, scale) in units {
        if n >= *scale && n.is_multiple_of(*scale) {
            return write!(f, "{}{name}", n / scale);
        }
    }
    write!(f, "{n}{bare}")
}

impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        show(self.0, &TIME_UNITS, "s", f)
    }
}

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Binary units first: a power of two prints as KiB/MiB, not as kB.
        show(self.0, &BYTE_UNITS, "", f)
    }
}

/// Deserializes from an integer or a string with a unit.
macro_rules! quantity {
    ($ty:ident, $expecting:literal) => {
        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl serde::de::Visitor<'_> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<$ty, E> {
                        Ok($ty(v))
                    }
                    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<$ty, E> {
                        u64::try_from(v)
                            .map($ty)
                            .map_err(|_| E::custom(format!("{v} is negative")))
                    }
                    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<$ty, E> {
                        $ty::parse(v).map_err(E::custom)
                    }
                }
                d.deserialize_any(V)
            }
        }
    };
}

quantity!(
    Seconds,
    "a duration: seconds, or a string such as \"90s\", \"15m\", \"6h\", \"1d\""
);
quantity!(
    Bytes,
    "a byte count, or a string such as \"64KiB\", \"10MiB\", \"1GB\""
);

#[cfg(test)]
mod tests {
    use super::*;

    /// Every unit parses, and each value prints back in the unit that states it exactly.
    #[test]
    fn quantities_parse_and_print_back_exactly() {
        for (text, secs, shown) in [
            ("90", 90, "90s"),
            ("90s", 90, "90s"),
            ("15m", 900, "15m"),
            ("6h", 21_600, "6h"),
            ("1d", 86_400, "1d"),
            ("3600", 3_600, "1h"),
        ] {
            let s = Seconds::parse(text).unwrap();
            assert_eq!((s.0, s.to_string().as_str()), (secs, shown), "{text}");
        }
        for (text, bytes, shown) in [
            ("65536", 65_536, "64KiB"),
            ("64KiB", 65_536, "64KiB"),
            ("10MiB", 10 << 20, "10MiB"),
            ("1GiB", 1 << 30, "1GiB"),
            ("500kB", 500_000, "500kB"),
            ("2MB", 2_000_000, "2MB"),
            ("1000", 1_000, "1kB"),
            ("7", 7, "7"),
        ] {
            let b = Bytes::parse(text).unwrap();
            assert_eq!((b.0, b.to_string().as_str()), (bytes, shown), "{text}");
        }
    }

    /// Units that do not exist, fractions, signs and overflow are refused with the unit list.
    #[test]
    fn malformed_quantities_are_refused() {
        for bad in [
            "",
            "h",
            "1.5h",
            "-1",
            "6 hours",
            "1w",
            "99999999999999999999d",
        ] {
            assert!(Seconds::parse(bad).is_err(), "{bad}");
        }
        assert!(Seconds::parse("1w").unwrap_err().contains("d, h, m, s"));
        for bad in ["", "MiB", "1.5MiB", "1mb", "1KB", "18446744073709551615GiB"] {
            assert!(Bytes::parse(bad).is_err(), "{bad}");
        }
    }
}
