//! Fuzz target `rel_path`: see `mover_fuzz::rel_path` (fuzz/src/lib.rs) for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mover_fuzz::rel_path(data));
