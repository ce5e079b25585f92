//! The `.xz` container, written by hand around liblzma's raw encoder, so one
//! part can hold several **blocks**, each with its own filter chain: machine
//! code behind xz's ARM64 (or x86) BCJ filter with 4-byte-aligned LZMA2
//! settings, strings with text settings, tables with 8-byte-record settings.
//! A single xz stream with many blocks is plain xz: every decoder reads it
//! (upstream's liblzma 5.4 in `ostree static-delta apply-offline`, the
//! device's liblzma 5.8, `xz -d`). Blocks are independent, so they are also
//! the unit of parallel compression.
//!
//! Layout (xz file format 1.2.1): stream header (magic, flags = CRC64,
//! CRC32), blocks (header with filter flags and both sizes, LZMA2 data,
//! padding to 4, CRC64 of the block's uncompressed bytes), index (one
//! record per block), stream footer.
//!
//! [`dict_need`] reads any part file's block headers back (via the index,
//! so it works for upstream's single-block parts too) and returns the
//! largest LZMA2 dictionary a decoder must allocate: what a device needs.

use std::io::Write;

/// Filter IDs of the xz format.
const FILTER_DELTA: u64 = 0x03;
const FILTER_X86: u64 = 0x04;
const FILTER_ARM64: u64 = 0x0A;
const FILTER_LZMA2: u64 = 0x21;
const MAGIC: [u8; 6] = [0xFD, b'7', b'z', b'X', b'Z', 0];
const FOOTER_MAGIC: [u8; 2] = [b'Y', b'Z'];
/// Stream flags: check type CRC64 (what upstream's generator writes).
const FLAGS: [u8; 2] = [0, 0x04];
const CHECK_LEN: usize = 8;

/// Branch/call filter in front of LZMA2 for machine code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Bcj {
    None,
    Arm64,
    X86,
}

/// One block's compression settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlockFilter {
    pub bcj: Bcj,
    /// xz's delta filter distance in front of LZMA2 (0 = none): for
    /// tables of fixed-size records whose fields grow from record to record
    /// (relocation offsets, sorted lookup tables). Not combined with a BCJ.
    pub delta: u8,
    /// LZMA2 dictionary (already an encodable size, see [`encodable_dict`]).
    pub dict: u32,
    pub lc: u32,
    pub lp: u32,
    pub pb: u32,
    /// Preset level 0-9 for the match finder and modes.
    pub preset: u32,
    pub extreme: bool,
    /// LZMA2 "nice length" override (0 = the preset's): longer finds the
    /// long runs of patches, at little cost elsewhere.
    pub nice: u32,
}

/// The LZMA2 properties byte for a dictionary size: the smallest code whose
/// size is at least `dict` (sizes are 2^n or 3 * 2^(n-1), 4 KiB .. 4 GiB).
fn dict_code(dict: u32) -> u8 {
    (0u8..40).find(|&b| dict_of_code(b) >= dict).unwrap_or(40)
}

fn dict_of_code(b: u8) -> u32 {
    if b >= 40 {
        return u32::MAX;
    }
    (2 | u32::from(b & 1)) << (b / 2 + 11)
}

/// The dictionary a decoder actually allocates for a requested size.
pub fn encodable_dict(dict: u32) -> u32 {
    dict_of_code(dict_code(dict.max(4096)))
}

/// The largest encodable dictionary not above `cap` (at least 4 KiB).
pub fn encodable_dict_at_most(cap: u32) -> u32 {
    (0u8..40)
        .rev()
        .map(dict_of_code)
        .find(|&d| d <= cap)
        .unwrap_or(4096)
}

/// xz's variable-length integer (7 bits per byte, little-endian).
fn put_vli(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_vli(data: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for i in 0..9 {
        let b = *data.get(*pos)?;
        *pos += 1;
        v |= u64::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            // A multi-byte integer may not end in a zero byte (xz spec 1.2).
            if i > 0 && b == 0 {
                return None;
            }
            return Some(v);
        }
    }
    None
}

/// CRC64 as xz uses it (ECMA-182, reflected), table-driven.
fn crc64(data: &[u8]) -> u64 {
    static TABLE: std::sync::OnceLock<[u64; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u64; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u64;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xC96C_5795_D787_0F42 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *e = c;
        }
        t
    });
    let mut crc = !0u64;
    for &b in data {
        crc = table[((crc ^ u64::from(b)) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

/// One compressed block, ready to be placed in a stream.
#[derive(Clone, Debug)]
pub struct Block {
    /// Block header + LZMA2 data + padding + CRC64.
    pub bytes: Vec<u8>,
    /// Header + data + check, without padding (the index's "unpadded size").
    pub unpadded: u64,
    pub uncompressed: u64,
    pub dict: u32,
}

fn lzma_options(f: &BlockFilter) -> std::io::Result<liblzma::stream::LzmaOptions> {
    let preset = f.preset.min(9)
        | if f.extreme {
            liblzma::stream::PRESET_EXTREME
        } else {
            0
        };
    let mut o = liblzma::stream::LzmaOptions::new_preset(preset).map_err(std::io::Error::other)?;
    if f.nice > 0 {
        o.nice_len(f.nice.clamp(2, 273));
    }
    o.dict_size(f.dict)
        .literal_context_bits(f.lc)
        .literal_position_bits(f.lp)
        .position_bits(f.pb);
    Ok(o)
}

/// Compresses `data` into one block with the filter chain `f`.
pub fn compress_block(data: &[u8], f: &BlockFilter) -> std::io::Result<Block> {
    let opts = lzma_options(f)?;
    let mut filters = liblzma::stream::Filters::new();
    let delta = f.delta > 0 && f.bcj == Bcj::None;
    if delta {
        filters
            .delta_properties(&[f.delta - 1])
            .map_err(std::io::Error::other)?;
    }
    match f.bcj {
        Bcj::None => {}
        Bcj::Arm64 => {
            filters.arm64();
        }
        Bcj::X86 => {
            filters.x86();
        }
    }
    filters.lzma2(&opts);
    let stream =
        liblzma::stream::Stream::new_raw_encoder(&filters).map_err(std::io::Error::other)?;
    let mut enc =
        liblzma::write::XzEncoder::new_stream(Vec::with_capacity(data.len() / 3 + 64), stream);
    enc.write_all(data)?;
    let raw = enc.finish()?;

    let mut h = vec![0u8, 0u8];
    let n_filters = if f.bcj == Bcj::None && !delta { 1 } else { 2 };
    // Flags: filter count - 1, compressed size present (0x40), uncompressed (0x80).
    h[1] = (n_filters - 1) | 0x40 | 0x80;
    put_vli(&mut h, raw.len() as u64);
    put_vli(&mut h, data.len() as u64);
    if delta {
        put_vli(&mut h, FILTER_DELTA);
        put_vli(&mut h, 1);
        h.push(f.delta - 1);
    }
    match f.bcj {
        Bcj::None => {}
        Bcj::Arm64 => {
            put_vli(&mut h, FILTER_ARM64);
            put_vli(&mut h, 0);
        }
        Bcj::X86 => {
            put_vli(&mut h, FILTER_X86);
            put_vli(&mut h, 0);
        }
    }
    put_vli(&mut h, FILTER_LZMA2);
    put_vli(&mut h, 1);
    h.push(dict_code(f.dict));
    while (h.len() + 4) % 4 != 0 {
        h.push(0);
    }
    h[0] = ((h.len() + 4) / 4 - 1) as u8;
    let c = crc32(&h);
    h.extend_from_slice(&c.to_le_bytes());

    let unpadded = (h.len() + raw.len() + CHECK_LEN) as u64;
    let mut bytes = h;
    bytes.extend_from_slice(&raw);
    while bytes.len() % 4 != 0 {
        bytes.push(0);
    }
    bytes.extend_from_slice(&crc64(data).to_le_bytes());
    Ok(Block {
        bytes,
        unpadded,
        uncompressed: data.len() as u64,
        dict: dict_of_code(dict_code(f.dict)),
    })
}

/// Joins blocks into one `.xz` stream (header, blocks, index, footer).
pub fn stream(blocks: &[Block]) -> Vec<u8> {
    let total: usize = blocks.iter().map(|b| b.bytes.len()).sum();
    let mut out = Vec::with_capacity(total + 64 + blocks.len() * 8);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FLAGS);
    out.extend_from_slice(&crc32(&FLAGS).to_le_bytes());
    for b in blocks {
        out.extend_from_slice(&b.bytes);
    }
    let mut index = vec![0u8];
    put_vli(&mut index, blocks.len() as u64);
    for b in blocks {
        put_vli(&mut index, b.unpadded);
        put_vli(&mut index, b.uncompressed);
    }
    while index.len() % 4 != 0 {
        index.push(0);
    }
    let c = crc32(&index);
    index.extend_from_slice(&c.to_le_bytes());
    let backward = (index.len() / 4 - 1) as u32;
    out.extend_from_slice(&index);
    let mut tail = backward.to_le_bytes().to_vec();
    tail.extend_from_slice(&FLAGS);
    out.extend_from_slice(&crc32(&tail).to_le_bytes());
    out.extend_from_slice(&tail);
    out.extend_from_slice(&FOOTER_MAGIC);
    out
}

/// Why a part's xz stream could not be inspected.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a well-formed xz stream: {0}")]
pub struct Malformed(&'static str);

/// What decoding one xz stream needs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamNeeds {
    pub blocks: usize,
    /// Largest LZMA2 dictionary of any block: the decoder's window.
    pub max_dict: u32,
    /// Whether any block has a BCJ filter (needs liblzma >= 5.4 for ARM64).
    pub bcj: bool,
}

/// Reads the block headers of one xz stream (`data` = the whole stream, e.g.
/// a part file without its compression byte) through its index, so it
/// works whether or not the headers record sizes.
pub fn dict_need(data: &[u8]) -> Result<StreamNeeds, Malformed> {
    let bad = Malformed;
    if data.len() < 32 || data[..6] != MAGIC {
        return Err(bad("no xz magic"));
    }
    let footer = &data[data.len() - 12..];
    if footer[10..] != FOOTER_MAGIC {
        return Err(bad("no footer magic"));
    }
    let backward = u32::from_le_bytes([footer[4], footer[5], footer[6], footer[7]]);
    let index_len = (u64::from(backward) + 1) * 4;
    let index_start = (data.len() as u64 - 12)
        .checked_sub(index_len)
        .ok_or(bad("index larger than the stream"))? as usize;
    let index = &data[index_start..data.len() - 12];
    if index.first() != Some(&0) {
        return Err(bad("no index indicator"));
    }
    let mut pos = 1;
    let count = get_vli(index, &mut pos).ok_or(bad("index count"))?;
    let mut needs = StreamNeeds::default();
    let mut block_pos = 12usize;
    for _ in 0..count {
        let unpadded = get_vli(index, &mut pos).ok_or(bad("index record"))?;
        get_vli(index, &mut pos).ok_or(bad("index record"))?;
        let hsize = usize::from(*data.get(block_pos).ok_or(bad("block past the end"))?);
        let hlen = (hsize + 1) * 4;
        let header = data
            .get(block_pos..block_pos + hlen)
            .ok_or(bad("block header past the end"))?;
        let (dict, bcj) = block_header_dict(header).ok_or(bad("block header"))?;
        needs.blocks += 1;
        needs.max_dict = needs.max_dict.max(dict);
        needs.bcj |= bcj;
        let padded = unpadded.div_ceil(4) * 4;
        block_pos = block_pos
            .checked_add(usize::try_from(padded).map_err(|_| bad("block size"))?)
            .filter(|&p| p <= index_start)
            .ok_or(bad("blocks overrun the index"))?;
    }
    if block_pos != index_start {
        return Err(bad("index does not account for every block"));
    }
    Ok(needs)
}

/// The LZMA2 dictionary and whether a BCJ filter is present, from a block header.
fn block_header_dict(h: &[u8]) -> Option<(u32, bool)> {
    let (body, crc) = h.split_at(h.len().checked_sub(4)?);
    if crc32(body).to_le_bytes() != crc {
        return None;
    }
    let flags = *body.get(1)?;
    let n_filters = usize::from(flags & 3) + 1;
    let mut pos = 2;
    if flags & 0x40 != 0 {
        get_vli(body, &mut pos)?;
    }
    if flags & 0x80 != 0 {
        get_vli(body, &mut pos)?;
    }
    let mut bcj = false;
    let mut dict = None;
    for _ in 0..n_filters {
        let id = get_vli(body, &mut pos)?;
        let plen = usize::try_from(get_vli(body, &mut pos)?).ok()?;
        let props = body.get(pos..pos + plen)?;
        pos += plen;
        match id {
            FILTER_LZMA2 => dict = Some(dict_of_code(*props.first()? & 0x3F)),
            0x04..=0x0B => bcj = true,
            _ => {}
        }
    }
    Some((dict?, bcj))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(xz: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        atomup_ostree::xz::decompress(atomup_ostree::delta::Compression::Xz, xz, &mut out, 1 << 30)
            .unwrap();
        out
    }

    fn filter(bcj: Bcj, dict: u32) -> BlockFilter {
        BlockFilter {
            bcj,
            delta: 0,
            dict,
            lc: 1,
            lp: 2,
            pb: 2,
            preset: 6,
            extreme: false,
            nice: 0,
        }
    }

    /// Dictionary codes round to the sizes an LZMA2 header can express.
    #[test]
    fn dictionary_codes_round_up_and_down() {
        assert_eq!(encodable_dict(1), 4096);
        assert_eq!(encodable_dict(3 << 20), 3 << 20);
        assert_eq!(encodable_dict((3 << 20) + 1), 4 << 20);
        assert_eq!(encodable_dict_at_most((3 << 20) + 5), 3 << 20);
        assert_eq!(encodable_dict_at_most(11 << 20), 8 << 20);
        assert_eq!(encodable_dict_at_most(100), 4096);
    }

    /// A stream of blocks with different filter chains (ARM64 BCJ, x86 BCJ,
    /// delta, none) decodes with the device's liblzma decoder to the concatenation
    /// of the inputs, CRC64 included (checked by the test's own decoder).
    #[test]
    fn multi_block_stream_with_mixed_filters_decodes() {
        let code: Vec<u8> = (0u32..20_000)
            .flat_map(|i| (0x9400_0000u32 | (i * 7 % 5000)).to_le_bytes())
            .collect();
        let text = b"the quick brown fox jumps over the lazy dog\n".repeat(500);
        let blocks = vec![
            compress_block(&text, &filter(Bcj::None, 1 << 16)).unwrap(),
            compress_block(&code, &filter(Bcj::Arm64, 1 << 20)).unwrap(),
            compress_block(&code, &filter(Bcj::X86, 3 << 19)).unwrap(),
            compress_block(&[], &filter(Bcj::None, 4096)).unwrap(),
            compress_block(
                &code,
                &BlockFilter {
                    delta: 24,
                    ..filter(Bcj::None, 1 << 16)
                },
            )
            .unwrap(),
        ];
        let xz = stream(&blocks);
        let mut want = text.clone();
        want.extend_from_slice(&code);
        want.extend_from_slice(&code);
        want.extend_from_slice(&code);
        assert_eq!(decode(&xz), want);
        // The CRC64 is right: a checking decoder accepts the stream too.
        let mut dec = liblzma::read::XzDecoder::new(&xz[..]);
        let mut checked = Vec::new();
        std::io::Read::read_to_end(&mut dec, &mut checked).unwrap();
        assert_eq!(checked, want);
        let needs = dict_need(&xz).unwrap();
        assert_eq!(
            needs,
            StreamNeeds {
                blocks: 5,
                max_dict: 3 << 19,
                bcj: true
            }
        );
    }

    /// The inspector reads liblzma's own single-block streams (no sizes in
    /// the block header, as upstream's generator writes them).
    #[test]
    fn dict_need_reads_liblzma_streams() {
        let mut opts = liblzma::stream::LzmaOptions::new_preset(6).unwrap();
        opts.dict_size(3 << 20);
        let mut f = liblzma::stream::Filters::new();
        f.lzma2(&opts);
        let s =
            liblzma::stream::Stream::new_stream_encoder(&f, liblzma::stream::Check::Crc64).unwrap();
        let mut enc = liblzma::write::XzEncoder::new_stream(Vec::new(), s);
        enc.write_all(&[7u8; 100_000]).unwrap();
        let xz = enc.finish().unwrap();
        let n = dict_need(&xz).unwrap();
        assert_eq!((n.blocks, n.max_dict, n.bcj), (1, 3 << 20, false));
    }

    /// Truncated or corrupted streams are refused, never mis-read or panicking.
    #[test]
    fn dict_need_refuses_damaged_streams() {
        let b = compress_block(b"abc", &filter(Bcj::None, 4096)).unwrap();
        let xz = stream(&[b]);
        for cut in 0..xz.len() {
            assert!(dict_need(&xz[..cut]).is_err(), "cut at {cut}");
        }
        for i in 0..xz.len() {
            let mut bad = xz.clone();
            bad[i] ^= 0x55;
            // Either refused or, if the flip hit ignored padding, the same answer.
            if let Ok(n) = dict_need(&bad) {
                assert_eq!(n.max_dict, 4096, "flip at {i}");
            }
        }
    }

    /// The CRC64 matches xz's published check value for "123456789".
    #[test]
    fn crc64_known_answer() {
        assert_eq!(crc64(b"123456789"), 0x995D_C9BB_DF19_39FA);
    }
}
