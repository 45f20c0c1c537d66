//! mover's benchmarks live in `benches/` (criterion: `cargo bench -p mover-benches`) and in the
//! peer comparison scripts beside this crate (`benches/compare-local.sh`).
