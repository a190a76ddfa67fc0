//! Gradient2 as in Netflix concurrency-limits, plus an actively measured baseline after
//! Envoy's adaptive concurrency filter. The default algorithm.
//!
//! # The published algorithm
//!
//! concurrency-limits' `Gradient2Limit` compares each window's RTT with a long exponential
//! average of the RTTs (600 samples):
//!
//! ```text
//! gradient  = clamp(long_rtt / short_rtt, 0.5, 1.0)
//! new_limit = limit × gradient + queue_size            (queue_size 4)
//! limit     = limit × (1 − smoothing) + new_limit × smoothing      (smoothing 0.2)
//! ```
//!
//! and leaves the limit alone while fewer than half of it are in flight.
//!
//! # Why tidegate does not use it as published
//!
//! The baseline is an average of whatever the service answered lately. Started with a limit
//! ten times too high, the first RTTs it sees are already ten times the service time, the
//! average learns them as normal, the gradient stays at 1.0 and the limit never comes down.
//! In a closed system passive measurement cannot tell "the service got three times slower"
//! from "three times as many requests queue": both triple the RTT. And the equilibrium
//! `limit = N × long_rtt/short_rtt + 4` keeps a queue of at least four (a 100 % queue on a
//! four-thread server).
//!
//! # What tidegate does
//!
//! * **Active baseline** (after Envoy's minRTT measurement): at start, and then every
//!   `probe_interval` seconds (± `probe_jitter`), the limit is held at `probe_limit` until
//!   `probe_samples` requests admitted with at most that many in flight have finished. Their
//!   mean RTT is the baseline: the service time with nothing queued. A probe also starts
//!   when the baseline is evidently stale: a cut that did not help (the limit was cut, in
//!   flight fell by a fifth or more, and the RTT ratio fell by less than the square root of
//!   that fall; under queueing the RTT falls in proportion to in flight, with a slower
//!   service it does not fall at all), or `stuck_windows` windows in a row at `min_limit`
//!   (Envoy's rule). A window whose mean RTT is below `baseline / (1 + tolerance)` (the
//!   service got faster) takes over as the baseline at once. A probe that finds the service
//!   slower than the old baseline (by more than `tolerance`) gives back the limit from before
//!   the cuts in a row that led to it: they were made against the stale baseline, and a
//!   slower service (a slower database behind the same connection pool) takes as many
//!   requests at once as before, each for longer.
//! * **A gradient that also grows**, from `ratio = window mean RTT / baseline`:
//!
//!   ```text
//!   ratio > 1 + tolerance  (queueing):
//!       limit = min(limit, mean in flight) × clamp(1 / ratio, min_gradient, 1)
//!   otherwise, unless fewer than half the limit were in flight:
//!       limit = limit × clamp((1 + tolerance) / ratio, 1, max_gradient) + headroom
//!   ```
//!
//!   With `ratio` the queueing factor, `mean in flight / ratio` is the concurrency the
//!   service sustains without a queue (Little's law), so one cut lands on it. Unlike the
//!   published algorithm, a cut does not wait for the limit to be half used: a limit far
//!   above the traffic comes down to what the traffic shows the service can take. No
//!   smoothing: the windows already average, and the probe keeps the baseline honest.
//!   Samples of requests admitted before a cut are left out of the next window (they
//!   queued behind the old limit).
//!
//! Defaults: `tolerance` 0.1 (Envoy's buffer is 25 %; with 4 workers one extra request
//! raises the RTT by 25 %, so the tolerance must be below that to keep the limit at 4),
//! `headroom` 0.5 (Envoy adds √limit, which at 4 workers would keep two requests queued),
//! gradient clamped to [0.5, 2.0] (Envoy), `probe_limit` 2 (Envoy: 3; any service with two
//! or more workers answers two requests without a queue), `probe_samples` 25 (Envoy: 50;
//! at 20 ms and two in flight the probe lasts a quarter of a second), `probe_interval` 20 s
//! with ± 50 % jitter (so 10–30 s; Envoy's jitter is 15 %), `probe_timeout` 2 s,
//! `stuck_windows` 5 (Envoy).
//!
//! A probe refuses most requests for its duration: at 20 ms, 32 workers and a probe every
//! 20 s that is about 1 % of the capacity. Raise `probe_interval` to pay less; the staleness
//! rules above still start a probe when it is needed.

use crate::errors::ArgError;

use super::{in_range, positive_seconds, Rng, Summary, WindowRule};

/// Settings of [`Gradient2`]; see the module documentation for what each does and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Gradient2Config {
    pub tolerance: f64,
    pub headroom: f64,
    pub min_gradient: f64,
    pub max_gradient: f64,
    pub probe_limit: usize,
    pub probe_samples: u32,
    pub probe_interval: f64,
    pub probe_jitter: f64,
    pub probe_timeout: f64,
    pub stuck_windows: u32,
}

impl Default for Gradient2Config {
    fn default() -> Self {
        Self {
            tolerance: 0.05,
            headroom: 0.5,
            min_gradient: 0.5,
            max_gradient: 2.0,
            probe_limit: 2,
            probe_samples: 25,
            probe_interval: 20.0,
            probe_jitter: 0.5,
            probe_timeout: 2.0,
            stuck_windows: 5,
        }
    }
}

impl Gradient2Config {
    pub fn validate(&self) -> Result<(), ArgError> {
        in_range("tolerance", self.tolerance, 0.0, 10.0)?;
        in_range("headroom", self.headroom, 0.0, 1e6)?;
        in_range("min_gradient", self.min_gradient, 0.01, 1.0)?;
        in_range("max_gradient", self.max_gradient, 1.0, 100.0)?;
        if self.probe_limit < 1 {
            return Err(ArgError::value("probe_limit", "must be >= 1, got 0"));
        }
        if self.probe_samples < 1 {
            return Err(ArgError::value("probe_samples", "must be >= 1, got 0"));
        }
        positive_seconds("probe_interval", self.probe_interval)?;
        in_range("probe_jitter", self.probe_jitter, 0.0, 1.0)?;
        positive_seconds("probe_timeout", self.probe_timeout)?;
        if self.stuck_windows < 1 {
            return Err(ArgError::value("stuck_windows", "must be >= 1, got 0"));
        }
        Ok(())
    }
}

/// The last window that cut the limit: its RTT ratio and mean in flight.
#[derive(Debug, Clone, Copy)]
struct Cut {
    ratio: f64,
    inflight: f64,
}

#[derive(Debug, Clone)]
pub(crate) struct Gradient2 {
    config: Gradient2Config,
    baseline: Option<f64>,
    probing: bool,
    /// When the next periodic probe is due; set when the first one ends.
    next_probe: f64,
    last_cut: Option<Cut>,
    /// The limit before the cuts in a row that `last_cut` ends, for a probe to give back.
    before_cuts: Option<f64>,
    windows_at_min: u32,
}

impl Gradient2 {
    pub(crate) fn new(config: Gradient2Config) -> Self {
        Self {
            config,
            baseline: None,
            probing: true,
            next_probe: f64::INFINITY,
            last_cut: None,
            before_cuts: None,
            windows_at_min: 0,
        }
    }

    pub(crate) fn baseline(&self) -> Option<f64> {
        self.baseline
    }

    pub(crate) fn probing(&self) -> bool {
        self.probing
    }

    pub(crate) fn probe_limit(&self) -> usize {
        self.config.probe_limit
    }

    pub(crate) fn rule(&self) -> WindowRule {
        if self.probing {
            WindowRule {
                max_inflight: Some(self.config.probe_limit),
                samples: Some(self.config.probe_samples),
                ignore_length: true,
                timeout: Some(self.config.probe_timeout),
            }
        } else {
            WindowRule::default()
        }
    }

    /// One closed window (`None`: a probe that timed out without a sample); returns the new
    /// estimate.
    pub(crate) fn on_window(
        &mut self,
        now: f64,
        summary: Option<Summary>,
        limit: f64,
        min_limit: f64,
        rng: &mut Rng,
    ) -> f64 {
        if self.probing {
            let mut new = limit;
            if let Some(s) = summary {
                // The service itself got slower: the cuts since the last good window were
                // made against a baseline that no longer held, so the limit goes back.
                let slower = self
                    .baseline
                    .is_some_and(|old| s.avg_rtt > old * (1.0 + self.config.tolerance));
                if let (true, Some(before)) = (slower, self.before_cuts) {
                    new = limit.max(before);
                }
                self.baseline = Some(s.avg_rtt);
            }
            self.end_probe(now, rng);
            return new;
        }
        let (Some(s), Some(baseline)) = (summary, self.baseline) else {
            return limit;
        };
        let c = &self.config;
        let mut ratio = s.avg_rtt / baseline;
        if ratio * (1.0 + c.tolerance) < 1.0 {
            self.baseline = Some(s.avg_rtt);
            ratio = 1.0;
        }
        let mut probe = now >= self.next_probe;
        let new = if ratio > 1.0 + c.tolerance {
            if let Some(last) = self.last_cut {
                let fell = s.avg_inflight / last.inflight;
                if fell < 0.8 && ratio / last.ratio > fell.sqrt() {
                    probe = true;
                }
            }
            if self.last_cut.is_none() {
                self.before_cuts = Some(limit);
            }
            self.last_cut = Some(Cut {
                ratio,
                inflight: s.avg_inflight,
            });
            let gradient = (1.0 / ratio).clamp(c.min_gradient, 1.0);
            (limit.min(s.avg_inflight.max(1.0)) * gradient).round()
        } else {
            self.last_cut = None;
            self.before_cuts = None;
            if (s.max_inflight as f64) < limit / 2.0 {
                limit
            } else {
                let gradient = ((1.0 + c.tolerance) / ratio).clamp(1.0, c.max_gradient);
                limit * gradient + c.headroom
            }
        };
        if new.floor() <= min_limit {
            self.windows_at_min += 1;
            probe |= self.windows_at_min >= c.stuck_windows;
        } else {
            self.windows_at_min = 0;
        }
        if probe {
            self.probing = true;
        }
        new
    }

    fn end_probe(&mut self, now: f64, rng: &mut Rng) {
        let c = &self.config;
        let jitter = c.probe_jitter * (2.0 * rng.next_f64() - 1.0);
        self.probing = false;
        self.next_probe = now + c.probe_interval * (1.0 + jitter);
        self.last_cut = None;
        self.before_cuts = None;
        self.windows_at_min = 0;
    }
}
