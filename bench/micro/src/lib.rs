//! Empty: the benchmarks live in benches/micro.rs.
#![forbid(unsafe_code)]
