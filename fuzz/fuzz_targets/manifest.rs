//! Fuzz target `manifest`: see `mover_engine::fuzz::manifest` (engine/src/fuzz/mod.rs) for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mover_engine::fuzz::manifest(data));
