//! Fuzz target `kv_key`: see `peerhost::fuzz::kv_key`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| peerhost::fuzz::kv_key(data));
