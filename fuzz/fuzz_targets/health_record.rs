//! `atomup_health::record::fuzz` over arbitrary bytes: the health record
//! parser never panics, and whatever parses serializes to a stable form.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| atomup_health::record::fuzz(data));
