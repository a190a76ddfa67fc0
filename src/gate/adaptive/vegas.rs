//! Vegas as in Netflix concurrency-limits (`VegasLimit`), after TCP Vegas: estimate the queue
//! from how far the RTT is above the lowest RTT seen, and keep it between `alpha` and `beta`.
//!
//! Once per window, with `rtt` the window's mean RTT and `log(limit) = max(1, ⌊log10 limit⌋)`:
//!
//! ```text
//! no_load_rtt = the lowest window RTT so far; every probe_multiplier × limit × U(0.5, 1)
//!               windows it is reset to the current window's RTT
//! queue = ceil(limit × (1 − no_load_rtt / rtt))
//! dropped:                       limit = limit − log(limit)
//! fewer than half in flight:     unchanged
//! queue <= threshold (1 × log):  limit = limit + beta
//! queue <  alpha (3 × log):      limit = limit + log(limit)
//! queue >  beta (6 × log):       limit = limit − log(limit)
//! limit = (1 − smoothing) × old + smoothing × limit
//! ```
//!
//! Defaults as published: `alpha` 3, `beta` 6 and `threshold` 1 (each times `log(limit)`),
//! `smoothing` 1.0, `probe_multiplier` 30. Kept as published, including its passive
//! baseline: started far above the capacity, the lowest RTT it ever sees is already a
//! queued one, and it settles on a queue of `alpha`..`beta` requests above that.

use crate::errors::ArgError;

use super::{in_range, Rng, Summary};

/// Settings of [`Vegas`].
#[derive(Debug, Clone, PartialEq)]
pub struct VegasConfig {
    pub alpha: f64,
    pub beta: f64,
    pub threshold: f64,
    pub smoothing: f64,
    pub probe_multiplier: f64,
}

impl Default for VegasConfig {
    fn default() -> Self {
        Self {
            alpha: 3.0,
            beta: 6.0,
            threshold: 1.0,
            smoothing: 1.0,
            probe_multiplier: 30.0,
        }
    }
}

impl VegasConfig {
    pub fn validate(&self) -> Result<(), ArgError> {
        in_range("alpha", self.alpha, 0.0, 1e6)?;
        in_range("beta", self.beta, self.alpha, 1e6)?;
        in_range("threshold", self.threshold, 0.0, 1e6)?;
        in_range("smoothing", self.smoothing, 0.0, 1.0)?;
        in_range("probe_multiplier", self.probe_multiplier, 1.0, 1e6)
    }
}

fn log10_root(limit: f64) -> f64 {
    limit.log10().floor().max(1.0)
}

#[derive(Debug, Clone)]
pub(crate) struct Vegas {
    config: VegasConfig,
    no_load_rtt: Option<f64>,
    probe_count: f64,
    probe_jitter: Option<f64>,
}

impl Vegas {
    pub(crate) fn new(config: VegasConfig) -> Self {
        Self {
            config,
            no_load_rtt: None,
            probe_count: 0.0,
            probe_jitter: None,
        }
    }

    pub(crate) fn baseline(&self) -> Option<f64> {
        self.no_load_rtt
    }

    pub(crate) fn on_window(&mut self, s: &Summary, limit: f64, rng: &mut Rng) -> f64 {
        let c = &self.config;
        let rtt = s.avg_rtt;
        self.probe_count += 1.0;
        let jitter = *self
            .probe_jitter
            .get_or_insert_with(|| 0.5 + 0.5 * rng.next_f64());
        if jitter * c.probe_multiplier * limit <= self.probe_count {
            self.probe_jitter = None;
            self.probe_count = 0.0;
            self.no_load_rtt = Some(rtt);
            return limit;
        }
        let no_load = match self.no_load_rtt {
            Some(n) if rtt >= n => n,
            _ => {
                self.no_load_rtt = Some(rtt);
                return limit;
            }
        };
        let log = log10_root(limit);
        let queue = (limit * (1.0 - no_load / rtt)).ceil();
        let new = if s.dropped {
            limit - log
        } else if (s.max_inflight as f64) * 2.0 < limit {
            return limit;
        } else if queue <= c.threshold * log {
            limit + c.beta * log
        } else if queue < c.alpha * log {
            limit + log
        } else if queue > c.beta * log {
            limit - log
        } else {
            return limit;
        };
        (1.0 - c.smoothing) * limit + c.smoothing * new.max(1.0)
    }
}
