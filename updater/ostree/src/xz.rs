//! Part decompression with a hard output cap. liblzma (the `liblzma` crate:
//! xz 5.8 built from source and linked statically) streams from a reader into a writer with a
//! fixed-size dictionary window: the device never holds a compressed or
//! decompressed part in memory, and a part that inflates beyond what its
//! superblock declared is a decompression bomb, stopped at the cap as the
//! bytes come out (not after the fact).

use std::io::{BufRead, Write};

use crate::delta::Compression;
use crate::error::{Error, Result};

struct Capped<W> {
    inner: W,
    written: u64,
    limit: u64,
    over: bool,
}

impl<W: Write> Write for Capped<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.written + buf.len() as u64 > self.limit {
            self.over = true;
            return Err(std::io::Error::other("decompressed size limit exceeded"));
        }
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Memory the xz decoder may use. Upstream's generator uses a 32 MiB
/// dictionary; anything asking for more than this is refused rather than
/// allowed to exhaust a small device.
pub const XZ_MEMLIMIT: u64 = 64 << 20;

/// Decompresses a part payload into `out`, refusing more than `limit` bytes.
/// Returns the decompressed size. The input must already be verified (the
/// part's sha256 from the superblock): the xz stream's own CRC64 is skipped.
pub fn decompress<R: BufRead, W: Write>(
    compression: Compression,
    input: R,
    out: W,
    limit: u64,
) -> Result<u64> {
    let mut capped = Capped {
        inner: out,
        written: 0,
        limit,
        over: false,
    };
    let res = match compression {
        Compression::None => {
            let mut input = input;
            std::io::copy(&mut input, &mut capped)
        }
        Compression::Xz => {
            // The xz check (CRC64) is not verified: every part's sha256 was
            // checked against the signed superblock before it got here, and
            // each object coming out is checked by its own checksum.
            let stream = liblzma::stream::Stream::new_stream_decoder(
                XZ_MEMLIMIT,
                liblzma::stream::IGNORE_CHECK,
            )
            .map_err(|_| Error::malformed("xz part", "cannot set up the decoder"))?;
            let mut dec = liblzma::bufread::XzDecoder::new_stream(input, stream);
            std::io::copy(&mut dec, &mut capped)
        }
    };
    if capped.over {
        return Err(Error::TooLarge {
            what: "decompressed part",
            limit,
        });
    }
    match res {
        Ok(_) => {
            capped.flush().map_err(|source| Error::Io {
                what: "writing the decompressed part",
                source,
            })?;
            Ok(capped.written)
        }
        Err(e) => Err(decode_error(e)),
    }
}

/// What a failed decode means. liblzma's own errors come wrapped in an
/// `io::Error`: a stream that needs more memory than [`XZ_MEMLIMIT`] (a
/// dictionary larger than the limit) says so, instead of passing for a
/// corrupt one; a cut stream is "truncated"; anything else from the decoder
/// is corrupt data; an error of the writer is I/O.
fn decode_error(e: std::io::Error) -> Error {
    use liblzma::stream::Error as Lzma;
    match e.get_ref().and_then(|i| i.downcast_ref::<Lzma>()) {
        Some(Lzma::MemLimit) => Error::TooLarge {
            what: "xz decoder memory the part's stream needs (its dictionary)",
            limit: XZ_MEMLIMIT,
        },
        Some(Lzma::Mem) => Error::Io {
            what: "decompressing a part (out of memory)",
            source: e,
        },
        Some(_) => Error::malformed("xz part", "corrupt xz stream"),
        None if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            Error::malformed("xz part", "truncated xz stream")
        }
        None if e.kind() == std::io::ErrorKind::InvalidData => {
            Error::malformed("xz part", "corrupt xz stream")
        }
        None => Error::Io {
            what: "decompressing a part",
            source: e,
        },
    }
}

/// The decompressed-size cap for a part: its declared object bytes plus room
/// for the payload's tables, ops and bsdiff control data. A generator that
/// lies about `usize` by more than this is refused.
pub fn payload_limit(declared_usize: u64, compressed_size: u64) -> u64 {
    declared_usize
        .saturating_mul(2)
        .saturating_add(compressed_size)
        .saturating_add(1 << 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The known-answer part decompresses to the known payload; a small cap stops it.
    #[test]
    fn tiny_part_and_bomb_cap() {
        let part = include_bytes!("../tests/data/ostree-tiny/0");
        let payload = include_bytes!("../tests/data/ostree-tiny/payload.bin");
        let (c, data) = crate::delta::part_header(part).unwrap();
        assert_eq!(c, Compression::Xz);
        let mut out = Vec::new();
        assert_eq!(
            decompress(c, data, &mut out, 1 << 20).unwrap(),
            payload.len() as u64
        );
        assert_eq!(out, payload);
        let err = decompress(c, data, Vec::new(), 10).unwrap_err();
        assert!(matches!(err, Error::TooLarge { .. }), "{err}");
        assert!(decompress(c, &data[..data.len() / 2], Vec::new(), 1 << 20).is_err());
        assert!(decompress(Compression::None, &b"abc"[..], Vec::new(), 2).is_err());
    }

    /// CRC32 (IEEE), for re-sealing an edited xz block header.
    fn crc32(data: &[u8]) -> u32 {
        let mut c = !0u32;
        for b in data {
            c ^= u32::from(*b);
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0xEDB8_8320
                } else {
                    c >> 1
                };
            }
        }
        !c
    }

    /// A stream whose dictionary needs more decoder memory than the limit is
    /// refused as exactly that, not as "corrupt or truncated". (Made by
    /// raising the LZMA2 dictionary size in a real block header to 96 MiB
    /// and re-sealing the header's CRC32.)
    #[test]
    fn stream_beyond_the_memory_limit_says_so() {
        use std::io::Write as _;
        let mut enc = liblzma::write::XzEncoder::new(Vec::new(), 0);
        enc.write_all(b"a small payload").unwrap();
        let mut xz = enc.finish().unwrap();
        // Stream header (12 bytes), then the block header: its size byte,
        // flags, filter id 0x21 (LZMA2), properties size 1, the dictionary
        // byte, padding, CRC32.
        let start = 12;
        let size = (usize::from(xz[start]) + 1) * 4;
        let header = &mut xz[start..start + size];
        let lzma2 = header
            .windows(2)
            .position(|w| w == [0x21, 0x01])
            .expect("LZMA2 filter flags");
        header[lzma2 + 2] = 29; // (2 | 1) << (29 / 2 + 11) = 96 MiB
        let crc = crc32(&header[..size - 4]);
        header[size - 4..].copy_from_slice(&crc.to_le_bytes());
        let err = decompress(Compression::Xz, &xz[..], std::io::sink(), 1 << 20).unwrap_err();
        assert!(
            matches!(err, Error::TooLarge { limit, .. } if limit == XZ_MEMLIMIT),
            "{err}"
        );
        assert!(err.to_string().contains("xz decoder memory"), "{err}");
        // The same stream cut short is truncated, and a flipped payload byte
        // corrupt, as before.
        let mut enc = liblzma::write::XzEncoder::new(Vec::new(), 0);
        enc.write_all(&[7u8; 4096]).unwrap();
        let good = enc.finish().unwrap();
        let cut = decompress(
            Compression::Xz,
            &good[..good.len() / 2],
            std::io::sink(),
            1 << 20,
        );
        assert!(cut.unwrap_err().to_string().contains("xz stream"));
    }

    /// A real bomb (32 MiB of zeros in a few kilobytes of xz) is
    /// stopped at the cap while streaming, without buffering the output.
    #[test]
    fn bomb_is_stopped_while_streaming() {
        use std::io::Write as _;
        let mut enc = liblzma::write::XzEncoder::new(Vec::new(), 1);
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..32 {
            enc.write_all(&zeros).unwrap();
        }
        let xz = enc.finish().unwrap();
        assert!(xz.len() < 64 << 10);
        let err = decompress(Compression::Xz, &xz[..], std::io::sink(), 1 << 20).unwrap_err();
        assert!(
            matches!(err, Error::TooLarge { limit, .. } if limit == 1 << 20),
            "{err}"
        );
    }
}
