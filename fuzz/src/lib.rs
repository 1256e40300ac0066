//! Fuzz target bodies, shared with the corpus replay test.
#![forbid(unsafe_code)]
pub mod targets;
