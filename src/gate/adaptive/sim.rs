//! A discrete-event simulation of a gate in front of a server, to prove the limit algorithms.
//!
//! The server has `workers` workers and a FIFO queue; each request takes the service time
//! `service` ± `jitter` (uniform). `clients` closed-loop clients each send a request, wait for
//! the answer and send the next at once; a refused client tries again after
//! `retry_delay` × U(0.5, 1.5). The gate admits while fewer than `limiter.limit()` are in
//! flight. Each completion is a sample: RTT from admission to completion, and the number in
//! flight when it was admitted (itself included). Time is virtual; the jitter comes from a
//! seeded xorshift, so a run replays exactly.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};

use super::{Limiter, LimiterConfig, Rng};

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub workers: usize,
    pub clients: usize,
    pub service: f64,
    /// From this time on the service time is the second value.
    pub service_change: Option<(f64, f64)>,
    pub jitter: f64,
    pub retry_delay: f64,
    pub duration: f64,
    pub seed: u64,
}

impl SimConfig {
    pub fn new(workers: usize, service: f64, duration: f64) -> Self {
        Self {
            workers,
            clients: 64,
            service,
            service_change: None,
            jitter: 0.1,
            retry_delay: 0.005,
            duration,
            seed: 42,
        }
    }

    fn service_at(&self, t: f64) -> f64 {
        match self.service_change {
            Some((at, s)) if t >= at => s,
            _ => self.service,
        }
    }
}

/// One point of the limit's history: from `time` on, the limit was `limit`.
#[derive(Debug, Clone, Copy)]
pub struct Step {
    pub time: f64,
    pub limit: usize,
    pub probing: bool,
}

#[derive(Debug, Clone, Default)]
pub struct SimResult {
    pub steps: Vec<Step>,
    /// (completion time, rtt)
    pub completions: Vec<(f64, f64)>,
    pub refusals: u64,
}

#[derive(Debug, Clone, Copy)]
struct Request {
    client: usize,
    admitted: f64,
    inflight: usize,
}

#[derive(Debug, Clone, Copy)]
enum Event {
    Arrive(usize),
    Done(Request),
}

struct Scheduled {
    time: f64,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    // Reversed: BinaryHeap pops the largest, the simulation wants the earliest.
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .time
            .total_cmp(&self.time)
            .then(other.seq.cmp(&self.seq))
    }
}

struct Sim<'a> {
    config: &'a SimConfig,
    limiter: Limiter,
    rng: Rng,
    events: BinaryHeap<Scheduled>,
    seq: u64,
    in_flight: usize,
    busy: usize,
    queue: VecDeque<Request>,
    result: SimResult,
}

impl Sim<'_> {
    fn schedule(&mut self, time: f64, event: Event) {
        self.seq += 1;
        self.events.push(Scheduled {
            time,
            seq: self.seq,
            event,
        });
    }

    fn record(&mut self, time: f64) {
        let limit = self.limiter.limit();
        let probing = self.limiter.probing();
        match self.result.steps.last() {
            Some(last) if last.limit == limit && last.probing == probing => {}
            _ => self.result.steps.push(Step {
                time,
                limit,
                probing,
            }),
        }
    }

    fn start(&mut self, now: f64, request: Request) {
        self.busy += 1;
        let s = self.config.service_at(now);
        let service = s * (1.0 + self.config.jitter * (2.0 * self.rng.next_f64() - 1.0));
        self.schedule(now + service, Event::Done(request));
    }

    fn arrive(&mut self, now: f64, client: usize) {
        if self.in_flight < self.limiter.limit() {
            self.in_flight += 1;
            let request = Request {
                client,
                admitted: now,
                inflight: self.in_flight,
            };
            if self.busy < self.config.workers {
                self.start(now, request);
            } else {
                self.queue.push_back(request);
            }
        } else {
            self.result.refusals += 1;
            self.limiter.poll(now);
            self.record(now);
            let delay = self.config.retry_delay * (0.5 + self.rng.next_f64());
            self.schedule(now + delay, Event::Arrive(client));
        }
    }

    fn done(&mut self, now: f64, request: Request) {
        self.in_flight -= 1;
        self.busy -= 1;
        let rtt = now - request.admitted;
        self.result.completions.push((now, rtt));
        self.limiter.on_sample(now, rtt, request.inflight, false);
        self.record(now);
        if let Some(next) = self.queue.pop_front() {
            self.start(now, next);
        }
        self.arrive(now, request.client);
    }
}

pub fn run(config: &SimConfig, limiter: LimiterConfig) -> SimResult {
    let mut sim = Sim {
        config,
        limiter: Limiter::new(limiter).expect("valid limiter config"),
        rng: Rng::new(config.seed),
        events: BinaryHeap::new(),
        seq: 0,
        in_flight: 0,
        busy: 0,
        queue: VecDeque::new(),
        result: SimResult::default(),
    };
    sim.record(0.0);
    for client in 0..config.clients {
        // Clients start spread over the first millisecond.
        let at = 0.001 * client as f64 / config.clients as f64;
        sim.schedule(at, Event::Arrive(client));
    }
    while let Some(Scheduled { time, event, .. }) = sim.events.pop() {
        if time > config.duration {
            break;
        }
        match event {
            Event::Arrive(client) => sim.arrive(time, client),
            Event::Done(request) => sim.done(time, request),
        }
    }
    sim.result
}

/// Grid spacing for time-weighted statistics of the limit.
pub const GRID: f64 = 0.01;

impl SimResult {
    pub fn step_at(&self, t: f64) -> Step {
        let i = self.steps.partition_point(|s| s.time <= t);
        self.steps[i.saturating_sub(1)]
    }

    /// The limit sampled every `GRID` seconds over [from, to); with `skip_probes`, the
    /// moments a probe holds the limit down are left out.
    pub fn limits(&self, from: f64, to: f64, skip_probes: bool) -> Vec<usize> {
        let n = ((to - from) / GRID).round() as usize;
        (0..n)
            .map(|i| self.step_at(from + i as f64 * GRID))
            .filter(|s| !(skip_probes && s.probing))
            .map(|s| s.limit)
            .collect()
    }

    /// (median, min, max) of the limit over [from, to), probes left out.
    pub fn limit_stats(&self, from: f64, to: f64) -> (usize, usize, usize) {
        let mut v = self.limits(from, to, true);
        v.sort_unstable();
        let median = v[v.len() / 2];
        (median, v[0], v[v.len() - 1])
    }

    /// The earliest time after which every two-second median of the limit (probes left
    /// out) is within `tolerance` of `target`, up to `end`; `None` if never. Two seconds
    /// span a few of the limit's up-and-down cycles around the target.
    pub fn converged_at(&self, target: usize, tolerance: f64, end: f64) -> Option<f64> {
        let low = target as f64 * (1.0 - tolerance);
        let high = target as f64 * (1.0 + tolerance);
        let step = 0.1;
        let span = 2.0;
        let mut t = end - span;
        let mut since = None;
        while t >= 0.0 {
            let mut v = self.limits(t, t + span, true);
            v.sort_unstable();
            if v.is_empty() {
                t -= step;
                continue;
            }
            let median = v[v.len() / 2] as f64;
            if median < low || median > high {
                break;
            }
            since = Some(t + span);
            t -= step;
        }
        since
    }

    pub fn rtts(&self, from: f64, to: f64) -> Vec<f64> {
        let mut v: Vec<f64> = self
            .completions
            .iter()
            .filter(|(t, _)| *t >= from && *t < to)
            .map(|(_, rtt)| *rtt)
            .collect();
        v.sort_unstable_by(f64::total_cmp);
        v
    }

    pub fn rtt_percentile(&self, from: f64, to: f64, p: f64) -> f64 {
        let v = self.rtts(from, to);
        let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
        v[i]
    }

    /// Completions per second over [from, to).
    pub fn throughput(&self, from: f64, to: f64) -> f64 {
        self.rtts(from, to).len() as f64 / (to - from)
    }
}
