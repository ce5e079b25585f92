//! The agent's configuration, layered as zincati's is: vendor defaults in the
//! image (`/usr/lib/atomup/config.d/*.toml`), then the device's or site's
//! overrides (`/etc/atomup/config.d/*.toml`), each directory in lexical order,
//! a later file winning key by key; command-line flags last. The merge is
//! validated as a whole, so nothing runs on a half-valid configuration: an
//! unknown key, a wrong type or an impossible combination is an error that
//! names the file and the key. Every value remembers where it came from,
//! which `atomup config` prints.
//!
//! Parsing is pure ([`Layered::add_text`]); [`load`] only lists and reads the
//! drop-in directories.

mod units;

pub use units::{Bytes, Seconds};

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};

/// Vendor defaults, shipped in the read-only root.
pub const VENDOR_DIR: &str = "/usr/lib/atomup/config.d";
/// Device and site overrides.
pub const SITE_DIR: &str = "/etc/atomup/config.d";
/// Largest drop-in file read (a configuration is a few hundred bytes).
pub const MAX_FILE: u64 = 64 * 1024;
/// Most drop-in files read from one directory.
pub const MAX_FILES: usize = 64;

/// Where a value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Default,
    File(PathBuf),
    CommandLine,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File(p) => write!(f, "{}", p.display()),
            Source::CommandLine => f.write_str("command line"),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The file is not valid TOML or does not fit the schema (unknown key,
    /// wrong type); the message names the key.
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    /// A merged value, or a combination, is impossible.
    #[error("{key} (from {from}): {message}")]
    Value {
        key: &'static str,
        from: Source,
        message: String,
    },
    #[error("cannot read {}: {message}", path.display())]
    Read { path: PathBuf, message: String },
}

/// How the daemon reboots into a freshly installed slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RebootPolicy {
    /// Right after the install.
    Now,
    /// In the daily maintenance window (UTC minutes of the day, start
    /// inclusive, end exclusive; it may wrap past midnight).
    Window { start: u16, end: u16 },
    /// Never: the operator reboots.
    Never,
}

impl RebootPolicy {
    /// Whether `now` (unix seconds) falls in the window; always for `Now`.
    pub fn allows(&self, now: u64) -> bool {
        let minute = ((now % 86_400) / 60) as u16;
        match *self {
            RebootPolicy::Now => true,
            RebootPolicy::Never => false,
            RebootPolicy::Window { start, end } if start <= end => (start..end).contains(&minute),
            RebootPolicy::Window { start, end } => minute >= start || minute < end,
        }
    }

    /// Seconds from `now` until a reboot is allowed: 0 when it is now (or
    /// `now` lies in the window), `None` for `Never`.
    pub fn wait_secs(&self, now: u64) -> Option<u64> {
        match *self {
            RebootPolicy::Never => None,
            _ if self.allows(now) => Some(0),
            RebootPolicy::Window { start, .. } => {
                let into_day = now % 86_400;
                Some((u64::from(start) * 60 + 86_400 - into_day) % 86_400)
            }
            RebootPolicy::Now => Some(0),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub const NAMES: [&'static str; 5] = ["error", "warn", "info", "debug", "trace"];

    pub fn parse(s: &str) -> Option<LogLevel> {
        Some(match s {
            "error" => LogLevel::Error,
            "warn" => LogLevel::Warn,
            "info" => LogLevel::Info,
            "debug" => LogLevel::Debug,
            "trace" => LogLevel::Trace,
            _ => return None,
        })
    }
}

/// The schema: one macro invocation lists every section and key with its
/// TOML type, and generates the per-file struct (serde, unknown keys
/// refused), the key-by-key merge that records each value's source, and the
/// listing `atomup config` prints. A key exists exactly when it is here.
macro_rules! schema {
    ($( $sec:ident : $Sec:ident { $( $key:ident : $ty:ty ),* $(,)? } )*) => {
        /// One drop-in file (or the command line): every key optional.
        #[derive(Clone, Debug, Default, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct Partial {
            $( #[serde(default)] pub $sec: $Sec, )*
        }

        $(
            #[derive(Clone, Debug, Default, serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            pub struct $Sec {
                $( pub $key: Option<$ty>, )*
            }
        )*

        /// Every key, in schema order.
        pub const KEYS: &[&str] = &[$( $( concat!(stringify!($sec), ".", stringify!($key)), )* )*];

        impl Layered {
            /// Lays `over` on top: each key it sets replaces the value so far.
            pub fn add(&mut self, over: Partial, source: Source) {
                $( $(
                    if let Some(v) = over.$sec.$key {
                        self.values.$sec.$key = Some(v);
                        self.sources.insert(
                            concat!(stringify!($sec), ".", stringify!($key)),
                            source.clone(),
                        );
                    }
                )* )*
            }
        }

        impl Config {
            /// `key = value  # source` for every key, in schema order.
            fn listing(&self, sources: &BTreeMap<&'static str, Source>) -> String {
                let mut out = String::new();
                $( $(
                    let key = concat!(stringify!($sec), ".", stringify!($key));
                    let source = sources.get(key).cloned().unwrap_or(Source::Default);
                    let value = self.show(key);
                    let _ = writeln!(out, "{key} = {value}  # {source}");
                )* )*
                out
            }
        }
    };
}

schema! {
    server: Server {
        url: String,
        channel: String,
        ca_bundle: PathBuf,
        report_url: String,
        report_queue_max: u32,
    }
    trust: Trust {
        keys_file: PathBuf,
        keys: Vec<String>,
        revoked_file: PathBuf,
        revoked: Vec<String>,
    }
    device: Device {
        board_profile: PathBuf,
        state_dir: PathBuf,
        machine_id: PathBuf,
    }
    poll: Poll {
        interval: Seconds,
        jitter: Seconds,
    }
    link: Link {
        bandwidth: Bytes,
        update_budget: Bytes,
        monthly_budget: Bytes,
        allow_scratch_fallback: bool,
        connect_timeout: Seconds,
        stall_timeout: Seconds,
        low_speed_limit: Bytes,
        low_speed_time: Seconds,
        retries: u32,
        backoff_max: Seconds,
        cache_max: Bytes,
    }
    reboot: Reboot {
        policy: String,
        window: String,
        command: Vec<String>,
    }
    log: Log {
        level: String,
    }
    health: Health {
        timeout: Seconds,
        read_only_root: bool,
        data_partition: bool,
        min_free: Bytes,
        server_reachable: bool,
        services: Vec<String>,
    }
    bundle: Bundle {
        scan: Vec<PathBuf>,
        interval: Seconds,
        remount: bool,
    }
}

/// Values as layered so far, with the source of each one set.
#[derive(Clone, Debug, Default)]
pub struct Layered {
    values: Partial,
    sources: BTreeMap<&'static str, Source>,
}

/// The validated configuration, defaults filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The update server: repository URL and channel (both or neither).
    pub server: Option<ServerConfig>,
    /// The device's channel (`server.channel`): the server's, or without a
    /// server that of a device updated only from bundles (`bundle.scan`).
    pub channel: Option<String>,
    /// PEM bundle of the CAs trusted for HTTPS; `None`: the built-in web roots.
    pub ca_bundle: Option<PathBuf>,
    pub report_url: Option<String>,
    /// Most status reports kept queued while the report URL is unreachable;
    /// beyond it the oldest are dropped (and counted).
    pub report_queue_max: u32,
    pub trusted_keys_file: PathBuf,
    /// Base64 ed25519 public keys trusted besides those in the file.
    pub trusted_keys: Vec<String>,
    pub revoked_keys_file: Option<PathBuf>,
    pub revoked_keys: Vec<String>,
    pub board_profile: PathBuf,
    pub state_dir: PathBuf,
    /// The machine id: the rollout seed and the reports' device id derive from it.
    pub machine_id: PathBuf,
    pub poll_interval: Seconds,
    /// Each poll waits `interval + random(0..=jitter)`.
    pub poll_jitter: Seconds,
    /// Download rate cap in bytes per second; `None`: no cap.
    pub bandwidth: Option<u64>,
    /// Bytes one update may download (release metadata aside).
    pub update_budget: Option<u64>,
    /// Bytes all downloads of one calendar month (UTC) may add up to.
    pub monthly_budget: Option<u64>,
    /// Whether a missing delta from the running commit may be replaced by the
    /// (bigger) from-scratch one.
    pub allow_scratch_fallback: bool,
    pub connect_timeout: Seconds,
    /// A transfer that receives nothing for this long is cut (and retried).
    pub stall_timeout: Seconds,
    /// A transfer slower than `low_speed_limit` bytes/s for `low_speed_time`
    /// is cut (OSTree's default: 1000 B/s for 30 s).
    pub low_speed_limit: u64,
    pub low_speed_time: Seconds,
    /// Attempts per download, the first included.
    pub retries: u32,
    /// Cap of the exponential backoff between retries and failed polls.
    pub backoff_max: Seconds,
    /// Largest download cache kept on the data partition.
    pub cache_max: u64,
    pub reboot: RebootPolicy,
    /// The program (and its arguments) that reboots the device: the init
    /// system's own `reboot`, so services stop in order.
    pub reboot_command: Vec<String>,
    pub log_level: LogLevel,
    pub health: HealthConfig,
    pub bundle: BundleConfig,
}

/// Where the daemon looks for offline bundles (USB sticks) between network
/// polls; `scan` empty: it does not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BundleConfig {
    /// Absolute directories; a component that is exactly `*` stands for
    /// every subdirectory there (`/run/media/*/*`).
    pub scan: Vec<PathBuf>,
    /// How often they are looked at (a readdir and a stat per entry).
    pub interval: Seconds,
    /// A scanned directory is a read-only mount point: remount it
    /// read-write for the result log's append only.
    pub remount: bool,
}

/// Longest `bundle.interval`.
pub const MAX_BUNDLE_INTERVAL: u64 = 3600;

/// What `atomup health` checks besides the release's own check scripts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthConfig {
    /// A check's time limit unless it declares its own.
    pub timeout: Seconds,
    /// Built-in (required): the root file system is mounted read-only.
    pub read_only_root: bool,
    /// Built-in (required): the state directory is on a mounted, writable
    /// data partition (the board's `data` when the profile names one).
    pub data_partition: bool,
    /// Built-in (required): at least this many bytes free on the data
    /// partition; `None` (configured as 0): not checked.
    pub min_free: Option<u64>,
    /// Built-in (wanted, never required): the update server answers a TCP
    /// connection; only with a `server.url`.
    pub server_reachable: bool,
    /// Built-in (required): each must be running: a systemd unit name, or
    /// the absolute path of a pidfile.
    pub services: Vec<String>,
}

/// Longest per-check time limit.
pub const MAX_HEALTH_TIMEOUT: u64 = 3600;

/// A systemd unit name as `systemctl` takes it (letters, digits, `:-_.\@`,
/// at most 255, not an option), or an absolute pidfile path.
fn is_service(s: &str) -> bool {
    if s.starts_with('/') {
        return s.len() > 1 && !s.chars().any(char::is_control);
    }
    !s.is_empty()
        && s.len() <= 255
        && !s.starts_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":-_.\\@".contains(&b))
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    pub url: String,
    pub channel: String,
}

/// The configuration and where each value came from.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub config: Config,
    pub sources: BTreeMap<&'static str, Source>,
}

impl Loaded {
    /// What `atomup config` prints: every key with its value and source.
    pub fn listing(&self) -> String {
        self.config.listing(&self.sources)
    }
}

impl Layered {
    /// Parses one drop-in file's text and lays it on top.
    pub fn add_text(&mut self, path: &Path, text: &str) -> Result<(), ConfigError> {
        let partial: Partial = basic_toml::from_str(text).map_err(|e| ConfigError::File {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        self.add(partial, Source::File(path.to_owned()));
        Ok(())
    }

    fn source(&self, key: &'static str) -> Source {
        self.sources.get(key).cloned().unwrap_or(Source::Default)
    }

    fn err(&self, key: &'static str, message: impl Into<String>) -> ConfigError {
        ConfigError::Value {
            key,
            from: self.source(key),
            message: message.into(),
        }
    }

    /// Validates the merged values as a whole and fills in the defaults.
    pub fn finish(self) -> Result<Loaded, ConfigError> {
        let v = &self.values;
        if let Some(channel) = &v.server.channel {
            if !is_label(channel) {
                return Err(self.err(
                    "server.channel",
                    format!("`{channel}` is not a channel name (1-64 of a-z 0-9 . _ -)"),
                ));
            }
        }
        let bundles_only = v.bundle.scan.as_ref().is_some_and(|s| !s.is_empty());
        let server = match (&v.server.url, &v.server.channel) {
            (Some(url), Some(channel)) => {
                check_url(url).map_err(|m| self.err("server.url", m))?;
                Some(ServerConfig {
                    url: url.clone(),
                    channel: channel.clone(),
                })
            }
            (None, None) => None,
            (Some(_), None) => {
                return Err(self.err("server.url", "is set but server.channel is not"))
            }
            // A device updated only from bundles (`bundle.scan`): a channel, no server.
            (None, Some(_)) if bundles_only => None,
            (None, Some(_)) => {
                return Err(self.err(
                    "server.channel",
                    "is set but server.url is not (and bundle.scan lists no directory)",
                ))
            }
        };
        if let Some(url) = &v.server.report_url {
            check_url(url).map_err(|m| self.err("server.report_url", m))?;
        }
        let report_queue_max = v.server.report_queue_max.unwrap_or(100);
        if !(1..=10_000).contains(&report_queue_max) {
            return Err(self.err("server.report_queue_max", "must be between 1 and 10000"));
        }
        let abs = |key: &'static str, p: &Option<PathBuf>| -> Result<(), ConfigError> {
            match p {
                Some(p) if !p.is_absolute() => {
                    Err(self.err(key, format!("`{}` is not an absolute path", p.display())))
                }
                _ => Ok(()),
            }
        };
        abs("server.ca_bundle", &v.server.ca_bundle)?;
        abs("trust.keys_file", &v.trust.keys_file)?;
        abs("trust.revoked_file", &v.trust.revoked_file)?;
        abs("device.board_profile", &v.device.board_profile)?;
        abs("device.state_dir", &v.device.state_dir)?;
        abs("device.machine_id", &v.device.machine_id)?;
        for (key, list) in [
            ("trust.keys", &v.trust.keys),
            ("trust.revoked", &v.trust.revoked),
        ] {
            if let Some(bad) = list.iter().flatten().find(|k| !is_key(k)) {
                return Err(self.err(
                    key,
                    format!("`{bad}` is not a base64 ed25519 public key (44 characters)"),
                ));
            }
        }

        let interval = v.poll.interval.unwrap_or(Seconds(6 * 3600));
        if !(60..=30 * 86_400).contains(&interval.0) {
            return Err(self.err("poll.interval", "must be between 1m and 30d"));
        }
        let jitter = v.poll.jitter.unwrap_or(Seconds(interval.0 / 10));
        if jitter > interval {
            return Err(self.err(
                "poll.jitter",
                format!("{jitter} is longer than poll.interval ({interval})"),
            ));
        }

        let l = &v.link;
        let positive = |key: &'static str, b: Option<u64>| -> Result<Option<u64>, ConfigError> {
            match b {
                Some(0) => Err(self.err(key, "must be above 0 (leave it out for no limit)")),
                other => Ok(other),
            }
        };
        let bandwidth = positive("link.bandwidth", l.bandwidth.map(|b| b.0))?;
        let update_budget = positive("link.update_budget", l.update_budget.map(|b| b.0))?;
        let monthly_budget = positive("link.monthly_budget", l.monthly_budget.map(|b| b.0))?;
        let low_speed_limit = l.low_speed_limit.map_or(1000, |b| b.0);
        if let Some(cap) = bandwidth {
            if low_speed_limit >= cap {
                return Err(self.err(
                    "link.low_speed_limit",
                    format!(
                        "{low_speed_limit} B/s is not below link.bandwidth ({cap} B/s): every transfer would be cut as too slow"
                    ),
                ));
            }
        }
        let secs = |key: &'static str, s: Option<Seconds>, default: u64| {
            let s = s.unwrap_or(Seconds(default));
            if s.0 == 0 {
                Err(self.err(key, "must be at least 1s"))
            } else {
                Ok(s)
            }
        };
        let connect_timeout = secs("link.connect_timeout", l.connect_timeout, 20)?;
        let stall_timeout = secs("link.stall_timeout", l.stall_timeout, 60)?;
        let low_speed_time = secs("link.low_speed_time", l.low_speed_time, 30)?;
        let backoff_max = secs("link.backoff_max", l.backoff_max, 3600)?;
        let retries = l.retries.unwrap_or(8);
        if !(1..=1000).contains(&retries) {
            return Err(self.err("link.retries", "must be between 1 and 1000"));
        }
        let cache_max = l.cache_max.map_or(512 << 20, |b| b.0);

        let reboot = match (
            v.reboot.policy.as_deref().unwrap_or("now"),
            &v.reboot.window,
        ) {
            ("now", None) => RebootPolicy::Now,
            ("never", None) => RebootPolicy::Never,
            ("window", Some(w)) => {
                let (start, end) = parse_window(w).ok_or_else(|| {
                    self.err(
                        "reboot.window",
                        format!("`{w}` is not a daily window HH:MM-HH:MM (UTC)"),
                    )
                })?;
                RebootPolicy::Window { start, end }
            }
            ("window", None) => {
                return Err(self.err("reboot.policy", "is `window` but reboot.window is not set"))
            }
            ("now" | "never", Some(_)) => {
                return Err(self.err("reboot.window", "is set but reboot.policy is not `window`"))
            }
            (other, _) => {
                return Err(self.err(
                    "reboot.policy",
                    format!("`{other}` is not one of now, window, never"),
                ))
            }
        };
        let reboot_command = match &v.reboot.command {
            None => vec!["reboot".to_owned()],
            Some(c) if c.is_empty() || c[0].is_empty() => {
                return Err(self.err(
                    "reboot.command",
                    "must name a program (a list: the program, then its arguments)",
                ))
            }
            Some(c) => c.clone(),
        };
        let log_level = match &v.log.level {
            None => LogLevel::Info,
            Some(s) => LogLevel::parse(s).ok_or_else(|| {
                self.err(
                    "log.level",
                    format!("`{s}` is not one of {}", LogLevel::NAMES.join(", ")),
                )
            })?,
        };

        let h = &v.health;
        let health_timeout = h.timeout.unwrap_or(Seconds(120));
        if !(1..=MAX_HEALTH_TIMEOUT).contains(&health_timeout.0) {
            return Err(self.err("health.timeout", "must be between 1s and 1h"));
        }
        let services = h.services.clone().unwrap_or_default();
        if let Some(bad) = services.iter().find(|s| !is_service(s)) {
            return Err(self.err(
                "health.services",
                format!("`{bad}` is neither a systemd unit name nor an absolute pidfile path"),
            ));
        }
        if h.server_reachable == Some(true) && server.is_none() {
            return Err(self.err(
                "health.server_reachable",
                "is true but server.url is not set: there is no server to reach",
            ));
        }
        let health = HealthConfig {
            timeout: health_timeout,
            read_only_root: h.read_only_root.unwrap_or(true),
            data_partition: h.data_partition.unwrap_or(true),
            min_free: match h.min_free.map_or(16 << 20, |b| b.0) {
                0 => None,
                n => Some(n),
            },
            server_reachable: h.server_reachable.unwrap_or(server.is_some()),
            services,
        };

        let b = &v.bundle;
        let scan = b.scan.clone().unwrap_or_default();
        if let Some(bad) = scan.iter().find(|p| !is_scan_path(p)) {
            return Err(self.err(
                "bundle.scan",
                format!(
                    "`{}` is not an absolute directory (`*` only as a whole component, no `.` or `..`)",
                    bad.display()
                ),
            ));
        }
        if scan.len() > MAX_SCAN {
            return Err(self.err("bundle.scan", format!("more than {MAX_SCAN} entries")));
        }
        let bundle_interval = b.interval.unwrap_or(Seconds(5));
        if !(1..=MAX_BUNDLE_INTERVAL).contains(&bundle_interval.0) {
            return Err(self.err("bundle.interval", "must be between 1s and 1h"));
        }
        if scan.is_empty() && (b.interval.is_some() || b.remount.is_some()) {
            let key = if b.interval.is_some() {
                "bundle.interval"
            } else {
                "bundle.remount"
            };
            return Err(self.err(key, "is set but bundle.scan lists no directory"));
        }
        let bundle = BundleConfig {
            scan,
            interval: bundle_interval,
            remount: b.remount.unwrap_or(false),
        };

        let config = Config {
            channel: v.server.channel.clone(),
            server,
            ca_bundle: v.server.ca_bundle.clone(),
            report_url: v.server.report_url.clone(),
            report_queue_max,
            trusted_keys_file: v
                .trust
                .keys_file
                .clone()
                .unwrap_or_else(|| "/etc/atomup/trusted.pub".into()),
            trusted_keys: v.trust.keys.clone().unwrap_or_default(),
            revoked_keys_file: v.trust.revoked_file.clone(),
            revoked_keys: v.trust.revoked.clone().unwrap_or_default(),
            board_profile: v
                .device
                .board_profile
                .clone()
                .unwrap_or_else(|| "/etc/atomup/board.conf".into()),
            state_dir: v
                .device
                .state_dir
                .clone()
                .unwrap_or_else(|| "/var/lib/atomup".into()),
            machine_id: v
                .device
                .machine_id
                .clone()
                .unwrap_or_else(|| "/etc/machine-id".into()),
            poll_interval: interval,
            poll_jitter: jitter,
            bandwidth,
            update_budget,
            monthly_budget,
            allow_scratch_fallback: l.allow_scratch_fallback.unwrap_or(false),
            connect_timeout,
            stall_timeout,
            low_speed_limit,
            low_speed_time,
            retries,
            backoff_max,
            cache_max,
            reboot,
            reboot_command,
            log_level,
            health,
            bundle,
        };
        Ok(Loaded {
            config,
            sources: self.sources,
        })
    }
}

impl Config {
    /// The value of `key` as `atomup config` prints it (TOML syntax).
    fn show(&self, key: &str) -> String {
        let s = |v: &str| format!("{v:?}");
        let p = |v: &Path| format!("{:?}", v.display().to_string());
        let opt = |v: Option<String>| v.unwrap_or_else(|| "(unset)".into());
        let list = |v: &[String]| {
            let items: Vec<String> = v.iter().map(|k| s(k)).collect();
            format!("[{}]", items.join(", "))
        };
        let bytes = |b: Option<u64>| opt(b.map(|b| s(&Bytes(b).to_string())));
        let secs = |d: Seconds| s(&d.to_string());
        match key {
            "server.url" => opt(self.server.as_ref().map(|v| s(&v.url))),
            "server.channel" => opt(self.channel.as_deref().map(s)),
            "server.ca_bundle" => opt(self.ca_bundle.as_deref().map(p)),
            "server.report_url" => opt(self.report_url.as_deref().map(s)),
            "server.report_queue_max" => self.report_queue_max.to_string(),
            "trust.keys_file" => p(&self.trusted_keys_file),
            "trust.keys" => list(&self.trusted_keys),
            "trust.revoked_file" => opt(self.revoked_keys_file.as_deref().map(p)),
            "trust.revoked" => list(&self.revoked_keys),
            "device.board_profile" => p(&self.board_profile),
            "device.state_dir" => p(&self.state_dir),
            "device.machine_id" => p(&self.machine_id),
            "poll.interval" => secs(self.poll_interval),
            "poll.jitter" => secs(self.poll_jitter),
            "link.bandwidth" => bytes(self.bandwidth),
            "link.update_budget" => bytes(self.update_budget),
            "link.monthly_budget" => bytes(self.monthly_budget),
            "link.allow_scratch_fallback" => self.allow_scratch_fallback.to_string(),
            "link.connect_timeout" => secs(self.connect_timeout),
            "link.stall_timeout" => secs(self.stall_timeout),
            "link.low_speed_limit" => bytes(Some(self.low_speed_limit)),
            "link.low_speed_time" => secs(self.low_speed_time),
            "link.retries" => self.retries.to_string(),
            "link.backoff_max" => secs(self.backoff_max),
            "link.cache_max" => bytes(Some(self.cache_max)),
            "reboot.policy" => s(match self.reboot {
                RebootPolicy::Now => "now",
                RebootPolicy::Window { .. } => "window",
                RebootPolicy::Never => "never",
            }),
            "reboot.window" => match self.reboot {
                RebootPolicy::Window { start, end } => format!(
                    "\"{:02}:{:02}-{:02}:{:02}\"",
                    start / 60,
                    start % 60,
                    end / 60,
                    end % 60
                ),
                _ => "(unset)".into(),
            },
            "reboot.command" => list(&self.reboot_command),
            "log.level" => s(LogLevel::NAMES[self.log_level as usize]),
            "health.timeout" => secs(self.health.timeout),
            "health.read_only_root" => self.health.read_only_root.to_string(),
            "health.data_partition" => self.health.data_partition.to_string(),
            "health.min_free" => self
                .health
                .min_free
                .map_or("0".into(), |b| s(&Bytes(b).to_string())),
            "health.server_reachable" => self.health.server_reachable.to_string(),
            "health.services" => list(&self.health.services),
            "bundle.scan" => {
                let items: Vec<String> = self.bundle.scan.iter().map(|v| p(v)).collect();
                format!("[{}]", items.join(", "))
            }
            "bundle.interval" => secs(self.bundle.interval),
            "bundle.remount" => self.bundle.remount.to_string(),
            _ => "(unknown key)".into(),
        }
    }
}

/// The release format's label rule (channels and boards): 1-64 of `a-z 0-9 . _ -`.
fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

/// Most `bundle.scan` entries.
pub const MAX_SCAN: usize = 16;

/// A `bundle.scan` entry: absolute, normal components or a whole `*`, no
/// `.`/`..` (a pattern never climbs out of where it points).
fn is_scan_path(p: &Path) -> bool {
    use std::path::Component;
    p.is_absolute()
        && p.components().all(|c| match c {
            Component::RootDir => true,
            Component::Normal(n) => {
                let n = n.as_encoded_bytes();
                n == b"*" || !n.contains(&b'*')
            }
            _ => false,
        })
        && !p.as_os_str().as_encoded_bytes().contains(&0)
}

/// A base64 ed25519 public key as OSTree writes it: 32 bytes, 44 characters.
fn is_key(s: &str) -> bool {
    s.len() == 44
        && s.ends_with('=')
        && s[..43]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

fn check_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| format!("`{url}` is not an http:// or https:// URL"))?;
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() || url.contains(['?', '#', ' ']) || url.chars().any(char::is_control) {
        return Err(format!(
            "`{url}` is not a plain URL (a host, no query, fragment or spaces)"
        ));
    }
    Ok(())
}

/// `HH:MM-HH:MM` → minutes of the day; an empty window (start == end) is refused.
fn parse_window(w: &str) -> Option<(u16, u16)> {
    let minute = |t: &str| -> Option<u16> {
        let (h, m) = t.trim().split_once(':')?;
        if h.len() != 2 || m.len() != 2 {
            return None;
        }
        let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
        (h < 24 && m < 60).then_some(h * 60 + m)
    };
    let (a, b) = w.split_once('-')?;
    let (a, b) = (minute(a)?, minute(b)?);
    (a != b).then_some((a, b))
}

/// The `*.toml` files of `dir` in lexical (byte) order of their names; a
/// missing directory has none. Anything else in the directory is ignored, but
/// a `*.toml` entry that is not a regular file is an error (see `atomup-fsio`).
pub fn drop_ins(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let read_err = |e: std::io::Error| ConfigError::Read {
        path: dir.to_owned(),
        message: e.to_string(),
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(read_err(e)),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(read_err)?;
        let name = entry.file_name();
        let name_b = name.as_encoded_bytes();
        if name_b.ends_with(b".toml") && !name_b.starts_with(b".") {
            files.push(entry.path());
        }
    }
    if files.len() > MAX_FILES {
        return Err(ConfigError::Read {
            path: dir.to_owned(),
            message: format!("more than {MAX_FILES} drop-in files"),
        });
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(files)
}

/// Reads every drop-in of `dirs`, in order, into one layered configuration
/// (not yet validated: lay the command line on top, then [`Layered::finish`]).
pub fn load(dirs: &[&Path]) -> Result<Layered, ConfigError> {
    let mut layered = Layered::default();
    for dir in dirs {
        for path in drop_ins(dir)? {
            let text =
                atomup_fsio::read_text_capped(&path, MAX_FILE).map_err(|e| ConfigError::Read {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            layered.add_text(&path, &text)?;
        }
    }
    Ok(layered)
}

/// Fuzz/corpus entry point: arbitrary bytes as one drop-in file, then the
/// whole validation; must never panic.
pub fn fuzz(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let mut l = Layered::default();
        if l.add_text(Path::new("/fuzz.toml"), text).is_ok() {
            if let Ok(loaded) = l.finish() {
                let _ = loaded.listing();
            }
        }
    }
}

#[cfg(test)]
mod tests;
