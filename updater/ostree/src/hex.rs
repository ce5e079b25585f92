//! Lower-case hex: the one text form of ids, digests and signatures across
//! the workspace (object ids, release metadata, agent records, download
//! cache names). Encoding always writes lower case; [`decode_lower`] is the
//! canonical reading (upper case refused), [`decode`] accepts either case.

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// `bytes` as lower-case hex.
pub fn encode(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

fn digit(c: u8, upper: bool) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' if upper => Some(c - b'A' + 10),
        _ => None,
    }
}

fn decode_with(s: &str, out: &mut [u8], upper: bool) -> Option<()> {
    let b = s.as_bytes();
    if b.len() != out.len() * 2 {
        return None;
    }
    for (o, pair) in out.iter_mut().zip(b.chunks_exact(2)) {
        *o = (digit(pair[0], upper)? << 4) | digit(pair[1], upper)?;
    }
    Some(())
}

/// Exactly `out.len()` bytes from lower-case hex; anything else is `None`.
pub fn decode_lower(s: &str, out: &mut [u8]) -> Option<()> {
    decode_with(s, out, false)
}

/// Exactly `out.len()` bytes from hex of either case.
pub fn decode(s: &str, out: &mut [u8]) -> Option<()> {
    decode_with(s, out, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encoding round-trips; the canonical reading refuses upper case and
    /// any wrong length or digit.
    #[test]
    fn hex_round_trips_and_refuses_non_canonical_text() {
        let bytes = [0x00, 0x0f, 0xa5, 0xff];
        assert_eq!(encode(&bytes), "000fa5ff");
        let mut out = [0u8; 4];
        assert_eq!(decode_lower("000fa5ff", &mut out), Some(()));
        assert_eq!(out, bytes);
        assert_eq!(decode_lower("000FA5FF", &mut out), None);
        assert_eq!(decode("000FA5FF", &mut out), Some(()));
        for bad in ["000fa5f", "000fa5ff0", "000fa5fg", "+00fa5ff"] {
            assert_eq!(decode(bad, &mut out), None, "{bad}");
        }
    }
}
