#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keywarden::fuzzing::parse_requests(data));
