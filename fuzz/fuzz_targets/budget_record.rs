//! `atomup_link::budget::fuzz` over arbitrary bytes: a record that parses
//! must round-trip.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| atomup_link::budget::fuzz(data));
