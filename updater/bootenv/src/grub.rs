//! GRUB's environment block (`grubenv`), byte-compatible with `grub-editenv`
//! and GRUB's `load_env`/`save_env`: a fixed-size block (1024 bytes) that GRUB
//! rewrites in place, which is why its size never changes.

use crate::vars::Vars;

/// First line of every block.
pub const SIGNATURE: &[u8] = b"# GRUB Environment Block\n";
/// Size `grub-editenv create` makes and GRUB expects to rewrite in place.
pub const BLOCK_SIZE: usize = 1024;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum GrubError {
    #[error("grubenv does not start with `# GRUB Environment Block`")]
    Signature,
    #[error("grubenv variables need {needed} bytes, the block holds {available}")]
    TooBig { needed: usize, available: usize },
}

/// Parses a block the way GRUB's `grub_envblk_iterate` walks it: `#` lines
/// are comments, `name=value` lines end at an unescaped newline, `\x` stands
/// for `x`. A line that runs off the end of the block stops the walk (GRUB
/// treats the rest as broken and keeps what it read). Fuzz entry point.
pub fn parse(block: &[u8]) -> Result<Vars, GrubError> {
    let mut p = block.strip_prefix(SIGNATURE).ok_or(GrubError::Signature)?;
    let mut vars = Vars::default();
    while let Some(&first) = p.first() {
        if first == b'#' {
            p = skip_line(p);
            continue;
        }
        let Some(eq) = p.iter().position(|&b| b == b'=') else { break };
        let (name, rest) = p.split_at(eq);
        let rest = rest.get(1..).unwrap_or_default();
        let mut value = Vec::new();
        let mut i = 0;
        let mut complete = false;
        while let Some(&b) = rest.get(i) {
            match b {
                b'\n' => {
                    complete = true;
                    break;
                }
                b'\\' => {
                    let Some(&escaped) = rest.get(i + 1) else { break };
                    value.push(escaped);
                    i += 2;
                }
                _ => {
                    value.push(b);
                    i += 1;
                }
            }
        }
        if !complete {
            break;
        }
        // A name with NUL or an empty name cannot be set by GRUB; skip it.
        if !name.is_empty() && !name.contains(&0) && !value.contains(&0) {
            vars.set_bytes(name, &value);
        }
        p = rest.get(i + 1..).unwrap_or_default();
    }
    Ok(vars)
}

fn skip_line(p: &[u8]) -> &[u8] {
    let mut i = 0;
    while let Some(&b) = p.get(i) {
        match b {
            b'\\' => i += 2,
            b'\n' => return p.get(i + 1..).unwrap_or_default(),
            _ => i += 1,
        }
    }
    &[]
}

/// Serializes a block of exactly `BLOCK_SIZE` bytes as `grub-editenv set`
/// leaves it: signature, one `name=value` line per variable with `\` and
/// newline escaped by a backslash, `#` padding.
pub fn serialize(vars: &Vars) -> Result<Vec<u8>, GrubError> {
    let mut out = SIGNATURE.to_vec();
    for (name, value) in vars.iter() {
        out.extend_from_slice(name);
        out.push(b'=');
        for &b in value {
            if b == b'\\' || b == b'\n' {
                out.push(b'\\');
            }
            out.push(b);
        }
        out.push(b'\n');
    }
    if out.len() > BLOCK_SIZE {
        return Err(GrubError::TooBig { needed: out.len(), available: BLOCK_SIZE });
    }
    out.resize(BLOCK_SIZE, b'#');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_round_trips_with_escapes() {
        let mut v = Vars::default();
        v.set("saved_entry", "0").unwrap();
        v.set("weird", "a\\b\nc=d").unwrap();
        v.set("empty", "").unwrap();
        let block = serialize(&v).unwrap();
        assert_eq!(block.len(), BLOCK_SIZE);
        assert!(block.starts_with(b"# GRUB Environment Block\nsaved_entry=0\nweird=a\\\\b\\\nc=d\nempty=\n#"));
        assert_eq!(parse(&block).unwrap(), v);
        assert_eq!(serialize(&parse(&block).unwrap()).unwrap(), block);
    }

    #[test]
    fn missing_signature_is_an_error_and_a_torn_tail_keeps_the_complete_lines() {
        assert_eq!(parse(b"# GRUB Environment Bl"), Err(GrubError::Signature));
        let v = parse(b"# GRUB Environment Block\na=1\nb=2").unwrap();
        assert_eq!(v.get("a"), Some("1"));
        assert_eq!(v.get("b"), None);
        assert_eq!(parse(b"# GRUB Environment Block\nx=\\").unwrap().len(), 0);
    }

    #[test]
    fn too_many_variables_do_not_fit() {
        let mut v = Vars::default();
        v.set("big", &"x".repeat(BLOCK_SIZE)).unwrap();
        assert!(matches!(serialize(&v), Err(GrubError::TooBig { .. })));
    }
}
