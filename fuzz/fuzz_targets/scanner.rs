#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keywarden::fuzzing::scan_replies(data));
