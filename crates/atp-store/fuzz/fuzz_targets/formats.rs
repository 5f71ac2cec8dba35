//! Arbitrary bytes, and damaged valid encodings, fed to the log-segment and
//! checkpoint readers: no panic, and nothing accepted that does not
//! re-encode to the accepted bytes (see `atp_store::fuzzing`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| atp_store::fuzzing::check(data));
