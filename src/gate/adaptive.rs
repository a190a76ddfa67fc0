//! The limit that sets itself: latency samples in, a concurrency limit out.
//!
//! `Limiter` is plain Rust with no locks and no clock of its own: every call takes the time
//! in seconds (any monotonic origin). Each admitted request gives one sample when it ends:
//! how long it took from admission to release, how many requests were in flight when it was
//! admitted (itself included) and whether it ended in a way that signals overload (`dropped`).
//!
//! # Windows
//!
//! Samples are not fed to the algorithm one by one. They are summed into a window (after
//! concurrency-limits' `WindowedLimit` with its average sample window): a count, the sum and
//! the minimum of the RTTs, the sum and the maximum of the in-flight counts, and whether any
//! sample was dropped. Adding a sample is a handful of additions and comparisons, so a
//! concurrent gate can keep them in atomics and take a lock only to close a window.
//!
//! A window closes on the first sample that arrives once it has lasted its length and holds
//! at least `window_size` samples. Its length is `clamp(2 × the previous window's minimum
//! RTT, min_window, max_window)`. A window that reaches `max_window` with too few samples is
//! thrown away (too little traffic to say anything). Samples under `min_rtt_threshold`, and
//! samples whose RTT or time is NaN, infinite or negative, are ignored.
//!
//! Defaults, chosen so that a service answering in about 20 ms gets a new limit every
//! quarter of a second and settles within a few seconds:
//!
//! | setting | tidegate | concurrency-limits | why |
//! |---|---|---|---|
//! | `min_window` | 0.25 s | 1 s | four decisions a second; at 20 ms and 4 workers a window still holds ~50 samples |
//! | `max_window` | 2 s | 1 s | slow services (RTT up to 1 s) still get a window of twice their RTT |
//! | `window_size` | 20 | 10 | the mean of 20 samples with ±10 % jitter is within ~1.5 % of the truth |
//! | `min_rtt_threshold` | 100 µs | 100 µs | answers that never reached the app say nothing about it |
//!
//! # Cost
//!
//! `on_sample` costs about 14 ns when it only adds to the window (one thread, release
//! build, measured by the ignored test `on_sample_cost`); closing a window, four times a
//! second by default, runs the algorithm once.
//!
//! # Algorithms
//!
//! [`Algorithm::Gradient2`] (the default, see [`gradient`]), [`Algorithm::Aimd`] (see
//! [`aimd`]) and [`Algorithm::Vegas`] (see [`vegas`]). Whatever they compute, the limit never
//! leaves `[min_limit, max_limit]`.

use crate::errors::ArgError;

pub mod aimd;
pub mod gradient;
pub mod vegas;

pub use aimd::AimdConfig;
pub use gradient::Gradient2Config;
pub use vegas::VegasConfig;

#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

/// Which algorithm moves the limit, with its own settings.
#[derive(Debug, Clone, PartialEq)]
pub enum Algorithm {
    Gradient2(Gradient2Config),
    Aimd(AimdConfig),
    Vegas(VegasConfig),
}

impl Algorithm {
    /// The algorithm named `name` ("gradient2", "aimd", "vegas") with its defaults.
    pub fn named(name: &str) -> Result<Self, ArgError> {
        match name {
            "gradient2" => Ok(Self::Gradient2(Gradient2Config::default())),
            "aimd" => Ok(Self::Aimd(AimdConfig::default())),
            "vegas" => Ok(Self::Vegas(VegasConfig::default())),
            other => Err(ArgError::value(
                "algorithm",
                format!("must be 'gradient2', 'aimd' or 'vegas', got {other:?}"),
            )),
        }
    }

    /// The name [`Algorithm::named`] knows it by.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Gradient2(_) => "gradient2",
            Self::Aimd(_) => "aimd",
            Self::Vegas(_) => "vegas",
        }
    }
}

/// How samples are grouped before an algorithm sees them. Times are seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowConfig {
    pub min_window: f64,
    pub max_window: f64,
    pub window_size: u32,
    pub min_rtt_threshold: f64,
}

impl Default for WindowConfig {
    fn default() -> Self {
        Self {
            min_window: 0.25,
            max_window: 2.0,
            window_size: 20,
            min_rtt_threshold: 100e-6,
        }
    }
}

/// Everything a `Limiter` is told.
#[derive(Debug, Clone, PartialEq)]
pub struct LimiterConfig {
    pub initial_limit: usize,
    pub min_limit: usize,
    pub max_limit: usize,
    pub algorithm: Algorithm,
    pub window: WindowConfig,
    /// Seeds the jitter of the periodic probes, so that processes started together do not
    /// probe together; tests fix it to replay a run.
    pub seed: u64,
}

impl Default for LimiterConfig {
    fn default() -> Self {
        Self {
            initial_limit: 20,
            min_limit: 1,
            max_limit: 1000,
            algorithm: Algorithm::Gradient2(Gradient2Config::default()),
            window: WindowConfig::default(),
            seed: 0x9E37_79B9_7F4A_7C15,
        }
    }
}

pub(crate) fn positive_seconds(param: &'static str, value: f64) -> Result<(), ArgError> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(ArgError::value(
            param,
            format!("must be a finite number of seconds > 0, got {value}"),
        ))
    }
}

pub(crate) fn in_range(
    param: &'static str,
    value: f64,
    low: f64,
    high: f64,
) -> Result<(), ArgError> {
    if value.is_finite() && (low..=high).contains(&value) {
        Ok(())
    } else {
        Err(ArgError::value(
            param,
            format!("must be between {low} and {high}, got {value}"),
        ))
    }
}

impl LimiterConfig {
    pub fn validate(&self) -> Result<(), ArgError> {
        if self.min_limit < 1 {
            return Err(ArgError::value("min_limit", "must be >= 1, got 0"));
        }
        if self.max_limit < self.min_limit {
            return Err(ArgError::value(
                "max_limit",
                format!(
                    "must be >= min_limit ({}), got {}",
                    self.min_limit, self.max_limit
                ),
            ));
        }
        if !(self.min_limit..=self.max_limit).contains(&self.initial_limit) {
            return Err(ArgError::value(
                "initial",
                format!(
                    "must be between min_limit ({}) and max_limit ({}), got {}",
                    self.min_limit, self.max_limit, self.initial_limit
                ),
            ));
        }
        let w = &self.window;
        positive_seconds("min_window", w.min_window)?;
        positive_seconds("max_window", w.max_window)?;
        if w.max_window < w.min_window {
            return Err(ArgError::value(
                "max_window",
                format!(
                    "must be >= min_window ({}), got {}",
                    w.min_window, w.max_window
                ),
            ));
        }
        if w.window_size < 1 {
            return Err(ArgError::value("window_size", "must be >= 1, got 0"));
        }
        if !(w.min_rtt_threshold.is_finite() && w.min_rtt_threshold >= 0.0) {
            return Err(ArgError::value(
                "min_rtt_threshold",
                format!(
                    "must be a finite number of seconds >= 0, got {}",
                    w.min_rtt_threshold
                ),
            ));
        }
        match &self.algorithm {
            Algorithm::Gradient2(c) => c.validate(),
            Algorithm::Aimd(c) => c.validate(),
            Algorithm::Vegas(c) => c.validate(),
        }
    }
}

/// What one closed window says.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub count: u32,
    pub avg_rtt: f64,
    pub min_rtt: f64,
    pub avg_inflight: f64,
    pub max_inflight: usize,
    pub dropped: bool,
}

/// Samples summed outside the limiter (see [`Limiter::on_batch`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Batch {
    pub count: u32,
    pub sum_rtt: f64,
    pub min_rtt: f64,
    pub sum_inflight: f64,
    pub max_inflight: usize,
    pub dropped: bool,
}

/// When a batch of samples can close the open window: once the time is `at` or later and it
/// holds `samples` or more, or at `timeout_at` whatever it holds. Before that, samples only
/// need adding up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Due {
    pub at: f64,
    pub samples: u32,
    pub timeout_at: f64,
}

/// The running sums of the open window.
#[derive(Debug, Clone, Copy)]
struct Window {
    start: f64,
    length: f64,
    count: u32,
    sum_rtt: f64,
    min_rtt: f64,
    sum_inflight: f64,
    max_inflight: usize,
    dropped: bool,
}

impl Window {
    fn new(start: f64, length: f64) -> Self {
        Self {
            start,
            length,
            count: 0,
            sum_rtt: 0.0,
            min_rtt: f64::INFINITY,
            sum_inflight: 0.0,
            max_inflight: 0,
            dropped: false,
        }
    }

    fn merge(&mut self, batch: &Batch) {
        self.count = self.count.saturating_add(batch.count);
        self.sum_rtt += batch.sum_rtt;
        self.min_rtt = self.min_rtt.min(batch.min_rtt);
        self.sum_inflight += batch.sum_inflight;
        self.max_inflight = self.max_inflight.max(batch.max_inflight);
        self.dropped |= batch.dropped;
    }

    fn summary(&self) -> Summary {
        let n = f64::from(self.count.max(1));
        Summary {
            count: self.count,
            avg_rtt: self.sum_rtt / n,
            min_rtt: self.min_rtt,
            avg_inflight: self.sum_inflight / n,
            max_inflight: self.max_inflight,
            dropped: self.dropped,
        }
    }
}

/// xorshift64*: enough randomness to spread probes, no dependency.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    /// Uniform in [0, 1).
    pub(crate) fn next_f64(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// What an algorithm wants from the windows for now; the default: nothing special.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(crate) struct WindowRule {
    /// Only samples admitted with at most this many in flight count (a baseline probe).
    pub max_inflight: Option<usize>,
    /// Samples needed to close the window; `None`: the configured `window_size`.
    pub samples: Option<u32>,
    /// Close as soon as there are enough samples, whatever the window's length.
    pub ignore_length: bool,
    /// How long the window may wait for its samples.
    pub timeout: Option<f64>,
}

#[derive(Debug, Clone)]
enum State {
    Gradient2(gradient::Gradient2),
    Aimd(aimd::Aimd),
    Vegas(vegas::Vegas),
}

/// The adaptive concurrency limit. See the module documentation.
#[derive(Debug, Clone)]
pub struct Limiter {
    min_limit: usize,
    max_limit: usize,
    window_config: WindowConfig,
    /// The algorithm's estimate; the limit is its integer part.
    estimate: f64,
    limit: usize,
    window: Option<Window>,
    /// Samples of requests admitted before this time are ignored (they queued behind a limit
    /// that has since been cut).
    admitted_after: f64,
    state: State,
    rng: Rng,
}

impl Limiter {
    pub fn new(config: LimiterConfig) -> Result<Self, ArgError> {
        config.validate()?;
        let state = match config.algorithm {
            Algorithm::Gradient2(c) => State::Gradient2(gradient::Gradient2::new(c)),
            Algorithm::Aimd(c) => State::Aimd(aimd::Aimd::new(c)),
            Algorithm::Vegas(c) => State::Vegas(vegas::Vegas::new(c)),
        };
        let mut limiter = Self {
            min_limit: config.min_limit,
            max_limit: config.max_limit,
            window_config: config.window,
            estimate: config.initial_limit as f64,
            limit: config.initial_limit,
            window: None,
            admitted_after: f64::NEG_INFINITY,
            state,
            rng: Rng::new(config.seed),
        };
        limiter.limit = limiter.effective_limit();
        Ok(limiter)
    }

    /// The integer limit in force now: always within `[min_limit, max_limit]`.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The algorithm's estimate before it is cut to an integer (not the probe limit).
    pub fn estimate(&self) -> f64 {
        self.estimate
    }

    /// The no-load RTT the algorithm compares with, if it keeps one and has one yet.
    pub fn baseline(&self) -> Option<f64> {
        match &self.state {
            State::Gradient2(g) => g.baseline(),
            State::Vegas(v) => v.baseline(),
            State::Aimd(_) => None,
        }
    }

    /// Whether the limit is held low right now to measure the no-load RTT.
    pub fn probing(&self) -> bool {
        matches!(&self.state, State::Gradient2(g) if g.probing())
    }

    /// One sample: the request admitted with `inflight` in flight (itself included) ended at
    /// `now_secs` after `rtt_secs`. Returns the new limit when it changed.
    pub fn on_sample(
        &mut self,
        now_secs: f64,
        rtt_secs: f64,
        inflight: usize,
        dropped: bool,
    ) -> Option<usize> {
        // `is_finite` first: NaN and infinities never reach a comparison.
        if !now_secs.is_finite()
            || !rtt_secs.is_finite()
            || rtt_secs <= 0.0
            || rtt_secs < self.window_config.min_rtt_threshold
        {
            return None;
        }
        let (admitted_after, cap) = self.filter();
        let counts = now_secs - rtt_secs >= admitted_after && cap.is_none_or(|cap| inflight <= cap);
        // A batch of this one sample, or of none (it may still close a window that is due).
        let batch = Batch {
            count: u32::from(counts),
            sum_rtt: if counts { rtt_secs } else { 0.0 },
            min_rtt: if counts { rtt_secs } else { f64::INFINITY },
            sum_inflight: if counts { inflight as f64 } else { 0.0 },
            max_inflight: if counts { inflight } else { 0 },
            dropped: counts && dropped,
        };
        self.on_batch(now_secs, &batch)
    }

    /// Many samples at once, already summed (and already filtered by [`Limiter::filter`] and
    /// the RTT threshold): how a concurrent gate feeds the limiter, which it keeps behind a
    /// lock it takes only when [`Limiter::due`] says a window may close. Returns the new limit
    /// when it changed.
    pub fn on_batch(&mut self, now_secs: f64, batch: &Batch) -> Option<usize> {
        if !now_secs.is_finite() {
            return None;
        }
        let rule = self.rule();
        let window = self.open_window(now_secs);
        if batch.count > 0 && batch.sum_rtt.is_finite() && batch.min_rtt.is_finite() {
            window.merge(batch);
        }
        self.close_if_due(now_secs, rule)
    }

    /// Which samples count now: those of requests admitted at or after the first value, with
    /// at most the second in flight (when there is a cap).
    pub fn filter(&self) -> (f64, Option<usize>) {
        (self.admitted_after, self.rule().max_inflight)
    }

    /// When a batch can change anything: see [`Due`].
    pub fn due(&self) -> Due {
        let Some(window) = &self.window else {
            return Due {
                at: f64::NEG_INFINITY,
                samples: 1,
                timeout_at: f64::INFINITY,
            };
        };
        let rule = self.rule();
        let needed = rule.samples.unwrap_or(self.window_config.window_size);
        Due {
            at: if rule.ignore_length {
                window.start
            } else {
                window.start + window.length
            },
            samples: needed.saturating_sub(window.count).max(1),
            timeout_at: window.start + rule.timeout.unwrap_or(self.window_config.max_window),
        }
    }

    /// The shortest RTT a sample may have to count.
    pub fn min_rtt_threshold(&self) -> f64 {
        self.window_config.min_rtt_threshold
    }

    /// Lets a window that waits for samples time out without one (a probe that sees no
    /// request finish must not hold the limit down). Cheap; call it on a refusal.
    pub fn poll(&mut self, now_secs: f64) -> Option<usize> {
        if !now_secs.is_finite() || self.window.is_none() {
            return None;
        }
        let rule = self.rule();
        self.close_if_due(now_secs, rule)
    }

    fn rule(&self) -> WindowRule {
        match &self.state {
            State::Gradient2(g) => g.rule(),
            State::Aimd(_) | State::Vegas(_) => WindowRule::default(),
        }
    }

    fn open_window(&mut self, now: f64) -> &mut Window {
        let min_window = self.window_config.min_window;
        let window = self
            .window
            .get_or_insert_with(|| Window::new(now, min_window));
        if now < window.start {
            // The caller's clock went back: start over rather than wait for it to catch up.
            *window = Window::new(now, window.length);
        }
        window
    }

    fn close_if_due(&mut self, now: f64, rule: WindowRule) -> Option<usize> {
        let window = self.window.as_mut()?;
        let elapsed = now - window.start;
        let needed = rule.samples.unwrap_or(self.window_config.window_size);
        let timeout = rule.timeout.unwrap_or(self.window_config.max_window);
        let long_enough = rule.ignore_length || elapsed >= window.length;
        let before = self.limit;
        if long_enough && window.count >= needed {
            let summary = window.summary();
            let length = (2.0 * summary.min_rtt)
                .clamp(self.window_config.min_window, self.window_config.max_window);
            *window = Window::new(now, length);
            self.on_window(now, Some(summary));
        } else if elapsed >= timeout {
            let summary = (window.count > 0).then(|| window.summary());
            *window = Window::new(now, self.window_config.min_window);
            // A normal window without enough samples is dropped; a probe decides what to do.
            if rule.max_inflight.is_some() {
                self.on_window(now, summary);
            }
        } else {
            return None;
        }
        self.limit = self.effective_limit();
        (self.limit != before).then_some(self.limit)
    }

    fn on_window(&mut self, now: f64, summary: Option<Summary>) {
        let (low, high) = (self.min_limit as f64, self.max_limit as f64);
        let old = self.estimate;
        let new = match (&mut self.state, summary) {
            (State::Gradient2(g), s) => g.on_window(now, s, old, low, &mut self.rng),
            (State::Aimd(a), Some(s)) => a.on_window(&s, old),
            (State::Vegas(v), Some(s)) => v.on_window(&s, old, &mut self.rng),
            (_, None) => old,
        };
        if new.is_finite() {
            self.estimate = new.clamp(low, high);
        }
        if self.estimate < old && matches!(self.state, State::Gradient2(_)) {
            self.admitted_after = now;
        }
    }

    fn effective_limit(&self) -> usize {
        // The estimate is finite and within bounds, so the cast is exact for its integer part.
        let base = (self.estimate.floor() as usize).clamp(self.min_limit, self.max_limit);
        match &self.state {
            State::Gradient2(g) if g.probing() => g
                .probe_limit()
                .min(base)
                .clamp(self.min_limit, self.max_limit),
            _ => base,
        }
    }
}
