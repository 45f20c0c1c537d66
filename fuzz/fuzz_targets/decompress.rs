//! Fuzz target `decompress`: see `mover_fuzz::decompress` (fuzz/src/lib.rs) for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mover_fuzz::decompress(data));
