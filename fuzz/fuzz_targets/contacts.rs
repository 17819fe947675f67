//! Fuzz target `contacts`: see `peerhost::fuzz::contacts`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| peerhost::fuzz::contacts(data));
