//! Calendar arithmetic on Unix seconds (UTC), and the bridge to Python's `datetime`.
//!
//! Everything in the core keeps instants as whole Unix seconds; these helpers turn them into
//! civil dates and back without a date library, so every range check is ours to make.

use std::time::{SystemTime, UNIX_EPOCH};

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyString;

use crate::errors::{type_name, ArgError};

/// The first and last instants a four-digit year can name (0001-01-01 .. 9999-12-31 23:59:59).
pub const MIN_UNIX: i64 = -62_135_596_800;
pub const MAX_UNIX: i64 = 253_402_300_799;

/// Days since 1970-01-01 for a proleptic Gregorian date (month 1-12, day 1-31).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian date of a day count since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

pub fn is_leap_year(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

pub fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap_year(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Day of the week, 0 = Monday .. 6 = Sunday.
pub fn weekday(days: i64) -> u32 {
    // 1970-01-01 was a Thursday (3).
    (days + 3).rem_euclid(7) as u32
}

/// Broken-down UTC time of an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Civil {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    pub weekday: u32,
}

pub fn to_civil(unix: i64) -> Civil {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400) as u32;
    let (year, month, day) = civil_from_days(days);
    Civil {
        year,
        month,
        day,
        hour: secs / 3600,
        minute: secs / 60 % 60,
        second: secs % 60,
        weekday: weekday(days),
    }
}

/// Unix seconds of a civil UTC time, or `None` if any field is out of range
/// (a leap second, 60, is accepted and folded into the next minute as POSIX does).
pub fn from_civil(
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
) -> Option<i64> {
    if !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some(days * 86_400 + i64::from(hour) * 3600 + i64::from(minute) * 60 + i64::from(second))
}

/// Current Unix time in whole seconds (0 if the system clock is before 1970).
pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `YYYY-MM-DDTHH:MM:SSZ` for instants in years 1..=9999.
pub fn format_iso(unix: i64) -> Option<String> {
    if !(MIN_UNIX..=MAX_UNIX).contains(&unix) {
        return None;
    }
    let c = to_civil(unix);
    Some(format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        c.year, c.month, c.day, c.hour, c.minute, c.second
    ))
}

/// Parses `YYYY-MM-DDTHH:MM[:SS[.fraction]]` followed by `Z`, `+HH:MM` or `-HH:MM` (a space
/// may stand for `T`; no offset means UTC). Fractions are dropped. `None` if malformed.
pub fn parse_iso(text: &str) -> Option<i64> {
    let b = text.trim().as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<u32> {
        let digits = b.get(range)?;
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        digits.iter().try_fold(0u32, |acc, d| {
            acc.checked_mul(10)?.checked_add(u32::from(d - b'0'))
        })
    };
    if b.len() < 16 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' {
        return None;
    }
    let year = i64::from(num(0..4)?);
    let (month, day, hour, minute) = (num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?);
    let mut i = 16;
    let mut second = 0;
    if b.get(i) == Some(&b':') {
        second = num(i + 1..i + 3)?;
        i += 3;
        if b.get(i) == Some(&b'.') {
            i += 1;
            let start = i;
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            if i == start {
                return None;
            }
        }
    }
    let offset = match b.get(i..)? {
        [] | [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let digits = [*h1, *h2, *m1, *m2];
            if !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let hours = i64::from((h1 - b'0') * 10 + (h2 - b'0'));
            let minutes = i64::from((m1 - b'0') * 10 + (m2 - b'0'));
            if hours > 23 || minutes > 59 {
                return None;
            }
            let total = hours * 3600 + minutes * 60;
            if *sign == b'+' {
                total
            } else {
                -total
            }
        }
        _ => return None,
    };
    if year == 0 {
        return None;
    }
    Some(from_civil(year, month, day, hour, minute, second)? - offset)
}

/// What an operator may type for an instant: anything [`parse_iso`] reads, or a bare
/// `YYYY-MM-DD`, meaning midnight UTC. State files stay with the stricter [`parse_iso`].
pub fn parse_iso_or_date(text: &str) -> Option<i64> {
    parse_iso(text).or_else(|| {
        let b = text.trim().as_bytes();
        let [y1, y2, y3, y4, b'-', m1, m2, b'-', d1, d2] = *b else {
            return None;
        };
        let digits = [y1, y2, y3, y4, m1, m2, d1, d2];
        if !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let value = |ds: &[u8]| {
            ds.iter()
                .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'))
        };
        let year = i64::from(value(&digits[..4]));
        if year == 0 {
            return None;
        }
        from_civil(year, value(&digits[4..6]), value(&digits[6..]), 0, 0, 0)
    })
}

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
        return Err(pyo3::exceptions::PyValueError::new_err(format!(
            "instant {unix} is outside the years 1 to 9999"
        )));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_round_trips_over_the_whole_range() {
        for days in (days_from_civil(1, 1, 1)..=days_from_civil(9999, 12, 31)).step_by(97) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(to_civil(MIN_UNIX).year, 1);
        assert_eq!(to_civil(MAX_UNIX), to_civil(MAX_UNIX));
        assert_eq!(
            format_iso(MAX_UNIX).as_deref(),
            Some("9999-12-31T23:59:59Z")
        );
        assert_eq!(format_iso(MAX_UNIX + 1), None);
    }

    #[test]
    fn known_instants() {
        // RFC 9110's example date.
        assert_eq!(from_civil(1994, 11, 6, 8, 49, 37), Some(784_111_777));
        assert_eq!(weekday(784_111_777 / 86_400), 6, "a Sunday");
        assert_eq!(from_civil(2023, 2, 29, 0, 0, 0), None);
        assert_eq!(
            from_civil(2024, 2, 29, 0, 0, 0).map(format_iso),
            Some(Some("2024-02-29T00:00:00Z".into()))
        );
    }

    #[test]
    fn iso_parsing() {
        assert_eq!(parse_iso("1994-11-06T08:49:37Z"), Some(784_111_777));
        assert_eq!(parse_iso("1994-11-06T09:49:37+01:00"), Some(784_111_777));
        assert_eq!(parse_iso("1994-11-06 08:49:37.123456"), Some(784_111_777));
        assert_eq!(parse_iso("1994-11-06T08:49Z"), Some(784_111_740));
        for bad in [
            "",
            "1994-11-06",
            "1994-13-06T08:49:37Z",
            "1994-11-06T08:49:37+1",
            "x994-11-06T08:49:37Z",
            "1994-11-06T08:49:37Zjunk",
            "0000-01-01T00:00:00Z",
            "1994-11-06T08:49:37.Z",
            "1994-11-06T08:49:37+24:00",
        ] {
            assert_eq!(parse_iso(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn an_operator_may_give_a_bare_date() {
        assert_eq!(parse_iso_or_date("1994-11-06"), Some(784_080_000));
        assert_eq!(parse_iso_or_date(" 1994-11-06 "), Some(784_080_000));
        assert_eq!(parse_iso_or_date("1994-11-06T08:49:37Z"), Some(784_111_777));
        for bad in [
            "1994-11-6",
            "0000-01-01",
            "1994-02-30",
            "1994-11-06Z",
            "19941106",
            "+994-11-06",
        ] {
            assert_eq!(parse_iso_or_date(bad), None, "{bad:?}");
        }
    }
}
