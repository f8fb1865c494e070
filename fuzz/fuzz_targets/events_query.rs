//! Fuzz target `events_query`: see `dispatcher_fuzz_targets::events_query`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dispatcher_fuzz_targets::events_query(data));
