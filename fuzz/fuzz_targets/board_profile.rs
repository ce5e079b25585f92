//! `atomup_board::fuzz_profile` over arbitrary bytes: board.conf parsing
//! never panics.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| atomup_board::fuzz_profile(data));
