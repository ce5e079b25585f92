//! `atomup-publish release`: writes a channel's signed release metadata for a
//! board — the one small file devices poll. It indexes every delta in the
//! repository that leads to the released commit (with sizes and digests, so a
//! device can cap and check each download), adds the rollout plan, refuses to
//! go backwards in version, and signs the canonical bytes. It warns about
//! any indexed delta whose xz window and gzip helper need more RAM than the
//! board's budget (`--device-ram`): devices would run out of memory applying
//! it.

use crate::repo::Repo;
use atomup_ostree::delta::{Superblock, SuperblockFile};
use atomup_ostree::object::ObjectId;
use atomup_ostree::sign::{SigningKey, Trust};
use atomup_release::{release_path, Delta, DeltaSource, Release, Wave};
use sha2::{Digest, Sha256};
use std::fs;
use std::path::{Path, PathBuf};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

const DAY: u64 = 24 * 3600;

struct Args {
    repo: PathBuf,
    key: PathBuf,
    channel: String,
    board: String,
    version: u64,
    to: String,
    timestamp: Option<u64>,
    expires: Option<u64>,
    expires_in_days: u64,
    min_from_version: u64,
    waves: Vec<(String, String)>,
    force_version: bool,
    device_ram: u64,
}

fn parse(args: &mut lexopt::Parser) -> Result<Args> {
    use lexopt::prelude::*;
    let (mut repo, mut key, mut channel, mut board, mut version, mut to) =
        (None, None, None, None, None, None);
    let mut a = Args {
        repo: PathBuf::new(),
        key: PathBuf::new(),
        channel: String::new(),
        board: String::new(),
        version: 0,
        to: String::new(),
        timestamp: None,
        expires: None,
        expires_in_days: 30,
        min_from_version: 0,
        waves: Vec::new(),
        force_version: false,
        device_ram: crate::deltagen::DEFAULT_DEVICE_RAM,
    };
    while let Some(arg) = args.next()? {
        match arg {
            Long("repo") => repo = Some(PathBuf::from(args.value()?)),
            Long("key") => key = Some(PathBuf::from(args.value()?)),
            Long("channel") => channel = Some(args.value()?.string()?),
            Long("board") => board = Some(args.value()?.string()?),
            Long("version") => version = Some(args.value()?.parse()?),
            Long("to") => to = Some(args.value()?.string()?),
            Long("timestamp") => a.timestamp = Some(args.value()?.parse()?),
            Long("expires") => a.expires = Some(args.value()?.parse()?),
            Long("expires-in-days") => a.expires_in_days = args.value()?.parse()?,
            Long("min-from-version") => a.min_from_version = args.value()?.parse()?,
            Long("wave") => {
                let v = args.value()?.string()?;
                let (start, share) = v.split_once(':').ok_or("--wave wants START:PERCENT")?;
                a.waves.push((start.to_owned(), share.to_owned()));
            }
            Long("force-version") => a.force_version = true,
            Long("device-ram") => {
                a.device_ram = crate::deltagen::parse_size(&args.value()?.string()?)?
            }
            Long("help") | Short('h') => {
                print!("{HELP}");
                std::process::exit(0);
            }
            other => return Err(other.unexpected().into()),
        }
    }
    a.repo = repo.ok_or("--repo DIR is required")?;
    a.key = key.ok_or("--key SECRET is required")?;
    a.channel = channel.ok_or("--channel NAME is required")?;
    a.board = board.ok_or("--board NAME is required")?;
    a.version = version.ok_or("--version N is required")?;
    a.to = to.ok_or("--to REV is required")?;
    Ok(a)
}

pub const HELP: &str = "\
Usage: atomup-publish release --repo DIR --key SECRET --channel NAME --board NAME
                              --version N --to REV [options]
Writes atomup/<channel>/<board>/release: signed metadata naming commit REV, with every
delta in the repository that leads to it.
  --timestamp UNIX          publication time (default: now)
  --expires UNIX            metadata expiry (default: timestamp + --expires-in-days)
  --expires-in-days N       default 30
  --min-from-version N      devices below N must first install an intermediate release
  --wave START:PERCENT      rollout wave (repeatable): START is unix seconds, or +SECONDS
                            after the timestamp; PERCENT of the fleet (e.g. 1, 12.5, 100)
  --force-version           allow a version not above the published one (re-sign, fix)
  --device-ram BYTES        the board's RAM budget for applying a delta (default 8M, as
                            `delta --device-ram`): a delta needing more is warned about
";

pub fn run(args: &mut lexopt::Parser) -> Result {
    let a = parse(args)?;
    let repo = Repo::open(&a.repo)?;
    let commit = repo.resolve(&a.to)?;
    let key = atomup_ostree::sign::parse_secret_key(
        &fs::read_to_string(&a.key).map_err(|e| format!("reading key {}: {e}", a.key.display()))?,
    )?;
    let timestamp = match a.timestamp {
        Some(t) => t,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs(),
    };
    let expires = a.expires.unwrap_or(timestamp + a.expires_in_days * DAY);
    let waves = a
        .waves
        .iter()
        .map(|(start, share)| parse_wave(start, share, timestamp))
        .collect::<Result<Vec<_>>>()?;

    // Versions only go up on a channel: devices refuse downgrades, so a
    // lower version would strand the fleet on the old release.
    let rel = release_path(&a.channel, &a.board);
    if let Some(previous) = published(&repo.path(&rel))? {
        if a.version <= previous.version && !a.force_version {
            return Err(format!(
                "version {} is not above the published version {} of {}/{} (use --force-version to re-sign)",
                a.version, previous.version, a.channel, a.board
            )
            .into());
        }
    }

    let deltas = index_deltas(repo.root(), &commit, &key)?;
    if deltas.is_empty() {
        return Err(format!(
            "no delta in {} leads to {commit}: run `atomup-publish delta` first",
            repo.root().display()
        )
        .into());
    }
    for d in &deltas {
        let need = apply_ram(&repo.root().join(&d.path))?;
        if need > a.device_ram {
            eprintln!(
                "warning: delta {} needs about {} KiB of device RAM to apply (the engine's {} KiB, its xz window and any gzip helper), over the board's budget of {} KiB (--device-ram): devices of this board may run out of memory; regenerate it with `atomup-publish delta --device-ram {}K`",
                d.path,
                need >> 10,
                crate::deltagen::ENGINE_RSS >> 10,
                a.device_ram >> 10,
                a.device_ram >> 10
            );
        }
    }
    let release = Release {
        channel: a.channel.clone(),
        board: a.board.clone(),
        version: a.version,
        commit: commit.0,
        timestamp,
        expires,
        min_from_version: a.min_from_version,
        deltas,
        waves,
    };
    release.validate()?;
    let body = release.to_canonical();
    let sig = atomup_ostree::sign::sign(&key, body.as_bytes());
    let signed = format!("{body}{}", atomup_release::check::signature_line(&sig));
    let history = format!("atomup/{}/{}/history/{}", a.channel, a.board, a.version);
    repo.write_atomic(Path::new(&history), signed.as_bytes())?;
    repo.write_atomic(Path::new(&rel), signed.as_bytes())?;

    let total: u64 = release
        .deltas
        .iter()
        .map(|d| d.superblock_size + d.parts_size)
        .sum();
    println!(
        "released {}/{} version {} = {commit}: {} delta(s), {} bytes of deltas, expires {}, {} wave(s) -> {rel}",
        a.channel,
        a.board,
        a.version,
        release.deltas.len(),
        total,
        expires,
        release.waves.len()
    );
    Ok(())
}

/// The currently published release (our own file: its body is parsed without
/// a signature check, the version is all that matters here).
pub(crate) fn published(path: &Path) -> Result<Option<Release>> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("reading {}: {e}", path.display()).into()),
    };
    let body = atomup_release::check::unsigned_body(&bytes);
    Ok(Some(
        Release::parse(body).map_err(|e| format!("{}: {e}", path.display()))?,
    ))
}

fn parse_wave(start: &str, share: &str, timestamp: u64) -> Result<Wave> {
    let start = match start.strip_prefix('+') {
        Some(rel) => timestamp + rel.parse::<u64>()?,
        None => start.parse()?,
    };
    let percent: f64 = share.trim_end_matches('%').parse()?;
    if !(percent > 0.0 && percent <= 100.0) {
        return Err(format!("wave share {share} is not in (0, 100]").into());
    }
    // Basis points: 12.5% = 1250.
    let share = (percent * 100.0).round() as u16;
    Ok(Wave {
        start,
        share: share.max(1),
    })
}

/// Every delta directory under `deltas/` whose superblock leads to `to`, with
/// the sizes and digests a device needs to cap and check its downloads.
fn index_deltas(root: &Path, to: &ObjectId, key: &SigningKey) -> Result<Vec<Delta>> {
    // Rule (issue 11.3): a signed release names only deltas signed by its
    // own key. Devices refuse anything else, after a download; the vendor
    // learns it here, before a release strands the fleet.
    let own = Trust::from_key_files(
        &atomup_ostree::base64::encode(key.verifying_key().as_bytes()),
        None,
    )?;
    let mut out = Vec::new();
    for superblock in superblocks(&root.join("deltas"))? {
        if let Some(d) = index_one(root, &superblock, to, &own)? {
            out.push(d);
        }
    }
    out.sort_by_key(|d| d.from);
    Ok(out)
}

/// Every `superblock` file below `dir` (the repository's `deltas/`).
pub(crate) fn superblocks(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(files_under(dir)?
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "superblock"))
        .collect())
}

/// Every file below `dir`, sorted; a missing `dir` has none.
pub(crate) fn files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let entries = match fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("reading {}: {e}", d.display()).into()),
        };
        for entry in entries {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn index_one(root: &Path, superblock: &Path, to: &ObjectId, own: &Trust) -> Result<Option<Delta>> {
    let bytes = fs::read(superblock)?;
    let what = |e: atomup_ostree::Error| format!("{}: {e}", superblock.display());
    let file = SuperblockFile::parse(&bytes).map_err(what)?;
    let sb = Superblock::parse(file.unsigned).map_err(what)?;
    if sb.to != *to {
        return Ok(None);
    }
    let Some(dict) = file.signatures else {
        return Err(format!(
            "{} is not signed: sign it with the release key (`atomup-publish sign --delta`) first",
            superblock.display()
        )
        .into());
    };
    let sigs = atomup_ostree::sign::signatures(dict).map_err(what)?;
    if own.verify(file.unsigned, sigs).is_err() {
        return Err(format!(
            "{} is not signed by the release key (devices trusting it would refuse the delta)",
            superblock.display()
        )
        .into());
    }
    let dir = superblock
        .parent()
        .expect("a superblock file has a directory");
    let mut parts_size = 0;
    for (i, part) in sb.parts.iter().enumerate() {
        if sb.inline_part(i).map_err(what)?.is_some() {
            continue;
        }
        let p = dir.join(i.to_string());
        let len = fs::metadata(&p)
            .map_err(|e| format!("{}: {e}", p.display()))?
            .len();
        if len != part.size {
            return Err(format!(
                "{}: {len} bytes, superblock says {}",
                p.display(),
                part.size
            )
            .into());
        }
        parts_size += len;
    }
    if !sb.fallbacks.is_empty() {
        return Err(format!(
            "{}: has {} fallback object(s); devices apply self-contained deltas only (regenerate with --min-fallback-size 0)",
            superblock.display(),
            sb.fallbacks.len()
        )
        .into());
    }
    let rel = dir
        .strip_prefix(root)
        .map_err(|_| "delta outside the repository")?
        .to_str()
        .ok_or("non-UTF-8 delta path")?
        .to_owned();
    Ok(Some(Delta {
        from: sb
            .from
            .map_or(DeltaSource::Scratch, |f| DeltaSource::From(f.0)),
        path: rel,
        superblock_size: bytes.len() as u64,
        superblock_sha256: Sha256::digest(&bytes).into(),
        parts_size,
    }))
}

/// Device RAM to apply the delta in `dir`: the engine's own, the largest
/// xz window any of its parts declares (a decoder allocates the declared
/// window whatever the part's size) and the gzip helper for the longest
/// text its `G` ops rebuild. Inline parts are in the superblock, which holds
/// no xz stream of its own.
fn apply_ram(dir: &Path) -> Result<u64> {
    let bytes = fs::read(dir.join("superblock"))?;
    let file = SuperblockFile::parse(&bytes)?;
    let sb = Superblock::parse(file.unsigned)?;
    let mut window = 0u32;
    for i in 0..sb.parts.len() {
        let p = dir.join(i.to_string());
        let part = match sb.inline_part(i)? {
            Some(inline) => inline.to_vec(),
            None => fs::read(&p).map_err(|e| format!("{}: {e}", p.display()))?,
        };
        let (compression, payload) = atomup_ostree::delta::part_header(&part)?;
        if compression == atomup_ostree::delta::Compression::Xz {
            let needs = crate::deltagen::xzfmt::dict_need(payload)
                .map_err(|e| format!("{}: not a readable xz stream ({e:?})", p.display()))?;
            window = window.max(needs.max_dict);
        }
    }
    // A delta with `G` ops says the longest text they rebuild (older
    // publishers did not: counted as none).
    Ok(crate::deltagen::apply_ram(window, sb.gzip_text_max()?))
}
