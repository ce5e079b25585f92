//! Every OSTree object parser (commit, dirtree, dirmeta, content header,
//! signature dictionaries) over arbitrary bytes: must return, never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| atomup_ostree::fuzz::gvariant(data));
