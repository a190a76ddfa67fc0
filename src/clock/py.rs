//! The bridge between Unix seconds and Python's `datetime`, and the `_parse_iso` and
//! `_format_iso` functions the Python layer calls.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyString;

use super::{format_iso, from_civil, parse_iso_or_date, to_civil, MAX_UNIX, MIN_UNIX};
use crate::errors::{type_name, ArgError, BeyondDatetime};

/// `tidegate._tidegate._parse_iso(text)`: the Unix seconds [`parse_iso_or_date`] reads in
/// `text`, or `None` when it is not such a date. The instant may lie outside years 1..=9999
/// (an offset can push it there); the caller decides what that means.
#[pyfunction(name = "_parse_iso")]
pub fn parse_iso_py(text: &Bound<'_, PyAny>) -> PyResult<Option<i64>> {
    let Ok(text) = text.cast::<PyString>() else {
        return Err(
            ArgError::type_("text", format!("must be a str, got {}", type_name(text))).into(),
        );
    };
    // A str that is not valid UTF-8 (a lone surrogate) is not a date either.
    Ok(text.to_cow().ok().and_then(|text| parse_iso_or_date(&text)))
}

/// `tidegate._tidegate._format_iso(value)`: a `datetime` as `YYYY-MM-DDTHH:MM:SSZ` in UTC (a
/// naive one is UTC; a fraction of a second is dropped). `ValueError` when the instant in UTC
/// falls outside the years 1 to 9999.
#[pyfunction(name = "_format_iso")]
pub fn format_iso_py(value: &Bound<'_, PyAny>) -> PyResult<String> {
    let unix = datetime_seconds(value, "value", false)?;
    format_iso(unix)
        .ok_or_else(|| ArgError::value("value", "is outside the years 1 to 9999 in UTC").into())
}

fn utc(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static UTC_OBJ: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let obj = UTC_OBJ.get_or_try_init(py, || -> PyResult<Py<PyAny>> {
        Ok(py
            .import("datetime")?
            .getattr("timezone")?
            .getattr("utc")?
            .unbind())
    })?;
    Ok(obj.bind(py))
}

/// A class of the `datetime` module, such as `"datetime"` or `"timedelta"`.
pub fn datetime_type<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
    py.import("datetime")?.getattr(name)
}

/// Whole seconds (floored) and the microseconds of a `timedelta`.
pub fn timedelta_parts(delta: &Bound<'_, PyAny>) -> PyResult<(i64, u32)> {
    let days: i64 = delta.getattr("days")?.extract()?;
    let seconds: i64 = delta.getattr("seconds")?.extract()?;
    let micros: u32 = delta.getattr("microseconds")?.extract()?;
    Ok((days * 86_400 + seconds, micros))
}

/// Exact Unix microseconds of a `datetime`; a naive one is UTC. `TypeError` naming `param`
/// for anything that is not a `datetime.datetime`.
pub fn datetime_micros(value: &Bound<'_, PyAny>, param: &'static str) -> PyResult<i128> {
    if !value.is_instance(&datetime_type(value.py(), "datetime")?)? {
        return Err(ArgError::type_(
            param,
            format!("expected a datetime.datetime, got {}", type_name(value)),
        )
        .into());
    }
    let field = |name: &str| -> PyResult<u32> { value.getattr(name)?.extract() };
    let year: i64 = value.getattr("year")?.extract()?;
    let local = from_civil(
        year,
        field("month")?,
        field("day")?,
        field("hour")?,
        field("minute")?,
        field("second")?,
    )
    .ok_or_else(|| ArgError::value(param, "not a valid date"))?;
    let offset = value.call_method0("utcoffset")?;
    let offset_micros = if offset.is_none() {
        0
    } else {
        let (whole, micros) = timedelta_parts(&offset)?;
        i128::from(whole) * 1_000_000 + i128::from(micros)
    };
    Ok(i128::from(local) * 1_000_000 + i128::from(field("microsecond")?) - offset_micros)
}

/// Unix seconds of a `datetime` (naive = UTC), a fraction rounded up (`ceil`) or down.
pub fn datetime_seconds(
    value: &Bound<'_, PyAny>,
    param: &'static str,
    ceil: bool,
) -> PyResult<i64> {
    let micros = datetime_micros(value, param)?;
    let mut secs = micros.div_euclid(1_000_000);
    if ceil && micros.rem_euclid(1_000_000) > 0 {
        secs += 1;
    }
    // A datetime spans years 1 to 9999, far inside i64 seconds.
    Ok(i64::try_from(secs).unwrap_or(i64::MAX))
}

/// An aware UTC `datetime` for Unix seconds; `ValueError` outside years 1..=9999.
pub fn unix_to_datetime(py: Python<'_>, unix: i64) -> PyResult<Bound<'_, PyAny>> {
    if !(MIN_UNIX..=MAX_UNIX).contains(&unix) {
        return Err(BeyondDatetime::Instant(unix).into());
    }
    let c = to_civil(unix);
    py.import("datetime")?.getattr("datetime")?.call1((
        c.year,
        c.month,
        c.day,
        c.hour,
        c.minute,
        c.second,
        0,
        utc(py)?,
    ))
}
