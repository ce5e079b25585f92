//! The status LED, driven while a command runs: the board profile's LED (a
//! sysfs LED or a GPIO line) as an `embedded-hal` pin, stepped through the
//! pattern of the agent's state (`atomup_board::status`) by a thread of its
//! own. The LED never decides anything: when it is missing, busy or fails,
//! the command goes on without it (one warning).
//!
//! Dropped while downloading or installing, the LED shows `error` (the
//! command stopped in the middle of its work: an error returned early);
//! otherwise it is left at the resting level of its last state.

use atomup_board::status::{Blinker, State};
use atomup_board::Led;
use embedded_hal::digital::OutputPin;
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::time::Duration;

/// A pin of either backend.
enum Pin {
    Sysfs(atomup_board::led::SysfsLed),
    Gpio(atomup_board::gpio::GpioLine),
}

impl embedded_hal::digital::ErrorType for Pin {
    type Error = atomup_board::led::LedError;
}

impl OutputPin for Pin {
    fn set_low(&mut self) -> Result<(), Self::Error> {
        match self {
            Pin::Sysfs(p) => p.set_low(),
            Pin::Gpio(p) => p.set_low(),
        }
    }
    fn set_high(&mut self) -> Result<(), Self::Error> {
        match self {
            Pin::Sysfs(p) => p.set_high(),
            Pin::Gpio(p) => p.set_high(),
        }
    }
}

fn open(led: &Led) -> std::io::Result<Pin> {
    Ok(match led {
        Led::Sysfs(dir) => {
            let p = atomup_board::led::SysfsLed::new(dir);
            // Fail now, not on the first blink, when it is not there.
            atomup_fsio::open_rw(p.brightness(), false)?;
            Pin::Sysfs(p)
        }
        Led::Gpio {
            chip,
            line,
            active_low,
        } => Pin::Gpio(atomup_board::gpio::GpioLine::request(
            chip,
            *line,
            *active_low,
            "atomup-status",
        )?),
    })
}

/// The LED of the running command; a no-op without one.
pub struct StatusLed {
    tx: Option<Sender<State>>,
    thread: Option<std::thread::JoinHandle<()>>,
    state: State,
}

impl StatusLed {
    /// Starts driving the board's LED in `state` (nothing when the board has
    /// no LED or it cannot be opened).
    pub fn start(led: Option<&Led>, state: State) -> StatusLed {
        let mut me = StatusLed {
            tx: None,
            thread: None,
            state,
        };
        let Some(led) = led else { return me };
        let pin = match open(led) {
            Ok(p) => p,
            Err(e) => {
                log::warn!("status LED {led:?}: {e}; going on without it");
                return me;
            }
        };
        let (tx, rx) = channel::<State>();
        let spawned = std::thread::Builder::new()
            .name("status-led".into())
            .spawn(move || {
                let mut b = Blinker::new(pin, state);
                loop {
                    let hold = match b.step() {
                        Ok(ms) => ms,
                        Err(e) => {
                            log::warn!("status LED: {}; no longer driven", e.0);
                            return;
                        }
                    };
                    match rx.recv_timeout(Duration::from_millis(u64::from(hold))) {
                        Ok(next) => b.set(next),
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => {
                            let _ = b.rest();
                            return;
                        }
                    }
                }
            });
        match spawned {
            Ok(h) => {
                me.tx = Some(tx);
                me.thread = Some(h);
            }
            Err(e) => log::warn!("status LED: cannot start its thread: {e}"),
        }
        me
    }

    /// Shows `state` from now on.
    pub fn set(&mut self, state: State) {
        if state != self.state {
            log::info!("status: {}", state.name());
        }
        self.state = state;
        if let Some(tx) = &self.tx {
            let _ = tx.send(state);
        }
    }
}

impl Drop for StatusLed {
    fn drop(&mut self) {
        if matches!(self.state, State::Downloading | State::Installing) {
            self.set(State::Error);
        }
        // Closing the channel makes the thread rest the LED and end.
        self.tx = None;
        if let Some(h) = self.thread.take() {
            let _ = h.join();
        }
    }
}
