//! Fuzz target `frame_reader`: see `mover_fuzz::frame_reader` (fuzz/src/lib.rs) for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mover_fuzz::frame_reader(data));
