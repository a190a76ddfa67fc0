//! Queue time: how long a request waited in front of the app, from the `X-Request-Start`
//! header a proxy sets when it receives the request.
//!
//! Formats, told apart by the magnitude of the number (a time since the Unix epoch):
//!
//! | who | header | unit |
//! |---|---|---|
//! | nginx | `t=1700000000.123` (`t=${msec}`) | seconds, with milliseconds |
//! | Heroku's router | `1700000000123` | milliseconds |
//! | Apache | `t=1700000000123456` (`t=%t`, optionally followed by ` D=...`) | microseconds |
//!
//! Nothing in the header is trusted: anything that is not one of these shapes, a time more
//! than [`MAX_SKEW`] in the future, or a wait longer than [`MAX_BELIEVABLE`] (clocks that
//! disagree, a header made up by a client) is ignored, never an error.

use std::time::{SystemTime, UNIX_EPOCH};

/// A start this far in the future is the proxy's clock running ahead: the wait counts as 0.
/// Further ahead, the header is not believed.
pub const MAX_SKEW: f64 = 1.0;

/// No client waits ten minutes for an answer; a longer "wait" is a clock that is off.
pub const MAX_BELIEVABLE: f64 = 600.0;

/// The longest number read (a microsecond time has 16 digits).
const MAX_DIGITS: usize = 24;

/// Seconds since the Unix epoch now.
pub fn now_epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The start time the header gives, in seconds since the epoch, if it is one of the formats.
pub fn parse(header: &str) -> Option<f64> {
    let text = header.trim_ascii();
    let text = text.strip_prefix("t=").unwrap_or(text);
    // Apache may add more fields after a space (`D=...`).
    let number = text.split([' ', '\t']).next()?;
    if number.is_empty() || number.len() > MAX_DIGITS {
        return None;
    }
    let mut dots = 0;
    for byte in number.bytes() {
        match byte {
            b'0'..=b'9' => {}
            b'.' => dots += 1,
            _ => return None,
        }
    }
    if dots > 1 || number.starts_with('.') || number.ends_with('.') {
        return None;
    }
    let raw: f64 = number.parse().ok()?;
    // Now is about 1.7e9 seconds, 1.7e12 milliseconds, 1.7e15 microseconds since the epoch.
    let seconds = if raw < 1e11 {
        raw
    } else if raw < 1e14 {
        raw / 1e3
    } else if raw < 1e17 {
        raw / 1e6
    } else {
        return None;
    };
    seconds.is_finite().then_some(seconds)
}

/// How long the request waited by `header`, with `now` the time since the epoch; `None` when
/// the header is not believable.
pub fn waited(header: &str, now: f64) -> Option<f64> {
    let waited = now - parse(header)?;
    if !waited.is_finite() || !(-MAX_SKEW..=MAX_BELIEVABLE).contains(&waited) {
        return None;
    }
    Some(waited.max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: f64 = 1_700_000_000.5;

    #[test]
    fn every_format_gives_the_same_start() {
        for header in [
            "t=1700000000.250",
            "1700000000250",
            "t=1700000000250000",
            "t=1700000000250000 D=1234",
            "  t=1700000000.25 ",
        ] {
            let start = parse(header).unwrap_or_else(|| panic!("{header:?} not read"));
            assert!(
                (start - 1_700_000_000.25).abs() < 1e-6,
                "{header:?}: {start}"
            );
            let waited = waited(header, NOW).expect("believable");
            assert!((waited - 0.25).abs() < 1e-6, "{header:?}: {waited}");
        }
    }

    #[test]
    fn garbage_is_ignored() {
        for header in [
            "",
            "t=",
            "t=abc",
            "t=-1700000000",
            "t=1e9",
            "t=1700000000.1.2",
            "t=.5",
            "t=5.",
            "t=17000000000000000000000",
            "t=999999999999999999999999999999",
            "t=NaN",
            "t=inf",
            "t=1700000000\u{0}",
            "t=１７",
            "x=1700000000",
        ] {
            assert_eq!(waited(header, NOW), None, "{header:?}");
        }
    }

    #[test]
    fn skew_and_absurd_waits_are_ignored() {
        // Half a second ahead: the clocks differ a little; no wait.
        assert_eq!(waited("t=1700000001.0", NOW), Some(0.0));
        // An hour ahead or behind, or at the epoch: not believed.
        assert_eq!(waited("t=1700003600", NOW), None);
        assert_eq!(waited("t=1699996400", NOW), None);
        assert_eq!(waited("t=0", NOW), None);
        assert_eq!(waited("t=5", NOW), None);
        // Thirty seconds in a backlog is believable.
        assert_eq!(waited("t=1699999970.5", NOW), Some(30.0));
    }
}
