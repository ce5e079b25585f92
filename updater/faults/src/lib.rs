//! Named crash points for the power-cut campaigns: the install path calls
//! [`point`] where a cut between two steps matters and [`torn`] (or
//! [`write_all`]) in front of every write whose partial content matters (env
//! copies, records, metadata, downloads). Without the `failpoints` feature
//! every function here is an inlined no-op (or a plain `write_all`), so a
//! release build carries neither the code nor a single point name; with it
//! they read one spec from `ATOMUP_FAILPOINT` and cut there like a power cut.
//!
//! Spec: `NAME[@K][:N][!stop]`: the K-th hit (from 0, default 0) of point
//! NAME is cut; at a write point only its first N bytes are written (default
//! 0) and made durable first. The cut is a SIGKILL of the whole process (no
//! destructor, no unwinding, nothing flushed that was not already written),
//! or with `!stop` a SIGSTOP (a test then delivers a signal of its own, say
//! SIGINT for Ctrl-C, and continues the process). `env-write-torn:N[@K]` is
//! the older spelling of `env.write@K:N`. `ATOMUP_FAILPOINT_TRACE=FILE`
//! appends one line per hit, `NAME K LEN LABEL`, which is how a campaign
//! learns every point an operation passes before it cuts each one.
//!
//! Tests in one process arm a point with [`set`] instead: the write is torn
//! the same way but [`cut`] returns, and the caller fails with its own
//! "injected" error.

// Fault points cut writes like a power cut: they must never reach an
// optimized binary, whatever feature unification does (tests and the
// `faults` profile build with debug assertions; release and the device build
// do not).
#[cfg(all(feature = "failpoints", not(debug_assertions)))]
compile_error!(
    "atomup-faults feature `failpoints` (crash points) in a build without debug assertions: \
     it is for tests only and must never reach a release binary"
);

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

/// A crash point between two steps: the process dies here when armed.
#[inline(always)]
pub fn point(name: &'static str) {
    #[cfg(feature = "failpoints")]
    imp::point(name);
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}

/// A write of `len` bytes at point `name` (`label`: which file, for the
/// trace) is about to start. `Some(n)`: this hit is armed: write only the
/// first `n` (≤ `len`) bytes, make them durable, then call [`cut`].
#[inline(always)]
pub fn torn(name: &'static str, label: &Path, len: u64) -> Option<u64> {
    #[cfg(feature = "failpoints")]
    return imp::torn(name, label, len);
    #[cfg(not(feature = "failpoints"))]
    {
        let _ = (name, label, len);
        None
    }
}

/// The cut after an armed [`torn`] write is durable: kills (or stops) the
/// process; returns only when armed in-process by [`set`].
#[inline(always)]
pub fn cut(name: &'static str) {
    #[cfg(feature = "failpoints")]
    imp::cut(name);
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}

/// `file.write_all(data)` at write point `name`: when armed, only the first
/// N bytes are written and synced, then the cut (in-process: an error).
#[inline(always)]
pub fn write_all(name: &'static str, label: &Path, file: &mut File, data: &[u8]) -> io::Result<()> {
    if let Some(n) = torn(name, label, data.len() as u64) {
        let n = (n as usize).min(data.len());
        file.write_all(&data[..n])?;
        file.sync_all()?;
        cut(name);
        return Err(injected(name, n));
    }
    file.write_all(data)
}

/// The error a write torn in-process returns.
pub fn injected(name: &str, written: usize) -> io::Error {
    io::Error::other(format!(
        "injected power cut at {name} after {written} bytes"
    ))
}

#[cfg(feature = "failpoints")]
pub use imp::set;

#[cfg(feature = "failpoints")]
mod imp {
    use std::collections::HashMap;
    use std::io::Write;
    use std::path::Path;
    use std::sync::Mutex;

    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Spec {
        name: String,
        hit: u64,
        bytes: u64,
        stop: bool,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Mode {
        /// Armed from the environment: the cut kills (or stops) the process.
        Process,
        /// Armed by [`set`]: the cut returns, the write fails.
        InProcess,
    }

    struct State {
        spec: Option<Spec>,
        mode: Mode,
        hits: HashMap<&'static str, u64>,
        trace: Option<std::fs::File>,
        /// The armed write fired and its cut is due: stop instead of kill?
        stop_at_cut: bool,
    }

    static STATE: Mutex<Option<State>> = Mutex::new(None);

    fn parse(spec: &str) -> Option<Spec> {
        if let Some(rest) = spec.strip_prefix("env-write-torn:") {
            let (n, k) = rest.split_once('@').unwrap_or((rest, "0"));
            return Some(Spec {
                name: "env.write".into(),
                hit: k.parse().ok()?,
                bytes: n.parse().ok()?,
                stop: false,
            });
        }
        let (spec, stop) = match spec.strip_suffix("!stop") {
            Some(s) => (s, true),
            None => (spec, false),
        };
        let (spec, bytes) = match spec.split_once(':') {
            Some((s, n)) => (s, n.parse().ok()?),
            None => (spec, 0),
        };
        let (name, hit) = match spec.split_once('@') {
            Some((s, k)) => (s, k.parse().ok()?),
            None => (spec, 0),
        };
        let named = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'.' || b == b'-');
        named.then(|| Spec {
            name: name.into(),
            hit,
            bytes,
            stop,
        })
    }

    fn from_env() -> State {
        let spec = std::env::var("ATOMUP_FAILPOINT").ok().map(|s| {
            // A spec that does not parse must not silently test nothing.
            parse(&s).unwrap_or_else(|| {
                eprintln!("atomup: invalid ATOMUP_FAILPOINT `{s}`");
                std::process::exit(99)
            })
        });
        let trace = std::env::var_os("ATOMUP_FAILPOINT_TRACE").map(|p| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&p)
                .unwrap_or_else(|e| {
                    eprintln!("atomup: cannot open ATOMUP_FAILPOINT_TRACE: {e}");
                    std::process::exit(99)
                })
        });
        State {
            spec,
            mode: Mode::Process,
            hits: HashMap::new(),
            trace,
            stop_at_cut: false,
        }
    }

    /// Arms `spec` in this process (tests), or disarms with `None`: the
    /// next armed write is torn and fails instead of killing the process.
    /// Hit counts start again from 0.
    pub fn set(spec: Option<&str>) {
        let mut g = STATE.lock().unwrap_or_else(|e| e.into_inner());
        *g = Some(State {
            spec: spec.map(|s| parse(s).unwrap_or_else(|| panic!("invalid fault spec `{s}`"))),
            mode: Mode::InProcess,
            hits: HashMap::new(),
            trace: None,
            stop_at_cut: false,
        });
    }

    /// Counts a hit of `name`; `Some(bytes)` if it is the armed one (then
    /// disarmed: a point fires once).
    fn hit(name: &'static str, label: &Path, len: u64) -> Option<(u64, Mode, bool)> {
        let mut g = STATE.lock().unwrap_or_else(|e| e.into_inner());
        let st = g.get_or_insert_with(from_env);
        let count = st.hits.entry(name).or_insert(0);
        let k = *count;
        *count += 1;
        if let Some(t) = st.trace.as_mut() {
            let _ = writeln!(t, "{name} {k} {len} {}", label.display());
        }
        let armed = st
            .spec
            .as_ref()
            .is_some_and(|s| s.name == name && s.hit == k);
        if !armed {
            return None;
        }
        let spec = st.spec.take()?;
        if st.mode == Mode::Process {
            eprintln!(
                "atomup: fault point {name}@{k} ({}): cut after {} of {len} bytes",
                label.display(),
                spec.bytes.min(len)
            );
        }
        st.stop_at_cut = spec.stop;
        Some((spec.bytes.min(len), st.mode, spec.stop))
    }

    pub fn point(name: &'static str) {
        match hit(name, Path::new("-"), 0) {
            Some((_, Mode::Process, stop)) => power_cut(stop),
            Some((_, Mode::InProcess, _)) => {
                panic!("fault point {name} armed in-process: only writes can fail in-process")
            }
            None => {}
        }
    }

    pub fn torn(name: &'static str, label: &Path, len: u64) -> Option<u64> {
        hit(name, label, len).map(|(n, _, _)| n)
    }

    pub fn cut(_name: &'static str) {
        let due = STATE
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|s| (s.mode, s.stop_at_cut));
        if let Some((Mode::Process, stop)) = due {
            power_cut(stop);
        }
    }

    /// SIGKILL: the process ends here, as at a power cut (what was written is
    /// in the page cache or on disk; nothing else happens). SIGSTOP: it waits
    /// here for a test's signal.
    fn power_cut(stop: bool) {
        use rustix::process::{getpid, kill_process, Signal};
        let sig = if stop { Signal::STOP } else { Signal::KILL };
        let _ = kill_process(getpid(), sig);
        if !stop {
            // Unreachable: SIGKILL cannot be caught.
            std::process::abort();
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// Every spelling of a spec parses to the point, hit and byte count
        /// it names; anything else is refused, not ignored.
        #[test]
        fn specs_parse_and_nonsense_is_refused() {
            let s = |name: &str, hit, bytes, stop| {
                Some(Spec {
                    name: name.into(),
                    hit,
                    bytes,
                    stop,
                })
            };
            assert_eq!(parse("apply.parts"), s("apply.parts", 0, 0, false));
            assert_eq!(parse("apply.seed@7"), s("apply.seed", 7, 0, false));
            assert_eq!(parse("env.write@1:300"), s("env.write", 1, 300, false));
            assert_eq!(parse("record.write:5"), s("record.write", 0, 5, false));
            assert_eq!(
                parse("apply.reconcile@2!stop"),
                s("apply.reconcile", 2, 0, true)
            );
            assert_eq!(parse("env-write-torn:20@1"), s("env.write", 1, 20, false));
            assert_eq!(parse("env-write-torn:20"), s("env.write", 0, 20, false));
            for bad in [
                "",
                "@1",
                "apply.parts@x",
                "env.write:-1",
                "Env.Write",
                "a b",
            ] {
                assert_eq!(parse(bad), None, "{bad}");
            }
        }

        /// Armed in-process, a write point tears exactly the K-th write of
        /// its name after N bytes, once; other points and hits write whole.
        #[test]
        fn an_armed_write_is_torn_once_at_its_hit() {
            let dir = std::env::temp_dir().join(format!("atomup-faults-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("f");
            set(Some("test.write@1:3"));
            let mut results = Vec::new();
            for name in ["test.write", "test.other", "test.write", "test.write"] {
                let mut f = std::fs::File::create(&path).unwrap();
                let r = crate::write_all(name, &path, &mut f, b"abcdef");
                results.push((r.is_ok(), std::fs::read(&path).unwrap()));
            }
            set(None);
            assert_eq!(
                results,
                vec![
                    (true, b"abcdef".to_vec()),
                    (true, b"abcdef".to_vec()),
                    (false, b"abc".to_vec()),
                    (true, b"abcdef".to_vec()),
                ]
            );
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}
