//! Benchmarks and the load tool for lsm; the benchmarks live in `benches/`.
