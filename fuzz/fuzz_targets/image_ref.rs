//! Fuzz target `image_ref`: see `mover_fuzz::image_ref` (fuzz/src/lib.rs) for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mover_fuzz::image_ref(data));
