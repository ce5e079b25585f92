//! What the status LED shows for each state of the agent, as data: a short
//! pattern of on/off steps repeated while the state lasts, and the level the
//! LED is left at when nobody drives it any more (a one-shot command exits).
//! [`Blinker`] steps through a pattern on any `embedded-hal` output pin and
//! says how long each step holds; it never sleeps itself, so the agent's
//! driver thread decides how to wait and the tests run without a clock.
//!
//! | state | pattern (repeated) | left at |
//! |---|---|---|
//! | idle | 50 ms on, 2950 ms off (a blip every 3 s) | off |
//! | downloading | 500 ms on, 500 ms off | off |
//! | installing | 125 ms on, 125 ms off | off |
//! | on trial | 100 on, 150 off, 100 on, 650 off (double blip) | on |
//! | confirmed | steady on | on |
//! | rolled back | three times 100 on, 150 off; then 850 off (triple blip) | off |
//! | error | 1000 on, 200 off, 200 on, 600 off (long-short) | on |

use embedded_hal::digital::OutputPin;

/// The agent states the LED shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Idle,
    Downloading,
    Installing,
    OnTrial,
    Confirmed,
    RolledBack,
    Error,
}

impl State {
    pub const ALL: [State; 7] = [
        State::Idle,
        State::Downloading,
        State::Installing,
        State::OnTrial,
        State::Confirmed,
        State::RolledBack,
        State::Error,
    ];

    pub fn name(self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::Downloading => "downloading",
            State::Installing => "installing",
            State::OnTrial => "on trial",
            State::Confirmed => "confirmed",
            State::RolledBack => "rolled back",
            State::Error => "error",
        }
    }

    /// The pattern: (on, milliseconds) steps, repeated while the state lasts.
    /// A single step is a steady level.
    pub fn pattern(self) -> &'static [(bool, u16)] {
        match self {
            State::Idle => &[(true, 50), (false, 2950)],
            State::Downloading => &[(true, 500), (false, 500)],
            State::Installing => &[(true, 125), (false, 125)],
            State::OnTrial => &[(true, 100), (false, 150), (true, 100), (false, 650)],
            State::Confirmed => &[(true, 1000)],
            State::RolledBack => &[
                (true, 100),
                (false, 150),
                (true, 100),
                (false, 150),
                (true, 100),
                (false, 850),
            ],
            State::Error => &[(true, 1000), (false, 200), (true, 200), (false, 600)],
        }
    }

    /// The level the LED keeps once nobody drives it.
    pub fn rest(self) -> bool {
        matches!(self, State::OnTrial | State::Confirmed | State::Error)
    }
}

/// Steps one LED through the pattern of its current state.
pub struct Blinker<P: OutputPin> {
    pin: P,
    state: State,
    step: usize,
}

impl<P: OutputPin> Blinker<P> {
    pub fn new(pin: P, state: State) -> Blinker<P> {
        Blinker {
            pin,
            state,
            step: 0,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// Switches to `state`; its pattern starts from its first step.
    pub fn set(&mut self, state: State) {
        self.state = state;
        self.step = 0;
    }

    /// Drives the pin to the current step's level and moves on; returns how
    /// many milliseconds that level holds.
    pub fn step(&mut self) -> Result<u16, P::Error> {
        let pattern = self.state.pattern();
        let (on, ms) = pattern[self.step % pattern.len()];
        self.step = (self.step + 1) % pattern.len();
        if on {
            self.pin.set_high()?;
        } else {
            self.pin.set_low()?;
        }
        Ok(ms)
    }

    /// Leaves the LED at the state's resting level and gives the pin back.
    pub fn rest(mut self) -> Result<P, P::Error> {
        if self.state.rest() {
            self.pin.set_high()?;
        } else {
            self.pin.set_low()?;
        }
        Ok(self.pin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    /// A fake LED: records every level it is driven to.
    #[derive(Default)]
    struct Recorder(Vec<bool>);

    impl embedded_hal::digital::ErrorType for Recorder {
        type Error = Infallible;
    }

    impl OutputPin for Recorder {
        fn set_low(&mut self) -> Result<(), Infallible> {
            self.0.push(false);
            Ok(())
        }
        fn set_high(&mut self) -> Result<(), Infallible> {
            self.0.push(true);
            Ok(())
        }
    }

    /// Drives `state` for `steps` steps, then rests: the levels and holds.
    fn run(state: State, steps: usize) -> (Vec<bool>, Vec<u16>) {
        let mut b = Blinker::new(Recorder::default(), state);
        let holds = (0..steps).map(|_| b.step().unwrap()).collect();
        (b.rest().unwrap().0, holds)
    }

    /// Each state drives its own pattern, repeated, and rests at its level:
    /// the recorded sequence of the fake LED is the table in the module doc.
    #[test]
    fn each_state_drives_its_pattern_then_rests() {
        let (levels, holds) = run(State::OnTrial, 8);
        assert_eq!(
            levels,
            [true, false, true, false, true, false, true, false, true]
        );
        assert_eq!(holds, [100, 150, 100, 650, 100, 150, 100, 650]);
        let (levels, holds) = run(State::RolledBack, 6);
        assert_eq!(levels, [true, false, true, false, true, false, false]);
        assert_eq!(holds, [100, 150, 100, 150, 100, 850]);
        let (levels, _) = run(State::Confirmed, 3);
        assert_eq!(levels, [true, true, true, true]);
        let (levels, holds) = run(State::Idle, 2);
        assert_eq!((levels, holds), (vec![true, false, false], vec![50, 2950]));
        let (levels, _) = run(State::Error, 4);
        assert_eq!(levels, [true, false, true, false, true]);
    }

    /// No two states look alike over one cycle, so a person can tell them
    /// apart: the patterns are pairwise different.
    #[test]
    fn the_patterns_are_distinct() {
        for (i, a) in State::ALL.iter().enumerate() {
            assert!(!a.pattern().is_empty() && a.pattern().iter().all(|s| s.1 > 0));
            for b in &State::ALL[i + 1..] {
                assert_ne!(a.pattern(), b.pattern(), "{} vs {}", a.name(), b.name());
            }
        }
    }

    /// A state change restarts the new pattern at its first step, whatever
    /// step the old one was at: the sequence of a whole trial boot.
    #[test]
    fn a_state_change_restarts_the_pattern() {
        let mut b = Blinker::new(Recorder::default(), State::OnTrial);
        b.step().unwrap();
        b.step().unwrap();
        b.step().unwrap();
        b.set(State::Confirmed);
        assert_eq!(b.state(), State::Confirmed);
        assert_eq!(b.step().unwrap(), 1000);
        b.set(State::Downloading);
        b.step().unwrap();
        b.step().unwrap();
        b.set(State::Installing);
        b.step().unwrap();
        b.set(State::Idle);
        assert_eq!(
            b.rest().unwrap().0,
            [true, false, true, true, true, false, true, false]
        );
    }
}
