//! `Retry-After` (RFC 9110 §10.2.3): build, format, parse and read.

use pyo3::prelude::*;

/// The two forms a `Retry-After` value takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryAfter {
    /// delay-seconds, already saturated.
    Delay(u64),
    /// An HTTP-date, as Unix seconds (UTC).
    Date(i64),
}

/// When a client may come back after a 503.
#[pyclass(name = "RetryAfter", module = "tidegate._tidegate", frozen)]
pub struct RetryAfterPy {
    pub value: RetryAfter,
}

impl RetryAfterPy {
    pub fn new(value: RetryAfter) -> Self {
        Self { value }
    }
}
