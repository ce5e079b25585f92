//! HTTPS with a private CA: a real nginx serves TLS with a certificate from a
//! CA this test generates with `openssl`; the downloader trusts exactly the
//! CA bundle it is given (`server.ca_bundle`), and refuses the server without
//! it (the built-in web roots do not know the CA) or with another CA.

use atomup_fetch::{Expect, FetchError, Fetcher, Options};
use atomup_tests::nginx::Nginx;
use atomup_tests::ostree_fixture::ScratchDir;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::Duration;

/// A CA and a server certificate for 127.0.0.1 it signed, as PEM files in `dir`:
/// `<name>-ca.pem`, `<name>-server.pem`, `<name>-server.key`.
fn make_ca(dir: &Path, name: &str) {
    assert!(atomup_tests::require_tool("openssl"));
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let (ca, ca_key) = (format!("{name}-ca.pem"), format!("{name}-ca.key"));
    let (srv, srv_key, csr) = (
        format!("{name}-server.pem"),
        format!("{name}-server.key"),
        format!("{name}-server.csr"),
    );
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut args = vec!["req", "-x509"];
    args.extend(ec);
    args.extend([
        "-keyout",
        &ca_key,
        "-out",
        &ca,
        "-days",
        "2",
        "-subj",
        "/CN=atomup test CA",
    ]);
    run(&args);
    let mut args = vec!["req"];
    args.extend(ec);
    args.extend(["-keyout", &srv_key, "-out", &csr, "-subj", "/CN=127.0.0.1"]);
    run(&args);
    let ext = format!("{name}-ext.cnf");
    std::fs::write(
        dir.join(&ext),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-out",
        &srv,
        "-days",
        "2",
        "-extfile",
        &ext,
    ]);
}

struct TlsSite {
    tmp: ScratchDir,
    nginx: Nginx,
    data: Vec<u8>,
}

fn tls_site() -> TlsSite {
    let tmp = ScratchDir::new("fetch-tls");
    make_ca(tmp.path(), "good");
    make_ca(tmp.path(), "other");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let root = tmp.join("repo");
    std::fs::create_dir_all(root.join("deltas")).unwrap();
    std::fs::write(root.join("deltas/0"), &data).unwrap();
    let nginx = Nginx::serve_tls(
        &root,
        tmp.path(),
        &tmp.join("good-server.pem"),
        &tmp.join("good-server.key"),
    );
    TlsSite { tmp, nginx, data }
}

fn opts(ca: Option<&Path>) -> Options {
    Options {
        attempts: 1,
        connect_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(5),
        ca_pem: ca.map(|p| std::fs::read(p).unwrap()),
        ..Options::default()
    }
}

fn fetch(s: &TlsSite, ca: Option<&Path>) -> Result<(), String> {
    let f = Fetcher::new(&s.nginx.https_url(), &s.tmp.join("cache"), opts(ca))
        .map_err(|e| e.to_string())?;
    let e = Expect {
        size: s.data.len() as u64,
        sha256: Sha256::digest(&s.data).into(),
    };
    f.fetch_verified("deltas/0", e, &mut |_, _| {})
        .map(|_| ())
        .map_err(|e| {
            let mut out = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(c) = src {
                out += &format!(" -> {c}");
                src = c.source();
            }
            out
        })
}

/// With the private CA as its bundle the device downloads over HTTPS.
#[test]
fn https_with_the_private_ca_downloads_and_verifies() {
    let s = tls_site();
    assert_eq!(fetch(&s, Some(&s.tmp.join("good-ca.pem"))), Ok(()));
    assert!(s.nginx.requests().iter().any(|l| l.starts_with("200 ")));
}

/// Without the bundle (the built-in web roots), or with another CA, the
/// server's certificate is refused before any request is sent.
#[test]
fn https_without_the_private_ca_or_with_another_is_refused() {
    let s = tls_site();
    for ca in [None, Some(s.tmp.join("other-ca.pem"))] {
        let err = fetch(&s, ca.as_deref()).unwrap_err();
        assert!(
            err.contains("gave up after 1 attempts") && err.to_lowercase().contains("certificate"),
            "{ca:?}: {err}"
        );
    }
    assert!(s.nginx.requests().is_empty(), "{:?}", s.nginx.requests());
}

/// A CA bundle that holds no certificate is refused when the fetcher is made.
#[test]
fn a_ca_bundle_without_certificates_is_refused() {
    let tmp = ScratchDir::new("fetch-tls-empty");
    std::fs::write(tmp.join("empty.pem"), "not a certificate\n").unwrap();
    let err = Fetcher::new(
        "https://127.0.0.1:1",
        &tmp.join("cache"),
        opts(Some(&tmp.join("empty.pem"))),
    )
    .err()
    .unwrap();
    assert!(matches!(err, FetchError::CaBundle(_)), "{err}");
    assert_eq!(err.to_string(), "CA bundle: no PEM certificate in it");
}
