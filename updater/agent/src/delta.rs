//! `atomup delta apply|show`: the host/device command that drives the delta
//! engine directly. Tests and benchmarks use it, so its options and output
//! lines are a contract (see the deploy crate's README).

use std::path::{Path, PathBuf};
use std::time::Instant;

use atomup_deploy::{Options, VerifiedDelta};
use atomup_ostree::sign::Trust;

use crate::error::Result;

pub const HELP: &str = "\
Usage:
  atomup delta apply --delta DIR --to DIR [--from-root DIR --from-meta DIR]
        [--fallback-repo DIR] [--meta-out DIR]
        (--trusted-keys FILE [--revoked-keys FILE] | --no-verify) [--stats]
  atomup delta show --delta DIR

apply: verifies the delta (signature, part digests, from-commit), writes the
to-commit's tree into --to, verifies the written tree against the commit and
prints one summary line. --stats adds `peak_rss_kib=`, `read_kib=` (bytes
read), `wall_ms=` (also when the apply fails) and `phases_ms:` (time per
phase) lines.
";

pub fn run(args: &mut lexopt::Parser) -> Result {
    use lexopt::prelude::*;
    let sub = match args.next()? {
        Some(Value(v)) => v.string()?,
        Some(Long("help") | Short('h')) | None => {
            print!("{HELP}");
            return Ok(());
        }
        Some(other) => return Err(other.unexpected().into()),
    };
    match sub.as_str() {
        "apply" => apply(args),
        "show" => show(args),
        other => Err(format!("unknown delta command `{other}` (see `atomup delta --help`)").into()),
    }
}

fn apply(args: &mut lexopt::Parser) -> Result {
    use lexopt::prelude::*;
    let start = Instant::now();
    let (mut delta, mut to, mut from_root, mut from_meta, mut fallback, mut meta_out) =
        (None, None, None, None, None, None);
    let (mut trusted, mut revoked, mut no_verify, mut stats) = (None, None, false, false);
    while let Some(arg) = args.next()? {
        match arg {
            Long("delta") => delta = Some(PathBuf::from(args.value()?)),
            Long("to") => to = Some(PathBuf::from(args.value()?)),
            Long("from-root") => from_root = Some(PathBuf::from(args.value()?)),
            Long("from-meta") => from_meta = Some(PathBuf::from(args.value()?)),
            Long("fallback-repo") => fallback = Some(PathBuf::from(args.value()?)),
            Long("meta-out") => meta_out = Some(PathBuf::from(args.value()?)),
            Long("trusted-keys") => trusted = Some(PathBuf::from(args.value()?)),
            Long("revoked-keys") => revoked = Some(PathBuf::from(args.value()?)),
            Long("no-verify") => no_verify = true,
            Long("stats") => stats = true,
            Long("help") | Short('h') => {
                print!("{HELP}");
                return Ok(());
            }
            other => return Err(other.unexpected().into()),
        }
    }
    let delta = delta.ok_or("--delta DIR is required")?;
    let to = to.ok_or("--to DIR is required")?;
    if from_root.is_some() != from_meta.is_some() {
        return Err("--from-root and --from-meta go together".into());
    }
    let trust = match (trusted, no_verify) {
        (Some(_), true) => return Err("--trusted-keys and --no-verify exclude each other".into()),
        (None, false) => return Err("--trusted-keys FILE is required (or --no-verify)".into()),
        (None, true) => None,
        (Some(t), false) => {
            let rev = revoked.as_deref().map(read_key_file).transpose()?;
            Some(Trust::from_key_files(&read_key_file(&t)?, rev.as_deref())?)
        }
    };
    let opts = Options {
        target: &to,
        from_root: from_root.as_deref(),
        from_meta: from_meta.as_deref(),
        fallback_repo: fallback.as_deref(),
        meta_out: meta_out.as_deref(),
    };
    // The delta is verified once, from its files (superblock signature,
    // every part's size and sha256), then applied.
    let verify_started = Instant::now();
    let applied = VerifiedDelta::open_dir(&delta, trust.as_ref()).and_then(|d| {
        let verified = verify_started.elapsed();
        atomup_deploy::apply(&d, &opts).map(|mut s| {
            s.timings.checks += verified;
            s
        })
    });
    if stats {
        // Printed whether the apply succeeded or not: the memory and read
        // figures of a refused delta are what the bound tests look at.
        println!(
            "peak_rss_kib={}",
            atomup_fsio::proc_self("status", "VmHWM:").unwrap_or(0)
        );
        println!(
            "read_kib={}",
            atomup_fsio::proc_self("io", "rchar:")
                .unwrap_or(0)
                .div_ceil(1024)
        );
        println!("wall_ms={}", start.elapsed().as_millis());
        // What the largest helper process (the `G` op's gzip rebuilds) held
        // besides the executable's pages, which the engine already holds;
        // 0 if none ran.
        println!(
            "helper_private_peak_kib={}",
            atomup_deploy::gzip_helper::helper_peak_kib()
        );
    }
    let s = applied?;
    println!(
        "applied {}: {} objects written ({} bytes), {} reused from the active root ({} bytes), {} metadata objects, {} entries",
        s.to, s.objects_written, s.bytes_written, s.objects_reused, s.bytes_reused, s.meta_objects, s.entries
    );
    if stats {
        let t = &s.timings;
        println!(
            "phases_ms: checks={} parts={} seed={} (parallel to parts) reconcile={} sync={} verify={}",
            t.checks.as_millis(),
            t.parts.as_millis(),
            t.seed.as_millis(),
            t.reconcile.as_millis(),
            t.sync.as_millis(),
            t.verify.as_millis()
        );
    }
    Ok(())
}

fn show(args: &mut lexopt::Parser) -> Result {
    use lexopt::prelude::*;
    let mut delta = None;
    while let Some(arg) = args.next()? {
        match arg {
            Long("delta") => delta = Some(PathBuf::from(args.value()?)),
            other => return Err(other.unexpected().into()),
        }
    }
    let delta = delta.ok_or("--delta DIR is required")?;
    let i = atomup_deploy::show(&delta)?;
    println!(
        "from: {}",
        i.from.map_or("(scratch)".to_owned(), |f| f.to_hex())
    );
    println!("to: {}", i.to);
    println!("timestamp: {}", i.timestamp);
    println!(
        "endianness: {}",
        if i.big_endian { "big" } else { "little" }
    );
    println!("signed: {}", if i.signed { "yes" } else { "no" });
    println!(
        "commit signed: {}",
        if i.commit_signed { "yes" } else { "no" }
    );
    println!("parts: {}", i.parts.len());
    for (n, p) in i.parts.iter().enumerate() {
        println!(
            "  part {n}: {}size={} usize={} objects={}",
            if p.inline { "inline " } else { "" },
            p.size,
            p.usize,
            p.objects
        );
    }
    println!("fallbacks: {}", i.fallbacks.len());
    for f in &i.fallbacks {
        println!("  fallback {}: size={} usize={}", f.id, f.size, f.usize);
    }
    Ok(())
}

/// Reads a key file without blocking on it (a FIFO is refused by type) and
/// never more than [`MAX_KEY_FILE`](atomup_deploy::limits::MAX_KEY_FILE) bytes of it.
fn read_key_file(path: &Path) -> Result<String> {
    atomup_fsio::read_text_capped(path, atomup_deploy::limits::MAX_KEY_FILE)
        .map_err(|e| format!("cannot read {}: {e}", path.display()).into())
}
