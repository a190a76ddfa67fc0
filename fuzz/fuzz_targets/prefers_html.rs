#![no_main]
//! `cargo fuzz run prefers_html`: see `_tidegate::fuzzing::accept` for the properties checked.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| _tidegate::fuzzing::accept(data));
