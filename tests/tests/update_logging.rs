//! Library messages reach the operator (issue 11.7): no logger was installed
//! for the `log` facade, so a stalled update server produced minutes of
//! silence. `atomup update` against a server that stalls after its headers
//! now prints each retry on stderr (`warning: ... attempt N failed ...;
//! retrying`) at the default level, and `ATOMUP_LOG=off` or `--log-level
//! error` silences them.

use atomup_tests::device::{atomup_bounded, provision, text, update_args, world};
use atomup_tests::nginx::Trickle;
use std::process::Command;
use std::time::Duration;

#[test]
fn download_retries_are_logged_on_stderr_at_the_default_level() {
    let w = world(&[]);
    let d = provision(&w, "log");
    let stall = Trickle::start(vec![0; 100], 10, Duration::from_secs(3600));
    let args = update_args(&w, &d, &stall.url(), "A", &["--idle-timeout", "1"]);
    let out = atomup_bounded(&args);
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning: ") && err.contains("attempt 1 failed") && err.contains("retrying"),
        "{err}"
    );
    // Silenced by the environment, and by the flag.
    let quiet = atomup_tests::device::run_bounded(
        Command::new(atomup_tests::workspace_bin("atomup"))
            .args(&args)
            .env("ATOMUP_LOG", "off"),
        Duration::from_secs(60),
    );
    assert!(
        !String::from_utf8_lossy(&quiet.stderr).contains("retrying"),
        "{}",
        text(&quiet)
    );
    let mut flagged: Vec<std::ffi::OsString> = vec!["--log-level".into(), "error".into()];
    flagged.extend(args.iter().cloned());
    let quiet = atomup_bounded(&flagged);
    assert!(
        !String::from_utf8_lossy(&quiet.stderr).contains("retrying"),
        "{}",
        text(&quiet)
    );
    let bad = atomup_bounded(["--log-level", "loud", "version"]);
    assert!(
        !bad.status.success() && text(&bad).contains("log level must be"),
        "{}",
        text(&bad)
    );
}
