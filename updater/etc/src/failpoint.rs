//! Fault points for the power-cut tests, compiled only with the `failpoints`
//! feature (never in release builds). Every write of a layer's construction
//! and swap passes [`hit`] first; a spec `etc-cut:N` lets N writes through
//! and stops at the next one as a power cut would (nothing more is written:
//! the caller returns the error at once). `etc-count` counts the writes, for
//! a test that cuts at each one in turn ([`count`]). Set by tests with
//! [`set`], or read once from `ATOMUP_FAILPOINT`.

use crate::error::Result;

#[cfg(feature = "failpoints")]
mod imp {
    use crate::error::{EtcError, Result};
    use std::sync::Mutex;

    #[derive(Clone, Copy, Debug)]
    enum Mode {
        Cut(usize),
        Count,
    }

    struct State {
        mode: Option<Mode>,
        seen: usize,
    }

    static STATE: Mutex<Option<State>> = Mutex::new(None);

    fn parse(spec: &str) -> Option<Mode> {
        if spec == "etc-count" {
            return Some(Mode::Count);
        }
        spec.strip_prefix("etc-cut:")?.parse().ok().map(Mode::Cut)
    }

    fn with<T>(f: impl FnOnce(&mut State) -> T) -> T {
        let mut g = STATE.lock().unwrap_or_else(|e| e.into_inner());
        let st = g.get_or_insert_with(|| State {
            mode: std::env::var("ATOMUP_FAILPOINT")
                .ok()
                .as_deref()
                .and_then(parse),
            seen: 0,
        });
        f(st)
    }

    pub fn set(spec: Option<&str>) {
        with(|s| {
            s.mode = spec.and_then(parse);
            s.seen = 0;
        })
    }

    pub fn count() -> usize {
        with(|s| s.seen)
    }

    pub fn hit(point: &'static str) -> Result<()> {
        with(|s| {
            let index = s.seen;
            s.seen += 1;
            match s.mode {
                Some(Mode::Cut(n)) if index == n => {
                    s.mode = None;
                    Err(EtcError::Injected { index, point })
                }
                _ => Ok(()),
            }
        })
    }
}

#[cfg(feature = "failpoints")]
pub use imp::{count, set};

/// Passed before each write: with a cut armed at this write, fails like a
/// power cut (see the module docs).
#[cfg(feature = "failpoints")]
pub(crate) fn hit(point: &'static str) -> Result<()> {
    imp::hit(point)
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub(crate) fn hit(_point: &'static str) -> Result<()> {
    Ok(())
}
