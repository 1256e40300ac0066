//! Empty: the benchmarks live in benches/micro.rs.
