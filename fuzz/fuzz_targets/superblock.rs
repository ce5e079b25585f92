//! Signed (`OSTSGNDT`) and plain static-delta superblocks, including their
//! part list, inline parts and commitmeta: must return, never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| atomup_ostree::fuzz::superblock(data));
