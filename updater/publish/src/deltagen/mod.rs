//! `atomup-publish delta`: static deltas in upstream's format (so `ostree
//! static-delta apply-offline` and the device both apply them), made smaller
//! than upstream's generator by choices the format leaves open:
//!
//! - objects are ordered so similar content sits together (metadata, then
//!   patches, then files grouped by extension and name) instead of hash-table
//!   order, so xz's window finds cross-file redundancy;
//! - modified files are bsdiff'ed against the old file at the same path, a
//!   same-directory file with the same name apart from version digits, or a
//!   same-named file elsewhere, and the patch is kept only when it compresses
//!   smaller than the new file;
//! - equal byte runs are stored once per part (several ops may share them);
//! - xz runs at preset 9 extreme with a bounded dictionary (the device's RAM
//!   cost), and parts are cut by payload size.

mod part;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use atomup_ostree::delta::delta_path;
use atomup_ostree::encode::{ModeEntry, NewFallback, NewPartInfo, NewSuperblock};
use atomup_ostree::gvariant::Endian;
use atomup_ostree::object::{Commit, DirTree, ObjectId, ObjectType};

pub use part::XzSettings;
use part::{xz_compress, PartBuilder};

use crate::progress::{human, Progress};
use crate::repo::{OwnedHeader, Repo, RepoError};

/// Files smaller than this are always stored literally.
const MIN_BSDIFF_SIZE: u64 = 512;

#[derive(Clone, Debug)]
pub struct Options {
    /// Cut a new part once the uncompressed payload would exceed this.
    pub max_part_size: u64,
    pub xz: XzSettings,
    /// Regular files larger than this become fallback objects; 0 = never.
    pub min_fallback_size: u64,
    pub bsdiff: bool,
    /// Files larger than this (old + new) are not bsdiff'ed (time and memory).
    pub max_bsdiff_size: u64,
    pub progress: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_part_size: 32 << 20,
            xz: XzSettings {
                dict: 8 << 20,
                preset: 9,
                extreme: true,
            },
            min_fallback_size: 0,
            bsdiff: true,
            max_bsdiff_size: 64 << 20,
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
    #[error("compressing or diffing delta part {index}")]
    Compress {
        index: usize,
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
    pub fallback_objects: u64,
    /// Largest LZMA2 dictionary any part needs to decompress.
    pub max_dict: u32,
    pub secs: f64,
}

impl Summary {
    pub fn line(&self) -> String {
        format!(
            "delta {}: {} parts, {} total ({} superblock + {} parts; payload {}), {} metadata + {} content objects ({} bsdiff, {} fallback), xz dictionary <= {}, {:.1}s",
            self.dir,
            self.parts,
            human(self.superblock_bytes + self.part_bytes),
            human(self.superblock_bytes),
            human(self.part_bytes),
            human(self.payload_bytes),
            self.meta_objects,
            self.content_objects,
            self.bsdiff_objects,
            self.fallback_objects,
            human(u64::from(self.max_dict)),
            self.secs
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

struct Planned {
    id: ObjectId,
    path: String,
    header: OwnedHeader,
    size: u64,
}

enum Item {
    Meta(ObjectType, ObjectId),
    Literal(Planned),
    Patch(Planned, ObjectId, Vec<u8>),
}

fn mode_of(h: &OwnedHeader) -> ModeEntry {
    ModeEntry {
        uid: h.uid,
        gid: h.gid,
        mode: h.mode,
    }
}

struct Planner<'r> {
    repo: &'r Repo,
    opts: &'r Options,
    headers: HashMap<ObjectId, (OwnedHeader, u64)>,
}

impl Planner<'_> {
    fn header(&mut self, id: &ObjectId) -> Result<(OwnedHeader, u64), DeltaError> {
        if let Some(h) = self.headers.get(id) {
            return Ok(h.clone());
        }
        let h = self.repo.content_header(id)?;
        self.headers.insert(*id, h.clone());
        Ok(h)
    }

    /// Old regular files worth diffing `new` against, best first.
    fn candidates(
        &mut self,
        path: &str,
        size: u64,
        from: &TreeIndex,
        by_name: &HashMap<&str, Vec<&str>>,
        by_stem: &HashMap<(String, String), Vec<&str>>,
    ) -> Result<Option<ObjectId>, DeltaError> {
        let similar =
            |old: u64| old > 0 && size > 0 && old.max(size) <= old.min(size).saturating_mul(2);
        let mut paths: Vec<&str> = Vec::new();
        if let Some(p) = from.by_path.get_key_value(path).map(|(k, _)| k.as_str()) {
            paths.push(p);
        }
        let name = basename(path);
        if let Some(v) = by_stem.get(&(dirname(path).to_owned(), stem(name))) {
            paths.extend(v.iter().copied());
        }
        if let Some(v) = by_name.get(name) {
            paths.extend(v.iter().copied());
        }
        for (i, p) in paths.into_iter().enumerate() {
            let Some(old) = from.by_path.get(p).copied() else {
                continue;
            };
            let (h, old_size) = self.header(&old)?;
            if h.is_symlink() || (i > 0 && !similar(old_size)) || old_size == 0 {
                continue;
            }
            if old_size.saturating_add(size) > self.opts.max_bsdiff_size {
                continue;
            }
            return Ok(Some(old));
        }
        Ok(None)
    }
}

/// Generates the delta `from -> to` (from scratch if `from` is `None`) into
/// `deltas/…` of the repository.
pub fn generate(
    repo: &Repo,
    from: Option<ObjectId>,
    to: ObjectId,
    opts: &Options,
) -> Result<Summary, DeltaError> {
    let mut progress = Progress::new("delta", opts.progress);
    let (to_commit, _, _, _) = load_commit(repo, &to)?;
    let to_idx = index_tree(repo, &to)?;
    let from_idx = match &from {
        Some(f) => index_tree(repo, f)?,
        None => TreeIndex::default(),
    };
    let mut planner = Planner {
        repo,
        opts,
        headers: HashMap::new(),
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
    let mut by_name: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut by_stem: HashMap<(String, String), Vec<&str>> = HashMap::new();
    for p in from_idx.by_path.keys() {
        by_name.entry(basename(p)).or_default().push(p);
        by_stem
            .entry((dirname(p).to_owned(), stem(basename(p))))
            .or_default()
            .push(p);
    }
    for v in by_name.values_mut().chain(by_stem.values_mut()) {
        v.sort_unstable();
    }

    let mut new_content: Vec<(&ObjectId, &String)> = to_idx
        .content
        .iter()
        .filter(|(id, _)| !from_idx.content.contains_key(*id))
        .collect();
    new_content.sort_by(|a, b| a.1.cmp(b.1));
    let mut patches = Vec::new();
    let mut literals = Vec::new();
    let mut symlinks = Vec::new();
    let mut fallbacks = Vec::new();
    let mut diff_jobs: Vec<(Planned, ObjectId)> = Vec::new();
    for (id, path) in new_content {
        let (header, size) = planner.header(id)?;
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
        let base = if opts.bsdiff && from.is_some() && size >= MIN_BSDIFF_SIZE {
            planner.candidates(path, size, &from_idx, &by_name, &by_stem)?
        } else {
            None
        };
        match base {
            Some(b) => diff_jobs.push((planned, b)),
            None => literals.push(planned),
        }
        progress.tick(size);
    }
    // bsdiff and its trial compressions dominate generation time and are
    // independent per file: spread them over the cores.
    let diffed = parallel_map(&diff_jobs, |(p, base)| {
        try_bsdiff(repo, base, &p.id, &opts.xz)
    });
    for ((planned, base), patch) in diff_jobs.into_iter().zip(diffed) {
        match patch? {
            Some(patch) => patches.push(Item::Patch(planned, base, patch)),
            None => literals.push(planned),
        }
    }
    literals.sort_by_cached_key(|p| order_key(&p.path));

    let mut items = meta_items;
    items.extend(patches);
    items.extend(literals.into_iter().map(Item::Literal));
    items.extend(symlinks);

    let dir = PathBuf::from(&summary.dir);
    let mut part_infos: Vec<NewPartInfo> = Vec::new();
    let mut current = PartBuilder::default();
    let flush = |current: PartBuilder,
                 infos: &mut Vec<NewPartInfo>,
                 summary: &mut Summary|
     -> Result<(), DeltaError> {
        let index = infos.len();
        let (file, info, payload_len) = current
            .finish(&opts.xz)
            .map_err(|source| DeltaError::Compress { index, source })?;
        repo.write_atomic(&dir.join(index.to_string()), &file)?;
        summary.part_bytes += file.len() as u64;
        summary.payload_bytes += payload_len;
        let d = u32::try_from(payload_len).unwrap_or(u32::MAX).max(4096);
        summary.max_dict = summary.max_dict.max(
            d.checked_next_power_of_two()
                .unwrap_or(u32::MAX)
                .min(opts.xz.dict),
        );
        infos.push(info);
        Ok(())
    };
    for item in items {
        let add_len = match &item {
            Item::Meta(..) => 0,
            Item::Literal(p) => p.size,
            Item::Patch(_, _, patch) => patch.len() as u64,
        };
        if !current.is_empty() && current.payload_len().saturating_add(add_len) > opts.max_part_size
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
                let data = if p.header.is_symlink() {
                    p.header.symlink.as_bytes().to_vec()
                } else {
                    repo.read_content(&p.id)?.data
                };
                current.add_literal(p.id, mode_of(&p.header), &p.header.xattrs, &data);
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
    }
    .encode();
    // Superblock last: its presence marks a complete delta.
    repo.write_atomic(&dir.join("superblock"), &sb)?;
    summary.parts = part_infos.len();
    summary.superblock_bytes = sb.len() as u64;
    summary.secs = progress.elapsed().as_secs_f64();
    Ok(summary)
}

/// One bsdiff outcome: a patch worth keeping, or `None`.
type PatchResult = Result<Option<Vec<u8>>, DeltaError>;

/// Runs `f` over `items` on up to four threads, results in input order.
fn parallel_map<T: Sync>(items: &[T], f: impl Fn(&T) -> PatchResult + Sync) -> Vec<PatchResult> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4);
    let next = AtomicUsize::new(0);
    let slots: Mutex<Vec<Option<PatchResult>>> =
        Mutex::new((0..items.len()).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(i) else { break };
                let r = f(item);
                if let Some(slot) = slots.lock().unwrap_or_else(|e| e.into_inner()).get_mut(i) {
                    *slot = Some(r);
                }
            });
        }
    });
    slots
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| {
                Err(DeltaError::Compress {
                    index: 0,
                    source: std::io::Error::other("a bsdiff worker stopped early"),
                })
            })
        })
        .collect()
}

/// bsdiff `new` against `old`; the patch is kept only when it compresses
/// smaller than the new file itself would (a patch of unrelated files is
/// just the new file plus overhead).
fn try_bsdiff(
    repo: &Repo,
    old: &ObjectId,
    new: &ObjectId,
    xz: &XzSettings,
) -> Result<Option<Vec<u8>>, DeltaError> {
    let old_data = repo.read_content(old)?.data;
    let new_data = repo.read_content(new)?.data;
    let err = |source| DeltaError::Compress { index: 0, source };
    let mut patch = Vec::new();
    bsdiff::diff(&old_data, &new_data, &mut patch).map_err(err)?;
    let quick = XzSettings {
        dict: xz.dict,
        preset: 6,
        extreme: false,
    };
    let p = xz_compress(&patch, &quick).map_err(err)?.len();
    let n = xz_compress(&new_data, &quick).map_err(err)?.len();
    Ok((p < n).then_some(patch))
}

/// `atomup-publish delta ...`.
pub fn run(args: &mut lexopt::Parser) -> Result<(), Box<dyn std::error::Error>> {
    use lexopt::prelude::*;
    let (mut repo, mut to, mut from, mut from_last) = (None, None, None, None);
    let mut scratch = false;
    let mut opts = Options {
        progress: true,
        ..Options::default()
    };
    while let Some(arg) = args.next()? {
        match arg {
            Long("repo") => repo = Some(PathBuf::from(args.value()?)),
            Long("to") => to = Some(args.value()?.string()?),
            Long("from") => from = Some(args.value()?.string()?),
            Long("from-last") => from_last = Some(args.value()?.parse::<usize>()?),
            Long("scratch") => scratch = true,
            Long("max-part-size") => opts.max_part_size = args.value()?.parse()?,
            Long("xz-dict") => opts.xz.dict = args.value()?.parse()?,
            Long("xz-preset") => opts.xz.preset = args.value()?.parse::<u32>()?.min(9),
            Long("min-fallback-size") => opts.min_fallback_size = args.value()?.parse()?,
            Long("disable-bsdiff") => opts.bsdiff = false,
            Long("quiet") | Short('q') => opts.progress = false,
            other => return Err(other.unexpected().into()),
        }
    }
    if opts.xz.dict < 4096 {
        return Err("--xz-dict must be at least 4096 bytes".into());
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
    for from in froms {
        let s = generate(&repo, from, to, &opts)?;
        eprintln!("{}", s.line());
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
}
