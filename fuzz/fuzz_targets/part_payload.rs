//! A decompressed part payload `(a(uuu)aa(ayay)ayay)`: layout, op decoder,
//! bounds of every splice/write/bspatch, executed into memory: never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| atomup_ostree::fuzz::payload(data));
