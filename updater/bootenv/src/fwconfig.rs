//! `/etc/fw_env.config`, read the way libubootenv reads it, so that a board's
//! existing config describes where our env copies are without translation.
//!
//! libubootenv's rules (its `sscanf("%ms %lli %zx %zx %lx %d")`), mirrored:
//! a line starting with `#` is a comment (also when indented: the one
//! deliberate difference, found by fuzzing); a line whose first three fields do
//! not parse (blank lines included) is ignored; the offset takes C integer
//! syntax (`0x` hex, leading `0` octal, else decimal); the size, erase size and
//! sector count are ALWAYS hexadecimal, with or without `0x`; anything after a
//! field that does not parse is ignored (trailing comments); the first two
//! device lines count, and two lines mean a redundant env.

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("fw_env.config is not UTF-8")]
    NotUtf8,
    #[error("fw_env.config names no env device")]
    NoDevice,
    #[error("fw_env.config line {line}: env size is zero")]
    ZeroSize { line: usize },
    #[error("fw_env.config line {line}: negative offset")]
    NegativeOffset { line: usize },
    #[error("fw_env.config: the two copies have different sizes ({0:#x} and {1:#x})")]
    SizeMismatch(u64, u64),
}

/// One env copy's location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvDevice {
    pub path: String,
    pub offset: u64,
    pub size: u64,
    pub erase_size: Option<u64>,
    pub sectors: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FwEnvConfig {
    /// One device (single copy) or two (redundant).
    pub devices: Vec<EnvDevice>,
}

impl FwEnvConfig {
    pub fn redundant(&self) -> bool {
        self.devices.len() == 2
    }

    /// Parses the config text; fuzz entry point.
    pub fn parse(bytes: &[u8]) -> Result<FwEnvConfig, ConfigError> {
        let text = std::str::from_utf8(bytes).map_err(|_| ConfigError::NotUtf8)?;
        let mut devices: Vec<EnvDevice> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let lineno = i + 1;
            if line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_ascii_whitespace();
            let Some(path) = fields.next() else { continue };
            // libubootenv would take an indented `#word` as a device name; no
            // real device is named so, and a person reads it as a comment.
            if path.starts_with('#') {
                continue;
            }
            let Some(offset) = fields.next().and_then(parse_c_int) else {
                continue;
            };
            let Some(size) = fields.next().and_then(parse_hex) else {
                continue;
            };
            if offset < 0 {
                return Err(ConfigError::NegativeOffset { line: lineno });
            }
            if size == 0 {
                return Err(ConfigError::ZeroSize { line: lineno });
            }
            let erase_size = fields.next().and_then(parse_hex);
            let sectors = erase_size.and_then(|_| fields.next().and_then(parse_hex));
            devices.push(EnvDevice {
                path: path.to_owned(),
                offset: offset.unsigned_abs(),
                size,
                erase_size,
                sectors,
            });
            if devices.len() == 2 {
                break;
            }
        }
        match devices.as_slice() {
            [] => Err(ConfigError::NoDevice),
            [a, b] if a.size != b.size => Err(ConfigError::SizeMismatch(a.size, b.size)),
            _ => Ok(FwEnvConfig { devices }),
        }
    }

    /// Text a libubootenv tool reads back as the same config.
    pub fn serialize(&self) -> String {
        let mut out = String::new();
        for d in &self.devices {
            out.push_str(&format!("{} {:#x} {:#x}", d.path, d.offset, d.size));
            if let Some(e) = d.erase_size {
                out.push_str(&format!(" {e:#x}"));
                if let Some(s) = d.sectors {
                    out.push_str(&format!(" {s:#x}"));
                }
            }
            out.push('\n');
        }
        out
    }
}

/// C `%lli`: optional sign, then `0x` hex, `0` octal, or decimal.
fn parse_c_int(tok: &str) -> Option<i64> {
    let (neg, body) = match tok.as_bytes().first() {
        Some(b'-') => (true, tok.get(1..)?),
        Some(b'+') => (false, tok.get(1..)?),
        _ => (false, tok),
    };
    let value = if let Some(hex) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
        u64::from_str_radix(hex, 16).ok()?
    } else if body.len() > 1 && body.starts_with('0') {
        u64::from_str_radix(body.get(1..)?, 8).ok()?
    } else {
        body.parse::<u64>().ok()?
    };
    // Reject a sign inside the digits that from_str_radix would accept.
    if body.bytes().skip(1).any(|b| b == b'+' || b == b'-') || body.starts_with(['+', '-']) {
        return None;
    }
    let value = i64::try_from(value).ok()?;
    Some(if neg { -value } else { value })
}

/// C `%zx`: hexadecimal with an optional `0x`.
fn parse_hex(tok: &str) -> Option<u64> {
    let body = tok
        .strip_prefix("0x")
        .or_else(|| tok.strip_prefix("0X"))
        .unwrap_or(tok);
    if body.is_empty() || !body.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(body, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_layout_is_redundant_and_round_trips() {
        let text = "# A/B env\n/dev/vda 0x80000 0x4000\n/dev/vda 0x84000 0x4000\n";
        let c = FwEnvConfig::parse(text.as_bytes()).unwrap();
        assert!(c.redundant());
        assert_eq!(c.devices[1].offset, 0x84000);
        assert_eq!(c.devices[1].size, 0x4000);
        assert_eq!(FwEnvConfig::parse(c.serialize().as_bytes()).unwrap(), c);
    }

    #[test]
    fn size_is_hex_even_without_prefix_and_offset_is_c_syntax() {
        let c = FwEnvConfig::parse(b"/dev/mtd1 4096 4000 10000 2\n").unwrap();
        assert!(!c.redundant());
        let d = &c.devices[0];
        assert_eq!(
            (d.offset, d.size, d.erase_size, d.sectors),
            (4096, 0x4000, Some(0x10000), Some(2))
        );
        let c = FwEnvConfig::parse(b"/dev/mmcblk0 010 0x20 # comment\n").unwrap();
        assert_eq!(c.devices[0].offset, 8);
        assert_eq!(c.devices[0].erase_size, None);
    }

    #[test]
    fn unparsable_lines_are_ignored_and_a_third_device_is_not_read() {
        let c =
            FwEnvConfig::parse(b"\n  \njunk\nx y z\na 0 0x10\nb 0x10 0x10\nc 0x20 0x10\n").unwrap();
        assert_eq!(c.devices.len(), 2);
        assert_eq!(c.devices[1].path, "b");
    }

    /// Regression (fuzz find): an indented `#x 0x84000 0x4000` was read as a
    /// device named `#x`, which serializes back as a comment.
    #[test]
    fn indented_hash_line_is_a_comment() {
        let c = FwEnvConfig::parse(
            b"  #covda 0x84000 0x4000
/dev/vda 0 0x10
",
        )
        .unwrap();
        assert_eq!(c.devices.len(), 1);
        assert_eq!(c.devices[0].path, "/dev/vda");
    }

    #[test]
    fn broken_configs_are_errors() {
        assert_eq!(
            FwEnvConfig::parse(b"# nothing\n"),
            Err(ConfigError::NoDevice)
        );
        assert_eq!(
            FwEnvConfig::parse(b"a 0 0\n"),
            Err(ConfigError::ZeroSize { line: 1 })
        );
        assert_eq!(
            FwEnvConfig::parse(b"a -5 10\n"),
            Err(ConfigError::NegativeOffset { line: 1 })
        );
        assert_eq!(
            FwEnvConfig::parse(b"a 0 10\nb 0 20\n"),
            Err(ConfigError::SizeMismatch(0x10, 0x20))
        );
        assert_eq!(FwEnvConfig::parse(b"\xff"), Err(ConfigError::NotUtf8));
        assert!(FwEnvConfig::parse(b"a 99999999999999999999999 10\n").is_err());
    }
}
