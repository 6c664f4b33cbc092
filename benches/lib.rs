//! Criterion benchmarks for pingwheel live under `benches/benches/`; this library is empty.
