//! Fuzz target `policy`: see `peerhost::fuzz::policy`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| peerhost::fuzz::policy(data));
