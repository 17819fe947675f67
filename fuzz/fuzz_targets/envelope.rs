//! Fuzz target `envelope`: see `peerhost::fuzz::envelope`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| peerhost::fuzz::envelope(data));
