//! Content negotiation for the 503 body: JSON unless the client's `Accept` prefers HTML.

use pyo3::prelude::*;
use pyo3::types::PyString;

use crate::errors::ArgError;

/// Whether an `Accept` header value ranks `text/html` above `application/json`.
///
/// Any `str` is accepted: one that cannot be UTF-8 (a lone surrogate) is read with
/// replacement characters rather than raising into a request.
#[pyfunction(name = "prefers_html")]
pub fn prefers_html_py(accept: &Bound<'_, PyAny>) -> PyResult<bool> {
    let Ok(text) = accept.cast::<PyString>() else {
        let kind = accept.get_type().name()?;
        return Err(ArgError::type_("accept", format!("must be a str, got {kind}")).into());
    };
    Ok(str_prefers_html(text))
}

/// `prefers_html` for a Python `str`; one that is not valid UTF-8 (a lone surrogate) is read
/// with replacement characters, so every caller answers the same for the same value.
pub fn str_prefers_html(accept: &Bound<'_, PyString>) -> bool {
    match accept.to_cow() {
        Ok(text) => prefers_html(&text),
        Err(_) => prefers_html(&accept.to_string_lossy()),
    }
}

/// True when `accept` (an `Accept` header value) ranks `text/html` above `application/json`.
///
/// Each media range may carry a `q` weight (RFC 9110 §12.5.1); the most specific range that
/// matches a type gives its weight. Ties, an empty header and unparseable ranges go to JSON,
/// the default, so API clients and `*/*` get machine-readable bodies and browsers get a page.
pub fn prefers_html(accept: &str) -> bool {
    let html = weight(accept, "text", "html");
    let json = weight(accept, "application", "json");
    html > json
}

/// The weight, in thousandths, that `accept` gives `kind/sub` (0 when nothing matches).
fn weight(accept: &str, kind: &str, sub: &str) -> u32 {
    let mut best: Option<(u8, u32)> = None;
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim();
        let Some((range_kind, range_sub)) = media.split_once('/') else {
            continue;
        };
        let specificity =
            if range_kind.eq_ignore_ascii_case(kind) && range_sub.eq_ignore_ascii_case(sub) {
                2
            } else if range_kind.eq_ignore_ascii_case(kind) && range_sub == "*" {
                1
            } else if range_kind == "*" && range_sub == "*" {
                0
            } else {
                continue;
            };
        let q = parts
            .filter_map(|p| {
                let (name, value) = p.split_once('=')?;
                name.trim()
                    .eq_ignore_ascii_case("q")
                    .then(|| parse_q(value.trim()))
            })
            .next()
            .unwrap_or(Some(1000));
        let Some(q) = q else { continue };
        if best.is_none_or(|(s, _)| specificity > s) {
            best = Some((specificity, q));
        }
    }
    best.map_or(0, |(_, q)| q)
}

/// `qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )`, in thousandths.
fn parse_q(text: &str) -> Option<u32> {
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac_value = frac
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(3)
        .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'));
    match whole {
        "0" => Some(frac_value),
        "1" if frac_value == 0 => Some(1000),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browsers_get_html_and_api_clients_get_json() {
        let firefox = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
        assert!(prefers_html(firefox));
        assert!(prefers_html("text/*"));
        assert!(!prefers_html(""));
        assert!(!prefers_html("*/*"));
        assert!(!prefers_html("application/json"));
        assert!(
            !prefers_html("application/json, text/html"),
            "a tie goes to json"
        );
        assert!(prefers_html("application/json;q=0.5, text/html"));
        assert!(!prefers_html("text/html;q=0, */*"));
        assert!(!prefers_html("text/html;q=0.4, application/*;q=0.5"));
    }

    #[test]
    fn malformed_ranges_are_ignored() {
        assert!(!prefers_html("text/html;q=2"));
        assert!(!prefers_html("text/html;q=0.1234"));
        assert!(!prefers_html("html"));
        assert!(!prefers_html(";;;,,,/"));
        assert!(prefers_html("garbage, text/html"));
        assert!(!prefers_html("\u{fffd}/\u{fffd};q=\u{fffd}"));
    }
}
