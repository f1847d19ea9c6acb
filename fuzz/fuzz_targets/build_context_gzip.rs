#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| amphi_fuzzing::build_context_gzip(data));
