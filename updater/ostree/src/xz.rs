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
        // liblzma reports corrupt or truncated data as InvalidData/UnexpectedEof
        // (or a wrapped lzma error); everything else is a real I/O failure.
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::InvalidData
                    | std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::Other
            ) =>
        {
            Err(Error::malformed(
                "xz part",
                "corrupt or truncated xz stream",
            ))
        }
        Err(source) => Err(Error::Io {
            what: "decompressing a part",
            source,
        }),
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
