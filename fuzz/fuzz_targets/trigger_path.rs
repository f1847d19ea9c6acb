#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| amphi_fuzzing::trigger_path(data));
