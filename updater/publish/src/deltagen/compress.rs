//! Compressing a part payload: which xz block gets which filter chain, and
//! running the blocks on several threads.
//!
//! The default decides each block's LZMA2 settings from what its bytes are
//! ([`Kind`]), and where the kind does not say (generic data, patches), from
//! a cheap trial: the candidates compress a sample of at most
//! [`PROBE_BYTES`] at preset 1 and the smallest wins. The block itself is
//! then compressed once, at preset 9. `--best` instead compresses every
//! block with every candidate at preset 9 extreme and keeps the smallest
//! (several times the CPU), and never splits a kind into several blocks.
//!
//! Memory: each worker holds one LZMA2 encoder (about 11 x the dictionary
//! for the bt4 match finder, ~35 MiB at the default 3 MiB) plus its
//! output; the payload itself is already in memory.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Mutex;

use super::classify::Kind;
use super::xzfmt::{self, Bcj, Block, BlockFilter};
use super::ObjectId;

/// Sample size for the settings trial of generic blocks.
const PROBE_BYTES: usize = 1 << 20;

/// How parts are compressed.
#[derive(Clone, Copy, Debug)]
pub struct XzOpts {
    /// LZMA2 dictionary cap (an encodable size): the device's window.
    pub dict: u32,
    /// Preset level for the main compression (0-9).
    pub preset: u32,
    /// `--best`: every candidate at preset 9e, no block splitting.
    pub best: bool,
    /// Blocks larger than this are split (default mode) into an even number
    /// of pieces, so one big kind still keeps every core busy. Each split
    /// costs the new block's window warm-up (~0.4 % of a 6 MB code block
    /// measured).
    pub max_block: u64,
    /// Worker threads.
    pub jobs: usize,
}

/// One candidate filter chain: (bcj, lc, lp, pb).
type Cand = (Bcj, u32, u32, u32);

/// The settings candidates for a kind, best guess first. `dict` is filled in later.
fn candidates(kind: Kind, best: bool) -> Vec<Cand> {
    let text = (Bcj::None, 3, 0, 0);
    let default = (Bcj::None, 3, 0, 2);
    let aligned4 = (Bcj::None, 1, 2, 2);
    let records8 = (Bcj::None, 0, 3, 3);
    match kind {
        Kind::Code(bcj @ Bcj::Arm64) => {
            let mut c = vec![(bcj, 1, 2, 2)];
            if best {
                c.extend([(bcj, 0, 2, 2), (Bcj::None, 1, 2, 2)]);
            }
            c
        }
        Kind::Code(bcj @ Bcj::X86) => {
            let mut c = vec![(bcj, 3, 0, 0)];
            if best {
                c.extend([(bcj, 1, 0, 0), (Bcj::None, 3, 0, 0)]);
            }
            c
        }
        Kind::Code(Bcj::None) => vec![aligned4, default, text],
        Kind::Text | Kind::Strings | Kind::Meta => {
            let mut c = vec![text];
            if best {
                c.extend([default, (Bcj::None, 4, 0, 0)]);
            }
            c
        }
        Kind::Tables { wide: true } => {
            let mut c = vec![records8];
            if best {
                c.extend([aligned4, default]);
            }
            c
        }
        Kind::Records { stride } => {
            let c = if stride % 8 == 0 { records8 } else { aligned4 };
            let mut v = vec![c];
            if best {
                v.extend([aligned4, records8]);
            }
            v
        }
        Kind::Tables { wide: false } | Kind::Data => {
            let mut c = vec![aligned4];
            if best {
                c.extend([records8, default]);
            }
            c
        }
        Kind::Stored => vec![text],
        Kind::Generic | Kind::Patch => vec![default, text, aligned4, records8],
    }
}

/// One block to compress.
struct Job<'a> {
    data: &'a [u8],
    kind: Kind,
}

/// Compressed blocks already made in this run, by content and settings:
/// the K deltas of one release often contain identical blocks.
#[derive(Default)]
pub struct BlockCache {
    map: Mutex<HashMap<([u8; 32], BlockKey), Block>>,
    pub hits: std::sync::atomic::AtomicU64,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct BlockKey {
    kind: Kind,
    dict: u32,
    preset: u32,
    best: bool,
}

/// Splits `range` (a block of `kind`) into pieces of at most `max` bytes at
/// the kind's alignment.
fn split(range: Range<usize>, kind: Kind, max: u64) -> Vec<Range<usize>> {
    let len = range.len() as u64;
    if len <= max || max == 0 {
        return vec![range];
    }
    // An even number of pieces: a kind that dominates the part (the
    // upgrade pair's 21 MB of patches) then splits evenly over 2, 4 or 8
    // workers instead of leaving one finishing alone (3 pieces on 2
    // threads: 2/3 of the kind's time as wall; 4: 1/2). The output does not
    // depend on --jobs. Measured: +0.1 % bytes for that kind.
    let n = len.div_ceil(max).next_multiple_of(2);
    let align = kind.align().max(1);
    let step = (len / n).div_ceil(align) * align;
    let mut out = Vec::new();
    let mut s = range.start;
    while s < range.end {
        let e = (s + step as usize).min(range.end);
        out.push(s..e);
        s = e;
    }
    out
}

fn filter_for(
    kind: Kind,
    c: Cand,
    len: usize,
    opts: &XzOpts,
    preset: u32,
    extreme: bool,
    nice: u32,
) -> BlockFilter {
    // No bigger than the data can use (`opts.dict` is already the part's
    // window, see `compress_payload`).
    let cover = xzfmt::encodable_dict(u32::try_from(len).unwrap_or(u32::MAX));
    BlockFilter {
        bcj: c.0,
        delta: match kind {
            Kind::Records { stride } => stride,
            _ => 0,
        },
        dict: cover.min(opts.dict),
        lc: c.1,
        lp: c.2,
        pb: c.3,
        preset,
        extreme,
        nice,
    }
}

/// The LZMA2 nice length for a kind: patches (long runs of zero
/// differences) compress 5 % smaller with 273 than with preset 9's 64, and
/// generic data slightly smaller; code and strings measured no better or
/// worse. (Preset 9 extreme, the other way to get long matches, costs twice
/// the time for the same bytes.)
fn nice_for(kind: Kind) -> u32 {
    match kind {
        Kind::Patch | Kind::Generic => 273,
        _ => 0,
    }
}

fn compress_job(job: &Job<'_>, opts: &XzOpts) -> std::io::Result<Block> {
    let (kind, len) = (job.kind, job.data.len());
    let cands = candidates(kind, opts.best);
    if kind == Kind::Stored {
        // Incompressible by construction: the fastest match finder is as good.
        let f = filter_for(kind, cands[0], len, opts, 0, false, 0);
        return xzfmt::compress_block(job.data, &f);
    }
    if opts.best {
        let mut best: Option<Block> = None;
        for c in cands {
            for extreme in [false, true] {
                let f = filter_for(kind, c, len, opts, 9, extreme, 0);
                let b = xzfmt::compress_block(job.data, &f)?;
                if best.as_ref().is_none_or(|x| b.bytes.len() < x.bytes.len()) {
                    best = Some(b);
                }
            }
        }
        return best.ok_or_else(|| std::io::Error::other("no candidate settings"));
    }
    let pick = if cands.len() > 1 {
        // Cheap trial on a sample from the middle of the block.
        let n = len.min(PROBE_BYTES);
        let start = (len - n) / 2 / 8 * 8;
        let sample = &job.data[start..start + n];
        let mut best = (usize::MAX, cands[0]);
        for c in &cands {
            let f = filter_for(kind, *c, n, opts, 1, false, 0);
            let size = xzfmt::compress_block(sample, &f)?.bytes.len();
            if size < best.0 {
                best = (size, *c);
            }
        }
        best.1
    } else {
        cands[0]
    };
    let f = filter_for(kind, pick, len, opts, opts.preset, false, nice_for(kind));
    xzfmt::compress_block(job.data, &f)
}

/// Bytes in and out per kind of block.
pub type KindStats = std::collections::BTreeMap<Kind, (u64, u64)>;

/// Compresses `payload` as one xz stream whose blocks are `blocks` (ranges
/// covering the payload in order, with their kinds). Returns the stream,
/// the largest dictionary used and what each kind cost.
pub fn compress_payload(
    payload: &[u8],
    blocks: &[(Range<usize>, Kind)],
    opts: &XzOpts,
    cache: &BlockCache,
) -> std::io::Result<(Vec<u8>, u32, KindStats)> {
    let mut jobs = Vec::new();
    for (range, kind) in blocks {
        if range.is_empty() {
            continue;
        }
        let max = if opts.best { 0 } else { opts.max_block };
        for r in split(range.clone(), *kind, max) {
            jobs.push(Job {
                data: &payload[r],
                kind: *kind,
            });
        }
    }
    if jobs.is_empty() {
        jobs.push(Job {
            data: &[],
            kind: Kind::Generic,
        });
    }
    // One window size for every block of the part: a decoder that keeps its
    // LZMA2 state from block to block then keeps its window too, instead of
    // freeing and allocating one per block (which glibc's allocator, for
    // one, does not always give back: +1.2 MiB peak measured).
    let largest = jobs.iter().map(|j| j.data.len()).max().unwrap_or(0);
    let window = xzfmt::encodable_dict(u32::try_from(largest).unwrap_or(u32::MAX)).min(opts.dict);
    let opts = &XzOpts {
        dict: window,
        ..*opts
    };
    let weight = |j: &Job<'_>| j.data.len() as u64;
    let results =
        super::parallel_map_by(&jobs, opts.jobs, weight, |job| -> std::io::Result<Block> {
            let key = (
                ObjectId::of(job.data).0,
                BlockKey {
                    kind: job.kind,
                    dict: opts.dict,
                    preset: opts.preset,
                    best: opts.best,
                },
            );
            if let Some(b) = cache
                .map
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&key)
            {
                cache
                    .hits
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Ok(b.clone());
            }
            let b = compress_job(job, opts)?;
            cache
                .map
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key, b.clone());
            Ok(b)
        });

    let mut done = Vec::with_capacity(results.len());
    let mut stats = KindStats::new();
    for (job, r) in jobs.iter().zip(results) {
        let b = r?;
        let e = stats.entry(job.kind).or_default();
        e.0 += b.uncompressed;
        e.1 += b.bytes.len() as u64;
        done.push(b);
    }
    let max_dict = done.iter().map(|b| b.dict).max().unwrap_or(4096);
    Ok((xzfmt::stream(&done), max_dict, stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Large blocks split at the kind's alignment and cover the range.
    #[test]
    fn split_keeps_alignment_and_coverage() {
        let r = split(3..(3 + 10_000), Kind::Tables { wide: true }, 3000);
        assert_eq!(r.first().unwrap().start, 3);
        assert_eq!(r.last().unwrap().end, 10_003);
        for w in r.windows(2) {
            assert_eq!(w[0].end, w[1].start);
            assert_eq!((w[0].end - 3) % 8, 0);
        }
        assert_eq!(split(0..10, Kind::Text, 0), vec![0..10]);
    }

    /// A payload compressed as blocks of different kinds decodes to itself,
    /// in default and `--best` mode; identical blocks come from the cache.
    #[test]
    fn payload_round_trips_through_blocks() {
        let mut payload = b"some text for a text block\n".repeat(2000);
        let code_at = payload.len();
        for i in 0u32..30_000 {
            payload.extend_from_slice(&(0x9400_0000u32 | (i % 3000)).to_le_bytes());
        }
        let blocks = vec![
            (0..code_at, Kind::Text),
            (code_at..payload.len(), Kind::Code(Bcj::Arm64)),
        ];
        let cache = BlockCache::default();
        for best in [false, true] {
            let opts = XzOpts {
                dict: 1 << 20,
                preset: 6,
                best,
                max_block: 50_000,
                jobs: 2,
            };
            let (xz, dict, _) = compress_payload(&payload, &blocks, &opts, &cache).unwrap();
            assert!(dict <= 1 << 20);
            let mut out = Vec::new();
            atomup_ostree::xz::decompress(
                atomup_ostree::delta::Compression::Xz,
                &xz[..],
                &mut out,
                1 << 24,
            )
            .unwrap();
            assert_eq!(out, payload);
        }
        let opts = XzOpts {
            dict: 1 << 20,
            preset: 6,
            best: false,
            max_block: 50_000,
            jobs: 1,
        };
        compress_payload(&payload, &blocks, &opts, &cache).unwrap();
        assert!(cache.hits.load(std::sync::atomic::Ordering::Relaxed) > 0);
    }
}
