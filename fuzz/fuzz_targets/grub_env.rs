//! `atomup_bootenv::fuzz::grub_env` over arbitrary bytes: parses must return,
//! never panic, and whatever parses must round-trip.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| atomup_bootenv::fuzz::grub_env(data));
