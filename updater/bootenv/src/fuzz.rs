//! The entry points the cargo-fuzz targets call (`fuzz/fuzz_targets/`), kept
//! in the crate so the saved corpus is replayed by a normal `cargo test` on
//! stable. Each parses arbitrary bytes every way the device would, and checks
//! that whatever parses survives serialize -> parse unchanged.

use crate::{grub, grub_pair, uboot, FwEnvConfig, Vars};

/// U-Boot env: data area, single and redundant copies, a pair.
pub fn uboot_env(data: &[u8]) {
    if let Ok(v) = Vars::parse_uboot(data) {
        assert_eq!(Vars::parse_uboot(&v.serialize_uboot()).as_ref(), Ok(&v));
    }
    for layout in [uboot::Layout::Single, uboot::Layout::Redundant] {
        if let Ok(copy) = uboot::parse_copy(data, layout) {
            let bytes =
                uboot::serialize_copy(&copy.vars, layout, data.len(), copy.flags.unwrap_or(0))
                    .expect("a parsed copy fits its own size");
            assert_eq!(uboot::parse_copy(&bytes, layout).as_ref(), Ok(&copy));
        }
    }
    let pair = uboot::parse_redundant_pair(data);
    let _ = pair.vars();
    for scheme in [uboot::FlagScheme::Incremental, uboot::FlagScheme::Boolean] {
        let (index, _) = pair.next_write(scheme);
        assert!(index < 2);
        if let Some(cur) = pair.current {
            assert_ne!(index, cur, "a write must never target the current copy");
        }
    }
}

/// GRUB env block and the sealed pair.
pub fn grub_env(data: &[u8]) {
    if let Ok(v) = grub::parse(data) {
        if let Ok(block) = grub::serialize(&v) {
            assert_eq!(grub::parse(&block).as_ref(), Ok(&v));
        }
    }
    if let Ok(s) = grub_pair::parse_sealed(data) {
        if let Ok(block) = grub_pair::serialize_sealed(&s.vars, s.seq) {
            // The writer puts the state variables first: same values, maybe
            // not the same order as a foreign block.
            let back = grub_pair::parse_sealed(&block).expect("our own sealed block parses");
            assert_eq!(
                (back.seq, back.left, back.vars.len()),
                (s.seq, s.left, s.vars.len())
            );
            for (k, v) in s.vars.iter() {
                assert_eq!(back.vars.get_bytes(k), Some(v));
            }
        }
    }
    let pair = grub_pair::parse_pair(data);
    let (index, seq) = pair.next_write();
    if let Some(cur) = pair.current {
        assert_ne!(index, cur, "a write must never target the current block");
        assert!(pair
            .current()
            .is_some_and(|c| seq > c.seq || c.seq == u64::MAX));
    }
}

/// `/etc/fw_env.config`.
pub fn fw_env_config(data: &[u8]) {
    if let Ok(c) = FwEnvConfig::parse(data) {
        assert!(matches!(c.devices.len(), 1 | 2));
        assert_eq!(
            FwEnvConfig::parse(c.serialize().as_bytes()).as_ref(),
            Ok(&c)
        );
    }
}
