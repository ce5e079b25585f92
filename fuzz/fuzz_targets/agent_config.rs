//! `atomup_config::fuzz` over arbitrary bytes: one drop-in file parsed and the
//! merge validated; must return, never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| atomup_config::fuzz(data));
