//! `Retry-After` (RFC 9110 §10.2.3): build, format, parse and read.
//!
//! A value is delay-seconds (`120`) or an HTTP-date (§5.6.7). Dates are whole Unix seconds; the
//! calendar math is `crate::clock`'s. Parsing is strict to the RFC's grammar: names are
//! case-sensitive, the three date forms are taken exactly as written, and anything else is an
//! error that says what was wrong. A day name that disagrees with the date is an error too: the
//! date contradicts itself, and guessing which half is right could send a client back far too
//! early or far too late.
//!
//! ## Where the `httpdate` crate fits
//!
//! `httpdate` formats IMF-fixdate exactly for instants from 1970 through the end of 9999, and
//! that is what it is used for here. Outside that range, and for parsing, it is not RFC 9110:
//!
//! - Formatting goes through `SystemTime` since the epoch: an instant before 1970 or in the
//!   year 10000 or later panics.
//! - Its parser rejects every year before 1970, though `year = 4DIGIT` has no such floor.
//! - RFC 850 dates get a fixed window (two-digit years 00-69 are 20xx, 70-99 are 19xx), where
//!   RFC 9110 makes the century depend on the current date: a date that appears to be more
//!   than 50 years in the future is the most recent past year with the same last two digits.
//! - A leap second (`23:59:60`, which RFC 9110's time-of-day allows) is rejected.
//! - It trims every ASCII whitespace character (CR, LF, VT and FF too) where a field value
//!   only loses spaces and tabs (OWS).
//! - Every failure is one opaque error, so it cannot say what was wrong.
//!
//! It does agree with RFC 9110 on case-sensitive names, on the asctime day written as a space
//! and one digit, and on rejecting a day name that disagrees with the date. So the parser below
//! is this module's own, and the tests hold it to `httpdate`'s answers where both are right.

use std::fmt;
use std::time::{Duration, UNIX_EPOCH};

use crate::clock;
use crate::errors::excerpt;
pub use crate::errors::RetryAfterError;

mod py;

pub use py::RetryAfterPy;

/// The largest delay kept: bigger ones saturate here (RFC 9111 §1.2.2).
pub const MAX_DELAY: u64 = 2_147_483_648;
/// The first instant an HTTP-date can hold: `Sat, 01 Jan 0000 00:00:00 GMT`.
pub const MIN_HTTP_DATE: i64 = -62_167_219_200;
/// The last instant an HTTP-date can hold: `Fri, 31 Dec 9999 23:59:59 GMT`.
pub const MAX_HTTP_DATE: i64 = clock::MAX_UNIX;

/// Day names by `clock::weekday` (0 = Monday).
const DAY_NAMES: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
const LONG_DAY_NAMES: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];
const MONTH_NAMES: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// The two forms a `Retry-After` value takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryAfter {
    /// delay-seconds, already saturated.
    Delay(u64),
    /// An HTTP-date, as Unix seconds (UTC).
    Date(i64),
}

impl RetryAfter {
    /// delay-seconds, saturated at `MAX_DELAY`.
    pub fn delay(secs: u64) -> Self {
        Self::Delay(secs.min(MAX_DELAY))
    }

    /// delay-seconds from a possibly fractional count, rounded up so a client never comes
    /// back early, and saturated at `MAX_DELAY`. Negative, NaN and infinite counts are errors
    /// (`-0.0` is zero).
    pub fn delay_seconds(secs: f64) -> Result<Self, RetryAfterError> {
        if !secs.is_finite() || secs < 0.0 {
            return Err(RetryAfterError::BadDelay {
                value: format!("{secs}"),
            });
        }
        let rounded = secs.ceil();
        // Compared as floats: MAX_DELAY (2^31) is exact in f64, and anything at or above it
        // saturates without a lossy cast.
        if rounded >= MAX_DELAY as f64 {
            return Ok(Self::Delay(MAX_DELAY));
        }
        Ok(Self::Delay(rounded as u64))
    }

    /// An HTTP-date at `unix`; an error outside the years 0000 to 9999.
    pub fn date(unix: i64) -> Result<Self, RetryAfterError> {
        check_range(unix)?;
        Ok(Self::Date(unix))
    }

    /// The exact header text: delay-seconds digits or an IMF-fixdate.
    ///
    /// A `Date` built around the constructors with an instant no HTTP-date can hold is
    /// written as the nearest one that can.
    pub fn header_value(&self) -> String {
        match *self {
            Self::Delay(secs) => secs.min(MAX_DELAY).to_string(),
            Self::Date(unix) => imf_fixdate(unix.clamp(MIN_HTTP_DATE, MAX_HTTP_DATE)),
        }
    }

    /// Whole seconds from `now_unix` until a client may come back; never negative.
    pub fn delay_at(&self, now_unix: i64) -> u64 {
        match *self {
            Self::Delay(secs) => secs,
            Self::Date(unix) => u64::try_from(unix.saturating_sub(now_unix)).unwrap_or(0),
        }
    }

    /// The instant a client may come back, for a request answered at `now_unix`.
    pub fn when_at(&self, now_unix: i64) -> i64 {
        match *self {
            Self::Delay(secs) => now_unix.saturating_add(i64::try_from(secs).unwrap_or(i64::MAX)),
            Self::Date(unix) => unix,
        }
    }
}

impl fmt::Display for RetryAfter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.header_value())
    }
}

fn check_range(unix: i64) -> Result<(), RetryAfterError> {
    if (MIN_HTTP_DATE..=MAX_HTTP_DATE).contains(&unix) {
        Ok(())
    } else {
        Err(RetryAfterError::OutOfRange {
            instant: format!("unix time {unix}"),
        })
    }
}

/// The IMF-fixdate for `unix`, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`; an error outside the
/// years 0000 to 9999.
pub fn format_http_date(unix: i64) -> Result<String, RetryAfterError> {
    check_range(unix)?;
    Ok(imf_fixdate(unix))
}

/// IMF-fixdate for an instant already known to be in range.
fn imf_fixdate(unix: i64) -> String {
    // httpdate is exact from the epoch to the end of 9999 and panics outside; the range check
    // above keeps the upper end, this match the lower one.
    match u64::try_from(unix) {
        Ok(secs) if unix <= MAX_HTTP_DATE => {
            httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs))
        }
        _ => imf_fixdate_from_civil(unix),
    }
}

/// IMF-fixdate written from `clock`'s calendar; used where `httpdate` cannot go.
fn imf_fixdate_from_civil(unix: i64) -> String {
    let c = clock::to_civil(unix);
    format!(
        "{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
        DAY_NAMES[c.weekday as usize % 7],
        c.day,
        MONTH_NAMES[(c.month as usize + 11) % 12],
        c.year,
        c.hour,
        c.minute,
        c.second
    )
}

/// Parses a `Retry-After` field value (RFC 9110 §10.2.3): delay-seconds or an HTTP-date in
/// any of its three forms. Spaces and tabs around the value are dropped. `now_unix` decides
/// the century of an RFC 850 date's two-digit year.
pub fn parse(text: &str, now_unix: i64) -> Result<RetryAfter, RetryAfterError> {
    let value = text.trim_matches([' ', '\t']);
    if value.is_empty() {
        return Err(RetryAfterError::Empty);
    }
    if value.bytes().all(|b| b.is_ascii_digit()) {
        let secs = value.bytes().fold(0u64, |acc, digit| {
            acc.saturating_mul(10)
                .saturating_add(u64::from(digit - b'0'))
        });
        return Ok(RetryAfter::delay(secs));
    }
    parse_http_date(value, now_unix).map(RetryAfter::Date)
}

#[derive(Clone, Copy)]
enum Form {
    ImfFixdate,
    Rfc850,
    Asctime,
}

/// The fields of an HTTP-date as written, before any range check.
struct Fields {
    form: Form,
    weekday: usize,
    day: u32,
    month: u32,
    /// Four digits, or two for RFC 850.
    year: i64,
    hour: u32,
    minute: u32,
    second: u32,
}

fn parse_http_date(value: &str, now_unix: i64) -> Result<i64, RetryAfterError> {
    let fields = read_fields(value)?;
    let bad = |reason: String| RetryAfterError::bad_date(value, reason);
    let Fields {
        form,
        weekday,
        day,
        month,
        hour,
        minute,
        second,
        ..
    } = fields;
    if hour > 23 {
        return Err(bad(format!("hour {hour:02} is out of range (00 to 23)")));
    }
    if minute > 59 {
        return Err(bad(format!(
            "minute {minute:02} is out of range (00 to 59)"
        )));
    }
    // 23:59:60 is the one leap second the grammar's comment allows.
    if second > 60 || (second == 60 && (hour, minute) != (23, 59)) {
        return Err(bad(format!(
            "second {second:02} is out of range (00 to 59, or 60 at 23:59)"
        )));
    }
    let year = match form {
        Form::Rfc850 => rfc850_year(&fields, now_unix),
        Form::ImfFixdate | Form::Asctime => fields.year,
    };
    if !(0..=9999).contains(&year) {
        return Err(RetryAfterError::OutOfRange {
            instant: excerpt(value),
        });
    }
    let month_name = MONTH_NAMES[month as usize - 1];
    if day == 0 || day > clock::days_in_month(year, month) {
        return Err(bad(format!("{month_name} {year:04} has no day {day:02}")));
    }
    let actual = clock::weekday(clock::days_from_civil(year, month, day)) as usize;
    if actual != weekday {
        let names = match form {
            Form::Rfc850 => LONG_DAY_NAMES,
            Form::ImfFixdate | Form::Asctime => DAY_NAMES,
        };
        return Err(bad(format!(
            "day name {} does not match {day:02} {month_name} {year:04}, a {}",
            names[weekday], LONG_DAY_NAMES[actual]
        )));
    }
    let unix = clock::from_civil(year, month, day, hour, minute, second)
        .ok_or_else(|| bad("no such date".into()))?;
    // Only 9999-12-31 23:59:60 gets here out of range.
    check_range(unix).map_err(|_| RetryAfterError::OutOfRange {
        instant: excerpt(value),
    })?;
    Ok(unix)
}

/// RFC 9110 §5.6.7: a two-digit year is the next year (this one included) ending in those
/// digits, unless that puts the timestamp more than 50 years in the future; then it is the
/// most recent past year ending in them.
fn rfc850_year(f: &Fields, now_unix: i64) -> i64 {
    let now = clock::to_civil(now_unix);
    let mut year = now.year.div_euclid(100) * 100 + f.year;
    if year < now.year {
        year += 100;
    }
    // Compared field by field, so a limit like 29 Feb of a non-leap year needs no fixing up.
    let stamp = (year, f.month, f.day, f.hour, f.minute, f.second);
    let limit = (
        now.year + 50,
        now.month,
        now.day,
        now.hour,
        now.minute,
        now.second,
    );
    if stamp > limit {
        year -= 100;
    }
    year
}

fn read_fields(value: &str) -> Result<Fields, RetryAfterError> {
    let mut cur = Cursor { value, pos: 0 };
    let name = cur.word();
    let (form, weekday) = if let Some(i) = find(&DAY_NAMES, name) {
        if cur.eat(", ") {
            (Form::ImfFixdate, i)
        } else if cur.eat(" ") {
            (Form::Asctime, i)
        } else {
            return Err(cur.expected("\", \" or \" \" after the day name"));
        }
    } else if let Some(i) = find(&LONG_DAY_NAMES, name) {
        cur.expect(", ")?;
        (Form::Rfc850, i)
    } else if let Some(proper) =
        find_ignoring_case(&DAY_NAMES, name).or_else(|| find_ignoring_case(&LONG_DAY_NAMES, name))
    {
        return Err(RetryAfterError::bad_date(
            value,
            format!("names are case-sensitive: {name:?} must be written {proper:?}"),
        ));
    } else {
        return Err(RetryAfterError::syntax(value));
    };
    let fields = match form {
        Form::ImfFixdate => {
            // day SP month SP year SP time-of-day SP GMT
            let day = cur.number(2, "a two-digit day")?;
            cur.expect(" ")?;
            let month = cur.month()?;
            cur.expect(" ")?;
            let year = cur.number(4, "a four-digit year")?;
            cur.expect(" ")?;
            let (hour, minute, second) = cur.time_of_day()?;
            cur.expect(" GMT")?;
            (day, month, year, hour, minute, second)
        }
        Form::Rfc850 => {
            // day "-" month "-" 2DIGIT SP time-of-day SP GMT
            let day = cur.number(2, "a two-digit day")?;
            cur.expect("-")?;
            let month = cur.month()?;
            cur.expect("-")?;
            let year = cur.number(2, "a two-digit year")?;
            cur.expect(" ")?;
            let (hour, minute, second) = cur.time_of_day()?;
            cur.expect(" GMT")?;
            (day, month, year, hour, minute, second)
        }
        Form::Asctime => {
            // month SP ( 2DIGIT / ( SP DIGIT ) ) SP time-of-day SP year
            let month = cur.month()?;
            cur.expect(" ")?;
            let day = if cur.eat(" ") {
                cur.number(1, "a digit")?
            } else {
                cur.number(2, "a two-digit day, or a space and one digit")?
            };
            cur.expect(" ")?;
            let (hour, minute, second) = cur.time_of_day()?;
            cur.expect(" ")?;
            let year = cur.number(4, "a four-digit year")?;
            (day, month, year, hour, minute, second)
        }
    };
    if cur.pos < value.len() {
        return Err(RetryAfterError::bad_date(
            value,
            format!("unexpected text after the date at offset {}", cur.pos),
        ));
    }
    let (day, month, year, hour, minute, second) = fields;
    Ok(Fields {
        form,
        weekday,
        day,
        month,
        year: i64::from(year),
        hour,
        minute,
        second,
    })
}

fn find(names: &[&str], name: &str) -> Option<usize> {
    names.iter().position(|n| *n == name)
}

fn find_ignoring_case<'a>(names: &[&'a str], name: &str) -> Option<&'a str> {
    names.iter().find(|n| n.eq_ignore_ascii_case(name)).copied()
}

/// A position in the value being parsed; every step checks bounds, so no input can panic it.
struct Cursor<'a> {
    value: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn rest(&self) -> &[u8] {
        self.value.as_bytes().get(self.pos..).unwrap_or_default()
    }

    fn expected(&self, what: &str) -> RetryAfterError {
        RetryAfterError::bad_date(
            self.value,
            format!("expected {what} at offset {}", self.pos),
        )
    }

    fn eat(&mut self, literal: &str) -> bool {
        if self.rest().starts_with(literal.as_bytes()) {
            self.pos += literal.len();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, literal: &str) -> Result<(), RetryAfterError> {
        if self.eat(literal) {
            Ok(())
        } else {
            Err(self.expected(&format!("{literal:?}")))
        }
    }

    /// The run of ASCII letters here (possibly empty).
    fn word(&mut self) -> &'a str {
        let len = self
            .rest()
            .iter()
            .take_while(|b| b.is_ascii_alphabetic())
            .count();
        let start = self.pos;
        self.pos += len;
        // ASCII letters are whole characters, so these are char boundaries.
        self.value.get(start..self.pos).unwrap_or_default()
    }

    /// Exactly `width` ASCII digits.
    fn number(&mut self, width: usize, what: &str) -> Result<u32, RetryAfterError> {
        let digits = match self.rest().get(..width) {
            Some(d) if d.iter().all(u8::is_ascii_digit) => d,
            _ => return Err(self.expected(what)),
        };
        let n = digits
            .iter()
            .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'));
        self.pos += width;
        Ok(n)
    }

    /// A month name, 1 to 12.
    fn month(&mut self) -> Result<u32, RetryAfterError> {
        let start = self.pos;
        let name = self.word();
        if let Some(i) = find(&MONTH_NAMES, name) {
            return Ok(i as u32 + 1);
        }
        if let Some(proper) = find_ignoring_case(&MONTH_NAMES, name) {
            return Err(RetryAfterError::bad_date(
                self.value,
                format!("names are case-sensitive: {name:?} must be written {proper:?}"),
            ));
        }
        self.pos = start;
        Err(self.expected("a month name (Jan to Dec)"))
    }

    /// hour ":" minute ":" second, each two digits; ranges are checked by the caller.
    fn time_of_day(&mut self) -> Result<(u32, u32, u32), RetryAfterError> {
        let hour = self.number(2, "a two-digit hour")?;
        self.expect(":")?;
        let minute = self.number(2, "a two-digit minute")?;
        self.expect(":")?;
        let second = self.number(2, "a two-digit second")?;
        Ok((hour, minute, second))
    }
}

#[cfg(test)]
mod tests;
