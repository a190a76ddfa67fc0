//! AIMD as in Netflix concurrency-limits (`AIMDLimit`): loss based, blind to queueing.
//!
//! Once per window (the published limit runs it per sample; tidegate feeds it windows like
//! every algorithm):
//!
//! ```text
//! a dropped sample, or window mean RTT > timeout:
//!     limit = max(1, min(limit − 1, floor(limit × backoff_ratio)))
//! otherwise, if at least half the limit was in flight:
//!     limit = limit + 1
//! ```
//!
//! Defaults as published: `backoff_ratio` 0.9 (allowed range [0.5, 1)), `timeout` 5 s.
//! AIMD only comes down when something drops or the RTT passes `timeout`; with neither it
//! grows until fewer than half the limit are in flight, queue and all. Give it a `timeout`
//! a few times the service time if nothing upstream reports overload.

use crate::errors::ArgError;

use super::{positive_seconds, Summary};

/// Settings of [`Aimd`].
#[derive(Debug, Clone, PartialEq)]
pub struct AimdConfig {
    pub backoff_ratio: f64,
    pub timeout: f64,
}

impl Default for AimdConfig {
    fn default() -> Self {
        Self {
            backoff_ratio: 0.9,
            timeout: 5.0,
        }
    }
}

impl AimdConfig {
    pub fn validate(&self) -> Result<(), ArgError> {
        if !(self.backoff_ratio >= 0.5 && self.backoff_ratio < 1.0) {
            return Err(ArgError::value(
                "backoff_ratio",
                format!("must be in [0.5, 1.0), got {}", self.backoff_ratio),
            ));
        }
        positive_seconds("timeout", self.timeout)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Aimd {
    config: AimdConfig,
}

impl Aimd {
    pub(crate) fn new(config: AimdConfig) -> Self {
        Self { config }
    }

    /// The new estimate after one window. AIMD works on whole numbers.
    pub(crate) fn on_window(&self, s: &Summary, limit: f64) -> f64 {
        let current = limit.floor();
        if s.dropped || s.avg_rtt > self.config.timeout {
            (current - 1.0)
                .min((current * self.config.backoff_ratio).floor())
                .max(1.0)
        } else if s.max_inflight as f64 * 2.0 >= current {
            current + 1.0
        } else {
            limit
        }
    }
}
