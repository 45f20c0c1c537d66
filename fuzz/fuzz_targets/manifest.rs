//! Fuzz target `manifest`: see `mover_fuzz::manifest` (fuzz/src/lib.rs) for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mover_fuzz::manifest(data));
