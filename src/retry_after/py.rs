//! The Python face of `Retry-After`: the `RetryAfter` class, argument conversion around the
//! plain functions of `crate::retry_after`.

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyFloat, PyInt, PyString};

use super::{parse, RetryAfter, RetryAfterError};
use crate::clock;
use crate::errors::{describe, type_name, ArgError, BeyondDatetime};

/// When a client may come back after a 503.
#[pyclass(name = "RetryAfter", module = "tidegate._tidegate", frozen, eq, hash)]
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RetryAfterPy {
    pub value: RetryAfter,
}

impl RetryAfterPy {
    pub fn new(value: RetryAfter) -> Self {
        Self { value }
    }
}

#[pymethods]
impl RetryAfterPy {
    /// delay-seconds from an int, a float (rounded up) or a `timedelta` (rounded up).
    #[staticmethod]
    fn after(seconds: &Bound<'_, PyAny>) -> PyResult<Self> {
        let out_of_range = || {
            ArgError::value(
                "seconds",
                format!("must be a finite number >= 0, got {}", describe(seconds)),
            )
        };
        if seconds.is_instance_of::<PyBool>() {
            return Err(ArgError::type_(
                "seconds",
                "expected an int, float or datetime.timedelta, got bool",
            )
            .into());
        }
        if let Ok(int) = seconds.cast::<PyInt>() {
            if int.lt(0)? {
                return Err(out_of_range().into());
            }
            // Not negative, so the only failure left is an int too big for u64: saturate.
            let secs = int.extract::<u64>().unwrap_or(u64::MAX);
            return Ok(Self::new(RetryAfter::delay(secs)));
        }
        if let Ok(float) = seconds.cast::<PyFloat>() {
            return RetryAfter::delay_seconds(float.value())
                .map(Self::new)
                .map_err(|_| out_of_range().into());
        }
        if seconds.is_instance(&clock::datetime_type(seconds.py(), "timedelta")?)? {
            let (whole, micros) = clock::timedelta_parts(seconds)?;
            let Ok(whole) = u64::try_from(whole) else {
                return Err(out_of_range().into());
            };
            return Ok(Self::new(RetryAfter::delay(whole + u64::from(micros > 0))));
        }
        Err(ArgError::type_(
            "seconds",
            format!(
                "expected an int, float or datetime.timedelta, got {}",
                type_name(seconds)
            ),
        )
        .into())
    }

    /// An HTTP-date at `when` (naive means UTC), a fraction of a second rounded up.
    #[staticmethod]
    fn at(when: &Bound<'_, PyAny>) -> PyResult<Self> {
        let micros = clock::datetime_micros(when, "when")?;
        let unix = micros.div_euclid(1_000_000) + i128::from(micros.rem_euclid(1_000_000) > 0);
        i64::try_from(unix)
            .ok()
            .and_then(|unix| RetryAfter::date(unix).ok())
            .map(Self::new)
            .ok_or_else(|| {
                ArgError::value(
                    "when",
                    format!(
                        "{} is past 9999-12-31 23:59:59 UTC, the last HTTP-date",
                        describe(when)
                    ),
                )
                .into()
            })
    }

    /// Reads a `Retry-After` field value; `now` decides an RFC 850 date's century.
    #[staticmethod]
    #[pyo3(signature = (text, *, now = None))]
    fn parse(text: &Bound<'_, PyAny>, now: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        let Ok(string) = text.cast::<PyString>() else {
            return Err(ArgError::type_(
                "text",
                format!("expected a str, got {}", type_name(text)),
            )
            .into());
        };
        let now_unix = now_or_clock(now, false)?;
        let Ok(value) = string.to_cow() else {
            // Lone surrogates: not text any header could carry.
            return Err(RetryAfterError::Syntax {
                text: "a str with lone surrogates".into(),
            }
            .into());
        };
        Ok(Self::new(parse(&value, now_unix)?))
    }

    /// The exact header text.
    fn header_value(&self) -> String {
        self.value.header_value()
    }

    /// Whole seconds from `now` (default: the current time) until the client may come back.
    #[pyo3(signature = (now = None))]
    fn delay(&self, now: Option<&Bound<'_, PyAny>>) -> PyResult<u64> {
        Ok(self.value.delay_at(now_or_clock(now, false)?))
    }

    /// The instant the client may come back, as an aware UTC datetime.
    #[pyo3(signature = (now = None))]
    fn when<'py>(
        &self,
        py: Python<'py>,
        now: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let unix = self.value.when_at(now_or_clock(now, true)?);
        if !(clock::MIN_UNIX..=clock::MAX_UNIX).contains(&unix) {
            let what = match self.value {
                RetryAfter::Delay(secs) => format!("now + {secs} seconds"),
                RetryAfter::Date(_) => self.value.header_value(),
            };
            return Err(BeyondDatetime::When(what).into());
        }
        clock::unix_to_datetime(py, unix)
    }

    fn __str__(&self) -> String {
        self.value.header_value()
    }

    fn __repr__(&self) -> String {
        match self.value {
            RetryAfter::Delay(secs) => format!("RetryAfter.after({secs})"),
            RetryAfter::Date(_) => format!("RetryAfter.parse('{}')", self.value.header_value()),
        }
    }
}

/// Unix seconds of `now`, or of the system clock when it is `None`. A fraction of a second
/// rounds down, or up with `ceil`: whichever errs toward the client coming back later.
fn now_or_clock(now: Option<&Bound<'_, PyAny>>, ceil: bool) -> PyResult<i64> {
    match now {
        // The clock gives whole seconds; rounding up adds one.
        None => Ok(clock::now_unix().saturating_add(i64::from(ceil))),
        Some(value) => clock::datetime_seconds(value, "now", ceil),
    }
}
