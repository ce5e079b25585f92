//! gzip files rebuilt byte for byte from their text: atomup's `G` op, an
//! extension upstream OSTree does not have. A changed `.gz` (a Debian
//! changelog, a man page) is a whole new deflate stream, which no LZMA block
//! or bsdiff shrinks; its text changed by a few lines. The publisher ships the
//! text (or a bsdiff of the old file's text) plus preflate's reconstruction
//! record, and the device re-deflates it to the original bytes. The object's
//! content checksum is checked as for any other op, so a rebuild that comes
//! out different is refused, never written.
//!
//! Memory: the old text, the new text and preflate's predictor for the new
//! text (about 3 bytes per text byte) are held at once, so both texts are
//! capped at [`MAX_TEXT`]; the publisher keeps the texts it uses under its
//! own, smaller budget (256 KiB for an 8 MiB device).

use miniz_oxide::inflate::stream::{inflate, InflateState};
use miniz_oxide::{DataFormat, MZError, MZFlush, MZStatus};

use crate::delta::read_varint;
use crate::error::{Error, Result};

/// The largest text (decompressed gzip member) the device rebuilds or reads
/// back from an old file: 1 MiB, about 4.5 MiB of RSS with the predictor.
pub const MAX_TEXT: u64 = 1 << 20;
/// The largest gzip header kept verbatim (FNAME, FCOMMENT, FEXTRA included).
pub const MAX_HEADER: u64 = 4096;
/// The largest reconstruction record (header, lengths and corrections): the
/// corrections of real gzip -9 files are 0-4 % of the deflate stream.
pub const MAX_RECORD: u64 = 256 << 10;

/// The length of the gzip member header at the start of `data`
/// (RFC 1952: magic, CM 8, flags, optional extra, name, comment, CRC16).
pub fn header_len(data: &[u8]) -> Result<usize> {
    let w = "gzip header";
    if data.len() < 10 || data[0..3] != [0x1f, 0x8b, 8] {
        return Err(Error::malformed(w, "not a deflate gzip member"));
    }
    let flags = data[3];
    if flags & 0xe0 != 0 {
        return Err(Error::malformed(w, "reserved flag bits set"));
    }
    let mut at = 10usize;
    let need = |at: usize| -> Result<()> {
        if at > data.len() || at as u64 > MAX_HEADER {
            return Err(Error::malformed(w, "truncated or too long"));
        }
        Ok(())
    };
    if flags & 0x04 != 0 {
        need(at + 2)?;
        at += 2 + usize::from(u16::from_le_bytes([data[at], data[at + 1]]));
        need(at)?;
    }
    for bit in [0x08u8, 0x10] {
        if flags & bit != 0 {
            let rest = data.get(at..).unwrap_or(&[]);
            let nul = rest
                .iter()
                .position(|b| *b == 0)
                .ok_or(Error::malformed(w, "unterminated name or comment"))?;
            at += nul + 1;
            need(at)?;
        }
    }
    if flags & 0x02 != 0 {
        at += 2;
        need(at)?;
    }
    Ok(at)
}

/// Inflates the raw deflate stream read by `read(offset, buf)` from
/// `start` up to `end` (exclusive) and returns the text of the first member,
/// at most [`MAX_TEXT`] bytes (more is `TooLarge`: a bomb stops here), and
/// the offset just past its deflate stream. `read` fails with the caller's
/// error `E`, handed back as the outer error.
pub fn inflate_member<E>(
    start: u64,
    end: u64,
    mut read: impl FnMut(u64, &mut [u8]) -> std::result::Result<(), E>,
) -> std::result::Result<Result<(Vec<u8>, u64)>, E> {
    let w = "gzip stream";
    let mut state = InflateState::new_boxed(DataFormat::Raw);
    let mut input = vec![0u8; crate::execute::CHUNK];
    let mut out = Vec::new();
    let mut piece = vec![0u8; 32 << 10];
    let mut pos = start;
    let (mut have, mut used) = (0usize, 0usize);
    loop {
        if used == have && pos < end {
            have = (end - pos).min(input.len() as u64) as usize;
            read(pos, &mut input[..have])?;
            pos += have as u64;
            used = 0;
        }
        let r = inflate(&mut state, &input[used..have], &mut piece, MZFlush::None);
        used += r.bytes_consumed;
        if out.len() as u64 + r.bytes_written as u64 > MAX_TEXT {
            return Ok(Err(Error::TooLarge {
                what: "gzip text to rebuild from",
                limit: MAX_TEXT,
            }));
        }
        out.extend_from_slice(&piece[..r.bytes_written]);
        match r.status {
            Ok(MZStatus::StreamEnd) => return Ok(Ok((out, pos - (have - used) as u64))),
            Ok(_) => {}
            Err(MZError::Buf) if r.bytes_written > 0 || r.bytes_consumed > 0 => {}
            Err(_) => return Ok(Err(Error::malformed(w, "corrupt deflate data"))),
        }
        // Input is always available here unless the range is used up, so
        // no progress means the stream ended early: never loop.
        if r.bytes_written == 0 && r.bytes_consumed == 0 {
            return Ok(Err(Error::malformed(w, "truncated deflate data")));
        }
    }
}

/// A parsed reconstruction record: `varint text_len ‖ varint header_len ‖
/// header ‖ corrections` (the corrections run to the record's end).
#[derive(Debug)]
pub struct Record<'a> {
    pub text_len: u64,
    pub header: &'a [u8],
    pub corrections: &'a [u8],
}

impl<'a> Record<'a> {
    pub fn parse(rec: &'a [u8]) -> Result<Self> {
        let w = "gzip rebuild record";
        let (text_len, n) = read_varint(rec)?;
        let rest = &rec[n..];
        let (header_len, m) = read_varint(rest)?;
        if text_len > MAX_TEXT {
            return Err(Error::TooLarge {
                what: "gzip text to rebuild",
                limit: MAX_TEXT,
            });
        }
        if header_len > MAX_HEADER || header_len > (rest.len() - m) as u64 {
            return Err(Error::malformed(w, "header length out of range"));
        }
        let (header, corrections) = rest[m..].split_at(header_len as usize);
        if self::header_len(header)? != header.len() {
            return Err(Error::malformed(w, "header is not exactly one gzip header"));
        }
        Ok(Record {
            text_len,
            header,
            corrections,
        })
    }

    /// Encodes a record (publisher side; the inverse of [`Record::parse`]).
    #[cfg(feature = "encode")]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.header.len() + self.corrections.len() + 8);
        crate::delta::write_varint(&mut out, self.text_len);
        crate::delta::write_varint(&mut out, self.header.len() as u64);
        out.extend_from_slice(self.header);
        out.extend_from_slice(self.corrections);
        out
    }
}

/// The gzip file for `text`: the record's header, the deflate stream
/// preflate rebuilds from the text and the corrections, CRC-32 and length.
pub fn rebuild(rec: &Record<'_>, text: &[u8]) -> Result<Vec<u8>> {
    if text.len() as u64 != rec.text_len {
        return Err(Error::malformed(
            "gzip rebuild",
            "text length differs from the record",
        ));
    }
    let deflate = preflate_rs::recreate_whole_deflate_stream(text, rec.corrections)
        .map_err(|_| Error::malformed("gzip rebuild", "corrections do not fit the text"))?;
    let mut out = Vec::with_capacity(rec.header.len() + deflate.len() + 8);
    out.extend_from_slice(rec.header);
    out.extend_from_slice(&deflate);
    out.extend_from_slice(&crc32fast::hash(text).to_le_bytes());
    out.extend_from_slice(&(text.len() as u32).to_le_bytes());
    Ok(out)
}

/// [`rebuild`] from an encoded record: what every rebuilder (in process,
/// the device's helper, the publisher's check) runs.
pub fn rebuild_encoded(record: &[u8], text: &[u8]) -> Result<Vec<u8>> {
    rebuild(&Record::parse(record)?, text)
}

/// Splits a whole gzip file into its header length and its text, refusing
/// anything but exactly one member whose CRC-32 and length match, with
/// nothing after it: what [`rebuild`] gives back, so what the publisher may
/// offer for rebuilding.
pub fn single_member(data: &[u8]) -> Result<(usize, Vec<u8>)> {
    let w = "gzip file";
    let h = header_len(data)?;
    let (text, end) = match inflate_member(h as u64, data.len() as u64, |off, buf| {
        buf.copy_from_slice(&data[off as usize..off as usize + buf.len()]);
        Ok::<(), std::convert::Infallible>(())
    }) {
        Ok(r) => r?,
        Err(never) => match never {},
    };
    let trailer = &data[end as usize..];
    if trailer.len() != 8 {
        return Err(Error::malformed(
            w,
            "not exactly one member and its trailer",
        ));
    }
    if trailer[..4] != crc32fast::hash(&text).to_le_bytes()
        || trailer[4..] != (text.len() as u32).to_le_bytes()
    {
        return Err(Error::malformed(w, "CRC-32 or length does not match"));
    }
    Ok((h, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gzip_n9(text: &[u8]) -> Vec<u8> {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let mut c = Command::new("gzip")
            .arg("-9n")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(text).unwrap();
        c.wait_with_output().unwrap().stdout
    }

    fn changelog(n: usize) -> Vec<u8> {
        let mut t = Vec::new();
        for i in 0..n {
            t.extend_from_slice(
                format!(
                    "pkg ({i}.0-{}) bookworm; urgency=medium\n\n  * Fix CVE-2024-{:04}: bounds \
                     check in parser {}.\n\n -- Maintainer <m@example.org>  Mon, {} Jan 2024\n\n",
                    i % 7,
                    i * 37 % 10000,
                    i * i % 101,
                    i % 28 + 1
                )
                .as_bytes(),
            );
        }
        t
    }

    #[test]
    fn header_lengths_follow_the_flags() {
        let plain = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 3];
        assert_eq!(header_len(&plain).unwrap(), 10);
        let mut named = plain.to_vec();
        named[3] = 0x08;
        named.extend_from_slice(b"name\0");
        assert_eq!(header_len(&named).unwrap(), 15);
        assert!(header_len(&named[..13]).is_err(), "unterminated name");
        let mut reserved = plain;
        reserved[3] = 0x20;
        assert!(header_len(&reserved).is_err());
        assert!(
            header_len(b"\x1f\x8b\x07\0\0\0\0\0\0\0").is_err(),
            "not deflate"
        );
    }

    #[test]
    fn gnu_gzip_file_is_rebuilt_byte_for_byte() {
        let text = changelog(400);
        let gz = gzip_n9(&text);
        let (h, back) = single_member(&gz).unwrap();
        assert_eq!(back, text);
        let (r, _) = preflate_rs::preflate_whole_deflate_stream(
            &gz[h..gz.len() - 8],
            &preflate_rs::PreflateConfig::default(),
        )
        .unwrap();
        let rec = Record {
            text_len: text.len() as u64,
            header: &gz[..h],
            corrections: &r.corrections,
        }
        .encode();
        let parsed = Record::parse(&rec).unwrap();
        assert_eq!(rebuild(&parsed, &text).unwrap(), gz);
        // A text one byte off rebuilds something else (caught by the
        // object checksum) or fails; it never panics.
        let mut other = text.clone();
        other[100] ^= 1;
        if let Ok(out) = rebuild(&parsed, &other) {
            assert_ne!(out, gz);
        }
    }

    #[test]
    fn records_beyond_the_caps_are_refused() {
        let mut rec = Vec::new();
        crate::delta::write_varint(&mut rec, MAX_TEXT + 1);
        crate::delta::write_varint(&mut rec, 10);
        rec.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 3]);
        assert!(matches!(Record::parse(&rec), Err(Error::TooLarge { .. })));
        let mut rec = Vec::new();
        crate::delta::write_varint(&mut rec, 5);
        crate::delta::write_varint(&mut rec, 11);
        rec.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 3]);
        assert!(
            Record::parse(&rec).is_err(),
            "header longer than the record"
        );
    }

    #[test]
    fn inflate_stops_at_the_text_cap() {
        let bomb = gzip_n9(&vec![0u8; MAX_TEXT as usize + 1]);
        assert!(matches!(single_member(&bomb), Err(Error::TooLarge { .. })));
        let gz = gzip_n9(b"hello hello hello\n");
        assert!(single_member(&gz[..gz.len() - 12]).is_err(), "truncated");
    }

    fn content_id(data: &[u8]) -> crate::ObjectId {
        use sha2::Digest;
        let h = crate::object::FileHeader {
            uid: 0,
            gid: 0,
            mode: 0o100644,
            symlink: "",
            xattrs: crate::object::Xattrs::EMPTY,
        };
        let mut s = h.content_hasher();
        s.update(data);
        crate::object::finish_id(s)
    }

    fn record_for(gz: &[u8]) -> Vec<u8> {
        let (h, text) = single_member(gz).unwrap();
        let (r, _) = preflate_rs::preflate_whole_deflate_stream(
            &gz[h..gz.len() - 8],
            &preflate_rs::PreflateConfig::default(),
        )
        .unwrap();
        Record {
            text_len: text.len() as u64,
            header: &gz[..h],
            corrections: &r.corrections,
        }
        .encode()
    }

    /// Runs one part making `new_gz` with a `G` op over `record` and
    /// `data` (text, or a patch when `old_gz` is the read source).
    fn run_g(
        new_gz: &[u8],
        old_gz: Option<&[u8]>,
        record: &[u8],
        data: &[u8],
    ) -> (
        Result<(), crate::execute::PartError<std::io::Error>>,
        Vec<Vec<u8>>,
    ) {
        use crate::delta::write_varint;
        let mut blob = Vec::new();
        let mut ops = Vec::new();
        if let Some(old) = old_gz {
            blob.extend_from_slice(&content_id(old).0);
            ops.extend_from_slice(&[b'r', 0]);
        }
        let rec_at = blob.len() as u64;
        blob.extend_from_slice(record);
        let data_at = blob.len() as u64;
        blob.extend_from_slice(data);
        ops.extend_from_slice(&[b'o', 0, 0]);
        write_varint(&mut ops, new_gz.len() as u64);
        ops.push(crate::delta::OP_GZIP_REBUILD);
        for v in [rec_at, record.len() as u64, data_at, data.len() as u64] {
            write_varint(&mut ops, v);
        }
        ops.push(b'c');
        if old_gz.is_some() {
            ops.push(b'R');
        }
        let mut objects = vec![1u8];
        objects.extend_from_slice(&content_id(new_gz).0);
        let mut modes = Vec::new();
        for v in [0u32, 0, 0o100644] {
            modes.extend_from_slice(&v.to_be_bytes());
        }
        let mut sink = crate::execute::MemorySink::new(&blob);
        if let Some(old) = old_gz {
            sink.old.push((content_id(old), old.to_vec()));
        }
        let r = crate::execute::execute_part(
            &mut sink,
            &objects,
            &modes,
            &[0],
            blob.len() as u64,
            &ops,
        )
        .map(|_| ());
        (r, sink.content.into_iter().map(|c| c.2).collect())
    }

    #[test]
    fn g_op_rebuilds_a_new_gzip_file_from_its_text() {
        let text = changelog(300);
        let gz = gzip_n9(&text);
        let (r, out) = run_g(&gz, None, &record_for(&gz), &text);
        r.unwrap();
        assert_eq!(out, vec![gz]);
    }

    #[test]
    fn g_op_rebuilds_a_changed_gzip_file_from_a_patch_of_the_old_text() {
        let old_text = changelog(300);
        let mut new_text = b"pkg (9.9-1) bookworm-security; urgency=high\n\n  * Fix.\n\n".to_vec();
        new_text.extend_from_slice(&old_text);
        let (old_gz, new_gz) = (gzip_n9(&old_text), gzip_n9(&new_text));
        let mut patch = Vec::new();
        bsdiff::diff(&old_text, &new_text, &mut patch).unwrap();
        let (r, out) = run_g(&new_gz, Some(&old_gz), &record_for(&new_gz), &patch);
        r.unwrap();
        assert_eq!(out, vec![new_gz]);
    }

    #[test]
    fn g_op_never_keeps_a_wrong_file_from_damaged_corrections_or_text() {
        let text = changelog(300);
        let gz = gzip_n9(&text);
        let good = record_for(&gz);
        // A damaged record either fails or, where the byte was slack in
        // the coder's stream, still rebuilds the right file: the object
        // checksum is what guarantees no wrong byte is ever kept.
        let mut refused = 0;
        for flip in (14..good.len()).step_by(7) {
            let mut bad = good.clone();
            bad[flip] ^= 0x55;
            let (r, out) = run_g(&gz, None, &bad, &text);
            match r {
                Ok(()) => assert_eq!(out, vec![gz.clone()]),
                Err(_) => {
                    assert!(out.is_empty());
                    refused += 1;
                }
            }
        }
        assert!(refused > 0);
        let mut wrong_text = text.clone();
        wrong_text[10] ^= 1;
        let (r, out) = run_g(&gz, None, &good, &wrong_text);
        assert!(r.is_err());
        assert!(out.is_empty());
    }

    #[test]
    fn g_op_refuses_texts_over_the_cap_and_bad_framing() {
        let gz = gzip_n9(b"tiny text\n");
        let mut rec = Vec::new();
        crate::delta::write_varint(&mut rec, MAX_TEXT + 1);
        crate::delta::write_varint(&mut rec, 10);
        rec.extend_from_slice(&gz[..10]);
        let (r, _) = run_g(&gz, None, &rec, b"tiny text\n");
        let e = r.unwrap_err().to_string();
        assert!(e.contains("exceeds its limit"), "{e}");
        // The text's length must be the record's.
        let (r, _) = run_g(&gz, None, &record_for(&gz), b"tiny tex");
        assert!(r.is_err());
        // An old file that is not gzip is no base.
        let (r, _) = run_g(
            &gz,
            Some(b"plain old file, not gzip"),
            &record_for(&gz),
            b"x",
        );
        assert!(r.is_err());
    }
}
