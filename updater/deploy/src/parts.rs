//! Running the delta's parts: each part is decompressed (streaming, its
//! digest proven again on the way, capped against its declared sizes) into
//! an unlinked scratch file in staging, its tables and op stream read within
//! their limits, and its ops executed by `atomup-ostree`'s executor through
//! [`PartSink`], which writes every new object into staging. Then the
//! delta's fallback objects are imported.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use atomup_ostree::delta::{compression, part_header, PayloadLayout};
use atomup_ostree::execute::{execute_part, ObjectSink, PartError, CHUNK};
use atomup_ostree::object::{FileHeader, ObjectType};
use atomup_ostree::ObjectId;
use sha2::{Digest, Sha256};

use crate::delta::{PartReader, VerifiedDelta};
use crate::error::{fmt, io, DeployError, Result};
use crate::limits::{MAX_MODE_TABLE, MAX_OPS, MAX_XATTR_TABLE};
use crate::objects::Objects;
use crate::staging::STAGING;
use crate::stats::Stats;

/// Runs every part of `delta`, then imports its fallback objects.
pub(crate) fn run_parts(
    delta: &VerifiedDelta,
    objects: &mut Objects<'_>,
    stats: &mut Stats,
) -> Result<()> {
    let sb = delta.superblock();
    for index in 0..sb.parts().len() {
        run_part(delta, index, objects, stats)?;
    }
    for fb in sb.fallbacks() {
        if fb.objtype.is_meta() {
            // Read (and re-hashed) from the fallback repo into the store.
            objects.meta.get(&fb.id, fb.objtype)?;
        } else {
            objects.import_fallback(fb.id, Some(fb.usize), stats)?;
        }
    }
    Ok(())
}

/// A reader that hashes and counts what passes through it: the part's digest
/// proven again while it is decompressed.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    total: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.total += n as u64;
        Ok(n)
    }
}

fn run_part(
    delta: &VerifiedDelta,
    index: usize,
    objects: &mut Objects<'_>,
    stats: &mut Stats,
) -> Result<()> {
    let sb = delta.superblock();
    let p = &sb.parts()[index];
    let path = objects.staging.path().join("payload");
    let mut payload = objects.staging.scratch()?;
    let limit = atomup_ostree::xz::payload_limit(p.usize, p.size);
    let total = match (sb.inline_part(index), delta.part_file(index)) {
        // Inline: verified with the superblock, which is held in memory.
        (Some(bytes), _) => {
            let (c, data) = part_header(bytes).map_err(fmt("part header"))?;
            atomup_ostree::xz::decompress(c, data, &mut payload, limit)
                .map_err(|e| decompress_err(index, e, &path))?
        }
        (None, Some(part)) => {
            // Never more than the declared size is read, from the
            // descriptor held since the part was proven.
            let mut r = HashingReader {
                inner: PartReader::new(&part.file, p.size),
                hasher: Sha256::new(),
                total: 0,
            };
            let mut first = [0u8; 1];
            r.read_exact(&mut first).map_err(io("read", &part.path))?;
            let c = compression(first[0]).map_err(fmt("part header"))?;
            let mut br = BufReader::with_capacity(CHUNK, r);
            let n = atomup_ostree::xz::decompress(c, &mut br, &mut payload, limit)
                .map_err(|e| decompress_err(index, e, &path))?;
            // Drain whatever the decoder did not consume, then prove the
            // digest again before any object of the part is used.
            std::io::copy(&mut br, &mut std::io::sink()).map_err(io("read", &part.path))?;
            let r = br.into_inner();
            if r.total != p.size || ObjectId(r.hasher.finalize().into()) != p.checksum {
                return Err(DeployError::Part {
                    index,
                    why: "changed on disk while being applied",
                });
            }
            n
        }
        (None, None) => {
            return Err(DeployError::Part {
                index,
                why: "no part file was opened for it",
            })
        }
    };
    let tail_len = PayloadLayout::tail_len(total);
    if tail_len > total {
        return Err(DeployError::Part {
            index,
            why: "payload too short",
        });
    }
    let mut tail = vec![0u8; tail_len as usize];
    payload
        .read_exact_at(&mut tail, total - tail_len)
        .map_err(io("read", &path))?;
    let layout = PayloadLayout::from_tail(total, &tail).map_err(fmt("part payload"))?;
    // Rule: memory stays bounded whatever a delta says: the tables and the
    // op stream are held in memory, each up to its own limit, checked before
    // anything is read.
    for (what, (a, b), limit) in [
        ("part mode table", layout.modes, MAX_MODE_TABLE),
        ("part xattr table", layout.xattrs, MAX_XATTR_TABLE),
        ("part op stream", layout.ops, MAX_OPS),
    ] {
        if b - a > limit {
            return Err(DeployError::TooLarge { what, limit });
        }
    }
    let read_range = |(a, b): (u64, u64)| -> Result<Vec<u8>> {
        let mut v = vec![0u8; (b - a) as usize];
        payload
            .read_exact_at(&mut v, a)
            .map_err(io("read", &path))?;
        Ok(v)
    };
    let modes = read_range(layout.modes)?;
    let xattrs = read_range(layout.xattrs)?;
    let ops = read_range(layout.ops)?;
    let mut sink = PartSink {
        objects,
        payload: &payload,
        payload_path: path.clone(),
        blob_start: layout.blob.0,
        source: None,
        current: None,
    };
    let done = execute_part(
        &mut sink,
        sb.part_objects(index),
        &modes,
        &xattrs,
        layout.blob.1 - layout.blob.0,
        &ops,
    )
    .map_err(|e| match e {
        PartError::Sink(e) => e,
        PartError::Delta(source) => DeployError::Format {
            what: "delta part",
            source,
        },
    })?;
    stats.objects_written += done.content_objects;
    stats.bytes_written += done.content_bytes;
    stats.meta_objects += done.meta_objects;
    Ok(())
}

fn decompress_err(index: usize, e: atomup_ostree::Error, payload: &std::path::Path) -> DeployError {
    use atomup_ostree::Error as E;
    match e {
        E::TooLarge {
            what: "decompressed part",
            limit,
        } => DeployError::TooLarge {
            what: "decompressed part (declared sizes lie)",
            limit,
        },
        // Writing the payload failed (a full target, say): an I/O error.
        E::Io { source, .. } => DeployError::Io {
            what: "write the decompressed part into",
            path: payload.to_owned(),
            source,
        },
        e => DeployError::Format {
            what: if index == 0 { "part 0" } else { "delta part" },
            source: e,
        },
    }
}

/// The executor's view of the device: the part's blob in the scratch file,
/// old objects from the running root, new objects into staging, metadata
/// into the store. Errors are the engine's own ([`DeployError`]).
struct PartSink<'s, 'o> {
    objects: &'s mut Objects<'o>,
    payload: &'s File,
    payload_path: PathBuf,
    blob_start: u64,
    /// The open read source and its path in the running root.
    source: Option<(File, PathBuf)>,
    /// The regular file being written: its id and staged `.tmp` file.
    current: Option<(ObjectId, File)>,
}

impl ObjectSink for PartSink<'_, '_> {
    type Error = DeployError;

    /// In the helper process when one is set (`gzip_helper`).
    fn rebuild_gzip(
        &mut self,
        record: &[u8],
        text: &[u8],
    ) -> Result<atomup_ostree::Result<Vec<u8>>> {
        match crate::gzip_helper::helper() {
            Some(program) => crate::gzip_helper::rebuild_in(program, record, text)
                .map_err(io("run the gzip rebuild helper", program)),
            None => Ok(atomup_ostree::gzip::rebuild_encoded(record, text)),
        }
    }

    fn read_blob(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.payload
            .read_exact_at(buf, self.blob_start + offset)
            .map_err(io("read", &self.payload_path))
    }

    fn open_source(&mut self, id: &ObjectId) -> Result<u64> {
        self.source = None;
        let old = self
            .objects
            .old
            .as_mut()
            .ok_or(DeployError::MissingContent { id: *id })?;
        let (file, size, path) = old.open_regular(self.objects.meta, id)?;
        self.source = Some((file, path));
        Ok(size)
    }

    fn read_source(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let (file, path) = self.source.as_ref().ok_or(DeployError::Part {
            index: 0,
            why: "read from an old object that is not open",
        })?;
        file.read_exact_at(buf, offset).map_err(io("read", path))
    }

    fn write_meta(&mut self, ty: ObjectType, id: &ObjectId, data: &[u8]) -> Result<()> {
        match ty {
            // The apply reads trees only; the commit and its signatures come
            // from the superblock. Anything else a part carries was checked
            // by its checksum and is not held.
            ObjectType::DirTree | ObjectType::DirMeta => self.objects.meta.insert(*id, data),
            _ => Ok(()),
        }
    }

    fn write_symlink(&mut self, id: &ObjectId, header: &FileHeader<'_>) -> Result<()> {
        self.source = None;
        self.objects.staging.symlink(id, header)?;
        // Crash point `apply.parts`: the N-th object staged from a part.
        atomup_faults::point("apply.parts");
        Ok(())
    }

    fn begin_file(&mut self, id: &ObjectId, _header: &FileHeader<'_>, _size: u64) -> Result<()> {
        self.current = Some((*id, self.objects.staging.create_file(id)?));
        Ok(())
    }

    fn write_file(&mut self, data: &[u8]) -> Result<()> {
        let (id, file) = self.current.as_mut().ok_or(DeployError::Part {
            index: 0,
            why: "write to an object that is not open",
        })?;
        file.write_all(data)
            .map_err(io("write into", PathBuf::from(STAGING).join(id.to_hex())))
    }

    fn finish_file(&mut self, id: &ObjectId, header: &FileHeader<'_>) -> Result<()> {
        self.source = None;
        let (_, file) = self.current.take().ok_or(DeployError::Part {
            index: 0,
            why: "finish of an object that is not open",
        })?;
        self.objects.staging.finish_file(file, id, header)?;
        // Crash point `apply.parts`: the N-th object staged from a part.
        atomup_faults::point("apply.parts");
        Ok(())
    }

    fn discard_file(&mut self) {
        self.source = None;
        if let Some((id, file)) = self.current.take() {
            drop(file);
            self.objects.staging.discard_file(&id);
        }
    }
}
