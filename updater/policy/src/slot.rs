//! The slot state machine of the A/B env contract, as pure functions: each
//! transition takes the env state read from disk and returns the state to
//! write in ONE atomic write, or nothing to write. Keeping it free of I/O
//! lets the property tests below crash the device at every write.

use atomup_bootenv::Vars;
use std::fmt;

/// The contract's variable names, defined once in `atomup-bootenv`.
pub use atomup_bootenv::names::{LEFT as VAR_LEFT, ORDER as VAR_ORDER, TRIAL as VAR_TRIAL};
/// Attempts a new slot gets at install done unless told otherwise.
pub const DEFAULT_ATTEMPTS: u8 = 3;
/// `ATOMUP_LEFT` is one decimal digit: the GRUB script decrements by comparison.
pub const MAX_ATTEMPTS: u8 = 9;

/// A root slot. `!slot` is the other one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub const ALL: [Slot; 2] = [Slot::A, Slot::B];

    pub fn letter(self) -> &'static str {
        match self {
            Slot::A => "A",
            Slot::B => "B",
        }
    }

    pub fn parse(s: &str) -> Option<Slot> {
        match s {
            "A" => Some(Slot::A),
            "B" => Some(Slot::B),
            _ => None,
        }
    }
}

impl std::ops::Not for Slot {
    type Output = Slot;
    fn not(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.letter())
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StateError {
    #[error("env variable {var} has an invalid value {value:?}")]
    Invalid { var: &'static str, value: String },
    #[error("attempts must be 1..={MAX_ATTEMPTS}, got {0}")]
    Attempts(u8),
    #[error("slot {0} is not on trial and is the only slot in the boot order: refusing to mark it bad (the device would have nothing confirmed to boot)")]
    LastConfirmedSlot(Slot),
    #[error("cannot roll back: the other slot {0} holds no confirmed-good commit (not in the boot order, or on trial)")]
    NoGoodOtherSlot(Slot),
}

/// The three contract variables, validated.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BootState {
    /// Slots to try, in order; no duplicates, at most two.
    pub order: Vec<Slot>,
    pub trial: Option<Slot>,
    pub left: u8,
}

/// What the bootloader does on one power-on (the contract's algorithm).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootChoice {
    pub slot: Slot,
    pub trial: bool,
    /// No slot qualified: last-resort boot of A with `atomup.fallback=1`.
    pub fallback: bool,
    /// The env write the bootloader does first (trial boots only).
    pub write: Option<BootState>,
}

/// What the agent learns from a boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootOutcome {
    /// Booted a confirmed slot, or a trial slot still counting: nothing to write.
    Normal,
    /// The trial slot ran out of attempts and the bootloader fell back to
    /// `booted`: write the state, and record a rollback from `failed`.
    Fallback { failed: Slot, write: BootState },
}

impl BootState {
    /// Reads the contract variables; a missing variable is empty / 0.
    pub fn from_vars(vars: &Vars) -> Result<BootState, StateError> {
        Self::from_lookup(|k| vars.get_bytes(k.as_bytes()))
    }

    pub fn from_lookup<'a>(
        get: impl Fn(&str) -> Option<&'a [u8]>,
    ) -> Result<BootState, StateError> {
        let text = |var: &'static str| -> Result<&str, StateError> {
            let raw = get(var).unwrap_or_default();
            std::str::from_utf8(raw).map_err(|_| StateError::Invalid {
                var,
                value: String::from_utf8_lossy(raw).into_owned(),
            })
        };
        let bad = |var: &'static str, value: &str| StateError::Invalid {
            var,
            value: value.to_owned(),
        };
        let order_s = text(VAR_ORDER)?;
        let order: Vec<Slot> = match order_s {
            "" => vec![],
            "A" => vec![Slot::A],
            "B" => vec![Slot::B],
            "A B" => vec![Slot::A, Slot::B],
            "B A" => vec![Slot::B, Slot::A],
            other => return Err(bad(VAR_ORDER, other)),
        };
        let trial_s = text(VAR_TRIAL)?;
        let trial = match trial_s {
            "" => None,
            s => Some(Slot::parse(s).ok_or_else(|| bad(VAR_TRIAL, s))?),
        };
        let left_s = text(VAR_LEFT)?;
        let left = match left_s.as_bytes() {
            [] => 0,
            [d @ b'0'..=b'9'] => d - b'0',
            _ => return Err(bad(VAR_LEFT, left_s)),
        };
        Ok(BootState { order, trial, left })
    }

    /// The three variables as the env stores them.
    pub fn to_pairs(&self) -> [(&'static str, String); 3] {
        let order: Vec<&str> = self.order.iter().map(|s| s.letter()).collect();
        [
            (VAR_ORDER, order.join(" ")),
            (
                VAR_TRIAL,
                self.trial
                    .map(|s| s.letter().to_owned())
                    .unwrap_or_default(),
            ),
            (VAR_LEFT, self.left.to_string()),
        ]
    }

    /// Writes the three variables into `vars`, keeping everything else.
    pub fn apply_to(&self, vars: &mut Vars) -> Result<(), atomup_bootenv::VarsError> {
        for (k, v) in self.to_pairs() {
            vars.set(k, &v)?;
        }
        Ok(())
    }

    /// A slot the bootloader boots without counting: in the order, not on trial.
    pub fn is_confirmed(&self, slot: Slot) -> bool {
        self.order.contains(&slot) && self.trial != Some(slot)
    }

    fn without(&self, slot: Slot) -> Vec<Slot> {
        self.order.iter().copied().filter(|&s| s != slot).collect()
    }

    /// Start install into `x`: `x` leaves the order before a byte of it is
    /// written, so a half-written slot is never booted.
    pub fn install_start(&self, x: Slot) -> BootState {
        let trial = self.trial.filter(|&t| t != x);
        // LEFT only means something for a trial; keep it if the trial survives.
        let left = if trial.is_some() { self.left } else { 0 };
        BootState {
            order: self.without(x),
            trial,
            left,
        }
    }

    /// Install done into `x`: `x` first in order, on trial with `attempts`.
    pub fn install_done(&self, x: Slot, attempts: u8) -> Result<BootState, StateError> {
        if attempts == 0 || attempts > MAX_ATTEMPTS {
            return Err(StateError::Attempts(attempts));
        }
        let mut order = vec![x];
        if self.order.contains(&!x) {
            order.push(!x);
        }
        Ok(BootState {
            order,
            trial: Some(x),
            left: attempts,
        })
    }

    /// The contract's bootloader algorithm; pure so tests can run it.
    pub fn boot(&self) -> BootChoice {
        for &s in &self.order {
            if Some(s) == self.trial {
                if let Some(left) = self.left.checked_sub(1) {
                    let write = BootState {
                        left,
                        ..self.clone()
                    };
                    return BootChoice {
                        slot: s,
                        trial: true,
                        fallback: false,
                        write: Some(write),
                    };
                }
                continue;
            }
            return BootChoice {
                slot: s,
                trial: false,
                fallback: false,
                write: None,
            };
        }
        BootChoice {
            slot: Slot::A,
            trial: false,
            fallback: true,
            write: None,
        }
    }

    /// The slot the env makes the running system: the one the bootloader
    /// boots next without counting an attempt (the first confirmed slot it
    /// reaches). `None` when the next boot is a trial or the last-resort
    /// fallback. An update never writes this slot, whatever the kernel
    /// command line claims booted.
    pub fn primary_confirmed(&self) -> Option<Slot> {
        let c = self.boot();
        (!c.fallback && !c.trial).then_some(c.slot)
    }

    /// What a boot of `booted` means: a fallback is detected when the slot
    /// on trial ran out of attempts and something else booted.
    pub fn after_boot(&self, booted: Slot) -> BootOutcome {
        match self.trial {
            Some(x) if x != booted && self.left == 0 => BootOutcome::Fallback {
                failed: x,
                write: BootState {
                    order: self.without(x),
                    trial: None,
                    left: 0,
                },
            },
            _ => BootOutcome::Normal,
        }
    }

    /// Health passed on `booted`: confirm it if it was on trial; a confirmed
    /// slot writes nothing.
    pub fn health_passed(&self, booted: Slot) -> Option<BootState> {
        (self.trial == Some(booted) && self.order.contains(&booted)).then(|| BootState {
            order: self.order.clone(),
            trial: None,
            left: 0,
        })
    }

    /// Health passed after the bootloader's last-resort boot
    /// (`atomup.fallback=1`: env missing/corrupt/empty, or only an exhausted
    /// trial): the slot that booted and passed is put first in the order,
    /// which repairs the env so the next boot is a normal one. Only for that
    /// boot kind: elsewhere a booted slot outside the order was taken out on
    /// purpose (mark-bad, rollback) and must stay out.
    pub fn fallback_boot_passed(&self, booted: Slot) -> Option<BootState> {
        if self.is_confirmed(booted) {
            return None;
        }
        let mut order = vec![booted];
        order.extend(
            self.order
                .iter()
                .copied()
                .filter(|&s| s != booted && self.is_confirmed(s)),
        );
        Some(BootState {
            order,
            trial: None,
            left: 0,
        })
    }

    /// Health failed on `booted`: it leaves the order (the caller reboots).
    /// A confirmed slot that is the only one in the order is kept: removing
    /// it would leave nothing confirmed to boot.
    pub fn health_failed(&self, booted: Slot) -> Result<BootState, StateError> {
        let on_trial = self.trial == Some(booted);
        let others_confirmed = self
            .order
            .iter()
            .any(|&s| s != booted && self.trial != Some(s));
        if !on_trial && self.order.contains(&booted) && !others_confirmed {
            return Err(StateError::LastConfirmedSlot(booted));
        }
        Ok(BootState {
            order: self.without(booted),
            trial: None,
            left: 0,
        })
    }

    /// `rollback` on `booted`: the other slot becomes primary if it is
    /// confirmed good (in the order and not on trial). `booted` stays second
    /// only if it was confirmed itself.
    pub fn rollback(&self, booted: Slot) -> Result<BootState, StateError> {
        let x = !booted;
        if !self.is_confirmed(x) {
            return Err(StateError::NoGoodOtherSlot(x));
        }
        let mut order = vec![x];
        if self.is_confirmed(booted) {
            order.push(booted);
        }
        Ok(BootState {
            order,
            trial: None,
            left: 0,
        })
    }
}

impl fmt::Display for BootState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [(k1, v1), (k2, v2), (k3, v3)] = self.to_pairs();
        write!(f, "{k1}={v1:?} {k2}={v2:?} {k3}={v3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Slot::{A, B};

    fn st(order: &[Slot], trial: Option<Slot>, left: u8) -> BootState {
        BootState {
            order: order.to_vec(),
            trial,
            left,
        }
    }

    #[test]
    fn contract_table_transitions() {
        let s = st(&[A], None, 0);
        assert_eq!(s.install_start(B), st(&[A], None, 0));
        let s = st(&[A, B], None, 0).install_start(B);
        assert_eq!(s, st(&[A], None, 0));
        let s = s.install_done(B, 3).unwrap();
        assert_eq!(s, st(&[B, A], Some(B), 3));
        let c = s.boot();
        assert_eq!(
            (c.slot, c.trial, c.write.clone()),
            (B, true, Some(st(&[B, A], Some(B), 2)))
        );
        let s = c.write.unwrap();
        assert_eq!(s.after_boot(B), BootOutcome::Normal);
        assert_eq!(s.health_passed(B), Some(st(&[B, A], None, 0)));
        assert_eq!(s.health_failed(B).unwrap(), st(&[A], None, 0));
        assert_eq!(
            st(&[B, A], None, 0).rollback(B).unwrap(),
            st(&[A, B], None, 0)
        );
    }

    #[test]
    fn confirmed_boot_writes_nothing_and_exhausted_trial_falls_through() {
        let c = st(&[A, B], None, 0).boot();
        assert_eq!((c.slot, c.trial, c.write), (A, false, None));
        assert_eq!(st(&[A, B], None, 0).health_passed(A), None);
        let s = st(&[B, A], Some(B), 0);
        let c = s.boot();
        assert_eq!((c.slot, c.trial, c.write), (A, false, None));
        match s.after_boot(A) {
            BootOutcome::Fallback { failed, write } => {
                assert_eq!(failed, B);
                assert_eq!(write, st(&[A], None, 0));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_healthy_last_resort_boot_repairs_the_order() {
        assert_eq!(
            st(&[], None, 0).fallback_boot_passed(A),
            Some(st(&[A], None, 0))
        );
        // Exhausted trial B: the fallback write drops B, then A is confirmed.
        let s = st(&[B], Some(B), 0);
        let BootOutcome::Fallback { write, .. } = s.after_boot(A) else {
            panic!()
        };
        assert_eq!(write.fallback_boot_passed(A), Some(st(&[A], None, 0)));
        assert_eq!(
            st(&[B], None, 0).fallback_boot_passed(A),
            Some(st(&[A, B], None, 0))
        );
        assert_eq!(st(&[A], None, 0).fallback_boot_passed(A), None);
        // Outside a last-resort boot, health passing never re-adds a slot.
        assert_eq!(st(&[B], None, 0).health_passed(A), None);
    }

    #[test]
    fn empty_order_or_only_exhausted_trial_boots_a_as_fallback() {
        assert!(st(&[], None, 0).boot().fallback);
        let c = st(&[B], Some(B), 0).boot();
        assert!(c.fallback && c.slot == A && c.write.is_none());
    }

    /// The primary confirmed slot is the one a normal boot picks; trials and
    /// the last-resort boot have none.
    #[test]
    fn primary_confirmed_is_the_first_confirmed_slot_booted_without_counting() {
        assert_eq!(st(&[A, B], None, 0).primary_confirmed(), Some(A));
        assert_eq!(st(&[B, A], None, 0).primary_confirmed(), Some(B));
        assert_eq!(st(&[B, A], Some(B), 2).primary_confirmed(), None);
        // An exhausted trial is skipped: the fallback slot is primary.
        assert_eq!(st(&[B, A], Some(B), 0).primary_confirmed(), Some(A));
        assert_eq!(st(&[], None, 0).primary_confirmed(), None);
    }

    #[test]
    fn rollback_needs_a_confirmed_other_slot() {
        assert_eq!(
            st(&[A], None, 0).rollback(A),
            Err(StateError::NoGoodOtherSlot(B))
        );
        assert_eq!(
            st(&[A, B], Some(B), 2).rollback(A),
            Err(StateError::NoGoodOtherSlot(B))
        );
        // Rolling back from an unconfirmed trial drops it.
        assert_eq!(
            st(&[B, A], Some(B), 2).rollback(B).unwrap(),
            st(&[A], None, 0)
        );
    }

    #[test]
    fn the_only_confirmed_slot_is_never_marked_bad() {
        assert_eq!(
            st(&[A], None, 0).health_failed(A),
            Err(StateError::LastConfirmedSlot(A))
        );
        assert_eq!(
            st(&[A, B], None, 0).health_failed(A).unwrap(),
            st(&[B], None, 0)
        );
    }

    #[test]
    fn env_values_parse_strictly_and_round_trip() {
        let mut v = Vars::default();
        let s = st(&[B, A], Some(B), 3);
        s.apply_to(&mut v).unwrap();
        assert_eq!(v.get(VAR_ORDER), Some("B A"));
        assert_eq!(BootState::from_vars(&v).unwrap(), s);
        assert_eq!(
            BootState::from_vars(&Vars::default()).unwrap(),
            st(&[], None, 0)
        );
        for (k, bad) in [
            (VAR_ORDER, "A A"),
            (VAR_ORDER, "A  B"),
            (VAR_TRIAL, "C"),
            (VAR_LEFT, "10"),
            (VAR_LEFT, "-1"),
        ] {
            let mut v = Vars::default();
            v.set(k, bad).unwrap();
            assert!(BootState::from_vars(&v).is_err(), "{k}={bad}");
        }
        assert!(st(&[], None, 0).install_done(A, 0).is_err());
        assert!(st(&[], None, 0).install_done(A, 10).is_err());
    }
}
