//! Exposition: the sums as metric families, written in the Prometheus text format 0.0.4 or in
//! OpenMetrics 1.0.0, whichever the scraper's `Accept` prefers.

use std::fmt::Write as _;

use super::layout::{Histogram, Sums, BOUNDS_NANOS, BUCKETS};
use super::{BreakerState, CallOutcome, NamedKind, Outcome};
use crate::accept::weight;

/// The bucket bounds as `le` label values, as Prometheus clients write them.
pub const LE: [&str; BUCKETS] = [
    "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "2.5", "5.0", "10.0", "+Inf",
];
const _: () = assert!(LE.len() == BOUNDS_NANOS.len() + 1);

/// An exposition format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `text/plain; version=0.0.4`.
    Prometheus,
    /// `application/openmetrics-text; version=1.0.0`.
    OpenMetrics,
}

impl Format {
    /// OpenMetrics when `accept` weighs it above the Prometheus text format (as Prometheus
    /// itself asks); the text format otherwise, and when there is no `Accept`.
    pub fn from_accept(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Prometheus;
        };
        let open = weight(accept, "application", "openmetrics-text");
        if open > 0 && open > weight(accept, "text", "plain") {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    Int(u64),
    Float(f64),
}

impl Value {
    pub fn as_f64(self) -> f64 {
        match self {
            Value::Int(n) => n as f64,
            Value::Float(x) => x,
        }
    }
}

/// One sample: the family's name plus `suffix`, its labels, its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub suffix: &'static str,
    pub labels: Vec<(&'static str, String)>,
    pub value: Value,
}

/// A metric family, named as OpenMetrics names it (a counter without `_total`).
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
    pub unit: Option<&'static str>,
    pub samples: Vec<Sample>,
}

fn sample(suffix: &'static str, labels: Vec<(&'static str, String)>, value: Value) -> Sample {
    Sample {
        suffix,
        labels,
        value,
    }
}

fn gauge(name: &'static str, help: &'static str, value: u64) -> Family {
    Family {
        name,
        kind: Kind::Gauge,
        help,
        unit: None,
        samples: vec![sample("", vec![], Value::Int(value))],
    }
}

fn histogram(name: &'static str, help: &'static str, histogram: &Histogram) -> Family {
    let mut samples = Vec::with_capacity(BUCKETS + 2);
    let mut cumulative = 0u64;
    for (le, count) in LE.iter().zip(histogram.buckets) {
        cumulative = cumulative.wrapping_add(count);
        samples.push(sample(
            "_bucket",
            vec![("le", (*le).to_owned())],
            Value::Int(cumulative),
        ));
    }
    samples.push(sample(
        "_sum",
        vec![],
        Value::Float(histogram.sum_nanos as f64 / 1e9),
    ));
    samples.push(sample("_count", vec![], Value::Int(cumulative)));
    Family {
        name,
        kind: Kind::Histogram,
        help,
        unit: Some("seconds"),
        samples,
    }
}

/// Every family, in a fixed order. Breaker and check families list only what was registered
/// (the check family only the checks that have run).
pub fn families(sums: &Sums) -> Vec<Family> {
    let requests = Outcome::ALL
        .iter()
        .zip(sums.requests)
        .map(|(outcome, count)| {
            let (outcome, reason) = outcome.labels();
            sample(
                "_total",
                vec![
                    ("outcome", outcome.to_owned()),
                    ("reason", reason.to_owned()),
                ],
                Value::Int(count),
            )
        })
        .collect();
    let breakers = || sums.named.iter().filter(|n| n.kind == NamedKind::Breaker);
    let states = breakers()
        .flat_map(|b| {
            BreakerState::ALL.iter().map(move |state| {
                sample(
                    "",
                    vec![
                        ("breaker", b.name.clone()),
                        ("state", state.label().to_owned()),
                    ],
                    Value::Int(b.states[*state as usize]),
                )
            })
        })
        .collect();
    let calls = breakers()
        .flat_map(|b| {
            CallOutcome::ALL.iter().map(move |outcome| {
                sample(
                    "_total",
                    vec![
                        ("breaker", b.name.clone()),
                        ("outcome", outcome.label().to_owned()),
                    ],
                    Value::Int(b.calls[*outcome as usize]),
                )
            })
        })
        .collect();
    let checks = sums
        .named
        .iter()
        .filter(|n| n.kind == NamedKind::Check)
        .filter_map(|c| {
            let up = c.up?;
            Some(sample(
                "",
                vec![("check", c.name.clone())],
                Value::Int(u64::from(up)),
            ))
        })
        .collect();
    vec![
        Family {
            name: "tidegate_requests",
            kind: Kind::Counter,
            help: "Requests decided by tidegate, by outcome and reason.",
            unit: None,
            samples: requests,
        },
        histogram(
            "tidegate_request_duration_seconds",
            "Time from admission to the end of the response body, for admitted requests.",
            &sums.duration,
        ),
        histogram(
            "tidegate_queue_time_seconds",
            "Time requests waited in front of the app, from X-Request-Start.",
            &sums.queue_time,
        ),
        gauge(
            "tidegate_in_flight_requests",
            "Admitted requests not yet finished.",
            sums.in_flight,
        ),
        gauge(
            "tidegate_concurrency_limit",
            "The concurrency limit, summed over live workers (0: no gate).",
            sums.limit,
        ),
        gauge(
            "tidegate_maintenance_active",
            "1 while maintenance is on in any live worker.",
            u64::from(sums.maintenance),
        ),
        gauge(
            "tidegate_draining",
            "1 while any live worker is draining.",
            u64::from(sums.draining),
        ),
        Family {
            name: "tidegate_breaker_state",
            kind: Kind::Gauge,
            help: "Live workers whose circuit breaker is in each state.",
            unit: None,
            samples: states,
        },
        Family {
            name: "tidegate_breaker_calls",
            kind: Kind::Counter,
            help: "Calls through each circuit breaker, by outcome.",
            unit: None,
            samples: calls,
        },
        Family {
            name: "tidegate_health_check_up",
            kind: Kind::Gauge,
            help: "1 when the health check passed at its last run in every live worker.",
            unit: None,
            samples: checks,
        },
    ]
}

/// `text` as a label value: backslash, double quote and newline escaped.
fn escape_label(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn write_value(out: &mut String, value: Value) {
    let _ = match value {
        Value::Int(n) => write!(out, "{n}"),
        Value::Float(x) if x.is_finite() => write!(out, "{x}"),
        Value::Float(x) if x.is_nan() => write!(out, "NaN"),
        Value::Float(x) => write!(out, "{}Inf", if x > 0.0 { "+" } else { "-" }),
    };
}

/// The families in `format`.
pub fn render(families: &[Family], format: Format) -> String {
    let mut out = String::with_capacity(4096);
    for family in families.iter().filter(|f| !f.samples.is_empty()) {
        let kind = family.kind.label();
        let name = family.name;
        match format {
            Format::Prometheus => {
                let suffix = if family.kind == Kind::Counter {
                    "_total"
                } else {
                    ""
                };
                let _ = writeln!(out, "# HELP {name}{suffix} {}", family.help);
                let _ = writeln!(out, "# TYPE {name}{suffix} {kind}");
            }
            Format::OpenMetrics => {
                let _ = writeln!(out, "# TYPE {name} {kind}");
                if let Some(unit) = family.unit {
                    let _ = writeln!(out, "# UNIT {name} {unit}");
                }
                let _ = writeln!(out, "# HELP {name} {}", family.help);
            }
        }
        for sample in &family.samples {
            out.push_str(name);
            out.push_str(sample.suffix);
            if !sample.labels.is_empty() {
                out.push('{');
                for (i, (label, value)) in sample.labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(label);
                    out.push_str("=\"");
                    escape_label(&mut out, value);
                    out.push('"');
                }
                out.push('}');
            }
            out.push(' ');
            write_value(&mut out, sample.value);
            out.push('\n');
        }
    }
    if format == Format::OpenMetrics {
        out.push_str("# EOF\n");
    }
    out
}
