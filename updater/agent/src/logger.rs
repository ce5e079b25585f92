//! The `log` facade's backend: one line per message on stderr, `warning:`,
//! `info:`, ... in front, so library messages (a download being retried)
//! reach the operator instead of vanishing. The level comes from
//! `--log-level LEVEL` before the command, else `ATOMUP_LOG`, else the
//! configuration's `log.level` (default `info`), else `warn` for the commands
//! that read no configuration; `off`, `error`, `warn`, `info`, `debug`,
//! `trace`. Below the level a `log` call costs one comparison. No crate of
//! its own: about a kilobyte of code.

use log::{LevelFilter, Log, Metadata, Record};

struct Stderr;

impl Log for Stderr {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if self.enabled(record.metadata()) {
            let level = match record.level() {
                log::Level::Error => "error",
                log::Level::Warn => "warning",
                log::Level::Info => "info",
                log::Level::Debug => "debug",
                log::Level::Trace => "trace",
            };
            eprintln!("{level}: {}", record.args());
        }
    }

    fn flush(&self) {}
}

static LOGGER: Stderr = Stderr;

/// Parses a level name (`--log-level`, `ATOMUP_LOG`).
pub fn parse_level(name: &str) -> Result<LevelFilter, String> {
    name.parse().map_err(|_| {
        format!("log level must be off, error, warn, info, debug or trace, got `{name}`")
    })
}

static EXPLICIT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Installs the logger at `flag`'s level, else `ATOMUP_LOG`'s, else warn
/// (until the configuration says otherwise, see [`configured`]).
pub fn init(flag: Option<&str>) -> Result<(), String> {
    let level = match (flag, std::env::var("ATOMUP_LOG").ok()) {
        (Some(l), _) => Some(parse_level(l)?),
        (None, Some(l)) if !l.is_empty() => Some(parse_level(&l)?),
        _ => None,
    };
    EXPLICIT.store(level.is_some(), std::sync::atomic::Ordering::SeqCst);
    // Only fails if a logger is already installed: keep that one.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level.unwrap_or(LevelFilter::Warn));
    Ok(())
}

/// The configuration's `log.level`, unless the flag or `ATOMUP_LOG` chose.
pub fn configured(level: atomup_config::LogLevel) {
    use atomup_config::LogLevel as L;
    if EXPLICIT.load(std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    log::set_max_level(match level {
        L::Error => LevelFilter::Error,
        L::Warn => LevelFilter::Warn,
        L::Info => LevelFilter::Info,
        L::Debug => LevelFilter::Debug,
        L::Trace => LevelFilter::Trace,
    });
}
