//! An ordered list of environment variables shared by the U-Boot and GRUB
//! formats. Names and values are kept as bytes so an env written by someone
//! else (any encoding) survives our read-modify-write unchanged.

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum VarsError {
    #[error("env data has no terminating empty entry (`\\0\\0`)")]
    Unterminated,
    #[error("variable name {0:?} is empty or contains `=`, NUL or a newline")]
    BadName(String),
    #[error("value of variable {0:?} contains NUL")]
    BadValue(String),
}

/// Variables in file order; setting an existing name keeps its position.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Vars {
    entries: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Vars {
    /// Parses U-Boot env data (`k=v\0...\0\0`); bytes after the terminator
    /// are padding and ignored. Entries without `=` are skipped and a repeated
    /// name keeps its last value, as libubootenv does.
    pub fn parse_uboot(data: &[u8]) -> Result<Vars, VarsError> {
        let mut vars = Vars::default();
        let mut rest = data;
        loop {
            let end = rest
                .iter()
                .position(|&b| b == 0)
                .ok_or(VarsError::Unterminated)?;
            let (entry, tail) = rest.split_at(end);
            if entry.is_empty() {
                return Ok(vars);
            }
            if let Some(eq) = entry.iter().position(|&b| b == b'=') {
                let (name, value) = entry.split_at(eq);
                if !name.is_empty() {
                    vars.set_bytes(name, value.get(1..).unwrap_or_default());
                }
            }
            rest = tail.get(1..).unwrap_or_default();
        }
    }

    /// U-Boot env data without padding: every `k=v\0`, then the final `\0`.
    pub fn serialize_uboot(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in &self.entries {
            out.extend_from_slice(k);
            out.push(b'=');
            out.extend_from_slice(v);
            out.push(0);
        }
        out.push(0);
        out
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.get_bytes(name.as_bytes())
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    pub fn get_bytes(&self, name: &[u8]) -> Option<&[u8]> {
        self.entries
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }

    /// Sets a variable after checking that both formats can store it.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), VarsError> {
        if name.is_empty() || name.bytes().any(|b| matches!(b, b'=' | 0 | b'\n')) {
            return Err(VarsError::BadName(name.to_owned()));
        }
        if value.bytes().any(|b| b == 0) {
            return Err(VarsError::BadValue(name.to_owned()));
        }
        self.set_bytes(name.as_bytes(), value.as_bytes());
        Ok(())
    }

    pub(crate) fn set_bytes(&mut self, name: &[u8], value: &[u8]) {
        match self.entries.iter_mut().find(|(k, _)| k == name) {
            Some(entry) => entry.1 = value.to_vec(),
            None => self.entries.push((name.to_vec(), value.to_vec())),
        }
    }

    pub fn remove(&mut self, name: &str) {
        self.entries.retain(|(k, _)| k != name.as_bytes());
    }

    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.entries
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uboot_data_round_trips_and_ignores_padding() {
        let data = b"a=1\0b=two words\0c=\0\0\xff\xff\x00";
        let v = Vars::parse_uboot(data).unwrap();
        assert_eq!(v.get("b"), Some("two words"));
        assert_eq!(v.get("c"), Some(""));
        assert_eq!(v.serialize_uboot(), &data[..data.len() - 3]);
    }

    #[test]
    fn empty_env_and_unterminated_data() {
        assert!(Vars::parse_uboot(b"\0").unwrap().is_empty());
        assert_eq!(Vars::parse_uboot(b"a=1\0b=2"), Err(VarsError::Unterminated));
        assert_eq!(Vars::parse_uboot(b""), Err(VarsError::Unterminated));
    }

    #[test]
    fn entries_without_equals_are_skipped_and_last_duplicate_wins() {
        let v = Vars::parse_uboot(b"junk\0a=1\0a=2\0=x\0\0").unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!(v.get("a"), Some("2"));
    }

    #[test]
    fn names_that_no_format_can_hold_are_refused() {
        let mut v = Vars::default();
        assert!(v.set("", "x").is_err());
        assert!(v.set("a=b", "x").is_err());
        assert!(v.set("a\nb", "x").is_err());
        assert!(v.set("a", "x\0").is_err());
    }
}
