//! Data budgets for metered links: a ceiling per update and a ceiling per
//! calendar month (UTC). The month's usage is a small record in the state
//! directory that survives reboots; this module decides and formats it, the
//! agent reads and replaces the file.
//!
//! Rules, in the order they are applied before anything is downloaded:
//! 1. An update whose delta (superblock + parts, sizes from the signed
//!    release) exceeds the per-update ceiling is refused, with both numbers.
//! 2. An update that would take the month's usage past the monthly ceiling is
//!    refused, with the usage, the update's size and the ceiling.
//! 3. Bytes are charged as they arrive (the agent flushes the record
//!    periodically and at the end), so a download cut short still counts what
//!    it used, and a resumed one pays only for what it fetches again.

use std::fmt;

/// A calendar month, UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Month {
    pub year: i32,
    pub month: u8,
}

impl Month {
    /// The month holding unix time `t` (proleptic Gregorian, UTC).
    pub fn of(t: u64) -> Month {
        // Howard Hinnant's days_to_civil.
        let z = (t / 86_400) as i64 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
        let year = (yoe + era * 400 + i64::from(month <= 2)) as i32;
        Month { year, month }
    }
}

impl fmt::Display for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

/// Usage so far in one month.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    pub month: Month,
    pub bytes: u64,
}

impl Usage {
    /// The usage to account against at time `now`: this record's if it is of
    /// the current month, else a fresh month (a new month starts at zero).
    pub fn current(record: Option<Usage>, now: u64) -> Usage {
        let month = Month::of(now);
        match record {
            Some(u) if u.month == month => u,
            _ => Usage { month, bytes: 0 },
        }
    }

    pub fn charge(&mut self, bytes: u64) {
        self.bytes = self.bytes.saturating_add(bytes);
    }
}

/// The ceilings, from the configuration (`None`: no limit).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Budgets {
    pub per_update: Option<u64>,
    pub monthly: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OverBudget {
    #[error("the update needs {need} bytes, over the per-update budget of {budget} bytes")]
    PerUpdate { need: u64, budget: u64 },
    #[error(
        "the update needs {need} bytes and {used} bytes were used in {month}, over the monthly budget of {budget} bytes"
    )]
    Monthly {
        need: u64,
        used: u64,
        budget: u64,
        month: Month,
    },
}

impl Budgets {
    /// Rules 1 and 2: may an update that downloads `need` more bytes start?
    pub fn admit(&self, need: u64, usage: &Usage) -> Result<(), OverBudget> {
        if let Some(budget) = self.per_update {
            if need > budget {
                return Err(OverBudget::PerUpdate { need, budget });
            }
        }
        if let Some(budget) = self.monthly {
            if usage.bytes.saturating_add(need) > budget {
                return Err(OverBudget::Monthly {
                    need,
                    used: usage.bytes,
                    budget,
                    month: usage.month,
                });
            }
        }
        Ok(())
    }
}

/// The record's text: `format=1`, `month=YYYY-MM`, `bytes=N`.
pub fn serialize(u: &Usage) -> String {
    format!("format=1\nmonth={}\nbytes={}\n", u.month, u.bytes)
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("budget record: {0}")]
pub struct RecordError(&'static str);

/// Parses the record strictly: a damaged record is an error (the agent then
/// refuses to download on a metered link rather than guess the usage).
pub fn parse(text: &str) -> Result<Usage, RecordError> {
    let (mut format, mut month, mut bytes) = (None, None, None);
    for line in text.lines().filter(|l| !l.is_empty()) {
        let (k, v) = line
            .split_once('=')
            .ok_or(RecordError("line without `=`"))?;
        let slot = match k {
            "format" => &mut format,
            "month" => &mut month,
            "bytes" => &mut bytes,
            _ => return Err(RecordError("unknown key")),
        };
        if slot.replace(v).is_some() {
            return Err(RecordError("duplicate key"));
        }
    }
    if format != Some("1") {
        return Err(RecordError("format is not 1"));
    }
    let month = month.ok_or(RecordError("no month"))?;
    let (y, m) = month
        .split_once('-')
        .filter(|(y, m)| y.len() == 4 && m.len() == 2)
        .ok_or(RecordError("month is not YYYY-MM"))?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(y) || !digits(m) {
        return Err(RecordError("month is not YYYY-MM"));
    }
    let month = Month {
        year: y.parse().map_err(|_| RecordError("bad year"))?,
        month: m.parse().map_err(|_| RecordError("bad month"))?,
    };
    if !(1..=12).contains(&month.month) {
        return Err(RecordError("month out of range"));
    }
    let bytes = bytes.ok_or(RecordError("no bytes"))?;
    if !digits(bytes) {
        return Err(RecordError("bytes is not a number"));
    }
    let bytes = bytes
        .parse()
        .map_err(|_| RecordError("bytes out of range"))?;
    Ok(Usage { month, bytes })
}

/// Fuzz/corpus entry point: whatever parses must serialize back to the same text.
pub fn fuzz(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(u) = parse(text) {
            assert_eq!(parse(&serialize(&u)), Ok(u));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Civil months from unix time, across leap years and year ends.
    #[test]
    fn months_of_unix_times() {
        let m = |t| Month::of(t).to_string();
        assert_eq!(m(0), "1970-01");
        assert_eq!(m(951_782_400), "2000-02"); // 2000-02-29 00:00
        assert_eq!(m(951_868_799), "2000-02"); // 2000-02-29 23:59:59
        assert_eq!(m(951_868_800), "2000-03");
        assert_eq!(m(1_798_761_599), "2026-12"); // 2026-12-31 23:59:59
        assert_eq!(m(1_798_761_600), "2027-01");
        assert_eq!(m(4_107_542_400), "2100-03"); // 2100 is not a leap year
    }

    /// Rule 1: over the per-update ceiling is refused with both numbers.
    #[test]
    fn per_update_budget_refuses_with_both_numbers() {
        let b = Budgets {
            per_update: Some(1000),
            monthly: None,
        };
        let u = Usage::current(None, 0);
        assert_eq!(b.admit(1000, &u), Ok(()));
        let e = b.admit(1001, &u).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the update needs 1001 bytes, over the per-update budget of 1000 bytes"
        );
    }

    /// Rule 2: the month's usage counts; a new month starts at zero.
    #[test]
    fn monthly_budget_counts_the_month_and_resets_next_month() {
        let b = Budgets {
            per_update: None,
            monthly: Some(10_000),
        };
        let jan = 1_798_761_600; // 2027-01-01
        let mut u = Usage::current(None, jan);
        u.charge(9_000);
        assert_eq!(b.admit(1_000, &u), Ok(()));
        assert_eq!(
            b.admit(1_001, &u).unwrap_err().to_string(),
            "the update needs 1001 bytes and 9000 bytes were used in 2027-01, over the monthly budget of 10000 bytes"
        );
        let feb = Usage::current(Some(u), jan + 31 * 86_400);
        assert_eq!(feb.bytes, 0);
        assert_eq!(feb.month.to_string(), "2027-02");
        assert_eq!(Usage::current(Some(u), jan + 86_400), u);
    }

    /// The record round-trips and anything damaged is refused, never read as zero.
    #[test]
    fn record_round_trips_and_damage_is_refused() {
        let u = Usage {
            month: Month {
                year: 2027,
                month: 1,
            },
            bytes: 123,
        };
        assert_eq!(parse(&serialize(&u)), Ok(u));
        for bad in [
            "",
            "format=1\nmonth=2027-01\n",
            "format=2\nmonth=2027-01\nbytes=1\n",
            "format=1\nmonth=2027-13\nbytes=1\n",
            "format=1\nmonth=27-01\nbytes=1\n",
            "format=1\nmonth=2027-01\nbytes=-1\n",
            "format=1\nmonth=2027-01\nbytes=1.5\n",
            "format=1\nmonth=2027-01\nbytes=1\nbytes=2\n",
            "format=1\nmonth=2027-01\nbytes=1\nextra=1\n",
            "format=1\nmonth=2027-01\nbytes=99999999999999999999\n",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
