//! Fuzz target `config`: see `dispatcher_fuzz_targets::config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dispatcher_fuzz_targets::config(data));
