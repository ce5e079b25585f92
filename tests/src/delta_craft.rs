//! Crafting deltas with exactly one defect, starting from real ones.
//!
//! A bad-input test proves little if the input is broken in several ways at
//! once (the engine may stop at the first, unrelated, problem). So each crafted
//! delta starts as a real `ostree static-delta generate` output, one thing is
//! changed, and everything that depends on it is repaired: object checksums in
//! the part's object list, the commit's root tree, the commit checksum, the
//! part checksum and sizes in the superblock, and finally a fresh signature by
//! `atomup-publish sign`. The re-encoding is done here, independently of the
//! engine's own encoder, so the two check each other; the
//! `crafted_delta_without_defect_applies` test proves the pipeline alone adds
//! no defect.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use crate::ostree_fixture::{hex, run_ok, Repo};

/// OSTree object types as stored in a part's object list.
pub const OBJ_FILE: u8 = 1;
pub const OBJ_DIRTREE: u8 = 2;

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

pub fn unhex(s: &str) -> [u8; 32] {
    assert_eq!(s.len(), 64, "not a sha256: {s}");
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
    }
    out
}

/// Replaces every occurrence of `old` with the equally long `new`; returns
/// how many were replaced.
pub fn replace_all(buf: &mut [u8], old: &[u8], new: &[u8]) -> usize {
    assert_eq!(old.len(), new.len());
    let mut n = 0;
    let mut i = 0;
    while i + old.len() <= buf.len() {
        if &buf[i..i + old.len()] == old {
            buf[i..i + old.len()].copy_from_slice(new);
            n += 1;
            i += old.len();
        } else {
            i += 1;
        }
    }
    n
}

pub fn find(buf: &[u8], needle: &[u8]) -> Option<usize> {
    buf.windows(needle.len()).position(|w| w == needle)
}

/// GVariant framing-offset width for a container of `total` bytes.
fn offset_width(total: usize) -> usize {
    match total {
        0..=0xFF => 1,
        0x100..=0xFFFF => 2,
        0x1_0000..=0xFFFF_FFFF => 4,
        _ => 8,
    }
}

/// Appends `ends` as framing offsets, choosing the width from the final size.
fn frame(mut body: Vec<u8>, ends: &[usize]) -> Vec<u8> {
    let mut w = 1;
    while offset_width(body.len() + ends.len() * w) != w {
        w *= 2;
    }
    for e in ends {
        body.extend_from_slice(&e.to_le_bytes()[..w]);
    }
    body
}

/// Variable-size array of byte-aligned elements.
pub fn var_array(elems: &[Vec<u8>]) -> Vec<u8> {
    var_array_aligned(elems, 1)
}

fn pad_to(body: &mut Vec<u8>, align: usize) {
    while !body.len().is_multiple_of(align) {
        body.push(0);
    }
}

/// Variable-size array whose elements start at multiples of `align`.
fn var_array_aligned(elems: &[Vec<u8>], align: usize) -> Vec<u8> {
    let mut body = Vec::new();
    let mut ends = Vec::new();
    for e in elems {
        pad_to(&mut body, align);
        body.extend_from_slice(e);
        ends.push(body.len());
    }
    frame(body, &ends)
}

/// Elements of a variable-size array whose elements start at multiples of
/// `align`.
pub fn split_var_array(data: &[u8], align: usize) -> Vec<Vec<u8>> {
    if data.is_empty() {
        return Vec::new();
    }
    let w = offset_width(data.len());
    let read = |at: usize| {
        let mut b = [0u8; 8];
        b[..w].copy_from_slice(&data[at..at + w]);
        u64::from_le_bytes(b) as usize
    };
    let last_end = read(data.len() - w);
    let n = (data.len() - last_end) / w;
    let mut out = Vec::new();
    let mut start = 0;
    for i in 0..n {
        let end = read(last_end + i * w);
        out.push(data[start..end].to_vec());
        start = end.div_ceil(align) * align;
    }
    out
}

/// One tuple member's shape: alignment, and its size if fixed.
#[derive(Clone, Copy)]
struct Shape {
    align: usize,
    fixed: Option<usize>,
}

const VAR1: Shape = Shape {
    align: 1,
    fixed: None,
};
const VAR8: Shape = Shape {
    align: 8,
    fixed: None,
};

/// A tuple's members, by the GVariant framing rules: members at their
/// alignment, one end offset per variable-size member but the last, the
/// offsets stored last-member-first at the very end.
fn split_tuple(data: &[u8], shapes: &[Shape]) -> Vec<Vec<u8>> {
    let w = offset_width(data.len());
    let mut offsets_used = 0;
    let mut out = Vec::new();
    let mut pos = 0usize;
    for (i, sh) in shapes.iter().enumerate() {
        pos = pos.div_ceil(sh.align) * sh.align;
        let end = match sh.fixed {
            Some(n) => pos + n,
            None if i + 1 == shapes.len() => data.len() - offsets_used * w,
            None => {
                offsets_used += 1;
                let at = data.len() - offsets_used * w;
                let mut b = [0u8; 8];
                b[..w].copy_from_slice(&data[at..at + w]);
                u64::from_le_bytes(b) as usize
            }
        };
        out.push(data[pos..end].to_vec());
        pos = end;
    }
    out
}

/// The inverse of [`split_tuple`].
fn join_tuple(members: &[Vec<u8>], shapes: &[Shape]) -> Vec<u8> {
    let mut body = Vec::new();
    let mut ends = Vec::new();
    for (i, (m, sh)) in members.iter().zip(shapes).enumerate() {
        pad_to(&mut body, sh.align);
        body.extend_from_slice(m);
        if sh.fixed.is_none() && i + 1 < members.len() {
            ends.push(body.len());
        }
    }
    ends.reverse();
    frame(body, &ends)
}

/// `(a{sv}tayay(commit)aya(uayttay)a(yaytt))`
const SUPERBLOCK: [Shape; 8] = [
    VAR8,
    Shape {
        align: 8,
        fixed: Some(8),
    },
    VAR1,
    VAR1,
    VAR8,
    VAR1,
    VAR8,
    VAR8,
];
/// `(uayttay)`
const PART_ENTRY: [Shape; 5] = [
    Shape {
        align: 4,
        fixed: Some(4),
    },
    VAR1,
    Shape {
        align: 8,
        fixed: Some(8),
    },
    Shape {
        align: 8,
        fixed: Some(8),
    },
    VAR1,
];

/// Appends `records` (type byte ‖ 32-byte checksum each) to the object list
/// of part 0 of an unsigned superblock, re-framing what encloses it.
pub fn append_part_objects(superblock: &[u8], records: &[u8]) -> Vec<u8> {
    let mut top = split_tuple(superblock, &SUPERBLOCK);
    let mut parts = split_var_array(&top[6], 8);
    let mut entry = split_tuple(&parts[0], &PART_ENTRY);
    entry[4].extend_from_slice(records);
    parts[0] = join_tuple(&entry, &PART_ENTRY);
    top[6] = var_array_aligned(&parts, 8);
    join_tuple(&top, &SUPERBLOCK)
}

/// A dirtree `(a(say)a(sayay))` with exactly these entries, in this order
/// (callers decide whether the order is valid).
pub fn encode_dirtree(
    files: &[(&[u8], [u8; 32])],
    dirs: &[(&[u8], [u8; 32], [u8; 32])],
) -> Vec<u8> {
    let files: Vec<Vec<u8>> = files
        .iter()
        .map(|(name, csum)| {
            let mut e = name.to_vec();
            e.push(0);
            let s_end = e.len();
            e.extend_from_slice(csum);
            frame(e, &[s_end])
        })
        .collect();
    let dirs: Vec<Vec<u8>> = dirs
        .iter()
        .map(|(name, tree, meta)| {
            let mut e = name.to_vec();
            e.push(0);
            let s_end = e.len();
            e.extend_from_slice(tree);
            let tree_end = e.len();
            e.extend_from_slice(meta);
            // Tuple offsets are stored in reverse member order.
            frame(e, &[tree_end, s_end])
        })
        .collect();
    let mut body = var_array(&files);
    let files_end = body.len();
    body.extend_from_slice(&var_array(&dirs));
    frame(body, &[files_end])
}

/// One entry of `ostree ls -C` output.
#[derive(Debug, Clone)]
pub struct LsEntry {
    pub kind: char,
    pub name: String,
    pub csum: [u8; 32],
    pub meta: Option<[u8; 32]>,
}

/// The entries of directory `path` in `commit`, as the real CLI lists them;
/// the first element is the directory itself.
pub fn ls(repo: &Repo, commit: &str, path: &str) -> Vec<LsEntry> {
    let out = run_ok(
        Command::new("ostree")
            .arg(format!("--repo={}", repo.path.display()))
            .args(["ls", "-C", commit, path]),
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let kind = f[0].chars().next().unwrap();
            let (meta, name_at) = if kind == 'd' {
                (Some(unhex(f[5])), 6)
            } else {
                (None, 5)
            };
            let full = f[name_at];
            LsEntry {
                kind,
                name: full.rsplit('/').next().unwrap().to_owned(),
                csum: unhex(f[4]),
                meta,
            }
        })
        .collect()
}

/// The payload `(a(uuu)aa(ayay)ayay)` of a part, split into its members.
#[derive(Debug, Clone)]
pub struct Payload {
    pub modes: Vec<u8>,
    pub xattrs: Vec<u8>,
    pub blob: Vec<u8>,
    pub ops: Vec<u8>,
}

impl Payload {
    pub fn parse(data: &[u8]) -> Self {
        let w = offset_width(data.len());
        let off = |k: usize| {
            let at = data.len() - k * w;
            let mut b = [0u8; 8];
            b[..w].copy_from_slice(&data[at..at + w]);
            u64::from_le_bytes(b) as usize
        };
        let (e0, e1, e2) = (off(1), off(2), off(3));
        Payload {
            modes: data[..e0].to_vec(),
            xattrs: data[e0..e1].to_vec(),
            blob: data[e1..e2].to_vec(),
            ops: data[e2..data.len() - 3 * w].to_vec(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        // Only the first member is 4-aligned and it starts at 0: no padding.
        let mut body = self.modes.clone();
        let e0 = body.len();
        body.extend_from_slice(&self.xattrs);
        let e1 = body.len();
        body.extend_from_slice(&self.blob);
        let e2 = body.len();
        body.extend_from_slice(&self.ops);
        frame(body, &[e2, e1, e0])
    }
}

/// One decoded delta op; `args` are the varint arguments in stream order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    pub code: u8,
    pub args: Vec<u64>,
    /// Index into the part's object list for `S`/`o` (the object they start).
    pub object: Option<usize>,
}

pub fn read_varint(data: &[u8], pos: &mut usize) -> u64 {
    let mut v = 0u64;
    for shift in (0..70).step_by(7) {
        let b = data[*pos];
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return v;
        }
    }
    panic!("fixture has a varint longer than 10 bytes")
}

pub fn write_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

/// Decodes real (upstream-generated) ops; `objects` tells `S` whether its
/// object is content (4 args) or metadata (2 args).
pub fn parse_ops(ops: &[u8], objects: &[(u8, [u8; 32])]) -> Vec<Op> {
    let mut pos = 0;
    let mut next_object = 0;
    let mut out = Vec::new();
    while pos < ops.len() {
        let code = ops[pos];
        pos += 1;
        let (n, object) = match code {
            b'S' => {
                next_object += 1;
                let n = if objects[next_object - 1].0 == OBJ_FILE {
                    4
                } else {
                    2
                };
                (n, Some(next_object - 1))
            }
            b'o' => {
                next_object += 1;
                (3, Some(next_object - 1))
            }
            b'w' | b'B' => (2, None),
            b'r' => (1, None),
            b'R' | b'c' => (0, None),
            other => panic!("unknown op {other:#x} in an upstream delta"),
        };
        let args = (0..n).map(|_| read_varint(ops, &mut pos)).collect();
        out.push(Op { code, args, object });
    }
    out
}

pub fn encode_ops(ops: &[Op]) -> Vec<u8> {
    let mut out = Vec::new();
    for op in ops {
        out.push(op.code);
        for a in &op.args {
            write_varint(&mut out, *a);
        }
    }
    out
}

/// `xz -d` of a part's compressed stream, through the real xz-utils.
pub fn xz(args: &[&str], input: &[u8]) -> Vec<u8> {
    let mut child = Command::new("xz")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawning xz");
    let mut stdin = child.stdin.take().unwrap();
    let data = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success(), "xz {args:?} failed");
    out.stdout
}

/// A real single-part delta taken apart for editing; `write` puts it back
/// together consistently and signs it.
pub struct Crafted {
    repo_path: PathBuf,
    old_commit: Vec<u8>,
    pub superblock: Vec<u8>,
    pub payload: Payload,
    /// (type, checksum) of each object of part 0, in execution order.
    pub objects: Vec<(u8, [u8; 32])>,
    pub ops: Vec<Op>,
    /// Raw part bytes to write instead of re-encoding `payload`.
    pub raw_part: Option<Vec<u8>>,
    /// Declared uncompressed size adjustment (positive: claim more).
    pub usize_override: Option<u64>,
    /// Metadata objects (type, bytes) appended to part 0: to the blob, the
    /// object list and the ops (one `S` each, after the real ones).
    pub extra_meta: Vec<(u8, Vec<u8>)>,
    /// Write part 0 xz-compressed (`xz -0`) instead of uncompressed.
    pub compress: bool,
    old_part_csum: [u8; 32],
    renames: Vec<([u8; 32], [u8; 32])>,
    pub root_dirtree: [u8; 32],
    pub to: String,
}

impl Crafted {
    /// Generates `from -> to` with one separate part (no bsdiff, no fallbacks).
    pub fn generate(repo: &Repo, from: Option<&str>, to: &str, scratch: &Path) -> Self {
        let dir = scratch.join("generated");
        let _ = fs::remove_dir_all(&dir);
        let stats = repo.delta(
            from,
            to,
            &["--disable-bsdiff", "--min-fallback-size=0"],
            &dir,
        );
        let n_objects: usize = stats
            .lines()
            .find_map(|l| l.strip_prefix("part 1 n:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no part statistics:\n{stats}"));
        assert!(
            stats.contains("part 1 ") && !stats.contains("part 2 "),
            "expected one part:\n{stats}"
        );
        let superblock = fs::read(dir.join("superblock")).unwrap();
        assert!(find(&superblock, b"ostree.endianness\0").is_some());
        let part = fs::read(dir.join("0")).unwrap();
        let part_csum = sha256(&part);
        let at = find(&superblock, &part_csum).expect("part checksum in superblock");
        let list = &superblock[at + 52..at + 52 + 33 * n_objects];
        let objects: Vec<(u8, [u8; 32])> = list
            .chunks(33)
            .map(|c| (c[0], c[1..].try_into().unwrap()))
            .collect();
        let decompressed = match part[0] {
            b'x' => xz(&["-d", "-c"], &part[1..]),
            0 => part[1..].to_vec(),
            other => panic!("unknown part compression {other}"),
        };
        let payload = Payload::parse(&decompressed);
        assert_eq!(
            payload.encode(),
            decompressed,
            "payload re-encoding is not byte-exact"
        );
        let ops = parse_ops(&payload.ops, &objects);
        assert_eq!(
            encode_ops(&ops),
            payload.ops,
            "ops re-encoding is not byte-exact"
        );
        let old_commit = fs::read(object_path(&repo.path, to, "commit")).unwrap();
        assert!(
            find(&superblock, &old_commit).is_some(),
            "commit embedded in superblock"
        );
        let root_dirtree = ls(repo, to, "/")[0].csum;
        Crafted {
            repo_path: repo.path.clone(),
            old_commit,
            superblock,
            payload,
            objects,
            ops,
            raw_part: None,
            usize_override: None,
            extra_meta: Vec::new(),
            compress: false,
            old_part_csum: part_csum,
            renames: Vec::new(),
            root_dirtree,
            to: to.to_owned(),
        }
    }

    /// Index of the object with this checksum in the part.
    pub fn object_index(&self, csum: &[u8; 32]) -> usize {
        self.objects
            .iter()
            .position(|(_, c)| c == csum)
            .expect("object is in the part")
    }

    /// Replaces a metadata object's bytes: appended to the blob, its `S` op
    /// pointed at them, and its checksum renamed everywhere.
    pub fn replace_metadata_object(&mut self, index: usize, bytes: &[u8]) {
        let op = self
            .ops
            .iter_mut()
            .find(|op| op.object == Some(index))
            .expect("op creating the object");
        assert_eq!(op.code, b'S');
        assert_ne!(self.objects[index].0, OBJ_FILE, "only metadata objects");
        op.args = vec![bytes.len() as u64, self.payload.blob.len() as u64];
        self.payload.blob.extend_from_slice(bytes);
        let old = self.objects[index].1;
        let new = sha256(bytes);
        self.objects[index].1 = new;
        self.renames.push((old, new));
    }

    /// Replaces the to-commit's root directory listing.
    pub fn replace_root_dirtree(&mut self, bytes: &[u8]) {
        let index = self.object_index(&self.root_dirtree.clone());
        self.replace_metadata_object(index, bytes);
    }

    /// Writes `superblock` + part `0` into `dir` (unsigned).
    pub fn write(&self, dir: &Path) {
        fs::create_dir_all(dir).unwrap();
        let mut sb = self.superblock.clone();
        let mut commit = self.old_commit.clone();
        let commit_pos = find(&sb, &commit).unwrap();
        for (old, new) in &self.renames {
            replace_all(&mut sb, old, new);
            replace_all(&mut commit, old, new);
        }
        // The commit names the root tree: a new tree makes a new commit id.
        let old_commit_id = unhex(&self.to);
        let new_commit_id = sha256(&commit);
        assert_eq!(sha256(&self.old_commit), old_commit_id);
        sb[commit_pos..commit_pos + commit.len()].copy_from_slice(&commit);
        replace_all(&mut sb, &old_commit_id, &new_commit_id);

        let mut records = Vec::new();
        let part = match &self.raw_part {
            Some(raw) => raw.clone(),
            None => {
                let mut payload = self.payload.clone();
                let mut ops = self.ops.clone();
                for (ty, bytes) in &self.extra_meta {
                    ops.push(Op {
                        code: b'S',
                        args: vec![bytes.len() as u64, payload.blob.len() as u64],
                        object: None,
                    });
                    payload.blob.extend_from_slice(bytes);
                    records.push(*ty);
                    records.extend_from_slice(&sha256(bytes));
                }
                payload.ops = encode_ops(&ops);
                if self.compress {
                    let mut part = vec![b'x'];
                    part.extend_from_slice(&xz(
                        &["-z", "-c", "-0", "-T1", "--check=crc64"],
                        &payload.encode(),
                    ));
                    part
                } else {
                    let mut part = vec![0u8];
                    part.extend_from_slice(&payload.encode());
                    part
                }
            }
        };
        let new_part_csum = sha256(&part);
        assert_eq!(replace_all(&mut sb, &self.old_part_csum, &new_part_csum), 1);
        let at = find(&sb, &new_part_csum).unwrap();
        // Part entry (uayttay): csum at `at`, then size and usize (LE for 'l').
        sb[at + 36..at + 44].copy_from_slice(&(part.len() as u64).to_le_bytes());
        if let Some(usize) = self.usize_override {
            sb[at + 44..at + 52].copy_from_slice(&usize.to_le_bytes());
        }
        if !records.is_empty() {
            sb = append_part_objects(&sb, &records);
        }
        fs::write(dir.join("superblock"), &sb).unwrap();
        fs::write(dir.join("0"), &part).unwrap();
    }

    /// Declared uncompressed size of part 0 as generated.
    pub fn declared_usize(&self) -> u64 {
        let at = find(&self.superblock, &self.old_part_csum).unwrap();
        u64::from_le_bytes(self.superblock[at + 44..at + 52].try_into().unwrap())
    }

    pub fn repo_path(&self) -> &Path {
        &self.repo_path
    }
}

/// `objects/xx/rest.EXT` of `csum` in an OSTree repo.
pub fn object_path(repo: &Path, csum: &str, ext: &str) -> PathBuf {
    repo.join("objects")
        .join(&csum[..2])
        .join(format!("{}.{ext}", &csum[2..]))
}

/// Re-encodes a directory of `commit` from its `ostree ls -C` listing, with
/// `rename` applied to each name (in listing order, which is strcmp order).
pub fn dirtree_with_names(
    repo: &Repo,
    commit: &str,
    path: &str,
    rename: impl Fn(&str) -> Vec<u8>,
) -> Vec<u8> {
    let entries = ls(repo, commit, path);
    let names: Vec<(Vec<u8>, &LsEntry)> =
        entries[1..].iter().map(|e| (rename(&e.name), e)).collect();
    let files: Vec<(&[u8], [u8; 32])> = names
        .iter()
        .filter(|(_, e)| e.kind != 'd')
        .map(|(n, e)| (n.as_slice(), e.csum))
        .collect();
    let dirs: Vec<(&[u8], [u8; 32], [u8; 32])> = names
        .iter()
        .filter(|(_, e)| e.kind == 'd')
        .map(|(n, e)| (n.as_slice(), e.csum, e.meta.unwrap()))
        .collect();
    encode_dirtree(&files, &dirs)
}

/// Hex of an object id, for messages.
pub fn id(csum: &[u8; 32]) -> String {
    hex(csum)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ostree_fixture::{ScratchDir, TreeBuilder};

    fn two_commits(dir: &Path) -> (Repo, String, String) {
        let repo = Repo::init(dir.join("repo"), "archive");
        let t = TreeBuilder::new(dir.join("tree"));
        t.file("keep", b"same\n", 0o644)
            .file("sub/x", b"x1\n", 0o600);
        let v1 = repo.commit(&t.root, "v1");
        t.file("a0b", b"new\n", 0o644)
            .file("sub/x", b"x2\n", 0o600)
            .symlink("l", "keep");
        let v2 = repo.commit(&t.root, "v2");
        (repo, v1, v2)
    }

    /// Applies an unsigned crafted delta with upstream's apply-offline and
    /// returns the commit the bare-user repo ends up holding.
    fn upstream_applies(dir: &Path, repo: &Repo, v1: &str, delta: &Path) {
        let bare = Repo::init(dir.join("bare"), "bare-user");
        run_ok(
            Command::new("ostree")
                .arg(format!("--repo={}", bare.path.display()))
                .args(["pull-local"])
                .arg(&repo.path)
                .arg(v1),
        );
        run_ok(
            Command::new("ostree")
                .arg(format!("--repo={}", bare.path.display()))
                .args(["static-delta", "apply-offline"])
                .arg(delta.join("superblock")),
        );
        run_ok(
            Command::new("ostree")
                .arg(format!("--repo={}", bare.path.display()))
                .arg("fsck"),
        );
    }

    /// Splitting and re-joining a real superblock and its part list gives
    /// back upstream's bytes, and appended objects land in part 0's list.
    #[test]
    fn superblock_reframing_is_byte_exact() {
        let dir = ScratchDir::new("craft-reframe");
        let (repo, v1, v2) = two_commits(dir.path());
        let c = Crafted::generate(&repo, Some(&v1), &v2, &dir.join("w"));
        assert_eq!(append_part_objects(&c.superblock, &[]), c.superblock);
        let record = [[2u8; 1].as_slice(), &[9u8; 32]].concat();
        let grown = append_part_objects(&c.superblock, &record);
        let parse = |sb: &[u8]| {
            let sb = atomup_ostree::delta::Superblock::parse(sb).unwrap();
            (sb.parts[0].objects.to_vec(), sb.to, sb.fallbacks.len())
        };
        let (before, after) = (parse(&c.superblock), parse(&grown));
        assert_eq!(after.0, [before.0.as_slice(), &record].concat());
        assert_eq!((after.1, after.2), (before.1, before.2));
    }

    /// Our dirtree encoder reproduces upstream's bytes for a real directory.
    #[test]
    fn dirtree_encoder_matches_upstream_bytes() {
        let dir = ScratchDir::new("craft-dirtree");
        let (repo, _, v2) = two_commits(dir.path());
        let root = ls(&repo, &v2, "/")[0].csum;
        let encoded = dirtree_with_names(&repo, &v2, "/", |n| n.as_bytes().to_vec());
        assert_eq!(
            encoded,
            fs::read(object_path(&repo.path, &hex(&root), "dirtree")).unwrap()
        );
        assert_eq!(encode_dirtree(&[], &[]), vec![0u8]);
    }

    /// The craft pipeline (re-encoded part, repaired ids) yields deltas that
    /// upstream itself applies, including a rename that changes the commit id.
    #[test]
    fn crafted_deltas_are_accepted_by_upstream_apply_offline() {
        let dir = ScratchDir::new("craft-upstream");
        let (repo, v1, v2) = two_commits(dir.path());
        let c = Crafted::generate(&repo, Some(&v1), &v2, &dir.join("w1"));
        c.write(&dir.join("identity"));
        upstream_applies(&dir.join("u1"), &repo, &v1, &dir.join("identity"));

        let mut c = Crafted::generate(&repo, Some(&v1), &v2, &dir.join("w2"));
        c.replace_root_dirtree(&dirtree_with_names(&repo, &v2, "/", |n| {
            if n == "a0b" {
                b"a1b".to_vec()
            } else {
                n.as_bytes().to_vec()
            }
        }));
        c.write(&dir.join("renamed"));
        upstream_applies(&dir.join("u2"), &repo, &v1, &dir.join("renamed"));
    }
}
