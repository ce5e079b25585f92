//! Part decompression with a hard output cap. Pure Rust (`lzma-rs`), streaming
//! from a reader into a writer: the device never holds a compressed or
//! decompressed part in memory, and a part that inflates beyond what its
//! superblock declared is a decompression bomb and is stopped at the cap.

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

/// Decompresses a part payload into `out`, refusing more than `limit` bytes.
/// Returns the decompressed size.
pub fn decompress<R: BufRead, W: Write>(
    compression: Compression,
    mut input: R,
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
        Compression::None => std::io::copy(&mut input, &mut capped)
            .map(|_| ())
            .map_err(Some),
        Compression::Xz => lzma_rs::xz_decompress(&mut input, &mut capped).map_err(|e| match e {
            lzma_rs::error::Error::IoError(e) => Some(e),
            _ => None,
        }),
    };
    if capped.over {
        return Err(Error::TooLarge {
            what: "decompressed part",
            limit,
        });
    }
    match res {
        Ok(()) => {
            capped.flush().map_err(|source| Error::Io {
                what: "writing the decompressed part",
                source,
            })?;
            Ok(capped.written)
        }
        Err(Some(source)) => Err(Error::Io {
            what: "decompressing a part",
            source,
        }),
        Err(None) => Err(Error::malformed("xz part", "corrupt xz stream")),
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
}
