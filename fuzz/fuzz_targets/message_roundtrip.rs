//! Fuzz target `message_roundtrip`: see `mover_fuzz::message_roundtrip` (fuzz/src/lib.rs) for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mover_fuzz::message_roundtrip(data));
