//! Header::parse_buffer and seal::parse on arbitrary bytes.
#![forbid(unsafe_code)]
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sealtensors_fuzz::targets::header(data);
});
