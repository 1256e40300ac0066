//! SealedFile::open with a fixed identity, then every tensor read.
#![forbid(unsafe_code)]
#![no_main]

use std::sync::OnceLock;

static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let dir = DIR.get_or_init(|| tempfile::tempdir().expect("a temporary directory"));
    sealtensors_fuzz::targets::open(data, dir.path());
});
