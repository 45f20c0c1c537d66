//! Fuzz target `message_roundtrip`: see `mover_engine::fuzz::message_roundtrip` (engine/src/fuzz/mod.rs) for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mover_engine::fuzz::message_roundtrip(data));
