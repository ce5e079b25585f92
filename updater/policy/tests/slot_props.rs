//! Property test: random sequences of installs, boots, health results,
//! rollbacks and power cuts (each env write either lost or applied) never
//! leave the device without a confirmed good slot, never boot a half-written
//! slot, never underflow attempts, and never spend more than N trial boots.

use atomup_policy::slot::MAX_ATTEMPTS;
use atomup_policy::{BootOutcome, BootState, Slot};
use proptest::prelude::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Content {
    Empty,
    Partial,
    Good,
    Bad,
}

#[derive(Debug, Clone)]
enum Event {
    /// Power-on. `boot_write_lost`: the bootloader's decrement is cut off;
    /// `agent_write_lost`: the agent's write at boot is cut off; `panics`:
    /// a bad image dies before its health check.
    Boot {
        boot_write_lost: bool,
        agent_write_lost: bool,
        panics: bool,
    },
    /// An update into the inactive slot, cut at one of its steps.
    Install {
        start_lost: bool,
        crash_mid_write: bool,
        good: bool,
        done_lost: bool,
        attempts: u8,
    },
    Rollback {
        lost: bool,
    },
    PowerCut,
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        4 => (any::<bool>(), any::<bool>(), any::<bool>())
            .prop_map(|(a, b, c)| Event::Boot { boot_write_lost: a, agent_write_lost: b, panics: c }),
        2 => (prop::bool::weighted(0.2), prop::bool::weighted(0.2), any::<bool>(), prop::bool::weighted(0.2), 1..=MAX_ATTEMPTS)
            .prop_map(|(a, b, c, d, n)| Event::Install { start_lost: a, crash_mid_write: b, good: c, done_lost: d, attempts: n }),
        1 => any::<bool>().prop_map(|lost| Event::Rollback { lost }),
        1 => Just(Event::PowerCut),
    ]
}

struct Device {
    env: BootState,
    content: [Content; 2],
    booted: Option<Slot>,
    trial_boots_in_a_row: u32,
    rollbacks_recorded: u32,
}

fn idx(s: Slot) -> usize {
    match s {
        Slot::A => 0,
        Slot::B => 1,
    }
}

impl Device {
    fn content(&self, s: Slot) -> Content {
        self.content[idx(s)]
    }

    fn check_invariants(&self) -> Result<(), TestCaseError> {
        let confirmed_good = Slot::ALL
            .iter()
            .any(|&s| self.env.is_confirmed(s) && self.content(s) == Content::Good);
        prop_assert!(
            confirmed_good,
            "no confirmed good slot: {} {:?}",
            self.env,
            self.content
        );
        for &s in &self.env.order {
            prop_assert!(
                matches!(self.content(s), Content::Good | Content::Bad),
                "slot {s} in order while {:?}",
                self.content(s)
            );
        }
        prop_assert!(self.env.left <= MAX_ATTEMPTS);
        Ok(())
    }

    fn step(&mut self, ev: &Event) -> Result<(), TestCaseError> {
        match *ev {
            Event::PowerCut => self.booted = None,
            Event::Boot {
                boot_write_lost,
                agent_write_lost,
                panics,
            } => {
                if self.booted.is_some() {
                    return Ok(()); // already running; a boot needs a power cycle
                }
                let choice = self.env.boot();
                prop_assert!(!choice.fallback, "fallback boot with {}", self.env);
                let content = self.content(choice.slot);
                prop_assert!(
                    content == Content::Good || content == Content::Bad,
                    "booted a {content:?} slot"
                );
                if let Some(w) = &choice.write {
                    prop_assert!(
                        choice.trial && w.left < self.env.left,
                        "write on a non-trial boot"
                    );
                    if !boot_write_lost {
                        self.env = w.clone();
                        self.trial_boots_in_a_row += 1;
                    }
                } else {
                    self.trial_boots_in_a_row = 0;
                }
                // Boot never loops forever: counted trial boots are bounded.
                prop_assert!(self.trial_boots_in_a_row <= u32::from(MAX_ATTEMPTS));
                let slot = choice.slot;
                match content {
                    Content::Bad if panics => self.booted = None,
                    Content::Bad => {
                        let next = self.env.health_failed(slot);
                        prop_assert!(next.is_ok(), "bad image in a confirmed slot: {}", self.env);
                        if let (Ok(next), false) = (next, agent_write_lost) {
                            self.env = next;
                        }
                        self.booted = None;
                    }
                    _ => {
                        self.booted = Some(slot);
                        if let BootOutcome::Fallback { write, .. } = self.env.after_boot(slot) {
                            if agent_write_lost {
                                self.booted = None;
                                return Ok(());
                            }
                            self.env = write;
                            self.rollbacks_recorded += 1;
                        }
                        if let Some(next) = self.env.health_passed(slot) {
                            if agent_write_lost {
                                self.booted = None;
                            } else {
                                self.env = next;
                            }
                        }
                    }
                }
            }
            Event::Install {
                start_lost,
                crash_mid_write,
                good,
                done_lost,
                attempts,
            } => {
                let Some(y) = self.booted else { return Ok(()) };
                let x = !y;
                let started = self.env.install_start(x);
                prop_assert!(!started.order.contains(&x));
                if start_lost {
                    self.booted = None;
                    return Ok(());
                }
                self.env = started;
                self.content[idx(x)] = Content::Partial;
                if crash_mid_write {
                    self.booted = None;
                    return Ok(());
                }
                self.content[idx(x)] = if good { Content::Good } else { Content::Bad };
                let done = self.env.install_done(x, attempts);
                prop_assert!(done.is_ok());
                if let (Ok(done), false) = (done, done_lost) {
                    self.env = done;
                    // A new trial gets a fresh budget of attempts.
                    self.trial_boots_in_a_row = 0;
                }
                self.booted = None;
            }
            Event::Rollback { lost } => {
                let Some(y) = self.booted else { return Ok(()) };
                if let Ok(next) = self.env.rollback(y) {
                    prop_assert!(
                        self.content(!y) == Content::Good,
                        "rolled back to a non-good slot"
                    );
                    if !lost {
                        self.env = next;
                    }
                    self.booted = None;
                }
            }
        }
        self.check_invariants()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_lives_keep_a_bootable_confirmed_slot(events in prop::collection::vec(event(), 1..80)) {
        let mut dev = Device {
            env: BootState { order: vec![Slot::A], trial: None, left: 0 },
            content: [Content::Good, Content::Empty],
            booted: None,
            trial_boots_in_a_row: 0,
            rollbacks_recorded: 0,
        };
        dev.check_invariants()?;
        for ev in &events {
            dev.step(ev)?;
        }
        // After the run, powering on repeatedly reaches a confirmed slot
        // within MAX_ATTEMPTS + 1 boots even if every image is bad.
        dev.booted = None;
        let mut boots = 0;
        loop {
            boots += 1;
            prop_assert!(boots <= u32::from(MAX_ATTEMPTS) + 1);
            let choice = dev.env.boot();
            if !choice.trial {
                prop_assert!(dev.content(choice.slot) == Content::Good);
                break;
            }
            dev.env = choice.write.unwrap_or(dev.env.clone());
        }
        let _ = dev.rollbacks_recorded;
    }
}
