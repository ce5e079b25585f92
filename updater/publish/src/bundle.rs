//! `atomup-publish bundle`: one file for a USB stick that updates a mixed
//! fleet offline. The container is `atomup-bundle`'s (plain ustar, signed
//! release metadata first); this command picks which of the release's deltas
//! go in, copies them from the repository and reports the sizes.

use crate::release::published;
use crate::repo::Repo;
use atomup_bundle::Writer;
use atomup_ostree::delta::{Superblock, SuperblockFile};
use atomup_release::{release_path, Delta, DeltaSource, Release};
use std::fs::{self, File};
use std::path::PathBuf;

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

pub const HELP: &str = "\
Usage: atomup-publish bundle --repo DIR --channel NAME --board NAME --out FILE [options]
Writes an offline update bundle: the channel/board's current signed release metadata,
then the deltas it lists that are chosen below, as one plain tar file (`tar tvf` lists it).
By default every delta of the release goes in (each earlier release it has a delta
from, and the from-scratch one).
  --from-version V     only the delta from version V (repeatable; the version's commit is
                       read from atomup/<channel>/<board>/history/V)
  --from-last K        only the deltas from the K newest earlier versions in the history
  --no-scratch         leave out the from-scratch delta (devices on other versions then
                       find nothing to install)
Prints one line per delta and the container overhead.
";

struct Args {
    repo: PathBuf,
    channel: String,
    board: String,
    out: PathBuf,
    from_versions: Vec<u64>,
    from_last: Option<usize>,
    scratch: bool,
}

fn parse(args: &mut lexopt::Parser) -> Result<Args> {
    use lexopt::prelude::*;
    let (mut repo, mut channel, mut board, mut out) = (None, None, None, None);
    let mut a = Args {
        repo: PathBuf::new(),
        channel: String::new(),
        board: String::new(),
        out: PathBuf::new(),
        from_versions: Vec::new(),
        from_last: None,
        scratch: true,
    };
    while let Some(arg) = args.next()? {
        match arg {
            Long("repo") => repo = Some(PathBuf::from(args.value()?)),
            Long("channel") => channel = Some(args.value()?.string()?),
            Long("board") => board = Some(args.value()?.string()?),
            Long("out") => out = Some(PathBuf::from(args.value()?)),
            Long("from-version") => a.from_versions.push(args.value()?.parse()?),
            Long("from-last") => a.from_last = Some(args.value()?.parse()?),
            Long("no-scratch") => a.scratch = false,
            Long("help") | Short('h') => {
                print!("{HELP}");
                std::process::exit(0);
            }
            other => return Err(other.unexpected().into()),
        }
    }
    a.repo = repo.ok_or("--repo DIR is required")?;
    a.channel = channel.ok_or("--channel NAME is required")?;
    a.board = board.ok_or("--board NAME is required")?;
    a.out = out.ok_or("--out FILE is required")?;
    if !a.from_versions.is_empty() && a.from_last.is_some() {
        return Err("give --from-version or --from-last, not both".into());
    }
    Ok(a)
}

/// The commits of earlier versions, from the release history, newest first.
fn history(repo: &Repo, channel: &str, board: &str) -> Result<Vec<(u64, [u8; 32])>> {
    let dir = repo.path(format!("atomup/{channel}/{board}/history"));
    let mut out = Vec::new();
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(format!("reading {}: {e}", dir.display()).into()),
    };
    for entry in entries {
        let path = entry?.path();
        if let Some(r) = published(&path)? {
            out.push((r.version, r.commit));
        }
    }
    out.sort_by_key(|e| std::cmp::Reverse(e.0));
    Ok(out)
}

/// The release's deltas the options select, in the release's order.
fn select<'r>(a: &Args, release: &'r Release, repo: &Repo) -> Result<Vec<&'r Delta>> {
    let earlier: Vec<(u64, [u8; 32])> = history(repo, &a.channel, &a.board)?
        .into_iter()
        .filter(|(v, _)| *v < release.version)
        .collect();
    let wanted: Option<Vec<[u8; 32]>> = if !a.from_versions.is_empty() {
        let mut commits = Vec::new();
        for v in &a.from_versions {
            let c = earlier
                .iter()
                .find(|(hv, _)| hv == v)
                .ok_or_else(|| format!("version {v} is not an earlier release in the history"))?
                .1;
            commits.push(c);
        }
        Some(commits)
    } else {
        a.from_last
            .map(|k| earlier.iter().take(k).map(|(_, c)| *c).collect())
    };
    let mut out = Vec::new();
    for d in &release.deltas {
        let keep = match (d.from, &wanted) {
            (DeltaSource::Scratch, _) => a.scratch,
            (DeltaSource::From(_), None) => true,
            (DeltaSource::From(c), Some(w)) => w.contains(&c),
        };
        if keep {
            out.push(d);
        }
    }
    if let Some(w) = &wanted {
        for c in w {
            if !release
                .deltas
                .iter()
                .any(|d| d.from == DeltaSource::From(*c))
            {
                return Err(format!(
                    "the release has no delta from {} (run `atomup-publish delta` and `release` again)",
                    atomup_ostree::ObjectId(*c)
                )
                .into());
            }
        }
    }
    if out.is_empty() {
        return Err("no delta selected: the bundle would install nothing".into());
    }
    Ok(out)
}

/// The delta's files in the bundle: the superblock, then each part file
/// (inline parts live in the superblock).
fn delta_files(repo: &Repo, d: &Delta) -> Result<Vec<String>> {
    let sb_rel = format!("{}/superblock", d.path);
    let bytes = fs::read(repo.path(&sb_rel)).map_err(|e| format!("reading {sb_rel}: {e}"))?;
    let file = SuperblockFile::parse(&bytes).map_err(|e| format!("{sb_rel}: {e}"))?;
    let sb = Superblock::parse(file.unsigned).map_err(|e| format!("{sb_rel}: {e}"))?;
    let mut files = vec![sb_rel.clone()];
    for i in 0..sb.parts.len() {
        if sb
            .inline_part(i)
            .map_err(|e| format!("{sb_rel}: {e}"))?
            .is_none()
        {
            files.push(format!("{}/{i}", d.path));
        }
    }
    Ok(files)
}

/// Writes the bundle to `tmp` (synced); returns (bundle size, bytes of
/// release and deltas in it).
fn write_bundle(
    repo: &Repo,
    rel: &str,
    signed: &[u8],
    mtime: u64,
    chosen: &[&Delta],
    tmp: &std::path::Path,
) -> Result<(u64, u64)> {
    let out = File::create(tmp).map_err(|e| format!("creating {}: {e}", tmp.display()))?;
    let mut w = Writer::new(std::io::BufWriter::new(out), mtime);
    w.add(rel, signed.len() as u64, &mut &signed[..])?;
    let mut payload = signed.len() as u64;
    for d in chosen {
        let mut bytes = 0u64;
        for name in delta_files(repo, d)? {
            let path = repo.path(&name);
            let mut f = File::open(&path).map_err(|e| format!("opening {name}: {e}"))?;
            let size = f.metadata()?.len();
            w.add(&name, size, &mut f)?;
            bytes += size;
        }
        payload += bytes;
        let from = match d.from {
            DeltaSource::Scratch => "scratch".to_owned(),
            DeltaSource::From(c) => atomup_ostree::ObjectId(c).to_string(),
        };
        println!("  delta from {from}: {bytes} bytes ({})", d.path);
    }
    let (buf, total) = w.finish()?;
    let file = buf.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok((total, payload))
}

pub fn run(args: &mut lexopt::Parser) -> Result {
    let a = parse(args)?;
    let repo = Repo::open(&a.repo)?;
    let rel = release_path(&a.channel, &a.board);
    let signed = fs::read(repo.path(&rel)).map_err(|e| format!("reading {rel}: {e}"))?;
    let release = published(&repo.path(&rel))?
        .ok_or_else(|| format!("{rel}: no release published for {}/{}", a.channel, a.board))?;
    let chosen = select(&a, &release, &repo)?;

    let tmp = a.out.with_extension("partial");
    let written = write_bundle(&repo, &rel, &signed, release.timestamp, &chosen, &tmp);
    let (total, payload) = match written {
        Ok(sizes) => sizes,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
    };
    fs::rename(&tmp, &a.out).map_err(|e| format!("renaming into {}: {e}", a.out.display()))?;
    println!(
        "bundle {}/{} version {} -> {}: {} delta(s), {total} bytes = {payload} bytes of release and deltas + {} bytes of tar headers and padding ({:.2}%)",
        a.channel,
        a.board,
        release.version,
        a.out.display(),
        chosen.len(),
        total - payload,
        (total - payload) as f64 * 100.0 / total as f64
    );
    Ok(())
}
