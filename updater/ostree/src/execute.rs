//! Executes one part's op stream against an [`ObjectSink`]: the pure heart of
//! delta application. Everything the ops say is bounds-checked here and every
//! object is checksummed here, so the I/O side only moves bytes. Memory use is
//! bounded independently of part size: the blob and old files are read through
//! the sink in [`CHUNK`]-sized pieces (bspatch included); only the op stream,
//! the mode/xattr tables, one metadata object (<= 10 MiB) and one symlink
//! target are held at a time.

use sha2::{Digest, Sha256};

use crate::delta::{Op, OpReader, MAX_METADATA_SIZE};
use crate::error::{Error, Result};
use crate::gvariant::{self as gv, VarArray};
use crate::gzip;
use crate::object::{
    finish_id, Commit, DirMeta, DirTree, FileHeader, ObjectId, ObjectType, Xattrs, MAX_SYMLINK,
};

/// Read granularity for blob and old-file data.
pub const CHUNK: usize = 64 * 1024;

/// Where a part's data comes from and where its objects go. Every call may
/// fail with the sink's own [`ObjectSink::Error`], which the executor hands
/// back untouched as [`PartError::Sink`].
pub trait ObjectSink {
    type Error;
    /// Reads `buf.len()` bytes of the payload blob at `offset` (blob-relative;
    /// the executor has already checked the range against the blob length).
    fn read_blob(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), Self::Error>;
    /// Opens the old content object `id` as the read source and returns its
    /// data size. Implementations must verify the object's checksum first.
    fn open_source(&mut self, id: &ObjectId) -> Result<u64, Self::Error>;
    /// Reads from the current read source (range already checked).
    fn read_source(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), Self::Error>;
    /// Stores a verified metadata object (checksum checked, parsed as its type).
    fn write_meta(&mut self, ty: ObjectType, id: &ObjectId, data: &[u8])
        -> Result<(), Self::Error>;
    /// Stores a verified symlink object; `header.symlink` is its target.
    fn write_symlink(&mut self, id: &ObjectId, header: &FileHeader<'_>) -> Result<(), Self::Error>;
    /// Starts regular-file object `id` of `size` bytes; its data follows in
    /// [`write_file`](Self::write_file) calls, then exactly one of
    /// [`finish_file`](Self::finish_file) or [`discard_file`](Self::discard_file).
    fn begin_file(
        &mut self,
        id: &ObjectId,
        header: &FileHeader<'_>,
        size: u64,
    ) -> Result<(), Self::Error>;
    fn write_file(&mut self, data: &[u8]) -> Result<(), Self::Error>;
    /// The file begun last is complete and its content checksum is `id`;
    /// `header` is the one `begin_file` had (owner, mode, xattrs to apply).
    fn finish_file(&mut self, id: &ObjectId, header: &FileHeader<'_>) -> Result<(), Self::Error>;
    /// The file begun last failed verification or was cut short: drop it.
    fn discard_file(&mut self);
    /// Rebuilds the gzip file of a `G` op from its `record` (already parsed
    /// once by the executor) and `text`. The outer error is the sink's own
    /// (it could not run the rebuild), the inner one the delta's (the record
    /// does not rebuild). The default runs [`gzip::rebuild`] in this
    /// process; a sink can run it in a helper process, so that a fault in the
    /// rebuilding library on a damaged record cannot take the applier down.
    fn rebuild_gzip(&mut self, record: &[u8], text: &[u8]) -> Result<Result<Vec<u8>>, Self::Error> {
        Ok(gzip::rebuild_encoded(record, text))
    }
}

/// Why a part could not be executed.
#[derive(Debug)]
pub enum PartError<E> {
    /// The delta is wrong: a range, a checksum, a format, an op.
    Delta(Error),
    /// The sink failed (its own error, untouched).
    Sink(E),
}

impl<E> From<Error> for PartError<E> {
    fn from(e: Error) -> Self {
        PartError::Delta(e)
    }
}

impl<E: std::fmt::Display> std::fmt::Display for PartError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PartError::Delta(e) => e.fmt(f),
            PartError::Sink(e) => e.fmt(f),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for PartError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PartError::Delta(e) => Some(e),
            PartError::Sink(e) => Some(e),
        }
    }
}

type ExecResult<T, E> = std::result::Result<T, PartError<E>>;

/// What one part produced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PartStats {
    pub meta_objects: u64,
    pub content_objects: u64,
    pub content_bytes: u64,
}

struct OpenObject {
    id: ObjectId,
    uid: u32,
    gid: u32,
    mode: u32,
    xattrs_index: usize,
    size: u64,
    written: u64,
    hasher: Option<Sha256>,
    symlink: Option<Vec<u8>>,
}

/// Runs a part. `objects` is the part's object list (33-byte records), `modes`
/// and `xattrs` the payload's tables, `blob_len` the blob's length, `ops` the
/// op stream.
pub fn execute_part<S: ObjectSink>(
    sink: &mut S,
    objects: &[u8],
    modes: &[u8],
    xattrs: &[u8],
    blob_len: u64,
    ops: &[u8],
) -> ExecResult<PartStats, S::Error> {
    let mode_table = gv::fixed_array(modes, 12, "payload mode table")?;
    let modes: Vec<&[u8]> = mode_table.collect();
    let xattr_table = VarArray::parse(xattrs, 1, "payload xattr table")?;
    if !objects.len().is_multiple_of(33) {
        return Err(Error::malformed("part objects", "not a multiple of 33 bytes").into());
    }
    let object_list: Vec<&[u8]> = objects.chunks_exact(33).collect();
    let mut ex = Exec {
        sink,
        modes,
        xattrs: xattr_table,
        blob_len,
        objects: object_list,
        next: 0,
        open: None,
        source: None,
        buf: Vec::new(),
        stats: PartStats::default(),
    };
    let mut reader = OpReader::new(ops);
    loop {
        let next_is_meta = match ex.objects.get(ex.next) {
            Some(o) => ObjectType::from_u8(o[0])?.is_meta(),
            None => false,
        };
        let Some(op) = reader.next_op(next_is_meta)? else {
            break;
        };
        ex.run(op)?;
    }
    if ex.open.is_some() {
        return Err(Error::malformed("part ops", "object left open at the end").into());
    }
    if ex.next != ex.objects.len() {
        return Err(Error::malformed("part ops", "ops did not produce every listed object").into());
    }
    Ok(ex.stats)
}

struct Exec<'a, 'p, S: ObjectSink> {
    sink: &'a mut S,
    modes: Vec<&'p [u8]>,
    xattrs: VarArray<'p>,
    blob_len: u64,
    objects: Vec<&'p [u8]>,
    next: usize,
    open: Option<OpenObject>,
    source: Option<u64>,
    buf: Vec<u8>,
    stats: PartStats,
}

impl<S: ObjectSink> Exec<'_, '_, S> {
    fn next_object(&mut self, want_meta: bool) -> Result<(ObjectType, ObjectId)> {
        let rec = self
            .objects
            .get(self.next)
            .ok_or(Error::malformed("part ops", "more objects than listed"))?;
        let ty = ObjectType::from_u8(rec[0])?;
        if ty.is_meta() != want_meta {
            return Err(Error::malformed(
                "part ops",
                "op does not fit the listed object type",
            ));
        }
        Ok((ty, ObjectId::from_slice(&rec[1..], "part objects")?))
    }

    fn check_blob(&self, offset: u64, size: u64) -> Result<()> {
        match offset.checked_add(size) {
            Some(end) if end <= self.blob_len => Ok(()),
            _ => Err(Error::malformed(
                "part ops",
                "offset/length past the end of the blob",
            )),
        }
    }

    fn run(&mut self, op: Op) -> ExecResult<(), S::Error> {
        match op {
            Op::SpliceMeta { size, offset } => {
                if self.open.is_some() {
                    return Err(
                        Error::malformed("part ops", "splice while an object is open").into(),
                    );
                }
                let (ty, id) = self.next_object(true)?;
                if size > MAX_METADATA_SIZE {
                    return Err(Error::TooLarge {
                        what: "metadata object",
                        limit: MAX_METADATA_SIZE,
                    }
                    .into());
                }
                self.check_blob(offset, size)?;
                let mut data = vec![0u8; size as usize];
                self.sink
                    .read_blob(offset, &mut data)
                    .map_err(PartError::Sink)?;
                let actual = ObjectId::of(&data);
                if actual != id {
                    return Err(Error::ChecksumMismatch {
                        what: "metadata object",
                        expected: id,
                        actual,
                    }
                    .into());
                }
                // Validate now so a bad tree is refused before anything uses it.
                match ty {
                    ObjectType::DirTree => {
                        DirTree::parse(&data)?;
                    }
                    ObjectType::DirMeta => {
                        DirMeta::parse(&data)?;
                    }
                    ObjectType::Commit => {
                        Commit::parse(&data)?;
                    }
                    _ => {}
                }
                self.sink
                    .write_meta(ty, &id, &data)
                    .map_err(PartError::Sink)?;
                self.stats.meta_objects += 1;
                self.next += 1;
                self.source = None;
            }
            Op::SpliceContent {
                mode,
                xattr,
                size,
                offset,
            } => {
                self.open_content(mode, xattr, size)?;
                self.write(size, offset, false)?;
                self.close()?;
            }
            Op::Open { mode, xattr, size } => self.open_content(mode, xattr, size)?,
            Op::Write { size, offset } => {
                let from_source = self.source.is_some();
                self.write(size, offset, from_source)?;
            }
            Op::SetReadSource { offset } => {
                self.check_blob(offset, 32)?;
                let mut raw = [0u8; 32];
                self.sink
                    .read_blob(offset, &mut raw)
                    .map_err(PartError::Sink)?;
                let size = self
                    .sink
                    .open_source(&ObjectId(raw))
                    .map_err(PartError::Sink)?;
                self.source = Some(size);
            }
            Op::UnsetReadSource => self.source = None,
            Op::Close => self.close()?,
            Op::Bspatch { offset, length } => self.bspatch(offset, length)?,
            Op::GzipRebuild {
                record_offset,
                record_len,
                data_offset,
                data_len,
            } => self.gzip_rebuild(record_offset, record_len, data_offset, data_len)?,
        }
        Ok(())
    }

    fn open_content(
        &mut self,
        mode_idx: u64,
        xattr_idx: u64,
        size: u64,
    ) -> ExecResult<(), S::Error> {
        if self.open.is_some() {
            return Err(Error::malformed("part ops", "open while an object is open").into());
        }
        let (_, id) = self.next_object(false)?;
        let m = usize::try_from(mode_idx)
            .ok()
            .and_then(|i| self.modes.get(i))
            .ok_or(Error::malformed("part ops", "mode index out of range"))?;
        let w = "payload mode table";
        let (uid, gid, mode) = (
            gv::be_u32(&m[0..4], w)?,
            gv::be_u32(&m[4..8], w)?,
            gv::be_u32(&m[8..12], w)?,
        );
        let xattrs_index = usize::try_from(xattr_idx)
            .ok()
            .filter(|i| *i < self.xattrs.len())
            .ok_or(Error::malformed("part ops", "xattr index out of range"))?;
        let xattrs = Xattrs::parse(self.xattrs.get(xattrs_index).unwrap_or(&[]))?;
        let probe = FileHeader {
            uid,
            gid,
            mode,
            symlink: "",
            xattrs,
        };
        let mut open = OpenObject {
            id,
            uid,
            gid,
            mode,
            xattrs_index,
            size,
            written: 0,
            hasher: None,
            symlink: None,
        };
        if probe.is_symlink() {
            if size == 0 || size > MAX_SYMLINK as u64 {
                return Err(
                    Error::malformed("part ops", "symlink target size out of range").into(),
                );
            }
            open.symlink = Some(Vec::with_capacity(size as usize));
        } else {
            probe.validate()?;
            open.hasher = Some(probe.content_hasher());
            self.sink
                .begin_file(&id, &probe, size)
                .map_err(PartError::Sink)?;
        }
        self.open = Some(open);
        Ok(())
    }

    fn emit(&mut self, data: &[u8]) -> ExecResult<(), S::Error> {
        let open = self
            .open
            .as_mut()
            .ok_or(Error::malformed("part ops", "write without an open object"))?;
        if let Some(t) = open.symlink.as_mut() {
            t.extend_from_slice(data);
        } else {
            if let Some(h) = open.hasher.as_mut() {
                h.update(data);
            }
            self.sink.write_file(data).map_err(PartError::Sink)?;
        }
        Ok(())
    }

    fn reserve(&mut self, size: u64) -> Result<()> {
        let open = self
            .open
            .as_mut()
            .ok_or(Error::malformed("part ops", "write without an open object"))?;
        match open.written.checked_add(size) {
            Some(n) if n <= open.size => {
                open.written = n;
                Ok(())
            }
            _ => Err(Error::malformed(
                "part ops",
                "writes exceed the object's declared size",
            )),
        }
    }

    fn write(&mut self, size: u64, offset: u64, from_source: bool) -> ExecResult<(), S::Error> {
        self.reserve(size)?;
        if from_source {
            let src = self.source.unwrap_or(0);
            match offset.checked_add(size) {
                Some(end) if end <= src => {}
                _ => {
                    return Err(Error::malformed(
                        "part ops",
                        "write past the end of the read source",
                    )
                    .into())
                }
            }
        } else {
            self.check_blob(offset, size)?;
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.resize(CHUNK, 0);
        let mut done = 0u64;
        let result = (|| {
            while done < size {
                let n = (size - done).min(CHUNK as u64) as usize;
                let chunk = &mut buf[..n];
                if from_source {
                    self.sink
                        .read_source(offset + done, chunk)
                        .map_err(PartError::Sink)?;
                } else {
                    self.sink
                        .read_blob(offset + done, chunk)
                        .map_err(PartError::Sink)?;
                }
                self.emit(chunk)?;
                done += n as u64;
            }
            Ok(())
        })();
        self.buf = buf;
        result
    }

    fn close(&mut self) -> ExecResult<(), S::Error> {
        let open = self
            .open
            .take()
            .ok_or(Error::malformed("part ops", "close without an open object"))?;
        self.source = None;
        if open.written != open.size {
            if open.symlink.is_none() {
                self.sink.discard_file();
            }
            return Err(Error::malformed(
                "part ops",
                "object closed before its declared size was written",
            )
            .into());
        }
        let xattrs = Xattrs::parse(self.xattrs.get(open.xattrs_index).unwrap_or(&[]))?;
        if let Some(target) = open.symlink {
            let target = std::str::from_utf8(&target)
                .ok()
                .filter(|t| !t.contains('\0'))
                .ok_or(Error::malformed(
                    "symlink",
                    "target is not UTF-8 or has NUL",
                ))?;
            let header = FileHeader {
                uid: open.uid,
                gid: open.gid,
                mode: open.mode,
                symlink: target,
                xattrs,
            };
            let actual = finish_id(header.content_hasher());
            if actual != open.id {
                return Err(Error::ChecksumMismatch {
                    what: "symlink object",
                    expected: open.id,
                    actual,
                }
                .into());
            }
            self.sink
                .write_symlink(&open.id, &header)
                .map_err(PartError::Sink)?;
        } else {
            let actual = finish_id(open.hasher.unwrap_or_default());
            if actual != open.id {
                self.sink.discard_file();
                return Err(Error::ChecksumMismatch {
                    what: "content object",
                    expected: open.id,
                    actual,
                }
                .into());
            }
            let header = FileHeader {
                uid: open.uid,
                gid: open.gid,
                mode: open.mode,
                symlink: "",
                xattrs,
            };
            self.sink
                .finish_file(&open.id, &header)
                .map_err(PartError::Sink)?;
            self.stats.content_bytes += open.size;
        }
        self.stats.content_objects += 1;
        self.next += 1;
        Ok(())
    }

    /// Streams a raw mendsley bsdiff patch (no header, no bzip2) from the
    /// blob against the read source into the open file: see [`bspatch`].
    fn bspatch(&mut self, offset: u64, length: u64) -> ExecResult<(), S::Error> {
        let w = "bspatch";
        let old_size = self.source.ok_or(Error::malformed(w, "no read source"))?;
        let new_size = match &self.open {
            Some(o) if o.written == 0 && o.symlink.is_none() => o.size,
            _ => return Err(Error::malformed(w, "needs a freshly opened regular file").into()),
        };
        self.check_blob(offset, length)?;
        bspatch(self, offset, offset + length, old_size, new_size)
    }

    /// The `G` op (atomup's extension, `gzip.rs`): the open file is the
    /// gzip file rebuilt from a text, which is in the blob or, with a read
    /// source set, is a bsdiff patch against the old gzip file's text.
    /// Memory: at most the old text, the patch and the new text during the
    /// patch, then the new text, preflate's predictor and the file; every
    /// size is checked against its `gzip` cap before anything is allocated.
    fn gzip_rebuild(
        &mut self,
        record_offset: u64,
        record_len: u64,
        data_offset: u64,
        data_len: u64,
    ) -> ExecResult<(), S::Error> {
        let w = "gzip rebuild";
        match &self.open {
            Some(o) if o.written == 0 && o.symlink.is_none() => {}
            _ => return Err(Error::malformed(w, "needs a freshly opened regular file").into()),
        }
        self.check_blob(record_offset, record_len)?;
        self.check_blob(data_offset, data_len)?;
        if record_len > gzip::MAX_RECORD {
            return Err(Error::TooLarge {
                what: "gzip rebuild record",
                limit: gzip::MAX_RECORD,
            }
            .into());
        }
        let mut raw = vec![0u8; record_len as usize];
        self.sink
            .read_blob(record_offset, &mut raw)
            .map_err(PartError::Sink)?;
        let record = gzip::Record::parse(&raw)?;
        let text = match self.source {
            None => {
                if data_len != record.text_len {
                    return Err(Error::malformed(w, "text length differs from the record").into());
                }
                let mut text = vec![0u8; data_len as usize];
                self.sink
                    .read_blob(data_offset, &mut text)
                    .map_err(PartError::Sink)?;
                text
            }
            Some(old_size) => {
                let patch_cap = 2 * gzip::MAX_TEXT + (1 << 20);
                if data_len > patch_cap {
                    return Err(Error::TooLarge {
                        what: "gzip rebuild patch",
                        limit: patch_cap,
                    }
                    .into());
                }
                let mut head = vec![0u8; old_size.min(gzip::MAX_HEADER) as usize];
                self.sink
                    .read_source(0, &mut head)
                    .map_err(PartError::Sink)?;
                let start = gzip::header_len(&head)? as u64;
                let (old_text, _) =
                    gzip::inflate_member(start, old_size, |at, buf| self.sink.read_source(at, buf))
                        .map_err(PartError::Sink)??;
                let mut patch = vec![0u8; data_len as usize];
                self.sink
                    .read_blob(data_offset, &mut patch)
                    .map_err(PartError::Sink)?;
                let mut io = MemPatch {
                    patch: &patch,
                    old: &old_text,
                    out: Vec::with_capacity(record.text_len as usize),
                };
                bspatch::<_, S::Error>(
                    &mut io,
                    0,
                    data_len,
                    old_text.len() as u64,
                    record.text_len,
                )?;
                io.out
            }
        };
        let file = self
            .sink
            .rebuild_gzip(&raw, &text)
            .map_err(PartError::Sink)??;
        drop(text);
        self.reserve(file.len() as u64)?;
        for piece in file.chunks(CHUNK) {
            self.emit(piece)?;
        }
        Ok(())
    }
}

/// Where a bsdiff patch reads and writes: the part's blob and read source
/// through the sink into the open file (`B`), or texts in memory (`G`).
trait PatchIo<E> {
    fn patch(&mut self, at: u64, buf: &mut [u8]) -> ExecResult<(), E>;
    fn old(&mut self, at: u64, buf: &mut [u8]) -> ExecResult<(), E>;
    /// Appends new bytes; [`bspatch`] has checked they fit the new size.
    fn out(&mut self, data: &[u8]) -> ExecResult<(), E>;
}

impl<S: ObjectSink> PatchIo<S::Error> for Exec<'_, '_, S> {
    fn patch(&mut self, at: u64, buf: &mut [u8]) -> ExecResult<(), S::Error> {
        self.sink.read_blob(at, buf).map_err(PartError::Sink)
    }
    fn old(&mut self, at: u64, buf: &mut [u8]) -> ExecResult<(), S::Error> {
        self.sink.read_source(at, buf).map_err(PartError::Sink)
    }
    fn out(&mut self, data: &[u8]) -> ExecResult<(), S::Error> {
        self.reserve(data.len() as u64)?;
        self.emit(data)
    }
}

struct MemPatch<'a> {
    patch: &'a [u8],
    old: &'a [u8],
    out: Vec<u8>,
}

impl<E> PatchIo<E> for MemPatch<'_> {
    fn patch(&mut self, at: u64, buf: &mut [u8]) -> ExecResult<(), E> {
        let at = at as usize;
        buf.copy_from_slice(&self.patch[at..at + buf.len()]);
        Ok(())
    }
    fn old(&mut self, at: u64, buf: &mut [u8]) -> ExecResult<(), E> {
        let at = at as usize;
        buf.copy_from_slice(&self.old[at..at + buf.len()]);
        Ok(())
    }
    fn out(&mut self, data: &[u8]) -> ExecResult<(), E> {
        self.out.extend_from_slice(data);
        Ok(())
    }
}

/// Applies the raw mendsley bsdiff patch at `[p, end)` of `io`'s patch
/// bytes: control triples of sign-magnitude i64 (diff len, extra len, old
/// seek), diff bytes added to old bytes, extra bytes copied, until
/// `new_size` bytes are out. Every length is checked against the patch and
/// the new size before it is read; old reads stay within `[0, old_size)`.
fn bspatch<P: PatchIo<E>, E>(
    io: &mut P,
    mut p: u64,
    end: u64,
    old_size: u64,
    new_size: u64,
) -> ExecResult<(), E> {
    let w = "bspatch";
    let mut newpos = 0u64;
    let mut oldpos: i64 = 0;
    let mut diff = vec![0u8; CHUNK];
    let mut old = vec![0u8; CHUNK];
    while newpos < new_size {
        if p.checked_add(24).is_none_or(|e| e > end) {
            return Err(Error::malformed(w, "truncated control record").into());
        }
        let mut ctrl = [0u8; 24];
        io.patch(p, &mut ctrl)?;
        p += 24;
        let diff_len = offtin(&ctrl[0..8]);
        let extra_len = offtin(&ctrl[8..16]);
        let seek = offtin(&ctrl[16..24]);
        let (Ok(diff_len), Ok(extra_len)) = (u64::try_from(diff_len), u64::try_from(extra_len))
        else {
            return Err(Error::malformed(w, "negative length").into());
        };
        let fits = |pos: u64, n: u64, lim: u64| pos.checked_add(n).is_some_and(|e| e <= lim);
        if !fits(newpos, diff_len, new_size) || !fits(p, diff_len, end) {
            return Err(Error::malformed(w, "diff block out of range").into());
        }
        let mut done = 0u64;
        while done < diff_len {
            let n = (diff_len - done).min(CHUNK as u64) as usize;
            io.patch(p + done, &mut diff[..n])?;
            // Old bytes outside [0, old_size) contribute nothing (bsdiff semantics).
            let start = oldpos
                .checked_add(done as i64)
                .ok_or(Error::malformed(w, "seek overflow"))?;
            let lo = start.max(0);
            let hi = start.saturating_add(n as i64).min(old_size as i64);
            if lo < hi {
                let k = (lo - start) as usize;
                let m = (hi - lo) as usize;
                io.old(lo as u64, &mut old[..m])?;
                for (d, o) in diff[k..k + m].iter_mut().zip(&old[..m]) {
                    *d = d.wrapping_add(*o);
                }
            }
            io.out(&diff[..n])?;
            done += n as u64;
        }
        p += diff_len;
        newpos += diff_len;
        oldpos = oldpos
            .checked_add(diff_len as i64)
            .ok_or(Error::malformed(w, "seek overflow"))?;
        if !fits(newpos, extra_len, new_size) || !fits(p, extra_len, end) {
            return Err(Error::malformed(w, "extra block out of range").into());
        }
        let mut done = 0u64;
        while done < extra_len {
            let n = (extra_len - done).min(CHUNK as u64) as usize;
            io.patch(p + done, &mut diff[..n])?;
            io.out(&diff[..n])?;
            done += n as u64;
        }
        p += extra_len;
        newpos += extra_len;
        oldpos = oldpos
            .checked_add(seek)
            .ok_or(Error::malformed(w, "seek overflow"))?;
    }
    Ok(())
}

/// bsdiff's 8-byte little-endian sign-magnitude integer.
fn offtin(b: &[u8]) -> i64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&b[..8]);
    let neg = raw[7] & 0x80 != 0;
    raw[7] &= 0x7f;
    let v = u64::from_le_bytes(raw) as i64;
    if neg {
        -v
    } else {
        v
    }
}

/// An in-memory sink: used by tests and fuzz targets, and by callers that hold
/// small payloads in memory.
#[derive(Default, Debug)]
pub struct MemorySink<'a> {
    pub blob: &'a [u8],
    /// Old objects available as read sources: (id, data).
    pub old: Vec<(ObjectId, Vec<u8>)>,
    pub source: Option<usize>,
    pub meta: Vec<(ObjectType, ObjectId, Vec<u8>)>,
    /// Finished content objects: (id, symlink target or "", data).
    pub content: Vec<(ObjectId, String, Vec<u8>)>,
    current: Option<(ObjectId, String, Vec<u8>)>,
}

impl<'a> MemorySink<'a> {
    pub fn new(blob: &'a [u8]) -> Self {
        MemorySink {
            blob,
            ..Default::default()
        }
    }
}

fn oob() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "out of range")
}

impl ObjectSink for MemorySink<'_> {
    type Error = std::io::Error;
    fn read_blob(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| oob())?;
        let src = self.blob.get(start..start + buf.len()).ok_or_else(oob)?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn open_source(&mut self, id: &ObjectId) -> std::io::Result<u64> {
        let i = self
            .old
            .iter()
            .position(|(o, _)| o == id)
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))?;
        self.source = Some(i);
        Ok(self.old[i].1.len() as u64)
    }
    fn read_source(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let data = &self
            .old
            .get(self.source.ok_or_else(oob)?)
            .ok_or_else(oob)?
            .1;
        let start = usize::try_from(offset).map_err(|_| oob())?;
        buf.copy_from_slice(data.get(start..start + buf.len()).ok_or_else(oob)?);
        Ok(())
    }
    fn write_meta(&mut self, ty: ObjectType, id: &ObjectId, data: &[u8]) -> std::io::Result<()> {
        self.meta.push((ty, *id, data.to_vec()));
        Ok(())
    }
    fn write_symlink(&mut self, id: &ObjectId, header: &FileHeader<'_>) -> std::io::Result<()> {
        self.content
            .push((*id, header.symlink.to_owned(), Vec::new()));
        Ok(())
    }
    fn begin_file(
        &mut self,
        id: &ObjectId,
        _header: &FileHeader<'_>,
        _size: u64,
    ) -> std::io::Result<()> {
        self.current = Some((*id, String::new(), Vec::new()));
        Ok(())
    }
    fn write_file(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.current
            .as_mut()
            .ok_or_else(oob)?
            .2
            .extend_from_slice(data);
        Ok(())
    }
    fn finish_file(&mut self, _id: &ObjectId, _header: &FileHeader<'_>) -> std::io::Result<()> {
        let c = self.current.take().ok_or_else(oob)?;
        self.content.push(c);
        Ok(())
    }
    fn discard_file(&mut self) {
        self.current = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content_id(data: &[u8]) -> ObjectId {
        let h = FileHeader {
            uid: 0,
            gid: 0,
            mode: 0o100644,
            symlink: "",
            xattrs: Xattrs::EMPTY,
        };
        let mut s = h.content_hasher();
        s.update(data);
        finish_id(s)
    }

    fn table() -> (Vec<u8>, Vec<u8>) {
        let mut modes = Vec::new();
        for v in [0u32, 0, 0o100644] {
            modes.extend_from_slice(&v.to_be_bytes());
        }
        (modes, vec![0]) // one empty xattr set
    }

    /// A hand-made bspatch (diff over old + extra + negative seek) yields the new file.
    #[test]
    fn bspatch_with_seek() {
        let old = b"hello world".to_vec();
        let new = b"hellO worldXYZ".to_vec();
        let mut patch = Vec::new();
        let push = |p: &mut Vec<u8>, v: i64| {
            let mut b = (v.unsigned_abs()).to_le_bytes();
            if v < 0 {
                b[7] |= 0x80;
            }
            p.extend_from_slice(&b);
        };
        push(&mut patch, 11);
        push(&mut patch, 3);
        push(&mut patch, -11);
        for (n, o) in new[..11].iter().zip(&old) {
            patch.push(n.wrapping_sub(*o));
        }
        patch.extend_from_slice(b"XYZ");
        let old_id = content_id(&old);
        let new_id = content_id(&new);
        let mut blob = old_id.0.to_vec();
        let poff = blob.len() as u64;
        blob.extend_from_slice(&patch);
        let mut ops = vec![b'r', 0, b'o', 0, 0, new.len() as u8, b'B'];
        crate::delta::write_varint(&mut ops, poff);
        crate::delta::write_varint(&mut ops, patch.len() as u64);
        ops.extend_from_slice(b"cR");
        let mut objects = vec![1u8];
        objects.extend_from_slice(&new_id.0);
        let (modes, xattrs) = table();
        let mut sink = MemorySink::new(&blob);
        sink.old.push((old_id, old));
        let stats = execute_part(
            &mut sink,
            &objects,
            &modes,
            &xattrs,
            blob.len() as u64,
            &ops,
        )
        .unwrap();
        assert_eq!(stats.content_objects, 1);
        assert_eq!(sink.content[0].2, new);
    }

    /// A content object whose bytes do not hash to its listed id is refused and discarded.
    #[test]
    fn content_checksum_mismatch() {
        let blob = b"data".to_vec();
        let mut objects = vec![1u8];
        objects.extend_from_slice(&[9u8; 32]);
        let (modes, xattrs) = table();
        let mut sink = MemorySink::new(&blob);
        let err =
            execute_part(&mut sink, &objects, &modes, &xattrs, 4, b"S\0\0\x04\0").unwrap_err();
        assert!(
            matches!(err, PartError::Delta(Error::ChecksumMismatch { .. })),
            "{err}"
        );
        assert!(sink.content.is_empty());
    }

    /// Ops that point past the blob, past the declared size or leave objects unmade fail cleanly.
    #[test]
    fn bounds_are_enforced() {
        let blob = b"data".to_vec();
        let id = content_id(b"data");
        let mut objects = vec![1u8];
        objects.extend_from_slice(&id.0);
        let (modes, xattrs) = table();
        for ops in [
            &b"S\0\0\x04\x01"[..],
            b"S\0\0\x05\0",
            b"o\0\0\x04w\x05\0c",
            b"o\x01\0\x04",
            b"o\0\x01\x04",
            b"",
            b"o\0\0\x04w\x04\0",
        ] {
            let mut sink = MemorySink::new(&blob);
            assert!(
                execute_part(&mut sink, &objects, &modes, &xattrs, 4, ops).is_err(),
                "{ops:?}"
            );
        }
        let mut sink = MemorySink::new(&blob);
        execute_part(
            &mut sink,
            &objects,
            &modes,
            &xattrs,
            4,
            b"o\0\0\x04w\x02\0w\x02\x02c",
        )
        .unwrap();
        assert_eq!(sink.content[0].2, b"data");
    }
}
