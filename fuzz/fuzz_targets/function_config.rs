#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| amphi_fuzzing::function_config(data));
