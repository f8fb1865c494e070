//! Fuzz target `signature_header`: see `dispatcher_fuzz_targets::signature_header`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dispatcher_fuzz_targets::signature_header(data));
