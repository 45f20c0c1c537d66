//! Fuzz target `frame_reader`: see `mover_engine::fuzz::frame_reader` (engine/src/fuzz/mod.rs) for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mover_engine::fuzz::frame_reader(data));
