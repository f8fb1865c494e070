//! Fuzz target `cel`: see `dispatcher_fuzz_targets::cel`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dispatcher_fuzz_targets::cel(data));
