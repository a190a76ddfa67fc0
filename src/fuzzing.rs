//! Properties of every parser that reads outside input, checked on arbitrary bytes.
//!
//! Each check takes any bytes, feeds them to one parser, and panics only when a property is
//! broken: a panic in the parser itself, or an answer that contradicts what the parser
//! promises (a value out of range, a result that does not survive a round trip, an error
//! message that repeats a huge input). The `cargo fuzz` targets under `fuzz/` call these same
//! functions; `cargo test` runs them over a deterministic stream of mutated inputs (see the
//! tests below, and `TIDEGATE_FUZZ_CASES` for a longer run).
//!
//! The parsers: `retry_after::parse` (a `Retry-After` value a client or upstream sends),
//! `maintenance::state_file::parse` (a file anyone with write access to its folder can edit),
//! `clock::parse_iso` (the `until` inside that file), and `accept::prefers_html` (the client's
//! `Accept` header).

use crate::accept::prefers_html;
use crate::clock::{format_iso, parse_iso, MAX_UNIX, MIN_UNIX};
use crate::maintenance::state_file;
use crate::retry_after::{self, RetryAfter, MAX_DELAY, MAX_HTTP_DATE, MIN_HTTP_DATE};

/// The longest error message a parser may produce, in characters, whatever the input length:
/// messages quote an excerpt of the input, never all of it.
pub const MAX_MESSAGE_CHARS: usize = 400;

/// A fixed "now" (2026-01-01T00:00:00Z) so that runs are reproducible.
const FIXED_NOW: i64 = 1_767_225_600;

/// A second "now" anywhere in the years 1..=9999, derived from the input so that it varies.
fn derived_now(data: &[u8]) -> i64 {
    let hash = fnv1a(data);
    let span = (MAX_UNIX - MIN_UNIX) as u64 + 1;
    MIN_UNIX + (hash % span) as i64
}

/// FNV-1a: cheap and well spread.
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn short(message: &str, what: &str, input: &str) {
    let chars = message.chars().count();
    assert!(
        chars > 0 && chars <= MAX_MESSAGE_CHARS,
        "{what}: a {chars}-character message for {:?}",
        input.chars().take(80).collect::<String>()
    );
}

/// `retry_after::parse`: delays are digits only and saturate; dates are in range and survive
/// formatting and parsing again; IMF-fixdate and asctime agree with the `httpdate` crate
/// wherever both accept the value; errors are short.
pub fn retry_after(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for now in [FIXED_NOW, derived_now(data)] {
        match retry_after::parse(&text, now) {
            Ok(RetryAfter::Delay(secs)) => {
                let digits = text.trim_matches([' ', '\t']);
                assert!(!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()));
                let exact = digits.bytes().fold(0u128, |acc, d| {
                    acc.saturating_mul(10).saturating_add(u128::from(d - b'0'))
                });
                assert_eq!(
                    u128::from(secs),
                    exact.min(u128::from(MAX_DELAY)),
                    "{text:?}"
                );
            }
            Ok(RetryAfter::Date(unix)) => {
                assert!(
                    (MIN_HTTP_DATE..=MAX_HTTP_DATE).contains(&unix),
                    "{text:?} -> {unix}"
                );
                let formatted = match retry_after::format_http_date(unix) {
                    Ok(formatted) => formatted,
                    Err(err) => panic!("{text:?} -> {unix} cannot be formatted: {err}"),
                };
                assert_eq!(
                    retry_after::parse(&formatted, now),
                    Ok(RetryAfter::Date(unix)),
                    "{text:?} -> {formatted:?}"
                );
                let value = text.trim_matches([' ', '\t']);
                if !value.contains('-') {
                    if let Ok(theirs) = httpdate::parse_http_date(value) {
                        let theirs = theirs
                            .duration_since(std::time::UNIX_EPOCH)
                            .map(|d| d.as_secs() as i64)
                            .ok();
                        assert_eq!(theirs, Some(unix), "{text:?}: httpdate disagrees");
                    }
                }
            }
            Err(err) => short(&err.to_string(), "retry_after::parse", &text),
        }
    }
}

/// `state_file::parse`: a state it accepts is in range and is read back unchanged after
/// being written; errors are short.
pub fn state_file(data: &[u8]) {
    match state_file::parse(data) {
        Ok(state) => {
            assert!(state.retry_after.is_none_or(|secs| secs <= MAX_DELAY));
            assert!(state
                .until
                .is_none_or(|unix| (MIN_UNIX..=MAX_UNIX).contains(&unix)));
            let written = state_file::render(&state, derived_now(data));
            assert_eq!(state_file::parse(&written), Ok(state));
        }
        Err(reason) => short(&reason, "state_file::parse", &String::from_utf8_lossy(data)),
    }
}

/// `clock::parse_iso`: an instant it returns is within a day of the years 1..=9999 (the
/// offset may move it), and one inside them survives formatting and parsing again.
pub fn iso_date(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Some(unix) = parse_iso(&text) {
        assert!(
            (MIN_UNIX - 86_400..=MAX_UNIX + 86_400).contains(&unix),
            "{text:?} -> {unix}"
        );
        if (MIN_UNIX..=MAX_UNIX).contains(&unix) {
            let formatted = format_iso(unix);
            assert_eq!(
                formatted.as_deref().and_then(parse_iso),
                Some(unix),
                "{text:?} -> {formatted:?}"
            );
        }
    }
}

/// `accept::prefers_html`: ASCII case never matters, and a range that refuses a type
/// (`q=0`) can only move the answer away from that type.
pub fn accept(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let html = prefers_html(&text);
    assert_eq!(html, prefers_html(&text.to_ascii_lowercase()), "{text:?}");
    assert_eq!(html, prefers_html(&text.to_ascii_uppercase()), "{text:?}");
    if prefers_html(&format!("{text},text/html;q=0")) {
        assert!(html, "{text:?}: refusing html made html preferred");
    }
    if html {
        assert!(
            prefers_html(&format!("{text},application/json;q=0")),
            "{text:?}: refusing json made json preferred"
        );
    }
}

#[cfg(test)]
mod tests;
