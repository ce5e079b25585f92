//! Which slot booted, from the kernel command line the bootloader built
//! (`atomup.slot=`, `atomup.trial=1`, `atomup.fallback=1`). It is the only
//! trustworthy source: the env says what SHOULD boot, not what did.

use atomup_policy::Slot;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Booted {
    pub slot: Option<Slot>,
    pub trial: bool,
    pub fallback: bool,
}

/// Parses a command line; the last occurrence of a parameter wins, as in the
/// kernel. Fuzz-safe: never panics.
pub fn parse(cmdline: &str) -> Booted {
    let mut b = Booted::default();
    for word in cmdline.split_ascii_whitespace() {
        if let Some(v) = word.strip_prefix("atomup.slot=") {
            b.slot = Slot::parse(v);
        } else if let Some(v) = word.strip_prefix("atomup.trial=") {
            b.trial = v == "1";
        } else if let Some(v) = word.strip_prefix("atomup.fallback=") {
            b.fallback = v == "1";
        }
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_and_flags_come_from_the_command_line() {
        let b = parse("console=ttyAMA0 root=/dev/vda3 atomup.slot=B atomup.trial=1\n");
        assert_eq!(
            b,
            Booted {
                slot: Some(Slot::B),
                trial: true,
                fallback: false
            }
        );
        assert_eq!(parse("atomup.slot=C").slot, None);
        assert_eq!(parse("").slot, None);
        assert!(parse("atomup.slot=A atomup.fallback=1").fallback);
    }
}
