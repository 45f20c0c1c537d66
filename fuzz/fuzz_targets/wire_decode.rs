//! Fuzz target `wire_decode`: see `mover_fuzz::wire_decode` (fuzz/src/lib.rs) for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mover_fuzz::wire_decode(data));
