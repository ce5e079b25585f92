//! `atomup-publish delta`: static deltas in upstream's format, made smaller
//! than upstream's generator by choices the format leaves open, plus by
//! default atomup's one extension (with `--ostree-compatible` they are plain
//! upstream deltas, which `ostree static-delta apply-offline` and the device
//! both apply):
//!
//! - **Like with like.** A part's blob is laid out by kind of bytes, not by
//!   file: the machine code of every new ELF file together, their string
//!   tables together, their relocation and symbol tables together, text
//!   files, already-compressed files, patches (`classify`, `part`). A file
//!   is reassembled on the device by one `w` op per range. Each kind is its
//!   own xz block with settings for it: xz's ARM64 or x86 BCJ filter and
//!   4-byte-aligned LZMA2 settings for code, text settings for strings,
//!   8-byte-record settings for tables (`compress`, `xzfmt`).
//! - **Any old file can be a base.** A modified file is diffed against the
//!   old file it shares most content with (`similar`), whatever its name or
//!   directory, as well as the old file at the same path or with the same
//!   name apart from version digits. A file whose bytes equal an old file's
//!   (moved, or only its mode/owner changed) is copied from it with a read
//!   source instead of being shipped. A patch is kept only when it
//!   compresses clearly smaller than the file.
//! - **Device-sized windows.** The LZMA2 dictionary (the RAM a device needs
//!   to decompress) comes from `--device-ram` (default 8 MiB of device RAM
//!   -> 2 MiB window) and each part gets no more than it can use.
//! - **gzip files as text** (the `G` op, off with `--ostree-compatible`).
//!   A changed gzip file is new deflate bytes nothing in upstream's format
//!   shrinks; it goes as its text, or a patch of the old text, and the
//!   device rebuilds it byte for byte (checked here first).
//! - **Work done once.** Headers, file data, sketches, patches, estimates
//!   and compressed blocks are cached for the whole invocation, so the K
//!   deltas of `--from-last K` share them; bsdiff runs and blocks are spread
//!   over `--jobs` threads.

mod bsdiff;
mod classify;
mod compress;
mod part;
mod similar;
pub mod xzfmt;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use atomup_ostree::delta::delta_path;
use atomup_ostree::encode::{ModeEntry, NewFallback, NewPartInfo, NewSuperblock};
use atomup_ostree::gvariant::Endian;
use atomup_ostree::gzip;
use atomup_ostree::object::{Commit, DirTree, ObjectId, ObjectType};

use compress::{BlockCache, XzOpts};
use part::PartBuilder;

use crate::progress::{human, Progress};
use crate::repo::{OwnedHeader, Repo, RepoError};

/// Files smaller than this are always stored literally.
const MIN_BSDIFF_SIZE: u64 = 512;

/// Device RAM the apply engine needs besides the xz window and the gzip
/// helper (binary, tree metadata store, buffers, the texts of a `G` op, the
/// seeding thread): its peak minus its window measured at most 4.0 MiB over
/// repeated applies of the Debian benchmark deltas (6,682 entries) with the
/// device's static musl build, so 4.5 MiB. (The glibc host build reads
/// 2 MiB higher: its allocator keeps freed windows.)
pub const ENGINE_RSS: u64 = 9 << 19;

/// Device RAM a `G` rebuild adds while it runs, for a text of `text` bytes:
/// the helper's private memory (its code pages are the engine's executable,
/// already counted): the record, the text, the file and preflate's
/// predictor. Measured (VmHWM minus the executable's pages, one Debian
/// changelog cut to each size): 256 KiB at 4 KB of text, 388-708 KiB at
/// 40-150 KB, 1,092 KiB at 250 KB; 448 KiB for one 20 KB text and 640 KiB
/// for the upgrade pair's texts of at most 58 KB, so not the text alone: the
/// corrections vary. Hence 512 KiB plus 4 bytes per text byte, 107 KiB or
/// more above every figure measured (1.5 MiB at the 256 KiB default cap).
pub fn gzip_helper_ram(text: u64) -> u64 {
    (512 << 10) + text.saturating_mul(4)
}

/// The device RAM budget `delta` sizes its xz windows for by default.
pub const DEFAULT_DEVICE_RAM: u64 = 8 << 20;

/// A patch is kept only below this fraction of the literal's estimated
/// compressed size: a literal also gains from its neighbours in the part
/// (shared strings, like-with-like blocks), a patch much less.
const PATCH_KEEP: f64 = 0.85;

/// In-memory file data kept for reuse across the deltas of one run.
const DATA_CACHE_BYTES: u64 = 512 << 20;

/// Device RAM to apply a delta needing an xz window of `window` bytes and,
/// if it has `G` ops, rebuilding texts of up to `gzip_text` bytes.
pub fn apply_ram(window: u32, gzip_text: Option<u64>) -> u64 {
    ENGINE_RSS + u64::from(window) + gzip_text.map_or(0, gzip_helper_ram)
}

/// The LZMA2 window for a device RAM budget: what is left once the engine
/// and a gzip helper at this budget's text cap have theirs (kept in every
/// mode, so one budget gives one window).
pub fn dict_for_ram(ram: u64) -> Option<u32> {
    let room = ram
        .checked_sub(ENGINE_RSS)?
        .checked_sub(gzip_helper_ram(gzip_text_for_ram(ram)))?;
    if room < 64 << 10 {
        return None;
    }
    // The device's decoder refuses streams needing more than 64 MiB.
    let room = room.min(48 << 20) as u32;
    Some(xzfmt::encodable_dict_at_most(room))
}

/// The largest gzip text the `G` op rebuilds for a device RAM budget: 1/32
/// of it (256 KiB for 8 MiB: the device then needs up to 1.5 MiB more while
/// it rebuilds one file, see [`gzip_helper_ram`]), at most the device's own
/// cap.
pub fn gzip_text_for_ram(ram: u64) -> u64 {
    (ram / 32).clamp(16 << 10, gzip::MAX_TEXT)
}

#[derive(Clone, Debug)]
pub struct Options {
    /// Cut a new part once the uncompressed payload would exceed this.
    pub max_part_size: u64,
    /// LZMA2 dictionary cap (the device's xz window).
    pub dict: u32,
    /// xz preset level of the main compression (0-9).
    pub preset: u32,
    /// Smallest output, whatever the time.
    pub best: bool,
    /// Worker threads for bsdiff, sketches and xz blocks.
    pub jobs: usize,
    /// Regular files larger than this become fallback objects; 0 = never.
    pub min_fallback_size: u64,
    pub bsdiff: bool,
    /// Files larger than this (old + new) are not bsdiff'ed (time and memory).
    pub max_bsdiff_size: u64,
    /// atomup's `G` op (on by default, off with `--ostree-compatible`): gzip
    /// files shipped as their text (or a patch of it) and rebuilt on the
    /// device. Upstream's applier refuses such deltas.
    pub gzip_rebuild: bool,
    /// The largest gzip text (old or new) `G` is used for: the device holds
    /// both texts and about 3 bytes per text byte of predictor at once.
    pub gzip_text_max: u64,
    pub progress: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_part_size: 32 << 20,
            dict: dict_for_ram(DEFAULT_DEVICE_RAM).unwrap_or(2 << 20),
            preset: 9,
            best: false,
            jobs: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .clamp(1, 8),
            min_fallback_size: 0,
            bsdiff: true,
            max_bsdiff_size: 64 << 20,
            gzip_rebuild: true,
            gzip_text_max: gzip_text_for_ram(DEFAULT_DEVICE_RAM),
            progress: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error("commit {id} has a malformed {what}")]
    Object {
        what: &'static str,
        id: ObjectId,
        #[source]
        source: Box<atomup_ostree::Error>,
    },
    #[error("compressing delta part {index}")]
    Compress {
        index: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("diffing {new} against {old}")]
    Diff {
        old: ObjectId,
        new: ObjectId,
        #[source]
        source: std::io::Error,
    },
    #[error("removing stale part file {path}")]
    Stale {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What one generated delta holds.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub dir: String,
    pub parts: usize,
    pub superblock_bytes: u64,
    pub part_bytes: u64,
    pub payload_bytes: u64,
    pub meta_objects: u64,
    pub content_objects: u64,
    pub bsdiff_objects: u64,
    pub copy_objects: u64,
    /// gzip files rebuilt from their text on the device (`G` ops).
    pub gzip_objects: u64,
    /// The longest text (new, or the old one a patch applies to) a `G` op
    /// of this delta holds; `None` without `G` ops.
    pub gzip_text_max: Option<u64>,
    pub fallback_objects: u64,
    /// Largest LZMA2 dictionary any block needs to decompress.
    pub max_dict: u32,
    /// Work taken from the run's cache instead of redone.
    pub reused: u64,
    /// Payload bytes in and part bytes out, per kind of xz block.
    pub kinds: compress::KindStats,
    /// Seconds spent choosing bases and diffing (the rest is compression).
    pub plan_secs: f64,
    pub secs: f64,
}

impl Summary {
    /// One line per kind of block: what went in and what came out.
    pub fn kinds_table(&self) -> String {
        let mut s = String::new();
        for (k, (i, o)) in &self.kinds {
            s.push_str(&format!(
                "  {:<28} {:>12} -> {:>10}\n",
                format!("{k:?}"),
                i,
                o
            ));
        }
        s
    }

    /// Device RAM to apply this delta: the engine, the largest window and,
    /// with `G` ops, the gzip helper for the longest text.
    pub fn device_ram(&self) -> u64 {
        apply_ram(self.max_dict, self.gzip_text_max)
    }

    pub fn line(&self) -> String {
        format!(
            "delta {}: {} parts, {} total ({} superblock + {} parts; payload {}), {} metadata + {} content objects ({} bsdiff, {} copied, {} gzip-rebuilt, {} fallback), xz window {} (device RAM to apply about {}), {} results reused, {:.1}s ({:.1}s planning)",
            self.dir,
            self.parts,
            human(self.superblock_bytes + self.part_bytes),
            human(self.superblock_bytes),
            human(self.part_bytes),
            human(self.payload_bytes),
            self.meta_objects,
            self.content_objects,
            self.bsdiff_objects,
            self.copy_objects,
            self.gzip_objects,
            self.fallback_objects,
            human(u64::from(self.max_dict)),
            human(self.device_ram()),
            self.reused,
            self.secs,
            self.plan_secs
        )
    }
}

/// Every object a commit reaches, with the paths of its content.
#[derive(Default)]
pub(crate) struct TreeIndex {
    /// Dirtrees and dirmetas in traversal order (deduplicated).
    pub(crate) meta: Vec<(ObjectType, ObjectId)>,
    meta_set: HashSet<ObjectId>,
    /// Content id -> first path that names it.
    pub(crate) content: HashMap<ObjectId, String>,
    /// Path -> content id.
    by_path: HashMap<String, ObjectId>,
}

fn load_commit(
    repo: &Repo,
    id: &ObjectId,
) -> Result<(Vec<u8>, ObjectId, ObjectId, Option<ObjectId>), DeltaError> {
    let bytes = repo.read_meta(id, ObjectType::Commit)?;
    let c = Commit::parse(&bytes).map_err(|source| DeltaError::Object {
        what: "commit",
        id: *id,
        source: Box::new(source),
    })?;
    let (t, m, p) = (c.root_tree, c.root_meta, c.parent);
    Ok((bytes, t, m, p))
}

/// The parent of a commit, if the commit names one.
pub fn parent_of(repo: &Repo, id: &ObjectId) -> Result<Option<ObjectId>, DeltaError> {
    Ok(load_commit(repo, id)?.3)
}

pub(crate) fn index_tree(repo: &Repo, commit: &ObjectId) -> Result<TreeIndex, DeltaError> {
    let (_, tree, meta, _) = load_commit(repo, commit)?;
    let mut idx = TreeIndex::default();
    // Explicit stack, so a deep tree cannot overflow ours.
    let mut stack = vec![(String::new(), tree, meta)];
    while let Some((path, tree, meta)) = stack.pop() {
        if idx.meta_set.insert(meta) {
            idx.meta.push((ObjectType::DirMeta, meta));
        }
        let first = idx.meta_set.insert(tree);
        if first {
            idx.meta.push((ObjectType::DirTree, tree));
        }
        let data = repo.read_meta(&tree, ObjectType::DirTree)?;
        let t = DirTree::parse(&data).map_err(|source| DeltaError::Object {
            what: "dirtree",
            id: tree,
            source: Box::new(source),
        })?;
        for f in &t.files {
            let p = format!("{path}/{}", f.name);
            idx.content.entry(f.id).or_insert_with(|| p.clone());
            idx.by_path.insert(p, f.id);
        }
        for d in t.dirs.iter().rev() {
            stack.push((format!("{path}/{}", d.name), d.tree, d.meta));
        }
    }
    Ok(idx)
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn dirname(path: &str) -> &str {
    path.rsplit_once('/').map(|(d, _)| d).unwrap_or("")
}

/// A name without its digits: `libfoo.so.1.2.3` and `libfoo.so.1.2.4` match.
fn stem(name: &str) -> String {
    name.chars().filter(|c| !c.is_ascii_digit()).collect()
}

/// Grouping key for literal content: similar files next to each other so one
/// xz window sees them together. Shared objects by `.so`, otherwise by the
/// last extension; then name, then path.
fn order_key(path: &str) -> (String, String, String) {
    let name = basename(path);
    let ext = if name.contains(".so.") || name.ends_with(".so") {
        ".so".to_owned()
    } else {
        match name.rsplit_once('.') {
            Some((stemp, ext)) if !stemp.is_empty() => ext.to_ascii_lowercase(),
            _ => String::new(),
        }
    };
    (ext, name.to_owned(), path.to_owned())
}

#[derive(Clone)]
struct Planned {
    id: ObjectId,
    path: String,
    header: OwnedHeader,
    size: u64,
}

/// How a new content object gets to the device.
enum Item {
    Meta(ObjectType, ObjectId),
    Literal(Planned),
    Patch(Planned, ObjectId, Arc<Vec<u8>>),
    Copy(Planned, ObjectId),
    /// A gzip file rebuilt from its text (`G`), with a base's text to patch.
    Gzip(Planned, Arc<GzText>, Option<(ObjectId, Arc<Vec<u8>>)>),
}

/// A gzip file the device can rebuild byte for byte: its reconstruction
/// record (`gzip::Record`, checked by rebuilding here) and its text.
struct GzText {
    record: Vec<u8>,
    text: Arc<Vec<u8>>,
}

/// The text of `data` if it is one gzip member (header, deflate stream,
/// trailer) whose text is at most `max` bytes; and where the stream starts.
fn gzip_text_of(data: &[u8], max: u64) -> Option<(usize, Vec<u8>)> {
    if data.len() < 18 || data[..3] != [0x1f, 0x8b, 8] {
        return None;
    }
    let (h, text) = gzip::single_member(data).ok()?;
    (text.len() as u64 <= max).then_some((h, text))
}

fn mode_of(h: &OwnedHeader) -> ModeEntry {
    ModeEntry {
        uid: h.uid,
        gid: h.gid,
        mode: h.mode,
    }
}

/// Where planning sent a file that had a base to try.
enum Routed {
    Diffed(Option<ObjectId>, Diffed),
    Gzip(Item),
}

/// The outcome of diffing one new object against one old object.
#[derive(Clone)]
enum Diffed {
    /// Same bytes: copy from the old object.
    Same,
    /// A patch worth shipping.
    Patch(Arc<Vec<u8>>),
    /// Not worth it: ship the file.
    Literal,
}

/// (old, new) object ids.
type Pair = (ObjectId, ObjectId);

/// Work shared by every delta of one invocation.
#[derive(Default)]
struct Cache {
    headers: Mutex<HashMap<ObjectId, (OwnedHeader, u64)>>,
    data: Mutex<HashMap<ObjectId, Arc<Vec<u8>>>>,
    data_bytes: AtomicU64,
    sketches: Mutex<HashMap<ObjectId, Arc<Vec<u64>>>>,
    diffs: Mutex<HashMap<(ObjectId, ObjectId), Diffed>>,
    estimates: Mutex<HashMap<ObjectId, u64>>,
    gz: Mutex<HashMap<ObjectId, Option<Arc<GzText>>>>,
    gz_patches: Mutex<HashMap<Pair, Arc<Vec<u8>>>>,
    gz_bases: Mutex<HashMap<ObjectId, Option<Arc<Vec<u8>>>>>,
    blocks: BlockCache,
    reused: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Generates deltas into one repository, sharing work between them.
pub struct Generator<'r> {
    repo: &'r Repo,
    opts: Options,
    cache: Cache,
}

/// Runs `f` over `items` on up to `jobs` threads; results in input order.
pub(crate) fn parallel_map<T: Sync, R: Send>(
    items: &[T],
    jobs: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let jobs = jobs.clamp(1, items.len().max(1));
    if jobs == 1 {
        return items.iter().map(&f).collect();
    }
    let next = AtomicU64::new(0);
    let mut done: Vec<(usize, R)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..jobs)
            .map(|_| {
                scope.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                        let Some(item) = items.get(i) else { break };
                        mine.push((i, f(item)));
                    }
                    mine
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    done.sort_unstable_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, r)| r).collect()
}

/// Like [`parallel_map`], but starts the heaviest items first (by
/// `weight`), so one big job does not begin last and run alone.
pub(crate) fn parallel_map_by<T: Sync, R: Send>(
    items: &[T],
    jobs: usize,
    weight: impl Fn(&T) -> u64,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(weight(&items[i])));
    let done = parallel_map(&order, jobs, |&i| (i, f(&items[i])));
    let mut slots: Vec<Option<R>> = (0..items.len()).map(|_| None).collect();
    for (i, r) in done {
        slots[i] = Some(r);
    }
    slots.into_iter().flatten().collect()
}

/// Compressed size of `data` at a fast setting: the yardstick for "is this
/// patch worth it".
fn estimate(data: &[u8]) -> std::io::Result<u64> {
    let f = xzfmt::BlockFilter {
        bcj: xzfmt::Bcj::None,
        delta: 0,
        dict: xzfmt::encodable_dict(u32::try_from(data.len()).unwrap_or(u32::MAX)).min(8 << 20),
        lc: 3,
        lp: 0,
        pb: 2,
        preset: 1,
        extreme: false,
        nice: 0,
    };
    Ok(xzfmt::compress_block(data, &f)?.bytes.len() as u64)
}

impl<'r> Generator<'r> {
    pub fn new(repo: &'r Repo, opts: Options) -> Self {
        Generator {
            repo,
            opts,
            cache: Cache::default(),
        }
    }

    fn header(&self, id: &ObjectId) -> Result<(OwnedHeader, u64), DeltaError> {
        if let Some(h) = lock(&self.cache.headers).get(id) {
            return Ok(h.clone());
        }
        let h = self.repo.content_header(id)?;
        lock(&self.cache.headers).insert(*id, h.clone());
        Ok(h)
    }

    /// A content object's data, from the cache when an earlier delta read it.
    fn data(&self, id: &ObjectId) -> Result<Arc<Vec<u8>>, DeltaError> {
        if let Some(d) = lock(&self.cache.data).get(id) {
            return Ok(d.clone());
        }
        let d = Arc::new(self.repo.read_content(id)?.data);
        let n = d.len() as u64;
        if self.cache.data_bytes.fetch_add(n, Ordering::Relaxed) + n <= DATA_CACHE_BYTES {
            lock(&self.cache.data).insert(*id, d.clone());
        } else {
            self.cache.data_bytes.fetch_sub(n, Ordering::Relaxed);
        }
        Ok(d)
    }

    fn sketch(&self, id: &ObjectId) -> Result<Arc<Vec<u64>>, DeltaError> {
        if let Some(s) = lock(&self.cache.sketches).get(id) {
            self.cache.reused.fetch_add(1, Ordering::Relaxed);
            return Ok(s.clone());
        }
        // Old objects are read once for their sketch; not worth caching.
        let s = Arc::new(match lock(&self.cache.data).get(id) {
            Some(d) => similar::sketch(d),
            None => similar::sketch(&self.repo.read_content(id)?.data),
        });
        lock(&self.cache.sketches).insert(*id, s.clone());
        Ok(s)
    }

    fn literal_estimate(&self, id: &ObjectId, data: &[u8]) -> Result<u64, DeltaError> {
        if let Some(e) = lock(&self.cache.estimates).get(id) {
            return Ok(*e);
        }
        let e = estimate(data).map_err(|source| DeltaError::Diff {
            old: *id,
            new: *id,
            source,
        })?;
        lock(&self.cache.estimates).insert(*id, e);
        Ok(e)
    }

    /// Diffs `new` against `old` (cached per pair).
    fn diff(&self, old: &ObjectId, new: &ObjectId) -> Result<Diffed, DeltaError> {
        if let Some(d) = lock(&self.cache.diffs).get(&(*old, *new)) {
            self.cache.reused.fetch_add(1, Ordering::Relaxed);
            return Ok(d.clone());
        }
        let new_data = self.data(new)?;
        let old_data = self.repo.read_content(old)?.data;
        let err = |source| DeltaError::Diff {
            old: *old,
            new: *new,
            source,
        };
        let outcome = if old_data[..] == new_data[..] {
            Diffed::Same
        } else if old_data.len() > bsdiff::MAX_OLD {
            Diffed::Literal
        } else {
            let mut patch = Vec::new();
            bsdiff::diff(&old_data, &new_data, &mut patch).map_err(err)?;
            let p = estimate(&patch).map_err(err)?;
            // A patch under 1/20 of the file is worth it whatever the file
            // compresses to (ELF code, text: 1/3 to 1/11): skip estimating it.
            if p.saturating_mul(20) < new_data.len() as u64
                || (p as f64) < self.literal_estimate(new, &new_data)? as f64 * PATCH_KEEP
            {
                Diffed::Patch(Arc::new(patch))
            } else {
                Diffed::Literal
            }
        };
        lock(&self.cache.diffs).insert((*old, *new), outcome.clone());
        Ok(outcome)
    }

    /// The gzip file `id` as text and reconstruction record, if it is one
    /// gzip member the device rebuilds to exactly these bytes with a text
    /// within `gzip_text_max` (cached per object).
    fn gz_text(&self, id: &ObjectId) -> Result<Option<Arc<GzText>>, DeltaError> {
        if let Some(g) = lock(&self.cache.gz).get(id) {
            return Ok(g.clone());
        }
        let data = self.data(id)?;
        let plan = (|| {
            let (h, text) = gzip_text_of(&data, self.opts.gzip_text_max)?;
            let config = preflate_rs::PreflateConfig {
                plain_text_limit: self.opts.gzip_text_max as usize,
                ..Default::default()
            };
            let (r, _) =
                preflate_rs::preflate_whole_deflate_stream(&data[h..data.len() - 8], &config)
                    .ok()?;
            let record = gzip::Record {
                text_len: text.len() as u64,
                header: &data[..h],
                corrections: &r.corrections,
            }
            .encode();
            // What the device will do, done here: only an exact rebuild ships.
            let back = gzip::rebuild_encoded(&record, &text).ok()?;
            (back[..] == data[..]).then(|| {
                Arc::new(GzText {
                    record,
                    text: Arc::new(text),
                })
            })
        })();
        lock(&self.cache.gz).insert(*id, plan.clone());
        Ok(plan)
    }

    /// The text of the old gzip file `id` as the base of a `G` patch: one
    /// member with a text within `gzip_text_max`. The device only inflates a
    /// base, it never rebuilds one, so unlike [`Self::gz_text`] this runs no
    /// preflate analysis and no trial rebuild (cached per object).
    fn gz_base_text(&self, id: &ObjectId) -> Result<Option<Arc<Vec<u8>>>, DeltaError> {
        if let Some(Some(g)) = lock(&self.cache.gz).get(id) {
            return Ok(Some(g.text.clone()));
        }
        if let Some(t) = lock(&self.cache.gz_bases).get(id) {
            return Ok(t.clone());
        }
        let text = gzip_text_of(&self.data(id)?, self.opts.gzip_text_max).map(|(_, t)| Arc::new(t));
        lock(&self.cache.gz_bases).insert(*id, text.clone());
        Ok(text)
    }

    /// How the gzip file `p` goes to the device as text: a patch of the
    /// text of `base` (the old file at the same path first, then the base
    /// `choose_bases` found) when that is clearly smaller, else the text.
    /// `None` when shipping the gzip bytes is smaller (tiny files).
    fn gz_item(
        &self,
        p: &Planned,
        gz: Arc<GzText>,
        bases: &[ObjectId],
    ) -> Result<Option<Item>, DeltaError> {
        let err = |source| DeltaError::Diff {
            old: p.id,
            new: p.id,
            source,
        };
        let mut best: Option<(u64, ObjectId, Arc<Vec<u8>>)> = None;
        for base in bases {
            let Some(old) = self.gz_base_text(base)? else {
                continue;
            };
            let key = (*base, p.id);
            let cached = lock(&self.cache.gz_patches).get(&key).cloned();
            let patch = match cached {
                Some(p) => p,
                None => {
                    let mut patch = Vec::new();
                    bsdiff::diff(&old, &gz.text, &mut patch).map_err(err)?;
                    let patch = Arc::new(patch);
                    lock(&self.cache.gz_patches).insert(key, patch.clone());
                    patch
                }
            };
            let cost = estimate(&patch).map_err(err)?;
            if best.as_ref().is_none_or(|b| cost < b.0) {
                best = Some((cost, *base, patch));
            }
        }
        if let Some((cost, base, patch)) = best {
            let text_cost = estimate(&gz.text).map_err(err)?;
            if (cost as f64) < text_cost as f64 * PATCH_KEEP {
                return Ok(Some(Item::Gzip(p.clone(), gz, Some((base, patch)))));
            }
        }
        // The text itself: LZMA2 beats deflate on text, more so in one block
        // with the other texts (the Debian add pair's new changelogs and man
        // pages: 0.65 of their gzip bytes), so only the record's overhead
        // decides; a file-by-file estimate would miss the shared block.
        if (gz.record.len() as u64).saturating_mul(8) < p.size {
            return Ok(Some(Item::Gzip(p.clone(), gz, None)));
        }
        Ok(None)
    }

    /// Generates the delta `from -> to` (from scratch if `from` is `None`)
    /// into `deltas/…` of the repository.
    pub fn generate(&self, from: Option<ObjectId>, to: ObjectId) -> Result<Summary, DeltaError> {
        let repo = self.repo;
        let opts = &self.opts;
        let reused_before = self.cache.reused.load(Ordering::Relaxed)
            + self.cache.blocks.hits.load(Ordering::Relaxed);
        let mut progress = Progress::new("delta", opts.progress);
        let (to_commit, _, _, _) = load_commit(repo, &to)?;
        let to_idx = index_tree(repo, &to)?;
        let from_idx = match &from {
            Some(f) => index_tree(repo, f)?,
            None => TreeIndex::default(),
        };
        let mut summary = Summary {
            dir: delta_path(from.as_ref(), &to),
            ..Default::default()
        };

        // Upstream ships the to-commit in the superblock only, not in a part.
        let mut meta_items = Vec::new();
        for (ty, id) in &to_idx.meta {
            if !from_idx.meta_set.contains(id) {
                meta_items.push(Item::Meta(*ty, *id));
            }
        }

        let mut new_content: Vec<(&ObjectId, &String)> = to_idx
            .content
            .iter()
            .filter(|(id, _)| !from_idx.content.contains_key(*id))
            .collect();
        new_content.sort_by(|a, b| a.1.cmp(b.1));
        let mut literals = Vec::new();
        let mut symlinks = Vec::new();
        let mut fallbacks = Vec::new();
        let mut wanting_base: Vec<Planned> = Vec::new();
        for (id, path) in new_content {
            let (header, size) = self.header(id)?;
            let planned = Planned {
                id: *id,
                path: path.clone(),
                header,
                size,
            };
            if planned.header.is_symlink() {
                symlinks.push(Item::Literal(planned));
                continue;
            }
            if opts.min_fallback_size > 0 && size > opts.min_fallback_size {
                fallbacks.push(NewFallback {
                    objtype: ObjectType::File,
                    id: *id,
                    size: repo.object_size(id, ObjectType::File)?,
                    usize: size,
                });
                continue;
            }
            // Tiny files: a patch's control block costs more than the file.
            if opts.bsdiff && from.is_some() && size >= MIN_BSDIFF_SIZE {
                wanting_base.push(planned);
            } else {
                literals.push(planned);
            }
            progress.tick(size);
        }

        let bases = self.choose_bases(&wanting_base, &from_idx)?;
        // bsdiff and its estimates dominate planning and are independent
        // per file: spread them over the cores.
        let jobs: Vec<(&Planned, Option<ObjectId>)> = wanting_base.iter().zip(bases).collect();
        let diffed = parallel_map_by(
            &jobs,
            opts.jobs,
            |(p, _)| p.size,
            |(p, base)| -> Result<Routed, DeltaError> {
                if opts.gzip_rebuild {
                    if let Some(gz) = self.gz_text(&p.id)? {
                        let mut bases: Vec<ObjectId> = Vec::new();
                        bases.extend(from_idx.by_path.get(&p.path));
                        bases.extend(base.filter(|b| !bases.contains(b)));
                        for b in &bases {
                            if self.data(b)?[..] == self.data(&p.id)?[..] {
                                return Ok(Routed::Diffed(Some(*b), Diffed::Same));
                            }
                        }
                        if let Some(item) = self.gz_item(p, gz, &bases)? {
                            return Ok(Routed::Gzip(item));
                        }
                    }
                }
                Ok(match base {
                    Some(b) => Routed::Diffed(Some(*b), self.diff(b, &p.id)?),
                    None => Routed::Diffed(None, Diffed::Literal),
                })
            },
        );
        let mut patches = Vec::new();
        let mut copies = Vec::new();
        let mut gzips = Vec::new();
        for ((planned, _), d) in jobs.into_iter().zip(diffed) {
            match d? {
                Routed::Gzip(item) => gzips.push(item),
                Routed::Diffed(Some(base), Diffed::Same) => {
                    copies.push(Item::Copy(planned.clone(), base))
                }
                Routed::Diffed(Some(base), Diffed::Patch(patch)) => {
                    patches.push(Item::Patch(planned.clone(), base, patch))
                }
                _ => literals.push(planned.clone()),
            }
        }
        // Files with no base (new, small, or a scratch delta) that are gzip
        // files go as their text too.
        if opts.gzip_rebuild {
            let routed = parallel_map_by(
                &literals,
                opts.jobs,
                |p| p.size,
                |p| -> Result<Option<Item>, DeltaError> {
                    match self.gz_text(&p.id)? {
                        Some(gz) => self.gz_item(p, gz, &[]),
                        None => Ok(None),
                    }
                },
            );
            let mut kept = Vec::new();
            for (p, r) in std::mem::take(&mut literals).into_iter().zip(routed) {
                match r? {
                    Some(item) => gzips.push(item),
                    None => kept.push(p),
                }
            }
            literals = kept;
        }
        // Texts in the order literals have (by extension, then name): the
        // changelogs of every package next to each other in one xz block.
        gzips.sort_by_cached_key(|item| match item {
            Item::Gzip(p, _, _) => order_key(&p.path),
            _ => Default::default(),
        });
        literals.sort_by_cached_key(|p| order_key(&p.path));
        summary.plan_secs = progress.elapsed().as_secs_f64();

        let mut items = meta_items;
        items.extend(patches);
        items.extend(copies);
        items.extend(gzips);
        items.extend(literals.into_iter().map(Item::Literal));
        items.extend(symlinks);

        let xz = XzOpts {
            dict: opts.dict,
            preset: opts.preset,
            best: opts.best,
            max_block: 8 << 20,
            jobs: opts.jobs,
        };
        let dir = PathBuf::from(&summary.dir);
        let mut part_infos: Vec<NewPartInfo> = Vec::new();
        let mut current = PartBuilder::default();
        let flush = |current: PartBuilder,
                     infos: &mut Vec<NewPartInfo>,
                     summary: &mut Summary|
         -> Result<(), DeltaError> {
            let index = infos.len();
            let (file, info, stats) = current
                .finish(&xz, &self.cache.blocks)
                .map_err(|source| DeltaError::Compress { index, source })?;
            // What the device will need, read back from the bytes written.
            let needs = xzfmt::dict_need(file.get(1..).unwrap_or(&[])).map_err(|e| {
                DeltaError::Compress {
                    index,
                    source: std::io::Error::other(e),
                }
            })?;
            debug_assert_eq!(needs.max_dict, stats.max_dict);
            repo.write_atomic(&dir.join(index.to_string()), &file)?;
            summary.part_bytes += file.len() as u64;
            summary.payload_bytes += stats.payload;
            summary.max_dict = summary.max_dict.max(needs.max_dict);
            for (k, (i, o)) in &stats.kinds {
                let e = summary.kinds.entry(*k).or_default();
                e.0 += i;
                e.1 += o;
            }
            infos.push(info);
            Ok(())
        };
        for item in items {
            let add_len = match &item {
                Item::Meta(..) | Item::Copy(..) => 0,
                Item::Literal(p) => p.size,
                Item::Patch(_, _, patch) => patch.len() as u64,
                Item::Gzip(_, gz, patch) => {
                    gz.record.len() as u64
                        + patch.as_ref().map_or(gz.text.len(), |(_, p)| p.len()) as u64
                }
            };
            if !current.is_empty()
                && current.payload_len().saturating_add(add_len) > opts.max_part_size
            {
                flush(std::mem::take(&mut current), &mut part_infos, &mut summary)?;
            }
            match item {
                Item::Meta(ty, id) => {
                    let data = repo.read_meta(&id, ty)?;
                    current.add_meta(ty, id, &data);
                    summary.meta_objects += 1;
                }
                Item::Literal(p) => {
                    if p.header.is_symlink() {
                        current.add_literal(
                            p.id,
                            mode_of(&p.header),
                            &p.header.xattrs,
                            p.header.symlink.as_bytes(),
                            &[],
                        );
                    } else {
                        let data = self.data(&p.id)?;
                        let pieces = classify::pieces(&data);
                        current.add_literal(
                            p.id,
                            mode_of(&p.header),
                            &p.header.xattrs,
                            &data,
                            &pieces,
                        );
                    }
                    summary.content_objects += 1;
                }
                Item::Patch(p, base, patch) => {
                    current.add_bsdiff(
                        p.id,
                        mode_of(&p.header),
                        &p.header.xattrs,
                        p.size,
                        &base,
                        &patch,
                    );
                    summary.content_objects += 1;
                    summary.bsdiff_objects += 1;
                }
                Item::Copy(p, base) => {
                    current.add_copy(p.id, mode_of(&p.header), &p.header.xattrs, p.size, &base);
                    summary.content_objects += 1;
                    summary.copy_objects += 1;
                }
                Item::Gzip(p, gz, patch) => {
                    let (source, data) = match &patch {
                        Some((base, patch)) => (Some(base), &patch[..]),
                        None => (None, &gz.text[..]),
                    };
                    current.add_gzip(
                        p.id,
                        mode_of(&p.header),
                        &p.header.xattrs,
                        p.size,
                        source,
                        &gz.record,
                        data,
                    );
                    summary.content_objects += 1;
                    summary.gzip_objects += 1;
                    let base_text = match &patch {
                        Some((base, _)) => self.gz_base_text(base)?.map_or(0, |t| t.len()),
                        None => 0,
                    };
                    let longest = gz.text.len().max(base_text) as u64;
                    summary.gzip_text_max = summary.gzip_text_max.max(Some(longest));
                }
            }
        }
        if !current.is_empty() || part_infos.is_empty() {
            flush(current, &mut part_infos, &mut summary)?;
        }
        // A regenerated delta may have fewer parts than an earlier one.
        for i in part_infos.len().. {
            let stale = repo.path(dir.join(i.to_string()));
            match fs::remove_file(&stale) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(source) => {
                    return Err(DeltaError::Stale {
                        path: stale,
                        source,
                    })
                }
            }
        }
        summary.fallback_objects = fallbacks.len() as u64;
        let commitmeta = repo.read_commitmeta(&to)?;
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let sb = NewSuperblock {
            endian: Endian::Little,
            timestamp,
            from,
            to,
            commit: &to_commit,
            commitmeta: commitmeta.as_deref(),
            parts: &part_infos,
            fallbacks: &fallbacks,
            gzip_text_max: summary.gzip_text_max,
        }
        .encode();
        // Superblock last: its presence marks a complete delta.
        repo.write_atomic(&dir.join("superblock"), &sb)?;
        summary.parts = part_infos.len();
        summary.superblock_bytes = sb.len() as u64;
        summary.reused = self.cache.reused.load(Ordering::Relaxed)
            + self.cache.blocks.hits.load(Ordering::Relaxed)
            - reused_before;
        summary.secs = progress.elapsed().as_secs_f64();
        Ok(summary)
    }

    /// For each file, the old file to diff it against, if any: the
    /// candidate sharing the most content (sketch features) among the old
    /// file at the same path, same-directory files with the same name apart
    /// from digits, same-named files elsewhere (within 2x the size) and the
    /// best matches of the whole old tree. Ties go to the same path.
    fn choose_bases(
        &self,
        wanting: &[Planned],
        from: &TreeIndex,
    ) -> Result<Vec<Option<ObjectId>>, DeltaError> {
        if wanting.is_empty() {
            return Ok(Vec::new());
        }
        let max = self.opts.max_bsdiff_size;
        // Old regular files worth considering.
        let mut old_files: Vec<(&str, ObjectId, u64)> = Vec::new();
        let mut seen = HashSet::new();
        let mut paths: Vec<(&String, &ObjectId)> = from.by_path.iter().collect();
        paths.sort();
        let mut sizes: HashMap<ObjectId, u64> = HashMap::new();
        for (p, id) in paths {
            let (h, size) = self.header(id)?;
            if h.is_symlink() || size < MIN_BSDIFF_SIZE || size > max {
                continue;
            }
            sizes.insert(*id, size);
            old_files.push((p.as_str(), *id, size));
            seen.insert(*id);
        }
        let mut by_name: HashMap<&str, Vec<ObjectId>> = HashMap::new();
        let mut by_stem: HashMap<(&str, String), Vec<ObjectId>> = HashMap::new();
        for (p, id, _) in &old_files {
            by_name.entry(basename(p)).or_default().push(*id);
            by_stem
                .entry((dirname(p), stem(basename(p))))
                .or_default()
                .push(*id);
        }

        // Sketches: every distinct old file once (cached across deltas),
        // and the new files.
        let mut distinct: Vec<ObjectId> = seen.into_iter().collect();
        distinct.sort_unstable();
        let old_sketches = parallel_map(&distinct, self.opts.jobs, |id| self.sketch(id));
        let mut index = similar::Index::default();
        let mut sk: HashMap<ObjectId, Arc<Vec<u64>>> = HashMap::new();
        for (id, s) in distinct.iter().zip(old_sketches) {
            let s = s?;
            index.add(*id, &s);
            sk.insert(*id, s);
        }
        let new_sketches = parallel_map(wanting, self.opts.jobs, |p| -> Result<_, DeltaError> {
            self.data(&p.id)?;
            self.sketch(&p.id)
        });

        let mut out = Vec::with_capacity(wanting.len());
        for (p, s) in wanting.iter().zip(new_sketches) {
            let s = s?;
            let similar_size = |old: u64| old.max(p.size) <= old.min(p.size).saturating_mul(2);
            // (priority: 0 same path, 1 same stem, 2 same name, 3 content match)
            let mut cands: Vec<(ObjectId, u8)> = Vec::new();
            if let Some(id) = from.by_path.get(&p.path) {
                if sizes.contains_key(id) {
                    cands.push((*id, 0));
                }
            }
            let name = basename(&p.path);
            for (list, prio) in [
                (by_stem.get(&(dirname(&p.path), stem(name))), 1u8),
                (by_name.get(name), 2),
            ] {
                for id in list.into_iter().flatten() {
                    if sizes.get(id).is_some_and(|&n| similar_size(n)) {
                        cands.push((*id, prio));
                    }
                }
            }
            for (id, _) in index.best(&s, 3) {
                cands.push((id, 3));
            }
            let mut best: Option<(u32, u8, ObjectId)> = None;
            for (id, prio) in cands {
                let score = sk.get(&id).map_or(0, |o| similar::shared(&s, o));
                // A base must share a good part of the new file's content:
                // below ~10 % of its features a patch measured no smaller
                // than the file (the Debian pairs: useful bases share
                // 13-90 %, useless ones 0.5-9 %), and diffing it is wasted
                // time. The old file at the same path is always tried
                // (small or rewritten files show few features); a file too
                // small for a sketch may use a same-name base.
                let enough = score >= 2 && u64::from(score) * 10 >= s.len() as u64;
                let allowed = match prio {
                    0 => true,
                    _ if s.is_empty() => prio < 3,
                    _ => enough,
                };
                if !allowed {
                    continue;
                }
                let better = match best {
                    None => true,
                    Some((bs, bp, _)) => score > bs || (score == bs && prio < bp),
                };
                if better {
                    best = Some((score, prio, id));
                }
            }
            out.push(best.map(|b| b.2));
        }
        Ok(out)
    }
}

/// Parses a byte size: plain digits or with a K, M or G suffix (powers of 1024).
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let (num, mul) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&s[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mul))
        .ok_or_else(|| format!("{s:?} is not a size (digits, optionally K, M or G)"))
}

pub const HELP: &str = "\
Usage: atomup-publish delta --repo DIR --to REV (--from REV | --from-last K | --scratch)...
                            [options]

Writes static deltas into DIR/deltas/ and prints their directories. They are
in OSTree's static-delta format plus, by default, atomup's one extension, the
`G` op (see --gzip-rebuild), which atomup devices apply and upstream's
`ostree static-delta apply-offline` refuses; with --ostree-compatible they are
plain upstream deltas that both apply.

  --from REV            one delta from REV
  --from-last K         one delta from each of the K previous commits of REV
  --scratch             a from-scratch delta (factory images, lost devices)
  --device-ram BYTES    RAM the device can give the apply (default 8M): sets the
                        xz window to what is left of BYTES once the engine's
                        4.5 MiB and a gzip helper's share (512 KiB + 4x the
                        text cap, BYTES/32) are taken (8M -> 2 MiB, 12M -> 4 MiB,
                        16M -> 8 MiB, 32M -> 16 MiB). Bigger windows give
                        somewhat smaller deltas; a device with less RAM than
                        this may fail to apply them.
  --xz-dict BYTES       set the xz window directly instead (expert; K/M/G suffixes)
  --best                smallest output: every xz block is compressed with several
                        settings at preset 9 extreme and the smallest kept, and no
                        block is split for parallelism: 0.1-0.5 % fewer bytes for
                        4-12x the default's wall time. The default picks each
                        block's settings from what its bytes are, or from a 1 MiB
                        trial at preset 1, and compresses it once at preset 9, on
                        --jobs threads (measured: 0.44-0.73x the wall time of
                        `ostree static-delta generate` on 2 cores, 1.0-1.2x on one).
  --xz-preset 0-9       preset of the main compression (default 9; lower = faster,
                        larger)
  --jobs N              worker threads (default: the number of CPUs, at most 8); each
                        holds one xz encoder (~11x the window) and one bsdiff
  --max-part-size BYTES cut a new part beyond this much payload (default 32M)
  --min-fallback-size BYTES  files above this become fallback objects (default 0 =
                        never; devices and apply-offline need none)
  --disable-bsdiff      ship modified files whole
  --gzip-rebuild        (the default) atomup's extension, for atomup devices:
                        a gzip file the device can rebuild byte for byte (one
                        member; checked here by rebuilding it) goes as its text,
                        or as a bsdiff of the old file's text, plus a small
                        reconstruction record, instead of as new deflate bytes.
                        Changed changelogs and man pages shrink 20-70x (Debian
                        security updates: 0.64x upstream's bytes instead of
                        0.86x). Costs preflate's analysis of every new or
                        changed gzip file (up to ~4 s per MB of gzip data here,
                        partly won back by not bsdiffing the compressed bytes;
                        an old file a text patch applies to is only inflated,
                        as on the device); the device
                        re-deflates each file in a helper process (3-5 ms a
                        file on the host) with texts kept under 1/32 of
                        --device-ram (256 KiB for 8M). Upstream's apply-offline
                        refuses such deltas (unknown opcode 'G'); the superblock
                        says `atomup.gzip-text-max` when a delta has G ops.
  --ostree-compatible   plain upstream deltas, no atomup extension: for OSTree
                        clients or `ostree static-delta apply-offline`
  --stats               also print, per kind of xz block, payload bytes in and
                        compressed bytes out
  --quiet               no progress on stderr

All deltas of one invocation share their work: file data, sketches, bsdiff
patches and compressed blocks computed for one are reused by the next, so
--from-last 5 costs much less than five separate runs.
";

/// `atomup-publish delta ...`.
pub fn run(args: &mut lexopt::Parser) -> Result<(), Box<dyn std::error::Error>> {
    use lexopt::prelude::*;
    let (mut repo, mut to, mut from, mut from_last) = (None, None, None, None);
    let mut scratch = false;
    let (mut gzip_asked, mut ostree_compatible) = (false, false);
    let mut opts = Options {
        progress: true,
        ..Options::default()
    };
    let mut device_ram = None;
    let mut xz_dict = None;
    let mut stats = false;
    while let Some(arg) = args.next()? {
        match arg {
            Long("repo") => repo = Some(PathBuf::from(args.value()?)),
            Long("to") => to = Some(args.value()?.string()?),
            Long("from") => from = Some(args.value()?.string()?),
            Long("from-last") => from_last = Some(args.value()?.parse::<usize>()?),
            Long("scratch") => scratch = true,
            Long("max-part-size") => opts.max_part_size = parse_size(&args.value()?.string()?)?,
            Long("device-ram") => device_ram = Some(parse_size(&args.value()?.string()?)?),
            Long("xz-dict") => xz_dict = Some(parse_size(&args.value()?.string()?)?),
            Long("xz-preset") => {
                let p = args.value()?.parse::<u32>()?;
                if p > 9 {
                    return Err("--xz-preset must be 0-9".into());
                }
                opts.preset = p;
            }
            Long("best") => opts.best = true,
            Long("jobs") => {
                let j = args.value()?.parse::<usize>()?;
                if j == 0 {
                    return Err("--jobs must be at least 1".into());
                }
                opts.jobs = j;
            }
            Long("min-fallback-size") => {
                opts.min_fallback_size = parse_size(&args.value()?.string()?)?
            }
            Long("disable-bsdiff") => opts.bsdiff = false,
            Long("gzip-rebuild") => gzip_asked = true,
            Long("ostree-compatible") => ostree_compatible = true,
            Long("quiet") | Short('q') => opts.progress = false,
            Long("stats") => stats = true,
            Long("help") | Short('h') => {
                print!("{HELP}");
                return Ok(());
            }
            other => return Err(other.unexpected().into()),
        }
    }
    if gzip_asked && ostree_compatible {
        return Err(
            "--gzip-rebuild is atomup's extension, which --ostree-compatible leaves out: give one"
                .into(),
        );
    }
    opts.gzip_rebuild = !ostree_compatible;
    match (device_ram, xz_dict) {
        (Some(_), Some(_)) => return Err("give --device-ram or --xz-dict, not both".into()),
        (Some(ram), None) => {
            opts.gzip_text_max = gzip_text_for_ram(ram);
            opts.dict = dict_for_ram(ram).ok_or_else(|| {
                format!(
                    "--device-ram {ram} leaves no room for an xz window: the apply engine alone needs about {}",
                    human(ENGINE_RSS)
                )
            })?
        }
        (None, Some(d)) => {
            if !(4096..=48 << 20).contains(&d) {
                return Err(
                    "--xz-dict must be 4096 bytes to 48 MiB (devices refuse windows above 64 MiB)"
                        .into(),
                );
            }
            opts.dict = xzfmt::encodable_dict(d as u32);
        }
        (None, None) => {}
    }
    let repo = Repo::open(&repo.ok_or("delta needs --repo DIR")?)?;
    let to = repo.resolve(&to.ok_or("delta needs --to REV")?)?;
    let mut froms: Vec<Option<ObjectId>> = Vec::new();
    if let Some(f) = from {
        froms.push(Some(repo.resolve(&f)?));
    }
    if let Some(k) = from_last {
        let mut cur = to;
        for _ in 0..k {
            match parent_of(&repo, &cur)? {
                Some(p) if repo.has_object(&p, ObjectType::Commit) => {
                    froms.push(Some(p));
                    cur = p;
                }
                _ => break,
            }
        }
    }
    if scratch {
        froms.push(None);
    }
    if froms.is_empty() {
        return Err("delta needs --from REV, --from-last K or --scratch".into());
    }
    froms.dedup();
    let generator = Generator::new(&repo, opts);
    for from in froms {
        let s = generator.generate(from, to)?;
        eprintln!("{}", s.line());
        if stats {
            eprint!("{}", s.kinds_table());
        }
        println!("{}", s.dir);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Version digits do not stop a rename from being matched.
    #[test]
    fn stems_and_order() {
        assert_eq!(stem("libfoo.so.1.2.3"), stem("libfoo.so.1.2.4"));
        assert_ne!(stem("libfoo.so.1"), stem("libbar.so.1"));
        assert_eq!(order_key("/usr/lib/libz.so.1.2.13").0, ".so");
        assert_eq!(order_key("/usr/share/doc/x/changelog.Debian.gz").0, "gz");
        assert_eq!(order_key("/etc/.profile").0, "");
        assert_eq!(dirname("/a/b"), "/a");
        assert_eq!(basename("/a/b"), "b");
    }

    /// The default device budget gives a window that, with the engine's
    /// measured footprint, stays within 8 MiB; bigger budgets give bigger
    /// windows; budgets below the engine's own need are refused.
    #[test]
    fn device_ram_sets_the_window() {
        let d = dict_for_ram(DEFAULT_DEVICE_RAM).unwrap();
        assert_eq!(d, 2 << 20);
        // The default budget holds the engine, the window and a helper
        // rebuilding the longest text it allows.
        let text = gzip_text_for_ram(DEFAULT_DEVICE_RAM);
        assert_eq!(text, 256 << 10);
        assert!(apply_ram(d, Some(text)) <= 8 << 20);
        assert_eq!(dict_for_ram(12 << 20), Some(4 << 20));
        assert_eq!(dict_for_ram(16 << 20), Some(8 << 20));
        assert_eq!(dict_for_ram(32 << 20), Some(16 << 20));
        assert_eq!(dict_for_ram(1 << 30), Some(48 << 20));
        assert_eq!(dict_for_ram(5 << 20), None);
    }

    /// Sizes take K/M/G suffixes; garbage is refused.
    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("8M"), Ok(8 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("2k"), Ok(2048));
        assert!(parse_size("x").is_err());
        assert!(parse_size("99999999999G").is_err());
    }

    /// Results come back in input order whatever the thread count.
    #[test]
    fn parallel_map_keeps_order() {
        let v: Vec<u32> = (0..100).collect();
        for jobs in [1, 2, 7] {
            let want: Vec<u32> = (0..100).map(|x| x * 2).collect();
            assert_eq!(parallel_map(&v, jobs, |x| x * 2), want);
            assert_eq!(
                parallel_map_by(&v, jobs, |x| u64::from(x % 7), |x| x * 2),
                want
            );
        }
    }
}
