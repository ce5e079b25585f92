//! The status report a device POSTs to the vendor's report URL after a poll
//! that did something, after a confirmation and after a rollback. One JSON
//! object, schema version 1 (the crate README documents every field). The
//! device is named by an id derived from its machine id, never the machine id
//! itself (systemd's advice: an application-specific id, so reports cannot be
//! joined with other data keyed by the machine id).

use crate::json::{array, Object, Value};
use sha2::{Digest, Sha256};

pub const SCHEMA: u64 = 1;

/// Why a report is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A poll found a release and installed it (on trial, reboot pending).
    Installed,
    /// A poll failed or refused a release (the error says why).
    Failed,
    /// The booted trial slot passed its health checks.
    Confirmed,
    /// A trial slot failed (health) or ran out of attempts; the device is
    /// back on its confirmed slot.
    RolledBack,
}

impl Event {
    pub fn name(self) -> &'static str {
        match self {
            Event::Installed => "installed",
            Event::Failed => "failed",
            Event::Confirmed => "confirmed",
            Event::RolledBack => "rolled-back",
        }
    }
}

/// One rollback this device went through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rollback {
    pub at: u64,
    pub version: Option<u64>,
    pub commit: Option<String>,
    pub reason: String,
}

/// A check of the last health run that did not pass (failed or ran past
/// its limit): on a confirmed boot, the wanted checks that failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailedCheck {
    /// `required` or `wanted`.
    pub kind: String,
    pub name: String,
    /// `failed` or `timeout`.
    pub outcome: String,
    pub detail: String,
}

/// The device's last health run (`<state dir>/health/last`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    pub slot: char,
    pub version: Option<u64>,
    /// `passed`, `failed`, or `running` (no verdict: cut by a reset).
    pub verdict: String,
    pub failed: Vec<FailedCheck>,
}

/// Data used this month on a metered link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Budget {
    /// `YYYY-MM` (UTC).
    pub month: String,
    pub used: u64,
    pub monthly: Option<u64>,
}

/// A status report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub event: Event,
    /// Unix seconds when it was made.
    pub at: u64,
    pub device_id: String,
    pub agent_version: String,
    pub board: Option<String>,
    pub channel: Option<String>,
    pub booted_slot: Option<char>,
    pub commit: Option<String>,
    pub version: Option<u64>,
    /// The release waiting in the other slot (on trial next boot), if any.
    pub pending_version: Option<u64>,
    pub last_error: Option<String>,
    pub rollbacks: Vec<Rollback>,
    /// The last health run, if the device has one on record.
    pub health: Option<Health>,
    pub budget: Option<Budget>,
    /// Reports dropped before this one was made because the queue was full.
    pub reports_dropped: u64,
}

/// The id a device reports under: the first 16 bytes, in hex, of
/// `sha256("atomup device id\0" + machine id)` (the machine id's surrounding
/// whitespace removed).
pub fn device_id(machine_id: &[u8]) -> String {
    let trimmed = machine_id.trim_ascii();
    let mut h = Sha256::new();
    h.update(b"atomup device id\0");
    h.update(trimmed);
    h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Report {
    pub fn to_json(&self) -> String {
        let slot = self.booted_slot.map(|c| c.to_string());
        let rollbacks = array(self.rollbacks.iter().map(|r| {
            Object::new()
                .field("at", r.at)
                .field("version", r.version)
                .field("commit", r.commit.as_deref())
                .field("reason", r.reason.as_str())
                .finish()
        }));
        let health = self.health.as_ref().map(|h| {
            let slot = h.slot.to_string();
            let failed = array(h.failed.iter().map(|c| {
                Object::new()
                    .field("kind", c.kind.as_str())
                    .field("name", c.name.as_str())
                    .field("outcome", c.outcome.as_str())
                    .field("detail", c.detail.as_str())
                    .finish()
            }));
            Object::new()
                .field("slot", slot.as_str())
                .field("version", h.version)
                .field("verdict", h.verdict.as_str())
                .field("failed", Value::Raw(&failed))
                .finish()
        });
        let budget = self.budget.as_ref().map(|b| {
            Object::new()
                .field("month", b.month.as_str())
                .field("used", b.used)
                .field("monthly", b.monthly)
                .finish()
        });
        Object::new()
            .field("schema", SCHEMA)
            .field("event", self.event.name())
            .field("at", self.at)
            .field("device_id", self.device_id.as_str())
            .field("agent_version", self.agent_version.as_str())
            .field("board", self.board.as_deref())
            .field("channel", self.channel.as_deref())
            .field("booted_slot", slot.as_deref())
            .field("commit", self.commit.as_deref())
            .field("version", self.version)
            .field("pending_version", self.pending_version)
            .field("last_error", self.last_error.as_deref())
            .field("rollbacks", Value::Raw(&rollbacks))
            .field("health", health.as_deref().map_or(Value::Null, Value::Raw))
            .field("budget", budget.as_deref().map_or(Value::Null, Value::Raw))
            .field("reports_dropped", self.reports_dropped)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The device id is stable, does not reveal the machine id, and ignores
    /// the trailing newline `/etc/machine-id` has.
    #[test]
    fn device_id_is_derived_not_copied() {
        let a = device_id(b"0123456789abcdef0123456789abcdef\n");
        assert_eq!(a, device_id(b"0123456789abcdef0123456789abcdef"));
        assert_eq!(a.len(), 32);
        assert!(!a.contains("0123456789abcdef"));
        assert_ne!(a, device_id(b"0123456789abcdef0123456789abcdee"));
    }

    /// Every documented field is present with its type, checked by a real parser.
    #[test]
    fn report_has_the_documented_schema() {
        let r = Report {
            event: Event::RolledBack,
            at: 1_800_000_000,
            device_id: device_id(b"m"),
            agent_version: "0.1.0".into(),
            board: Some("qemu-virt".into()),
            channel: Some("stable".into()),
            booted_slot: Some('B'),
            commit: Some("ab".repeat(32)),
            version: Some(2),
            pending_version: None,
            last_error: Some("slot A failed its health check".into()),
            rollbacks: vec![Rollback {
                at: 1_799_999_000,
                version: Some(3),
                commit: None,
                reason: "health check failed".into(),
            }],
            health: Some(Health {
                slot: 'A',
                version: Some(3),
                verdict: "failed".into(),
                failed: vec![FailedCheck {
                    kind: "required".into(),
                    name: "20-app".into(),
                    outcome: "timeout".into(),
                    detail: "did not finish within 1m (killed)".into(),
                }],
            }),
            budget: Some(Budget {
                month: "2027-01".into(),
                used: 123,
                monthly: Some(1 << 20),
            }),
            reports_dropped: 0,
        };
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(v["schema"], 1);
        assert_eq!(v["event"], "rolled-back");
        assert_eq!(v["booted_slot"], "B");
        assert_eq!(v["version"], 2);
        assert!(v["pending_version"].is_null());
        assert_eq!(v["rollbacks"][0]["version"], 3);
        assert_eq!(v["rollbacks"][0]["reason"], "health check failed");
        assert_eq!(v["health"]["slot"], "A");
        assert_eq!(v["health"]["verdict"], "failed");
        assert_eq!(v["health"]["failed"][0]["outcome"], "timeout");
        assert_eq!(v["health"]["failed"][0]["name"], "20-app");
        assert_eq!(v["budget"]["used"], 123);
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        let mut want = vec![
            "schema",
            "event",
            "at",
            "device_id",
            "agent_version",
            "board",
            "channel",
            "booted_slot",
            "commit",
            "version",
            "pending_version",
            "last_error",
            "rollbacks",
            "health",
            "budget",
            "reports_dropped",
        ];
        let mut keys = keys;
        keys.sort();
        want.sort();
        assert_eq!(keys, want);
    }
}
