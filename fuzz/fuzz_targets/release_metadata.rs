//! Release metadata (body and signed envelope) over arbitrary bytes: must
//! return, never panic, and anything accepted must be canonical.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    atomup_release::fuzz::release_body(data);
    atomup_release::fuzz::signed_release(data);
});
