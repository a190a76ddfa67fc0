#![no_main]
//! `cargo fuzz run state_file`: see `_tidegate::fuzzing::state_file` for the properties checked.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| _tidegate::fuzzing::state_file(data));
