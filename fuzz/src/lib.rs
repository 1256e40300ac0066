//! Fuzz target bodies, shared with the corpus replay test.
pub mod targets;
