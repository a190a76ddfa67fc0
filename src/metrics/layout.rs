//! Where every number sits. A region is a header (format, sizes, the table of breaker and check
//! names) followed by the totals slot and the worker slots, all `u64` words read and written
//! only through atomics. The same layout serves the process-local region and the shared file.
//!
//! A slot holds one process's numbers. Counters (requests, histogram buckets and sums, breaker
//! calls) are folded into the totals slot when the process is gone; gauges (in flight, limit,
//! maintenance, draining, breaker state, check up) are dropped with it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::{BreakerState, CallOutcome, NamedKind, Outcome};

/// "TIDEGMET" in the file's first word.
pub const MAGIC: u64 = u64::from_le_bytes(*b"TIDEGMET");
/// Bumped whenever the layout below changes.
pub const VERSION: u64 = 1;

const H_MAGIC: usize = 0;
const H_VERSION: usize = 1;
const H_SLOT_WORDS: usize = 2;
const H_SLOTS: usize = 3;
const H_NAMED: usize = 4;
const H_NAME_BYTES: usize = 5;
const H_CREATOR: usize = 6;
const NAMES_AT: usize = 8;

/// How many breakers and health checks one region can name, together.
pub const NAMED_CAPACITY: usize = 32;
/// The longest breaker or check name, in UTF-8 bytes.
pub const NAME_BYTES: usize = 96;
const NAME_WORDS: usize = NAME_BYTES / 8;
/// A name entry: its kind (0 while free), its length, its bytes.
const ENTRY_WORDS: usize = 2 + NAME_WORDS;
pub const HEADER_WORDS: usize = 512;
const _: () = assert!(NAMES_AT + NAMED_CAPACITY * ENTRY_WORDS <= HEADER_WORDS);

pub const SLOT_WORDS: usize = 256;
/// The owner's pid; 0 while the slot is free.
const S_PID: usize = 0;
const REQUESTS_AT: usize = 2;
const DURATION_AT: usize = REQUESTS_AT + 16;
const QUEUE_AT: usize = DURATION_AT + 16;
const IN_FLIGHT: usize = QUEUE_AT + 16;
const LIMIT: usize = IN_FLIGHT + 1;
const MAINTENANCE: usize = IN_FLIGHT + 2;
const DRAINING: usize = IN_FLIGHT + 3;
const NAMED_AT: usize = IN_FLIGHT + 8;
/// Per named entry: its gauge (breaker state or check result), then four call counters.
const NAMED_WORDS: usize = 1 + CallOutcome::ALL.len();
const _: () = assert!(Outcome::ALL.len() <= 16 && HIST_WORDS <= 16);
const _: () = assert!(NAMED_AT + NAMED_CAPACITY * NAMED_WORDS <= SLOT_WORDS);

/// Upper bounds of the histogram buckets, in nanoseconds (5 ms to 10 s, then +Inf).
pub const BOUNDS_NANOS: [u64; 11] = [
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];
/// The bucket counts (the last one is +Inf), then the sum in nanoseconds.
pub const BUCKETS: usize = BOUNDS_NANOS.len() + 1;
const HIST_WORDS: usize = BUCKETS + 1;

/// The number of words in a region with `slots` worker slots.
pub const fn region_words(slots: usize) -> usize {
    HEADER_WORDS + SLOT_WORDS * (1 + slots)
}

/// The words that are counters, relative to a slot's start: what a fold adds to the totals.
fn counter_words() -> impl Iterator<Item = usize> {
    let requests = REQUESTS_AT..REQUESTS_AT + Outcome::ALL.len();
    let duration = DURATION_AT..DURATION_AT + HIST_WORDS;
    let queue = QUEUE_AT..QUEUE_AT + HIST_WORDS;
    let calls = (0..NAMED_CAPACITY).flat_map(|entry| {
        let at = NAMED_AT + entry * NAMED_WORDS;
        at + 1..at + NAMED_WORDS
    });
    requests.chain(duration).chain(queue).chain(calls)
}

/// The bucket a duration of `nanos` falls in: the first whose bound is at least it.
pub fn bucket_of(nanos: u64) -> usize {
    BOUNDS_NANOS.partition_point(|&bound| bound < nanos)
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// One process's numbers. Every write is one relaxed atomic operation.
#[derive(Clone, Copy)]
pub struct Slot<'a>(&'a [AtomicU64; SLOT_WORDS]);

impl<'a> Slot<'a> {
    fn word(&self, at: usize) -> &'a AtomicU64 {
        &self.0[at]
    }

    pub fn count(&self, outcome: Outcome) {
        self.word(REQUESTS_AT + outcome as usize)
            .fetch_add(1, Ordering::Relaxed);
    }

    pub fn enter(&self) {
        self.word(IN_FLIGHT).fetch_add(1, Ordering::Relaxed);
    }

    /// In flight minus one. Wrapping: the sum over slots is read back as a signed number.
    pub fn leave(&self) {
        self.word(IN_FLIGHT).fetch_sub(1, Ordering::Relaxed);
    }

    pub fn observe_duration(&self, duration: Duration) {
        self.observe(DURATION_AT, nanos(duration));
    }

    pub fn observe_queue_time(&self, wait: Duration) {
        self.observe(QUEUE_AT, nanos(wait));
    }

    fn observe(&self, at: usize, nanos: u64) {
        self.word(at + bucket_of(nanos))
            .fetch_add(1, Ordering::Relaxed);
        self.word(at + BUCKETS).fetch_add(nanos, Ordering::Relaxed);
    }

    pub fn set_limit(&self, limit: u64) {
        self.word(LIMIT).store(limit, Ordering::Relaxed);
    }

    pub fn set_maintenance(&self, active: bool) {
        self.word(MAINTENANCE)
            .store(u64::from(active), Ordering::Relaxed);
    }

    pub fn set_draining(&self, draining: bool) {
        self.word(DRAINING)
            .store(u64::from(draining), Ordering::Relaxed);
    }

    fn named(&self, entry: usize, word: usize) -> Option<&'a AtomicU64> {
        (entry < NAMED_CAPACITY).then(|| self.word(NAMED_AT + entry * NAMED_WORDS + word))
    }

    /// Sets a named entry's gauge: a breaker's state code, or a check's (1 down, 2 up).
    pub fn set_named_gauge(&self, entry: usize, code: u64) {
        if let Some(word) = self.named(entry, 0) {
            word.store(code, Ordering::Relaxed);
        }
    }

    pub fn named_gauge(&self, entry: usize) -> u64 {
        self.named(entry, 0)
            .map_or(0, |word| word.load(Ordering::Relaxed))
    }

    pub fn count_call(&self, entry: usize, outcome: CallOutcome) {
        if let Some(word) = self.named(entry, 1 + outcome as usize) {
            word.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn pid(&self) -> u64 {
        self.word(S_PID).load(Ordering::Acquire)
    }

    /// The gauges that describe the process, not its history: what a process copies into the
    /// slot it moves to.
    pub fn copy_gauges_to(&self, other: &Slot<'_>) {
        for at in [LIMIT, MAINTENANCE, DRAINING] {
            other
                .word(at)
                .store(self.word(at).load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }

    fn histogram(&self, at: usize) -> Histogram {
        let mut histogram = Histogram::default();
        for (bucket, count) in histogram.buckets.iter_mut().enumerate() {
            *count = self.word(at + bucket).load(Ordering::Relaxed);
        }
        histogram.sum_nanos = self.word(at + BUCKETS).load(Ordering::Relaxed);
        histogram
    }
}

/// Bucket counts (not cumulative; the last is +Inf) and the sum of the observations.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Histogram {
    pub buckets: [u64; BUCKETS],
    pub sum_nanos: u64,
}

impl Histogram {
    pub fn count(&self) -> u64 {
        self.buckets.iter().fold(0, |a, b| a.wrapping_add(*b))
    }

    fn add(&mut self, other: &Histogram) {
        for (mine, theirs) in self.buckets.iter_mut().zip(other.buckets) {
            *mine = mine.wrapping_add(theirs);
        }
        self.sum_nanos = self.sum_nanos.wrapping_add(other.sum_nanos);
    }
}

/// A breaker or check as summed over a region's live slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedSums {
    pub kind: NamedKind,
    pub name: String,
    /// Breakers: how many live processes have it closed, open, half-open.
    pub states: [u64; 3],
    /// Breakers: calls by `CallOutcome`, dead processes' included.
    pub calls: [u64; CallOutcome::ALL.len()],
    /// Checks: up in every live process that ran it; `None` when none has.
    pub up: Option<bool>,
}

/// Everything a scrape shows, summed over the totals slot and the live slots.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Sums {
    pub requests: [u64; Outcome::ALL.len()],
    pub duration: Histogram,
    pub queue_time: Histogram,
    pub in_flight: u64,
    pub limit: u64,
    pub maintenance: bool,
    pub draining: bool,
    pub named: Vec<NamedSums>,
    /// How many live processes the sums cover.
    pub processes: usize,
}

/// Why a file is not a metrics region this build can use.
pub type BadHeader = String;

/// A view of a region's words: the header, the totals slot, `slots` worker slots.
#[derive(Clone, Copy)]
pub struct Region<'a> {
    words: &'a [AtomicU64],
    slots: usize,
}

impl<'a> Region<'a> {
    /// `None` unless `words` holds exactly a region of `slots` worker slots.
    pub fn new(words: &'a [AtomicU64], slots: usize) -> Option<Self> {
        (words.len() == region_words(slots)).then_some(Self { words, slots })
    }

    /// A region known to have the right length (a static of `region_words(slots)` words).
    pub const fn fixed(words: &'a [AtomicU64], slots: usize) -> Self {
        assert!(words.len() == region_words(slots));
        Self { words, slots }
    }

    /// Reads a shared file's header and gives the region it describes, or why not.
    pub fn from_header(words: &'a [AtomicU64]) -> Result<Self, BadHeader> {
        if words.len() < HEADER_WORDS {
            return Err(format!(
                "{} bytes is shorter than a header",
                words.len() * 8
            ));
        }
        let field = |at: usize| words[at].load(Ordering::Acquire);
        if field(H_MAGIC) != MAGIC {
            return Err("not a tidegate metrics file (bad magic)".to_owned());
        }
        let expect = [
            (H_VERSION, VERSION, "version"),
            (H_SLOT_WORDS, SLOT_WORDS as u64, "slot size"),
            (H_NAMED, NAMED_CAPACITY as u64, "name capacity"),
            (H_NAME_BYTES, NAME_BYTES as u64, "name length"),
        ];
        for (at, want, what) in expect {
            if field(at) != want {
                return Err(format!(
                    "{what} {} where this version of tidegate uses {want}",
                    field(at)
                ));
            }
        }
        let slots = usize::try_from(field(H_SLOTS)).unwrap_or(usize::MAX);
        let fits = slots <= super::MAX_SLOTS && words.len() == region_words(slots);
        if !fits {
            return Err(format!(
                "header says {slots} slots but the file holds {} bytes",
                words.len() * 8
            ));
        }
        Ok(Self { words, slots })
    }

    /// Writes the header of a new, zeroed region (the magic last).
    pub fn init_header(&self, creator: u32) {
        let set = |at: usize, value: u64| self.words[at].store(value, Ordering::Relaxed);
        set(H_VERSION, VERSION);
        set(H_SLOT_WORDS, SLOT_WORDS as u64);
        set(H_SLOTS, self.slots as u64);
        set(H_NAMED, NAMED_CAPACITY as u64);
        set(H_NAME_BYTES, NAME_BYTES as u64);
        set(H_CREATOR, u64::from(creator));
        self.words[H_MAGIC].store(MAGIC, Ordering::Release);
    }

    pub fn slots(&self) -> usize {
        self.slots
    }

    /// The totals slot (index `None`) or worker slot `i`.
    pub fn slot(&self, index: Option<usize>) -> Option<Slot<'a>> {
        let at = slot_offset(index);
        let within = index.is_none_or(|i| i < self.slots);
        within
            .then(|| self.words.get(at..)?.first_chunk::<SLOT_WORDS>())
            .flatten()
            .map(Slot)
    }

    fn slot_words(&self, index: usize) -> impl Iterator<Item = &'a AtomicU64> {
        let at = slot_offset(Some(index));
        self.words[at..at + SLOT_WORDS].iter()
    }

    /// Takes a slot for `pid`: one it held before (a dead process with the same pid: folded
    /// first), else a free one, else one whose owner is dead (folded first). `None` when every
    /// slot belongs to a live process. The caller holds the region's lock.
    pub fn claim(&self, pid: u32, alive: &dyn Fn(u64) -> bool) -> Option<usize> {
        let pid = u64::from(pid);
        let owners: Vec<u64> = (0..self.slots)
            .map(|i| self.slot(Some(i)).map_or(0, |s| s.pid()))
            .collect();
        let pick = owners
            .iter()
            .position(|&owner| owner == pid)
            .or_else(|| owners.iter().position(|&owner| owner == 0))
            .or_else(|| owners.iter().position(|&owner| !alive(owner)))?;
        if owners[pick] != 0 {
            self.fold(pick);
        }
        self.words[slot_offset(Some(pick)) + S_PID]
            .compare_exchange(0, pid, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| pick)
    }

    /// Slot `index`'s owner, if any.
    pub fn owner(&self, index: usize) -> u64 {
        self.slot(Some(index)).map_or(0, |s| s.pid())
    }

    /// Adds slot `index`'s counters into the totals, zeroes the slot and frees it. The caller
    /// holds the region's lock, so no scrape sees the counts in both places or in neither.
    pub fn fold(&self, index: usize) {
        let at = slot_offset(Some(index));
        let totals = slot_offset(None);
        for word in counter_words() {
            let value = self.words[at + word].swap(0, Ordering::AcqRel);
            self.words[totals + word].fetch_add(value, Ordering::AcqRel);
        }
        for word in self.slot_words(index).skip(1) {
            word.store(0, Ordering::Relaxed);
        }
        self.words[at + S_PID].store(0, Ordering::Release);
    }

    /// The slot owned by `pid`, if any.
    pub fn slot_of(&self, pid: u32) -> Option<usize> {
        (0..self.slots).find(|&i| self.owner(i) == u64::from(pid))
    }

    /// Looks `name` of `kind` up in the name table, adding it when new; `None` when the table
    /// is full. The caller holds the region's lock.
    pub fn entry(&self, kind: NamedKind, name: &str) -> Option<usize> {
        let bytes = name.as_bytes();
        if bytes.len() > NAME_BYTES {
            return None;
        }
        let mut free = None;
        for entry in 0..NAMED_CAPACITY {
            match self.read_entry(entry) {
                Some((k, n)) if k == kind && n == name => return Some(entry),
                None if free.is_none() && self.entry_kind(entry) == 0 => free = Some(entry),
                _ => {}
            }
        }
        let entry = free?;
        let at = NAMES_AT + entry * ENTRY_WORDS;
        let mut padded = [0u8; NAME_BYTES];
        padded[..bytes.len()].copy_from_slice(bytes);
        for (i, chunk) in padded.chunks_exact(8).enumerate() {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.words[at + 2 + i].store(u64::from_le_bytes(word), Ordering::Relaxed);
        }
        self.words[at + 1].store(bytes.len() as u64, Ordering::Relaxed);
        self.words[at].store(kind as u64, Ordering::Release);
        Some(entry)
    }

    fn entry_kind(&self, entry: usize) -> u64 {
        self.words[NAMES_AT + entry * ENTRY_WORDS].load(Ordering::Acquire)
    }

    /// Entry `entry`'s kind and name; `None` when free or unreadable (a damaged file).
    fn read_entry(&self, entry: usize) -> Option<(NamedKind, String)> {
        let at = NAMES_AT + entry * ENTRY_WORDS;
        let kind = NamedKind::from_code(self.entry_kind(entry))?;
        let len = usize::try_from(self.words[at + 1].load(Ordering::Relaxed)).ok()?;
        if len > NAME_BYTES {
            return None;
        }
        let bytes: Vec<u8> = (0..NAME_WORDS)
            .flat_map(|i| self.words[at + 2 + i].load(Ordering::Relaxed).to_le_bytes())
            .take(len)
            .collect();
        String::from_utf8(bytes).ok().map(|name| (kind, name))
    }

    /// Sums the totals slot and every slot whose owner `live` says is alive; a free slot
    /// counts only when not `claimed_only` (the process-local region, whose one slot is never
    /// claimed). With `fold_dead`, a slot whose owner is dead is folded into the totals first
    /// (the caller holds the lock).
    pub fn sums(&self, live: &dyn Fn(u64) -> bool, claimed_only: bool, fold_dead: bool) -> Sums {
        let mut sums = Sums::default();
        let mut in_flight = 0u64;
        let mut live_slots = Vec::new();
        for index in 0..self.slots {
            match self.owner(index) {
                0 if !claimed_only => live_slots.push(index),
                0 => {}
                pid if live(pid) => live_slots.push(index),
                _ if fold_dead => self.fold(index),
                _ => {}
            }
        }
        let names: Vec<(usize, NamedKind, String)> = (0..NAMED_CAPACITY)
            .filter_map(|e| self.read_entry(e).map(|(k, n)| (e, k, n)))
            .collect();
        sums.named = names
            .iter()
            .map(|(_, kind, name)| NamedSums {
                kind: *kind,
                name: name.clone(),
                states: [0; 3],
                calls: [0; CallOutcome::ALL.len()],
                up: None,
            })
            .collect();
        let counted = std::iter::once(None).chain(live_slots.iter().map(|&i| Some(i)));
        for index in counted {
            let Some(slot) = self.slot(index) else {
                continue;
            };
            for (outcome, total) in sums.requests.iter_mut().enumerate() {
                let value = slot.word(REQUESTS_AT + outcome).load(Ordering::Relaxed);
                *total = total.wrapping_add(value);
            }
            sums.duration.add(&slot.histogram(DURATION_AT));
            sums.queue_time.add(&slot.histogram(QUEUE_AT));
            for ((entry, _, _), named) in names.iter().zip(sums.named.iter_mut()) {
                for (outcome, total) in named.calls.iter_mut().enumerate() {
                    let value = slot
                        .named(*entry, 1 + outcome)
                        .map_or(0, |w| w.load(Ordering::Relaxed));
                    *total = total.wrapping_add(value);
                }
            }
            if index.is_none() {
                continue; // a dead process's gauges are not kept
            }
            sums.processes += 1;
            in_flight = in_flight.wrapping_add(slot.word(IN_FLIGHT).load(Ordering::Relaxed));
            sums.limit = sums
                .limit
                .saturating_add(slot.word(LIMIT).load(Ordering::Relaxed));
            sums.maintenance |= slot.word(MAINTENANCE).load(Ordering::Relaxed) != 0;
            sums.draining |= slot.word(DRAINING).load(Ordering::Relaxed) != 0;
            for ((entry, kind, _), named) in names.iter().zip(sums.named.iter_mut()) {
                let code = slot.named_gauge(*entry);
                match kind {
                    NamedKind::Breaker => {
                        if let Some(state) = BreakerState::from_code(code) {
                            named.states[state as usize] += 1;
                        }
                    }
                    NamedKind::Check => match code {
                        1 => named.up = Some(false),
                        2 => named.up = Some(named.up.unwrap_or(true)),
                        _ => {}
                    },
                }
            }
        }
        // A release counted in one slot and its admission in another (a process that moved
        // slots at start-up) can leave the sum below zero for a moment: show 0.
        sums.in_flight = u64::try_from(in_flight as i64).unwrap_or(0);
        sums
    }
}

/// Where slot `index` (or the totals slot, `None`) starts.
pub const fn slot_offset(index: Option<usize>) -> usize {
    match index {
        None => HEADER_WORDS,
        Some(i) => HEADER_WORDS + SLOT_WORDS * (1 + i),
    }
}
