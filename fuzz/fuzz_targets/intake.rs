//! Fuzz target `intake`: see `dispatcher_fuzz_targets::intake`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dispatcher_fuzz_targets::intake(data));
