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
