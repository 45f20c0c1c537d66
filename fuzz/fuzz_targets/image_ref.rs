//! Fuzz target `image_ref`: see `mover_engine::fuzz::image_ref` (engine/src/fuzz/mod.rs) for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mover_engine::fuzz::image_ref(data));
