//! `atomup_bundle::fuzz` over arbitrary bytes: a header block and a whole
//! bundle; must return, never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| atomup_bundle::fuzz(data));
