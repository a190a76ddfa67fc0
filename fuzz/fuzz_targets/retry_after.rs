#![no_main]
//! `cargo fuzz run retry_after`: see `_tidegate::fuzzing::retry_after` for the properties checked.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| _tidegate::fuzzing::retry_after(data));
