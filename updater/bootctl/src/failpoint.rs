//! Fault points for power-cut tests, compiled only with the `failpoints`
//! feature (never in release builds of the device binary). A spec
//! `env-write-torn:N[@K]` lets K env writes through, then cuts the next one
//! after N bytes (0 = nothing written) and fails it as a power cut would.
//! Read once from `ATOMUP_FAILPOINT`, or set by tests with [`set`].

#[cfg(feature = "failpoints")]
mod imp {
    use std::sync::Mutex;

    #[derive(Debug, Clone, Copy)]
    struct Torn {
        skip: usize,
        at: usize,
    }

    static STATE: Mutex<Option<Option<Torn>>> = Mutex::new(None);

    fn parse(spec: &str) -> Option<Torn> {
        let rest = spec.strip_prefix("env-write-torn:")?;
        let (at, skip) = match rest.split_once('@') {
            Some((a, k)) => (a.parse().ok()?, k.parse().ok()?),
            None => (rest.parse().ok()?, 0),
        };
        Some(Torn { skip, at })
    }

    pub fn set(spec: Option<&str>) {
        let mut g = STATE.lock().unwrap_or_else(|e| e.into_inner());
        *g = Some(spec.and_then(parse));
    }

    /// For the next write: `Some(n)` = write only n bytes then fail.
    pub fn next_write() -> Option<usize> {
        let mut g = STATE.lock().unwrap_or_else(|e| e.into_inner());
        let slot = g.get_or_insert_with(|| {
            std::env::var("ATOMUP_FAILPOINT")
                .ok()
                .as_deref()
                .and_then(parse)
        });
        let torn = slot.as_mut()?;
        if torn.skip > 0 {
            torn.skip -= 1;
            return None;
        }
        let at = torn.at;
        *slot = None;
        Some(at)
    }
}

#[cfg(feature = "failpoints")]
pub use imp::set;

#[cfg(feature = "failpoints")]
pub(crate) fn next_write() -> Option<usize> {
    imp::next_write()
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub(crate) fn next_write() -> Option<usize> {
    None
}
