//! Fallback objects from an archive repo (`--fallback-repo`): a delta's
//! fallback list names objects it does not carry, and an object the running
//! root lost or changed can be taken whole from there too. Read from
//! `objects/xx/<rest>.filez` (header, then raw deflate), inflated, checksummed
//! and staged. Host tools and tests only: devices refuse deltas with
//! fallbacks (they do not fetch them), so the device build leaves this out
//! (feature `archive-fallback`).

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use atomup_ostree::delta::Fallback;
use atomup_ostree::execute::CHUNK;
use atomup_ostree::object::{finish_id, FilezHeader, ObjectType};
use atomup_ostree::{ObjectId, MAX_METADATA_SIZE};
use sha2::Digest;

use crate::error::{fmt, io, DeployError, Result};
use crate::meta::read_meta;
use crate::staging::Staging;

/// The `.filez` path of content object `id` in `repo`.
pub(crate) fn filez_path(repo: &Path, id: &ObjectId) -> PathBuf {
    repo.join(format!("{}z", id.object_path(ObjectType::File)))
}

/// Opens fallback object `id`'s `.filez` in `repo` (a regular file, opened
/// so that it cannot block) and reads its header: [u32 BE length][4 zero
/// bytes][header]. Returns the path, the file positioned at the deflate
/// data, and the header bytes.
fn open_filez(repo: &Path, id: &ObjectId) -> Result<(PathBuf, File, Vec<u8>)> {
    let path = filez_path(repo, id);
    let mut f = atomup_fsio::open(&path, atomup_fsio::Want::Regular).map_err(io("open", &path))?;
    let mut head = vec![0u8; 8];
    f.read_exact(&mut head).map_err(io("read", &path))?;
    let hlen = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as u64;
    if hlen > MAX_METADATA_SIZE {
        return Err(DeployError::TooLarge {
            what: "filez header",
            limit: MAX_METADATA_SIZE,
        });
    }
    head.resize(8 + hlen as usize, 0);
    f.read_exact(&mut head[8..]).map_err(io("read", &path))?;
    Ok((path, f, head))
}

/// A regular fallback object's `.filez` must declare the size the
/// superblock does, before anything is inflated (a lying file cannot fill
/// the target).
fn check_size(
    fh: &FilezHeader<'_>,
    declared: Option<u64>,
    id: &ObjectId,
    path: &Path,
) -> Result<()> {
    if declared.is_some_and(|d| !fh.header.is_symlink() && d != fh.size) {
        return Err(DeployError::Corrupt {
            what: "fallback object (size differs from the superblock)",
            id: *id,
            path: path.to_owned(),
            actual: ObjectId::default(),
        });
    }
    Ok(())
}

/// What can be known of a fallback object without writing: it is in the
/// fallback repo, a regular file whose header parses and declares the
/// superblock's size (a symlink's header is its whole object: its checksum
/// is checked too); a metadata fallback is read and re-hashed.
pub(crate) fn check(repo: &Path, fb: &Fallback) -> Result<()> {
    if fb.objtype.is_meta() {
        read_meta(&[repo], &fb.id, fb.objtype)?;
        return Ok(());
    }
    let (path, _, head) = open_filez(repo, &fb.id)?;
    let fh = FilezHeader::parse(&head).map_err(fmt("filez header"))?;
    check_size(&fh, Some(fb.usize), &fb.id, &path)?;
    if fh.header.is_symlink() {
        let actual = finish_id(fh.header.content_hasher());
        if actual != fb.id {
            return Err(DeployError::Corrupt {
                what: "fallback object",
                id: fb.id,
                path,
                actual,
            });
        }
    }
    Ok(())
}

/// Imports content object `id` from `repo` into staging; `declared` is the
/// superblock's uncompressed size if it came from the fallback list.
/// Returns the bytes written (0 for a symlink).
pub(crate) fn import(
    staging: &mut Staging,
    repo: &Path,
    id: ObjectId,
    declared: Option<u64>,
) -> Result<u64> {
    let (path, mut f, head) = open_filez(repo, &id)?;
    let fh = FilezHeader::parse(&head).map_err(fmt("filez header"))?;
    check_size(&fh, declared, &id, &path)?;
    let header = fh.header;
    if header.is_symlink() {
        let actual = finish_id(header.content_hasher());
        if actual != id {
            return Err(DeployError::Corrupt {
                what: "fallback object",
                id,
                path,
                actual,
            });
        }
        staging.symlink(&id, &header)?;
        return Ok(0);
    }
    let mut out = staging.create_file(&id)?;
    let mut h = header.content_hasher();
    let total = inflate_raw(&mut f, fh.size, |chunk| {
        h.update(chunk);
        out.write_all(chunk)
    })
    .map_err(io("decompress", &path))?;
    let actual = finish_id(h);
    if actual != id || total != fh.size {
        staging.discard_file(&id);
        return Err(DeployError::Corrupt {
            what: "fallback object",
            id,
            path,
            actual,
        });
    }
    staging.finish_file(out, &id, &header)?;
    Ok(total)
}

/// Streams raw deflate (archive `.filez` data) into `out`, refusing more than `limit` bytes.
fn inflate_raw(
    input: &mut File,
    limit: u64,
    mut out: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> std::io::Result<u64> {
    use miniz_oxide::inflate::stream::{inflate, InflateState};
    use miniz_oxide::{DataFormat, MZError, MZFlush, MZStatus};
    let bad = |m: &'static str| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
    let mut state = InflateState::new_boxed(DataFormat::Raw);
    let mut inbuf = vec![0u8; CHUNK];
    let mut outbuf = vec![0u8; CHUNK];
    let (mut start, mut end, mut eof) = (0usize, 0usize, false);
    let mut total = 0u64;
    loop {
        if start == end && !eof {
            end = input.read(&mut inbuf)?;
            start = 0;
            eof = end == 0;
        }
        let flush = if eof { MZFlush::Finish } else { MZFlush::None };
        let res = inflate(&mut state, &inbuf[start..end], &mut outbuf, flush);
        start += res.bytes_consumed;
        total += res.bytes_written as u64;
        if total > limit {
            return Err(bad("inflates past its declared size"));
        }
        out(&outbuf[..res.bytes_written])?;
        match res.status {
            Ok(MZStatus::StreamEnd) => return Ok(total),
            Ok(_) => {}
            Err(MZError::Buf) if !eof || res.bytes_written > 0 => {}
            Err(_) => return Err(bad("corrupt deflate stream")),
        }
        if eof && res.bytes_written == 0 && res.bytes_consumed == 0 {
            return Err(bad("truncated deflate stream"));
        }
    }
}
