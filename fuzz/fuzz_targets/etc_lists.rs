//! `atomup_etc::fuzz::lists` over arbitrary bytes: the vendor-owned list and
//! the merge record parsers must return, never panic, and a record that
//! parses must round-trip.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| atomup_etc::fuzz::lists(data));
