use super::*;

fn scratch(name: &str) -> atomup_scratch::ScratchDir {
    atomup_scratch::ScratchDir::new(&format!("config-{name}"))
}

fn layered(files: &[(&str, &str)]) -> Result<Loaded, ConfigError> {
    let mut l = Layered::default();
    for (path, text) in files {
        l.add_text(Path::new(path), text)?;
    }
    l.finish()
}

const VENDOR: &str = r#"
[server]
url = "https://updates.example.com/repo"
channel = "stable"

[poll]
interval = "6h"

[link]
monthly_budget = "100MiB"
"#;

/// Vendor, then site, then the command line: a later layer wins key by key,
/// keys it does not set keep the earlier value and its source.
#[test]
fn later_layers_win_key_by_key_and_sources_are_kept() {
    let mut l = Layered::default();
    l.add_text(Path::new("/usr/lib/atomup/config.d/00-vendor.toml"), VENDOR)
        .unwrap();
    l.add_text(
        Path::new("/etc/atomup/config.d/50-site.toml"),
        "[server]\nchannel = \"beta\"\n[poll]\ninterval = 3600\n",
    )
    .unwrap();
    let mut flags = Partial::default();
    flags.server.channel = Some("canary".into());
    l.add(flags, Source::CommandLine);
    let loaded = l.finish().unwrap();
    let c = &loaded.config;
    let server = c.server.as_ref().unwrap();
    assert_eq!(server.url, "https://updates.example.com/repo");
    assert_eq!(server.channel, "canary");
    assert_eq!(c.poll_interval, Seconds(3600));
    assert_eq!(c.poll_jitter, Seconds(360), "jitter defaults to a tenth");
    assert_eq!(c.monthly_budget, Some(100 << 20));
    assert_eq!(
        loaded.sources["server.url"],
        Source::File("/usr/lib/atomup/config.d/00-vendor.toml".into())
    );
    assert_eq!(loaded.sources["server.channel"], Source::CommandLine);
    assert_eq!(
        loaded.sources["poll.interval"],
        Source::File("/etc/atomup/config.d/50-site.toml".into())
    );
    assert!(!loaded.sources.contains_key("link.bandwidth"));
    let listing = loaded.listing();
    assert!(
        listing.contains("server.channel = \"canary\"  # command line\n"),
        "{listing}"
    );
    assert!(
        listing.contains("poll.interval = \"1h\"  # /etc/atomup/config.d/50-site.toml\n"),
        "{listing}"
    );
    assert!(
        listing.contains("link.bandwidth = (unset)  # default\n"),
        "{listing}"
    );
    assert_eq!(listing.lines().count(), KEYS.len());
}

/// With no file at all the defaults are a complete, valid configuration
/// (no server: `update` then asks for one).
#[test]
fn no_files_give_the_defaults() {
    let c = layered(&[]).unwrap().config;
    assert_eq!(c.server, None);
    assert_eq!(c.state_dir, PathBuf::from("/var/lib/atomup"));
    assert_eq!(
        c.trusted_keys_file,
        PathBuf::from("/etc/atomup/trusted.pub")
    );
    assert_eq!(c.poll_interval, Seconds(6 * 3600));
    assert_eq!((c.low_speed_limit, c.low_speed_time), (1000, Seconds(30)));
    assert_eq!(c.reboot, RebootPolicy::Now);
    assert_eq!(c.log_level, LogLevel::Info);
    assert!(!c.allow_scratch_fallback);
    assert_eq!(c.report_queue_max, 100);
    assert_eq!(c.reboot_command, ["reboot"]);
}

/// An unknown key is refused with the file, the key and the keys that exist.
#[test]
fn unknown_key_names_the_file_and_the_key() {
    let e = layered(&[(
        "/etc/atomup/config.d/50-site.toml",
        "[server]\nulr = \"x\"\n",
    )])
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "/etc/atomup/config.d/50-site.toml: unknown field `ulr`, expected one of `url`, \
         `channel`, `ca_bundle`, `report_url`, `report_queue_max` for key `server` at line 1 \
         column 1"
    );
    let e = layered(&[("/x.toml", "[serverr]\n")]).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("/x.toml: unknown field `serverr`"),
        "{e}"
    );
}

/// A value of the wrong type is refused with the file and the dotted key.
#[test]
fn wrong_type_names_the_file_and_the_key() {
    let e = layered(&[(
        "/etc/atomup/config.d/10.toml",
        "[link]\nretries = \"many\"\n",
    )])
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "/etc/atomup/config.d/10.toml: invalid type: string \"many\", expected u32 for key \
         `link.retries` at line 2 column 11"
    );
    let e = layered(&[("/a.toml", "[poll]\ninterval = \"6 hours\"\n")]).unwrap_err();
    assert!(
        e.to_string().contains("is not a duration") && e.to_string().contains("poll.interval"),
        "{e}"
    );
    let e = layered(&[("/a.toml", "[link]\nbandwidth = -5\n")]).unwrap_err();
    assert!(e.to_string().contains("link.bandwidth"), "{e}");
}

/// Combinations that cannot work are refused naming the key and where it
/// was set, even when each file on its own is fine.
#[test]
fn impossible_combinations_are_refused() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("/v.toml", "[server]\nurl = \"https://u/r\"\n")],
            "server.url (from /v.toml): is set but server.channel is not",
        ),
        (
            &[
                ("/v.toml", "[link]\nbandwidth = \"2kB\"\n"),
                ("/s.toml", "[link]\nlow_speed_limit = 4000\n"),
            ],
            "link.low_speed_limit (from /s.toml): 4000 B/s is not below link.bandwidth \
             (2000 B/s): every transfer would be cut as too slow",
        ),
        (
            &[("/v.toml", "[reboot]\npolicy = \"window\"\n")],
            "reboot.policy (from /v.toml): is `window` but reboot.window is not set",
        ),
        (
            &[("/v.toml", "[reboot]\nwindow = \"02:00-04:00\"\n")],
            "reboot.window (from /v.toml): is set but reboot.policy is not `window`",
        ),
        (
            &[("/v.toml", "[poll]\ninterval = \"1h\"\njitter = \"2h\"\n")],
            "poll.jitter (from /v.toml): 2h is longer than poll.interval (1h)",
        ),
        (
            &[("/v.toml", "[device]\nstate_dir = \"var/lib\"\n")],
            "device.state_dir (from /v.toml): `var/lib` is not an absolute path",
        ),
        (
            &[(
                "/v.toml",
                "[server]\nurl = \"ftp://u/r\"\nchannel = \"s\"\n",
            )],
            "server.url (from /v.toml): `ftp://u/r` is not an http:// or https:// URL",
        ),
        (
            &[(
                "/v.toml",
                "[server]\nurl = \"http://u/r\"\nchannel = \"Stable\"\n",
            )],
            "server.channel (from /v.toml): `Stable` is not a channel name (1-64 of a-z 0-9 . _ -)",
        ),
        (
            &[("/v.toml", "[trust]\nkeys = [\"short\"]\n")],
            "trust.keys (from /v.toml): `short` is not a base64 ed25519 public key (44 characters)",
        ),
        (
            &[("/v.toml", "[link]\nupdate_budget = 0\n")],
            "link.update_budget (from /v.toml): must be above 0 (leave it out for no limit)",
        ),
        (
            &[("/v.toml", "[log]\nlevel = \"loud\"\n")],
            "log.level (from /v.toml): `loud` is not one of error, warn, info, debug, trace",
        ),
        (
            &[(
                "/v.toml",
                "[reboot]\npolicy = \"window\"\nwindow = \"25:00-04:00\"\n",
            )],
            "reboot.window (from /v.toml): `25:00-04:00` is not a daily window HH:MM-HH:MM (UTC)",
        ),
        (
            &[("/v.toml", "[reboot]\ncommand = []\n")],
            "reboot.command (from /v.toml): must name a program (a list: the program, then its arguments)",
        ),
        (
            &[("/v.toml", "[server]\nreport_queue_max = 0\n")],
            "server.report_queue_max (from /v.toml): must be between 1 and 10000",
        ),
    ];
    for (files, want) in cases {
        assert_eq!(layered(files).unwrap_err().to_string(), *want);
    }
}

/// The maintenance window is UTC minutes, start inclusive, end exclusive,
/// and may wrap past midnight.
#[test]
fn reboot_window_bounds_and_wrap() {
    let w = |s: &str| {
        layered(&[(
            "/v.toml",
            &format!("[reboot]\npolicy = \"window\"\nwindow = \"{s}\"\n"),
        )])
        .unwrap()
        .config
        .reboot
    };
    let at = |h: u64, m: u64| 20_000 * 86_400 + h * 3600 + m * 60;
    let night = w("02:00-04:00");
    assert!(!night.allows(at(1, 59)));
    assert!(night.allows(at(2, 0)));
    assert!(night.allows(at(3, 59)));
    assert!(!night.allows(at(4, 0)));
    let wrap = w("23:30-00:30");
    assert!(wrap.allows(at(23, 45)) && wrap.allows(at(0, 15)));
    assert!(!wrap.allows(at(0, 30)) && !wrap.allows(at(12, 0)));
    assert_eq!(night.wait_secs(at(1, 59)), Some(60));
    assert_eq!(night.wait_secs(at(2, 30)), Some(0));
    assert_eq!(night.wait_secs(at(4, 0)), Some(22 * 3600));
    assert_eq!(wrap.wait_secs(at(12, 0)), Some(11 * 3600 + 1800));
    assert_eq!(RebootPolicy::Now.wait_secs(at(12, 0)), Some(0));
    assert_eq!(RebootPolicy::Never.wait_secs(at(12, 0)), None);
    assert!(RebootPolicy::Now.allows(at(12, 0)));
    assert!(!RebootPolicy::Never.allows(at(12, 0)));
}

/// Drop-ins are read per directory in byte order of their names, vendor
/// directory first; other files and dotfiles are ignored; one bad file fails
/// the whole load even when a later file would be fine.
#[test]
fn drop_in_directories_layer_in_lexical_order() {
    let d = scratch("dirs");
    let (vendor, site) = (d.join("vendor"), d.join("site"));
    std::fs::create_dir_all(&vendor).unwrap();
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(vendor.join("10-a.toml"), "[poll]\ninterval = \"1h\"\n").unwrap();
    std::fs::write(vendor.join("9-b.toml"), "[poll]\ninterval = \"2h\"\n").unwrap();
    std::fs::write(vendor.join("README"), "not toml at all [").unwrap();
    std::fs::write(vendor.join(".hidden.toml"), "not toml at all [").unwrap();
    std::fs::write(site.join("00-site.toml"), "[log]\nlevel = \"debug\"\n").unwrap();
    let loaded = load(&[&vendor, &site]).unwrap().finish().unwrap();
    assert_eq!(
        loaded.config.poll_interval,
        Seconds(7200),
        "9-b sorts after 10-a"
    );
    assert_eq!(loaded.config.log_level, LogLevel::Debug);
    assert_eq!(
        loaded.sources["log.level"],
        Source::File(site.join("00-site.toml"))
    );
    assert!(load(&[&d.join("missing")]).is_ok());

    std::fs::write(site.join("01-bad.toml"), "[link]\nretries = true\n").unwrap();
    std::fs::write(site.join("02-good.toml"), "[link]\nretries = 3\n").unwrap();
    let e = load(&[&vendor, &site]).unwrap_err();
    assert!(e
        .to_string()
        .starts_with(&format!("{}: ", site.join("01-bad.toml").display())));
    std::fs::remove_dir_all(&d).unwrap();
}

/// A FIFO named like a drop-in is refused at once instead of blocking the agent.
#[test]
fn fifo_drop_in_is_refused_without_blocking() {
    let d = scratch("fifo");
    let fifo = d.join("50-fifo.toml");
    rustix_mkfifo(&fifo);
    let e = load(&[&d]).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("cannot read {}: a FIFO, not a regular file", fifo.display())
    );
    std::fs::remove_dir_all(&d).unwrap();
}

fn rustix_mkfifo(p: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(p)
        .status()
        .unwrap();
    assert!(status.success());
}

/// The health keys: defaults (every built-in on, 2 min per check, 16 MiB
/// free, the server check only with a server), overrides, `min_free = 0`
/// switching the free-space check off, and the listing.
#[test]
fn health_keys_default_override_and_switch_off() {
    let h = layered(&[]).unwrap().config.health;
    assert_eq!(h.timeout, Seconds(120));
    assert!(h.read_only_root && h.data_partition);
    assert_eq!(h.min_free, Some(16 << 20));
    assert!(!h.server_reachable, "no server, nothing to reach");
    assert!(h.services.is_empty());
    assert!(
        layered(&[("/v.toml", VENDOR)])
            .unwrap()
            .config
            .health
            .server_reachable
    );

    let loaded = layered(&[
        ("/v.toml", VENDOR),
        (
            "/etc/atomup/config.d/50-site.toml",
            "[health]\ntimeout = \"30s\"\nread_only_root = false\nmin_free = 0\n\
             server_reachable = false\nservices = [\"sshd.service\", \"/run/app.pid\"]\n",
        ),
    ])
    .unwrap();
    let h = &loaded.config.health;
    assert_eq!(h.timeout, Seconds(30));
    assert!(!h.read_only_root && h.data_partition && !h.server_reachable);
    assert_eq!(h.min_free, None);
    assert_eq!(h.services, ["sshd.service", "/run/app.pid"]);
    let listing = loaded.listing();
    for line in [
        "health.timeout = \"30s\"  # /etc/atomup/config.d/50-site.toml\n",
        "health.data_partition = true  # default\n",
        "health.min_free = 0  # /etc/atomup/config.d/50-site.toml\n",
        "health.services = [\"sshd.service\", \"/run/app.pid\"]  # /etc/atomup/config.d/50-site.toml\n",
    ] {
        assert!(listing.contains(line), "{line} not in {listing}");
    }
    assert!(layered(&[("/v.toml", "[health]\nmin_free = \"1MiB\"\n")])
        .unwrap()
        .listing()
        .contains("health.min_free = \"1MiB\""));
}

/// Impossible health values are refused with the key and the file.
#[test]
fn impossible_health_values_name_the_key() {
    let cases: &[(&str, &str)] = &[
        (
            "[health]\ntimeout = 0\n",
            "health.timeout (from /v.toml): must be between 1s and 1h",
        ),
        (
            "[health]\ntimeout = \"2h\"\n",
            "health.timeout (from /v.toml): must be between 1s and 1h",
        ),
        (
            "[health]\nservices = [\"--now\"]\n",
            "health.services (from /v.toml): `--now` is neither a systemd unit name nor an absolute pidfile path",
        ),
        (
            "[health]\nservices = [\"run/app.pid\"]\n",
            "health.services (from /v.toml): `run/app.pid` is neither a systemd unit name nor an absolute pidfile path",
        ),
        (
            "[health]\nserver_reachable = true\n",
            "health.server_reachable (from /v.toml): is true but server.url is not set: there is no server to reach",
        ),
    ];
    for (text, want) in cases {
        assert_eq!(
            layered(&[("/v.toml", text)]).unwrap_err().to_string(),
            *want
        );
    }
    let e = layered(&[("/v.toml", "[health]\nread_only_root = \"yes\"\n")]).unwrap_err();
    assert!(
        e.to_string().contains("for key `health.read_only_root`"),
        "{e}"
    );
}

/// `[bundle]`: the scanned directories (with `*` components), the interval
/// and the remount rule are read and listed; off (no directory) by default.
#[test]
fn bundle_scan_keys_are_read_and_listed() {
    let off = layered(&[]).unwrap().config.bundle;
    assert!(off.scan.is_empty() && !off.remount);
    let loaded = layered(&[(
        "/v.toml",
        "[bundle]\nscan = [\"/media/usb\", \"/run/media/*/*\"]\ninterval = \"2s\"\nremount = true\n",
    )])
    .unwrap();
    let b = &loaded.config.bundle;
    assert_eq!(
        b.scan,
        [PathBuf::from("/media/usb"), PathBuf::from("/run/media/*/*")]
    );
    assert_eq!((b.interval, b.remount), (Seconds(2), true));
    let listing = loaded.listing();
    assert!(
        listing.contains("bundle.scan = [\"/media/usb\", \"/run/media/*/*\"]  # /v.toml\n")
            && listing.contains("bundle.interval = \"2s\"  # /v.toml\n")
            && listing.contains("bundle.remount = true  # /v.toml\n"),
        "{listing}"
    );
}

/// Each impossible `[bundle]` value is refused with the key and the reason.
#[test]
fn bad_bundle_values_are_refused_with_the_key() {
    let cases: &[(&str, &str)] = &[
        (
            "[bundle]\nscan = [\"media\"]\n",
            "bundle.scan (from /v.toml): `media` is not an absolute directory (`*` only as a whole component, no `.` or `..`)",
        ),
        (
            "[bundle]\nscan = [\"/run/media/usb*\"]\n",
            "bundle.scan (from /v.toml): `/run/media/usb*` is not an absolute directory (`*` only as a whole component, no `.` or `..`)",
        ),
        (
            "[bundle]\nscan = [\"/media/../etc\"]\n",
            "bundle.scan (from /v.toml): `/media/../etc` is not an absolute directory (`*` only as a whole component, no `.` or `..`)",
        ),
        (
            "[bundle]\nscan = [\"/media\"]\ninterval = 0\n",
            "bundle.interval (from /v.toml): must be between 1s and 1h",
        ),
        (
            "[bundle]\ninterval = \"5s\"\n",
            "bundle.interval (from /v.toml): is set but bundle.scan lists no directory",
        ),
        (
            "[bundle]\nremount = true\n",
            "bundle.remount (from /v.toml): is set but bundle.scan lists no directory",
        ),
    ];
    for (text, want) in cases {
        assert_eq!(
            layered(&[("/v.toml", text)]).unwrap_err().to_string(),
            *want
        );
    }
}

/// A device updated only from bundles: `server.channel` without `server.url`
/// is valid with `bundle.scan` (no server, the channel kept), refused without.
#[test]
fn a_channel_without_a_server_is_valid_only_for_bundles() {
    let c = layered(&[(
        "/v.toml",
        "[server]\nchannel = \"stable\"\n[bundle]\nscan = [\"/media/usb\"]\n",
    )])
    .unwrap()
    .config;
    assert_eq!((c.server, c.channel.as_deref()), (None, Some("stable")));
    assert_eq!(
        layered(&[("/v.toml", "[server]\nchannel = \"stable\"\n")])
            .unwrap_err()
            .to_string(),
        "server.channel (from /v.toml): is set but server.url is not (and bundle.scan lists no directory)"
    );
    let e = layered(&[(
        "/v.toml",
        "[server]\nchannel = \"Bad\"\n[bundle]\nscan = [\"/media/usb\"]\n",
    )])
    .unwrap_err();
    assert!(e.to_string().contains("`Bad` is not a channel name"), "{e}");
}
