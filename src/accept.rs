//! Content negotiation for the 503 body: JSON unless the client's `Accept` prefers HTML.

mod py;

pub use py::{prefers_html_py, str_prefers_html};

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
pub(crate) fn weight(accept: &str, kind: &str, sub: &str) -> u32 {
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
mod tests;
