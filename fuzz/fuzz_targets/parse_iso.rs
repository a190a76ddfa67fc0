#![no_main]
//! `cargo fuzz run parse_iso`: see `_tidegate::fuzzing::iso_date` for the properties checked.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| _tidegate::fuzzing::iso_date(data));
