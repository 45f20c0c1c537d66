//! Fuzz target `wire_decode`: see `mover_engine::fuzz::wire_decode` (engine/src/fuzz/mod.rs) for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mover_engine::fuzz::wire_decode(data));
