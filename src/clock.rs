//! Calendar arithmetic on Unix seconds (UTC); `py` is the bridge to Python's `datetime`.
//!
//! Everything in the core keeps instants as whole Unix seconds; these helpers turn them into
//! civil dates and back without a date library, so every range check is ours to make.

use std::time::{SystemTime, UNIX_EPOCH};

mod py;

pub use py::{
    datetime_micros, datetime_seconds, datetime_type, format_iso_py, parse_iso_py, timedelta_parts,
    unix_to_datetime,
};

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

/// Current Unix time in seconds with a fraction (0 if the system clock is before 1970).
pub fn now_unix_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
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

#[cfg(test)]
mod tests;
