//! Fuzz target `config`: see `peerhost::fuzz::config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| peerhost::fuzz::config(data));
