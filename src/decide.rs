//! The one per-request decision, for every adapter.
//!
//! In order: the routes tidegate owns (readiness, liveness) and exempt paths; exempt views (the
//! adapter says which); maintenance, with its bypass; the gate. An adapter (the WSGI middleware,
//! the Flask hooks, the Django middleware) translates its request into a WSGI environ (Flask's
//! `request.environ` and Django's `request.META` are one) plus exemption flags, asks
//! [`Decider::decide`], and turns the [`Verdict`] into its response. Facts are read from the
//! environ only when a decision needs them: the path always, the bypass facts only while
//! maintenance is on, `Accept` only when refusing.
//!
//! After maintenance: queue time (only with `max_queue_time`: the `X-Request-Start` header,
//! see [`queue`]), then the request's priority (only when priorities are in use) and the gate,
//! fixed or adaptive, which the decision admits to the same way.
//!
//! Refusals are rendered by one renderer, `tidegate.responses.ErrorPages` (Python): the overload
//! 503 ahead of time, one variant per Retry-After the jitter can pick; the others on demand,
//! through the policy's callbacks. Every refusal is a `Rendered` that carries its reason and
//! Retry-After.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};

use crate::accept::str_prefers_html;
use crate::errors::config_error;
use crate::gate::{AnyGatePy, Gate, PermitPy, Ticket, WHOLE_SHARE};
use crate::maintenance::{Maintenance, MaintenanceSwitchPy};
use crate::metrics::{self, Outcome};

mod py;
pub mod queue;

pub use py::{DecisionCore, PreprocessRequest, ProcessResponse};

/// The request may skip the gate (an exempt view).
pub const EXEMPT_GATE: u8 = 1;
/// The request may skip maintenance (an exempt view).
pub const EXEMPT_MAINTENANCE: u8 = 1 << 1;
/// A view's priority, in the same flags: `PRIORITY_*` (or none of them: not marked).
pub const PRIORITY_CRITICAL: u8 = 1 << 2;
pub const PRIORITY_DEFAULT: u8 = 2 << 2;
pub const PRIORITY_SHEDDABLE: u8 = 3 << 2;
const PRIORITY_MASK: u8 = 3 << 2;

/// The priority levels, as `priority` callables return them and `priority_shares` index them.
pub const CRITICAL: usize = 0;
pub const DEFAULT: usize = 1;
pub const SHEDDABLE: usize = 2;

/// One way of saying the overload 503 (for one Retry-After), ready for any adapter.
pub struct Rendition {
    /// The `Rendered` itself, for adapters that build their own response object.
    pub rendered: Py<PyAny>,
    /// Its status line, headers as `(name, value)` tuples and body, for the WSGI path.
    pub status: Py<PyAny>,
    pub headers: Vec<Py<PyTuple>>,
    pub body: Py<PyTuple>,
}

/// The overload 503 for one Retry-After, as JSON and as HTML.
pub struct Variant {
    pub json: Rendition,
    pub html: Rendition,
}

/// What the decision says about one request.
pub enum Verdict<'py> {
    /// Pass to the app; holding a slot of the gate when there is one, to give back once.
    Admit(Option<Admission<'py>>),
    /// Answer with this `Rendered` (a route of ours, or a refusal).
    Answer(Bound<'py, PyAny>),
    /// The overload 503: answer with the variant at `index` of the decision's variants (as
    /// HTML when `html`).
    Shed {
        variant: &'py Variant,
        index: usize,
        html: bool,
    },
}

/// The slot of the gate an admitted request holds: counted as admitted in the metrics, and
/// given back once with [`give_back`].
pub struct Admission<'py> {
    pub gate: &'py Arc<Gate>,
    pub ticket: Ticket,
    /// When it was admitted, for `tidegate_request_duration_seconds` (`None`: metrics off).
    pub since: Option<Instant>,
}

/// Gives an admitted request's slot back to `gate`: its time since admission (when metrics
/// timed it) goes into the duration histogram, and it leaves the in-flight gauge.
#[inline]
pub fn give_back(gate: &Gate, ticket: Ticket, since: Option<Instant>) {
    gate.release(ticket);
    if let Some(since) = since {
        metrics::release(since.elapsed());
    }
}

/// Everything the decision needs, set once.
pub struct Decider {
    pub gate: Option<Arc<Gate>>,
    pub maintenance: Option<Arc<Maintenance>>,
    /// path -> `None` (exempt: straight to the app) or a callable `(path) -> Rendered | None`
    /// (a route of ours; `None` from it means exempt).
    pub routes: Py<PyDict>,
    /// Bit `n` is set when some route's path is `n` characters long (bit 63: 63 or more), so
    /// most requests skip the lookup in `routes`: a path of another length is none of them.
    route_lengths: u64,
    /// `(environ) -> Rendered | None`, called while maintenance is on; `None` means the
    /// request may bypass it.
    pub on_maintenance: Py<PyAny>,
    /// `(environ, error) -> Rendered`: the dependency 503 for an open breaker's error.
    on_dependency: Py<PyAny>,
    pub variants: Vec<Variant>,
    /// Whether decisions are counted in `tidegate.metrics` (the `metrics` option): `Some(false)`
    /// never, otherwise whenever [`metrics::enabled`] (which `Some(true)` turned on).
    pub record: Option<bool>,
    seed: AtomicU64,
    /// Requests that waited longer in front of the app (`X-Request-Start`) are shed.
    max_queue_time: Option<f64>,
    /// `(environ) -> int`: the request's level (`CRITICAL`, `DEFAULT`, `SHEDDABLE`), from the
    /// `priority` callable and the priority header; `None` when neither is configured.
    priority: Option<Py<PyAny>>,
    /// Thousandths of the limit each level may fill.
    shares: [u32; 3],
    /// Whether shares apply: priorities are configured, or a view marked with one was asked
    /// for. Until then every request may fill the whole limit.
    priorities: AtomicBool,
}

/// As Python hands the overload 503 over: one `(json, html)` pair of `Rendered` per
/// Retry-After the jitter can pick.
pub type OverloadRenditions = Vec<(Py<PyAny>, Py<PyAny>)>;

/// What Python configures a decision with: the mapping `Policy.core_config()` returns.
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
pub struct DecisionConfig<'py> {
    gate: Option<AnyGatePy<'py>>,
    maintenance: Option<PyRef<'py, MaintenanceSwitchPy>>,
    routes: Py<PyDict>,
    on_maintenance: Py<PyAny>,
    on_dependency: Py<PyAny>,
    overload: OverloadRenditions,
    metrics: Option<bool>,
    /// Seconds, or `None`.
    max_queue_time: Option<f64>,
    /// `(environ) -> int` or `None`.
    priority: Option<Py<PyAny>>,
    /// Fractions of the limit for critical, default and sheddable requests.
    priority_shares: (f64, f64, f64),
    /// Whether shares apply from the start.
    priorities: bool,
}

impl Decider {
    pub fn new(py: Python<'_>, config: DecisionConfig<'_>) -> PyResult<Self> {
        let DecisionConfig {
            gate,
            maintenance,
            routes,
            on_maintenance,
            on_dependency,
            overload,
            metrics: record,
            max_queue_time,
            priority,
            priority_shares,
            priorities,
        } = config;
        if max_queue_time.is_some_and(|t| !(t.is_finite() && t > 0.0)) {
            return Err(config_error(
                "max_queue_time: must be a finite number of seconds > 0",
            ));
        }
        let (critical, default, sheddable) = priority_shares;
        let mut shares = [WHOLE_SHARE; 3];
        for (slot, share) in shares.iter_mut().zip([critical, default, sheddable]) {
            if !(share.is_finite() && share > 0.0 && share <= 1.0) {
                return Err(config_error("priority_shares: each must be in (0, 1]"));
            }
            // Thousandths, at least one.
            *slot = ((share * f64::from(WHOLE_SHARE)).round() as u32).max(1);
        }
        if overload.is_empty() {
            return Err(config_error("overload: must hold at least one rendition"));
        }
        let variants = overload
            .into_iter()
            .map(|(json, html)| {
                Ok(Variant {
                    json: rendition(py, json)?,
                    html: rendition(py, html)?,
                })
            })
            .collect::<PyResult<Vec<_>>>()?;
        // A copy: the lengths below must stay those of the routes looked up.
        let routes = routes.bind(py).copy()?;
        let mut route_lengths = 0;
        for path in routes.keys() {
            route_lengths |= match path.cast::<PyString>() {
                Ok(path) => length_bit(path.len()?),
                // Only a str key can match a path; anything else turns the shortcut off.
                Err(_) => u64::MAX,
            };
        }
        if record == Some(true) {
            metrics::enable();
        }
        if record != Some(false) {
            if let Some(gate) = &gate {
                metrics::set_concurrency_limit(gate.gate().limit());
            }
        }
        Ok(Self {
            gate: gate.map(|g| g.gate()),
            routes: routes.unbind(),
            route_lengths,
            maintenance: maintenance.map(|m| m.core.clone()),
            on_maintenance,
            on_dependency,
            variants,
            record,
            seed: AtomicU64::new(0x9E37_79B9_7F4A_7C15),
            max_queue_time,
            priority,
            shares,
            priorities: AtomicBool::new(priorities),
        })
    }

    /// The decision. `args` is what `on_maintenance` is called with (the environ, in a tuple
    /// the caller already has); `exempt` holds `EXEMPT_*` flags for the request's view.
    pub fn decide<'py>(
        &'py self,
        py: Python<'py>,
        environ: &Bound<'py, PyAny>,
        environ_dict: Option<&Bound<'py, PyDict>>,
        exempt: u8,
    ) -> PyResult<Verdict<'py>> {
        // Only a str can name a route (and an unhashable value must not raise here).
        if let Some(path) = lookup(environ, environ_dict, intern!(py, "PATH_INFO"))?
            .filter(|path| self.may_be_route(path))
        {
            if let Some(route) = self.routes.bind(py).get_item(&path)? {
                if route.is_none() {
                    self.count(Outcome::Exempt);
                    return Ok(Verdict::Admit(None));
                }
                let answer = route.call1((path, environ))?;
                return Ok(if answer.is_none() {
                    self.count(Outcome::Exempt);
                    Verdict::Admit(None)
                } else {
                    self.count(Outcome::Probe);
                    Verdict::Answer(answer)
                });
            }
        }
        if exempt & EXEMPT_MAINTENANCE == 0 && self.maintenance.as_ref().is_some_and(|m| m.active())
        {
            let answer = self.on_maintenance.bind(py).call1((environ,))?;
            if !answer.is_none() {
                self.count(Outcome::RefusedMaintenance);
                return Ok(Verdict::Answer(answer));
            }
        }
        if exempt & EXEMPT_GATE != 0 {
            self.count(if self.gate.is_some() {
                Outcome::Exempt
            } else {
                Outcome::Admitted
            });
            return Ok(Verdict::Admit(None));
        }
        if let Some(limit) = self.max_queue_time {
            if let Some(waited) = self.queue_time(py, environ, environ_dict)? {
                if waited > limit {
                    self.count(Outcome::ShedQueueTime);
                    return self.shed(py, environ, environ_dict);
                }
            }
        }
        let Some(gate) = self.gate.as_ref() else {
            self.count(Outcome::Admitted);
            return Ok(Verdict::Admit(None));
        };
        let share = self.share(environ, exempt)?;
        if let Some(ticket) = gate.try_acquire_share(share) {
            let since = self.since();
            return Ok(Verdict::Admit(Some(Admission {
                gate,
                ticket,
                since,
            })));
        }
        // Refused below the limit: its level's share was full.
        self.count(if share < WHOLE_SHARE && gate.in_flight() < gate.limit() {
            Outcome::ShedPriority
        } else {
            Outcome::ShedOverload
        });
        self.shed(py, environ, environ_dict)
    }

    /// The overload 503, in one of its variants.
    fn shed<'py>(
        &'py self,
        py: Python<'py>,
        environ: &Bound<'py, PyAny>,
        environ_dict: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Verdict<'py>> {
        let index = self.pick(self.variants.len());
        let html = match lookup(environ, environ_dict, intern!(py, "HTTP_ACCEPT"))? {
            Some(accept) => accept.cast::<PyString>().is_ok_and(str_prefers_html),
            None => false,
        };
        Ok(Verdict::Shed {
            variant: &self.variants[index],
            index,
            html,
        })
    }

    /// The dependency 503 for `error` (an open breaker's `CircuitOpenError` out of the app),
    /// counted as failed fast.
    pub fn dependency<'py>(
        &self,
        environ: &Bound<'py, PyAny>,
        error: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.count(Outcome::FailedFastDependency);
        self.on_dependency
            .bind(environ.py())
            .call1((environ, error))
    }

    /// Counts a decision in the metrics, when they are on.
    #[inline]
    pub fn count(&self, outcome: Outcome) {
        if self.counting() {
            metrics::record(outcome);
        }
    }

    /// Whether this decision counts in the metrics now.
    #[inline]
    fn counting(&self) -> bool {
        self.record != Some(false) && metrics::enabled()
    }

    /// Counts a request admitted with a slot and starts its clock for
    /// `tidegate_request_duration_seconds`: the instant [`give_back`] takes when the slot goes
    /// back, `None` while metrics are off.
    #[inline]
    fn since(&self) -> Option<Instant> {
        if !self.counting() {
            return None;
        }
        metrics::admit();
        Some(Instant::now())
    }

    /// How long the request waited in front of the app by its `X-Request-Start`, when the
    /// header says so believably; recorded in `tidegate_queue_time_seconds` and in the
    /// environ (`tidegate.queue_time`, seconds).
    fn queue_time(
        &self,
        py: Python<'_>,
        environ: &Bound<'_, PyAny>,
        environ_dict: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Option<f64>> {
        let Some(header) = lookup(environ, environ_dict, intern!(py, "HTTP_X_REQUEST_START"))?
        else {
            return Ok(None);
        };
        let Ok(header) = header.cast::<PyString>() else {
            return Ok(None);
        };
        let Ok(text) = header.to_cow() else {
            return Ok(None);
        };
        let Some(waited) = queue::waited(&text, queue::now_epoch()) else {
            return Ok(None);
        };
        if self.counting() {
            metrics::observe_queue_time(std::time::Duration::from_secs_f64(waited));
        }
        if let Some(dict) = environ_dict {
            dict.set_item(intern!(py, QUEUE_TIME_KEY), waited)?;
        }
        Ok(Some(waited))
    }

    /// The share of the limit this request may fill: the whole of it until priorities are in
    /// use; then its level's (a view's mark, else the `priority` callable and header).
    fn share(&self, environ: &Bound<'_, PyAny>, exempt: u8) -> PyResult<u32> {
        let marked = exempt & PRIORITY_MASK;
        if marked != 0 {
            if !self.priorities.load(Ordering::Relaxed) {
                self.priorities.store(true, Ordering::Relaxed);
            }
            return Ok(self.shares[usize::from((marked >> 2) - 1)]);
        }
        if !self.priorities.load(Ordering::Relaxed) {
            return Ok(WHOLE_SHARE);
        }
        let level = match &self.priority {
            Some(priority) => priority
                .bind(environ.py())
                .call1((environ,))?
                .extract::<usize>()
                .ok()
                .filter(|level| *level <= SHEDDABLE)
                .unwrap_or(DEFAULT),
            None => DEFAULT,
        };
        Ok(self.shares[level])
    }

    /// Whether `path` can name a route: a str (of a length some route has, when it is a plain
    /// one).
    fn may_be_route(&self, path: &Bound<'_, PyAny>) -> bool {
        if !path.is_exact_instance_of::<PyString>() {
            return path.is_instance_of::<PyString>();
        }
        path.len()
            .map_or(true, |len| self.route_lengths & length_bit(len) != 0)
    }

    /// A cheap, well-spread index for Retry-After jitter (splitmix64 over a shared counter):
    /// the one jitter picker.
    fn pick(&self, n: usize) -> usize {
        if n <= 1 {
            return 0;
        }
        let mut x = self
            .seed
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        x ^= x >> 30;
        x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x ^= x >> 27;
        x = x.wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^= x >> 31;
        (x % n as u64) as usize
    }
}

/// The bit of [`Decider::route_lengths`] for a path of `len` characters.
fn length_bit(len: usize) -> u64 {
    1 << len.min(63)
}

fn rendition(py: Python<'_>, rendered: Py<PyAny>) -> PyResult<Rendition> {
    let bound = rendered.bind(py);
    let headers: Vec<(String, String)> = bound.getattr(intern!(py, "headers"))?.extract()?;
    let headers = headers
        .into_iter()
        .map(|(name, value)| Ok(PyTuple::new(py, [name, value])?.unbind()))
        .collect::<PyResult<Vec<_>>>()?;
    let body = PyTuple::new(py, [bound.getattr(intern!(py, "body"))?])?.unbind();
    Ok(Rendition {
        status: bound.getattr(intern!(py, "status"))?.unbind(),
        rendered,
        headers,
        body,
    })
}

/// `environ[key]` or `None`, without building a `KeyError` when it is missing. `environ` is a
/// WSGI environ (`dict` given as well when it is one), any object with a `get` method, or the
/// view of an ASGI request ([`crate::asgi::Exchange`]).
pub fn lookup<'py>(
    environ: &Bound<'py, PyAny>,
    dict: Option<&Bound<'py, PyDict>>,
    key: &Bound<'py, PyString>,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    match dict {
        Some(dict) => dict.get_item(key),
        None => {
            // An ASGI request's view answers from its scope, without a call through Python.
            if let Ok(view) = environ.cast::<crate::asgi::Exchange>() {
                return view.get().fact(environ.py(), key);
            }
            let value = environ.call_method1(intern!(environ.py(), "get"), (key,))?;
            Ok((!value.is_none()).then_some(value))
        }
    }
}

/// Where the queue-time check leaves what it measured (seconds) in the environ.
pub(crate) const QUEUE_TIME_KEY: &str = "tidegate.queue_time";

/// Where an admitted request's permit waits in its environ.
pub(crate) const PERMIT_KEY: &str = "tidegate.permit";

/// The permit `decide` left in `environ`, unless it was released (or handed over) already.
/// It stays in the environ, released: taking a key out of a dict costs more than all the
/// rest, and a released permit is never released again.
pub fn take_permit<'py>(
    py: Python<'py>,
    environ: &Bound<'py, PyDict>,
) -> PyResult<Option<Bound<'py, PermitPy>>> {
    let Some(found) = environ.get_item(intern!(py, PERMIT_KEY))? else {
        return Ok(None);
    };
    // Only a permit of ours is released; anything else someone put there is left alone.
    Ok(found
        .cast_into::<PermitPy>()
        .ok()
        .filter(|permit| !permit.get().is_released()))
}

/// A fresh header list for `start_response` (servers may add to it).
pub fn header_list<'py>(py: Python<'py>, headers: &[Py<PyTuple>]) -> PyResult<Bound<'py, PyList>> {
    PyList::new(py, headers.iter().map(|h| h.bind(py)))
}

/// Whether the request is a `HEAD`: it gets the headers of a `GET` (its `Content-Length`
/// included) and no body. The one place an answer of ours decides to drop its body.
pub fn is_head(
    py: Python<'_>,
    environ: &Bound<'_, PyAny>,
    environ_dict: Option<&Bound<'_, PyDict>>,
) -> PyResult<bool> {
    match lookup(environ, environ_dict, intern!(py, "REQUEST_METHOD"))? {
        Some(method) => method.eq(intern!(py, "HEAD")),
        None => Ok(false),
    }
}
