use super::*;

use crate::clock::from_civil;

/// RFC 9110's example instant, `Sun, 06 Nov 1994 08:49:37 GMT`.
const EXAMPLE: i64 = 784_111_777;

fn at(year: i64, month: u32, day: u32, hour: u32, minute: u32, second: u32) -> i64 {
    from_civil(year, month, day, hour, minute, second).expect("a valid test date")
}

/// A fixed "now" for tests: 2025-06-15 12:00:00 UTC.
fn now() -> i64 {
    at(2025, 6, 15, 12, 0, 0)
}

/// An RFC 850 date for a civil time, with the day name that date really has.
fn rfc850(year: i64, month: u32, day: u32, hour: u32, minute: u32, second: u32) -> String {
    let weekday = clock::weekday(clock::days_from_civil(year, month, day)) as usize;
    format!(
        "{}, {day:02}-{}-{:02} {hour:02}:{minute:02}:{second:02} GMT",
        LONG_DAY_NAMES[weekday],
        MONTH_NAMES[month as usize - 1],
        year.rem_euclid(100)
    )
}

#[test]
fn parses_every_form_rfc_9110_lists() {
    let cap = RetryAfter::Delay(MAX_DELAY);
    let cases: Vec<(String, RetryAfter)> = vec![
        ("0".into(), RetryAfter::Delay(0)),
        ("120".into(), RetryAfter::Delay(120)),
        ("000120".into(), RetryAfter::Delay(120)),
        (" \t120 \t".into(), RetryAfter::Delay(120)),
        ("2147483647".into(), RetryAfter::Delay(2_147_483_647)),
        ("2147483648".into(), cap),
        ("2147483649".into(), cap),
        ("18446744073709551616".into(), cap),
        ("9".repeat(100_000), cap),
        (
            "Sun, 06 Nov 1994 08:49:37 GMT".into(),
            RetryAfter::Date(EXAMPLE),
        ),
        (
            " Sun, 06 Nov 1994 08:49:37 GMT\t".into(),
            RetryAfter::Date(EXAMPLE),
        ),
        (
            "Sunday, 06-Nov-94 08:49:37 GMT".into(),
            RetryAfter::Date(EXAMPLE),
        ),
        ("Sun Nov  6 08:49:37 1994".into(), RetryAfter::Date(EXAMPLE)),
        ("Sun Nov 06 08:49:37 1994".into(), RetryAfter::Date(EXAMPLE)),
        (
            "Fri, 31 Dec 1999 23:59:59 GMT".into(),
            RetryAfter::Date(at(1999, 12, 31, 23, 59, 59)),
        ),
        ("Thu, 01 Jan 1970 00:00:00 GMT".into(), RetryAfter::Date(0)),
        ("Wed, 31 Dec 1969 23:59:59 GMT".into(), RetryAfter::Date(-1)),
        (
            "Thu, 29 Feb 2024 00:00:00 GMT".into(),
            RetryAfter::Date(at(2024, 2, 29, 0, 0, 0)),
        ),
        (
            "Tue, 29 Feb 2000 12:00:00 GMT".into(),
            RetryAfter::Date(at(2000, 2, 29, 12, 0, 0)),
        ),
        (
            "Thu Feb 29 00:00:00 2024".into(),
            RetryAfter::Date(at(2024, 2, 29, 0, 0, 0)),
        ),
        (
            "Sat, 01 Jan 0000 00:00:00 GMT".into(),
            RetryAfter::Date(MIN_HTTP_DATE),
        ),
        (
            "Fri, 31 Dec 9999 23:59:59 GMT".into(),
            RetryAfter::Date(MAX_HTTP_DATE),
        ),
        // A leap second is the first second of the next day.
        (
            "Sat, 31 Dec 2016 23:59:60 GMT".into(),
            RetryAfter::Date(at(2017, 1, 1, 0, 0, 0)),
        ),
        (
            "Sat Dec 31 23:59:60 2016".into(),
            RetryAfter::Date(at(2017, 1, 1, 0, 0, 0)),
        ),
    ];
    for (text, expected) in cases {
        let short: String = text.chars().take(40).collect();
        assert_eq!(parse(&text, now()), Ok(expected), "{short:?}");
    }
}

#[test]
fn rejects_what_rfc_9110_does_not_allow_and_says_why() {
    let long_garbage = format!("Sun, {}", "x".repeat(100_000));
    let cases: Vec<(&str, &str)> = vec![
        ("", "empty value"),
        (" \t ", "empty value"),
        ("-1", "not delay-seconds or an HTTP-date: \"-1\""),
        ("+5", "not delay-seconds"),
        ("1.5", "not delay-seconds"),
        ("1e3", "not delay-seconds"),
        ("12 34", "not delay-seconds"),
        ("5s", "not delay-seconds"),
        ("0x10", "not delay-seconds"),
        ("\r\n120", "not delay-seconds"),
        ("120\n", "not delay-seconds"),
        ("１２０", "not delay-seconds"),
        ("soon", "not delay-seconds"),
        ("Sün, 06 Nov 1994 08:49:37 GMT", "not delay-seconds"),
        (
            "sun, 06 Nov 1994 08:49:37 GMT",
            "\"sun\" must be written \"Sun\"",
        ),
        (
            "SUNDAY, 06-Nov-94 08:49:37 GMT",
            "\"SUNDAY\" must be written \"Sunday\"",
        ),
        (
            "Sun, 06 nov 1994 08:49:37 GMT",
            "\"nov\" must be written \"Nov\"",
        ),
        (
            "Sun, 06 Nov 1994 08:49:37 gmt",
            "expected \" GMT\" at offset 25",
        ),
        (
            "Sun, 06 Nov 1994 08:49:37",
            "expected \" GMT\" at offset 25",
        ),
        ("Sun, 06 Nov 1994 08:49:37 UTC", "expected \" GMT\""),
        ("Sun, 06 Nov 1994 08:49:37 +0000", "expected \" GMT\""),
        (
            "Sun, 06 Nov 1994 08:49:37 GMT junk",
            "unexpected text after the date at offset 29",
        ),
        (
            "Sun, 06 Nov 1994 08:49:37 GMT\u{a0}",
            "unexpected text after the date",
        ),
        (
            "Sun,06 Nov 1994 08:49:37 GMT",
            "expected \", \" or \" \" after the day name",
        ),
        (
            "Sun, 6 Nov 1994 08:49:37 GMT",
            "expected a two-digit day at offset 5",
        ),
        (
            "Sun, 06 November 1994 08:49:37 GMT",
            "expected a month name",
        ),
        ("Sun, 06 Nov 94 08:49:37 GMT", "expected a four-digit year"),
        ("Sun, 06 Nov 1994 8:49:37 GMT", "expected a two-digit hour"),
        ("Sun, 06 Nov 1994 08:49 GMT", "expected \":\""),
        ("Tue, 31 Feb 1994 08:49:37 GMT", "Feb 1994 has no day 31"),
        ("Sun, 00 Nov 1994 08:49:37 GMT", "Nov 1994 has no day 00"),
        ("Wed, 29 Feb 2023 00:00:00 GMT", "Feb 2023 has no day 29"),
        ("Thu, 29 Feb 1900 00:00:00 GMT", "Feb 1900 has no day 29"),
        ("Sun, 06 Nov 1994 24:00:00 GMT", "hour 24 is out of range"),
        ("Sun, 06 Nov 1994 08:60:00 GMT", "minute 60 is out of range"),
        ("Sun, 06 Nov 1994 08:49:61 GMT", "second 61 is out of range"),
        ("Sun, 06 Nov 1994 08:49:60 GMT", "second 60 is out of range"),
        (
            "Mon, 06 Nov 1994 08:49:37 GMT",
            "day name Mon does not match 06 Nov 1994, a Sunday",
        ),
        (
            "Monday, 06-Nov-94 08:49:37 GMT",
            "day name Monday does not match",
        ),
        ("Mon Nov  6 08:49:37 1994", "day name Mon does not match"),
        (
            "Sunday, 06-Nov-1994 08:49:37 GMT",
            "expected \" \" at offset 17",
        ),
        ("Sunday, 06 Nov 94 08:49:37 GMT", "expected \"-\""),
        ("Sunday, 06-Nov-94 08:49:37", "expected \" GMT\""),
        (
            "Sun Nov 6 08:49:37 1994",
            "expected a two-digit day, or a space and one digit",
        ),
        ("Sun Nov  6 08:49:37 94", "expected a four-digit year"),
        (
            "Sun Nov  6 08:49:37 1994 GMT",
            "unexpected text after the date",
        ),
        ("Sun Nov   6 08:49:37 1994", "expected a digit"),
        (
            "Fri, 31 Dec 9999 23:59:60 GMT",
            "outside the years 0000 to 9999",
        ),
        (&long_garbage, "expected a two-digit day"),
    ];
    for (text, wanted) in cases {
        let short: String = text.chars().take(40).collect();
        let err = parse(text, now()).expect_err(&short);
        let message = err.to_string();
        assert!(message.contains(wanted), "{short:?}: {message}");
        assert!(message.len() < 200, "message not cut short: {message}");
    }
}

#[test]
fn error_messages_name_the_text_and_cut_long_ones() {
    let err = parse("not-a-date", now()).expect_err("garbage");
    assert_eq!(
        err.to_string(),
        "not delay-seconds or an HTTP-date: \"not-a-date\""
    );
    let long = format!("x{}", "y".repeat(1000));
    let message = parse(&long, now()).expect_err("garbage").to_string();
    assert!(
        message.ends_with(&format!("\"x{}\"...", "y".repeat(47))),
        "{message}"
    );
    // Cutting never splits a multi-byte character.
    let wide = "é".repeat(100);
    let message = parse(&wide, now()).expect_err("garbage").to_string();
    assert!(message.contains(&"é".repeat(48)) && !message.contains(&"é".repeat(49)));
    // Escapes count toward the cut, so control characters cannot make a long message.
    let controls = format!("0{}", "\u{1f}\u{18cd6}".repeat(500));
    let message = parse(&controls, now()).expect_err("garbage").to_string();
    assert!(message.len() < 100, "{message}");
    assert!(message.contains("\"0\\u{1f}"), "{message}");
}

#[test]
fn rfc_850_year_is_relative_to_now() {
    let now = now(); // 2025-06-15 12:00:00
    let cases = [
        // Exactly 50 years ahead is not "more than 50 years in the future".
        ((2075, 6, 15, 12, 0, 0), 2075),
        ((2075, 6, 15, 12, 0, 1), 1975),
        ((2094, 11, 6, 8, 49, 37), 1994),
        ((2024, 12, 31, 0, 0, 0), 2024),
        // Earlier this year stays this year.
        ((2025, 1, 1, 0, 0, 0), 2025),
        ((2025, 12, 31, 23, 59, 59), 2025),
        ((2026, 1, 1, 0, 0, 0), 2026),
        ((2070, 1, 1, 0, 0, 0), 2070),
        ((2099, 1, 1, 0, 0, 0), 1999),
        ((2100, 1, 1, 0, 0, 0), 2000),
    ];
    for ((year, month, day, hour, minute, second), expected_year) in cases {
        // Written with the day name of the year it should resolve to.
        let text = rfc850(expected_year, month, day, hour, minute, second);
        assert_eq!(
            parse(&text, now),
            Ok(RetryAfter::Date(at(
                expected_year,
                month,
                day,
                hour,
                minute,
                second
            ))),
            "{text} (two digits of {year})"
        );
    }
    // The same text means another century when "now" moves.
    let text = rfc850(1994, 11, 6, 8, 49, 37);
    assert_eq!(
        parse(&text, at(1990, 1, 1, 0, 0, 0)),
        Ok(RetryAfter::Date(EXAMPLE))
    );
    let in_2090 = at(2090, 1, 1, 0, 0, 0);
    assert_eq!(
        parse(&rfc850(2094, 11, 6, 8, 49, 37), in_2090),
        Ok(RetryAfter::Date(at(2094, 11, 6, 8, 49, 37)))
    );
    // A limit on 29 Feb of a leap year: 50 years on is no leap year, and needs no date.
    let leap_now = at(2024, 2, 29, 12, 0, 0);
    assert_eq!(
        parse(&rfc850(2074, 2, 28, 23, 59, 59), leap_now),
        Ok(RetryAfter::Date(at(2074, 2, 28, 23, 59, 59)))
    );
    assert_eq!(
        parse(&rfc850(1974, 3, 1, 0, 0, 0), leap_now),
        Ok(RetryAfter::Date(at(1974, 3, 1, 0, 0, 0)))
    );
    // "00" is 2100 when that is close enough, and 2100 has no 29 Feb.
    let err = parse("Tuesday, 29-Feb-00 00:00:00 GMT", at(2060, 1, 1, 0, 0, 0));
    assert!(err
        .expect_err("2100-02-29")
        .to_string()
        .contains("Feb 2100 has no day 29"));
    assert_eq!(
        parse("Tuesday, 29-Feb-00 00:00:00 GMT", at(2049, 6, 1, 0, 0, 0)),
        Ok(RetryAfter::Date(at(2000, 2, 29, 0, 0, 0)))
    );
}

#[test]
fn where_httpdate_differs_as_the_module_doc_says() {
    // httpdate reads "70" as 1970 whatever the date; RFC 9110 reads it as 2070 in 2025.
    let text = rfc850(2070, 1, 1, 0, 0, 0);
    assert_eq!(
        parse(&text, now()),
        Ok(RetryAfter::Date(at(2070, 1, 1, 0, 0, 0)))
    );
    assert!(
        httpdate::parse_http_date(&text).is_err(),
        "the day name fits 2070, not 1970"
    );
    // Years before 1970 and leap seconds are valid HTTP-dates it rejects.
    for text in [
        "Wed, 31 Dec 1969 23:59:59 GMT",
        "Sat, 31 Dec 2016 23:59:60 GMT",
    ] {
        assert!(parse(text, now()).is_ok(), "{text}");
        assert!(httpdate::parse_http_date(text).is_err(), "{text}");
    }
    // CR, LF and FF are not OWS, but it trims them.
    let text = "\r\n\x0cSun, 06 Nov 1994 08:49:37 GMT";
    assert!(parse(text, now()).is_err());
    assert!(httpdate::parse_http_date(text).is_ok());
    // Where it agrees: the asctime day as a space and one digit, and a day name that
    // disagrees with the date.
    assert!(httpdate::parse_http_date("Sun Nov  6 08:49:37 1994").is_ok());
    assert!(httpdate::parse_http_date("Mon, 06 Nov 1994 08:49:37 GMT").is_err());
}

#[test]
fn rfc_850_with_any_now_never_panics() {
    let text = rfc850(1994, 11, 6, 8, 49, 37);
    for now in [
        i64::MIN,
        i64::MIN + 1,
        -1,
        0,
        MAX_HTTP_DATE,
        i64::MAX - 1,
        i64::MAX,
    ] {
        match parse(&text, now) {
            Ok(RetryAfter::Date(unix)) => assert!((MIN_HTTP_DATE..=MAX_HTTP_DATE).contains(&unix)),
            Ok(other) => panic!("{other:?}"),
            Err(err) => assert!(err.to_string().contains("outside the years"), "{err}"),
        }
    }
    // Near year 0 the century before is out of range.
    let err = parse(&text, at(30, 1, 1, 0, 0, 0)).expect_err("year -6");
    assert!(matches!(err, RetryAfterError::OutOfRange { .. }), "{err}");
}

#[test]
fn formats_imf_fixdate_over_the_whole_range() {
    let cases = [
        (EXAMPLE, "Sun, 06 Nov 1994 08:49:37 GMT"),
        (0, "Thu, 01 Jan 1970 00:00:00 GMT"),
        (-1, "Wed, 31 Dec 1969 23:59:59 GMT"),
        (MIN_HTTP_DATE, "Sat, 01 Jan 0000 00:00:00 GMT"),
        (MAX_HTTP_DATE, "Fri, 31 Dec 9999 23:59:59 GMT"),
        (at(2000, 2, 29, 0, 0, 0), "Tue, 29 Feb 2000 00:00:00 GMT"),
        (at(1, 1, 1, 0, 0, 0), "Mon, 01 Jan 0001 00:00:00 GMT"),
    ];
    for (unix, text) in cases {
        assert_eq!(format_http_date(unix).as_deref(), Ok(text));
        assert_eq!(RetryAfter::Date(unix).header_value(), text);
        assert_eq!(RetryAfter::Date(unix).to_string(), text);
    }
    for unix in [MIN_HTTP_DATE - 1, MAX_HTTP_DATE + 1, i64::MIN, i64::MAX] {
        let err = format_http_date(unix).expect_err("out of range");
        assert!(
            err.to_string().contains("outside the years 0000 to 9999"),
            "{err}"
        );
        assert!(RetryAfter::date(unix).is_err());
    }
    // Built around the constructor: written as the nearest date that exists, no panic.
    assert_eq!(
        RetryAfter::Date(i64::MAX).header_value(),
        "Fri, 31 Dec 9999 23:59:59 GMT"
    );
    assert_eq!(
        RetryAfter::Date(i64::MIN).header_value(),
        "Sat, 01 Jan 0000 00:00:00 GMT"
    );
    assert_eq!(RetryAfter::Delay(u64::MAX).header_value(), "2147483648");
}

#[test]
fn own_formatter_agrees_with_httpdate_and_parse_round_trips() {
    // A prime step visits every time of day and weekday across the range.
    let step = 86_400 * 37 + 3_607;
    let mut unix = MIN_HTTP_DATE;
    let mut checked_against_httpdate = 0;
    while unix <= MAX_HTTP_DATE {
        let text = format_http_date(unix).expect("in range");
        assert_eq!(parse(&text, now()), Ok(RetryAfter::Date(unix)), "{text}");
        if unix >= 0 {
            assert_eq!(imf_fixdate_from_civil(unix), text);
            let theirs = httpdate::parse_http_date(&text).expect("httpdate reads 1970+");
            let secs = theirs
                .duration_since(UNIX_EPOCH)
                .expect("after 1970")
                .as_secs();
            assert_eq!(i64::try_from(secs), Ok(unix));
            checked_against_httpdate += 1;
        }
        unix += step;
    }
    assert!(checked_against_httpdate > 50_000);
}

#[test]
fn delay_seconds_rounds_up_and_saturates() {
    let cases = [
        (0.0, 0),
        (-0.0, 0),
        (1e-300, 1),
        (0.1, 1),
        (1.0, 1),
        (1.5, 2),
        (120.0, 120),
        (2_147_483_647.5, MAX_DELAY),
        (2_147_483_648.0, MAX_DELAY),
        (1e300, MAX_DELAY),
        (f64::MAX, MAX_DELAY),
    ];
    for (secs, expected) in cases {
        assert_eq!(
            RetryAfter::delay_seconds(secs),
            Ok(RetryAfter::Delay(expected)),
            "{secs}"
        );
    }
    for bad in [-1.0, -1e-300, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let err = RetryAfter::delay_seconds(bad).expect_err("bad delay");
        assert!(err
            .to_string()
            .starts_with("must be a finite number of seconds >= 0, got "));
    }
    assert_eq!(RetryAfter::delay(u64::MAX), RetryAfter::Delay(MAX_DELAY));
    assert_eq!(RetryAfter::delay(7), RetryAfter::Delay(7));
}

#[test]
fn delay_and_when_from_a_given_now() {
    let date = RetryAfter::Date(EXAMPLE);
    assert_eq!(date.delay_at(EXAMPLE - 120), 120);
    assert_eq!(date.delay_at(EXAMPLE), 0);
    assert_eq!(date.delay_at(EXAMPLE + 1), 0, "a past date means now");
    assert_eq!(date.when_at(0), EXAMPLE);
    let delay = RetryAfter::Delay(90);
    assert_eq!(delay.delay_at(i64::MIN), 90);
    assert_eq!(delay.when_at(EXAMPLE), EXAMPLE + 90);
    // Extremes saturate instead of overflowing.
    assert_eq!(RetryAfter::Date(i64::MIN).delay_at(i64::MAX), 0);
    assert_eq!(
        RetryAfter::Date(i64::MAX).delay_at(i64::MIN),
        i64::MAX as u64
    );
    assert_eq!(RetryAfter::Delay(MAX_DELAY).when_at(i64::MAX), i64::MAX);
}

/// A small deterministic generator (xorshift64*), so the mutation test needs no crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[test]
fn mutated_near_valid_input_never_panics_and_round_trips() {
    let seeds = [
        "Sun, 06 Nov 1994 08:49:37 GMT",
        "Sunday, 06-Nov-94 08:49:37 GMT",
        "Sun Nov  6 08:49:37 1994",
        "Sat, 31 Dec 2016 23:59:60 GMT",
        "Thu, 29 Feb 2024 00:00:00 GMT",
        "Sat, 01 Jan 0000 00:00:00 GMT",
        "Fri, 31 Dec 9999 23:59:59 GMT",
        "Wednesday, 09-Jun-82 00:00:00 GMT",
        "2147483648",
        "120",
    ];
    let pieces = [
        "0", "1", "2", "9", "00", "29", "31", "60", "99", "1970", "9999", " ", "  ", "\t", ",",
        ", ", "-", ":", "GMT", " GMT", "Feb", "feb", "Sun", "Sunday", "Mon", "é", "\u{0}", "\r",
        "\n", "１", "\u{feff}", "𝟘",
    ];
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut accepted = 0;
    let mut dates_compared_with_httpdate = 0;
    for round in 0..120_000 {
        let mut chars: Vec<char> = seeds[round % seeds.len()].chars().collect();
        for _ in 0..=rng.below(3) {
            let pos = rng.below(chars.len() + 1);
            let piece: Vec<char> = pieces[rng.below(pieces.len())].chars().collect();
            match rng.below(6) {
                0 if pos < chars.len() => {
                    chars.remove(pos);
                }
                1 if pos < chars.len() => {
                    let end = (pos + piece.len()).min(chars.len());
                    chars.splice(pos..end, piece);
                }
                2 => {
                    chars.splice(pos..pos, piece);
                }
                3 => chars.truncate(pos),
                4 if pos < chars.len() => {
                    let digit = char::from(b'0' + rng.below(10) as u8);
                    chars[pos] = digit;
                }
                _ => {
                    let other = rng.below(chars.len() + 1);
                    let (a, b) = (pos.min(other), pos.max(other));
                    if b < chars.len() {
                        chars.swap(a, b);
                    }
                }
            }
        }
        let text: String = chars.into_iter().collect();
        match parse(&text, now()) {
            Ok(value) => {
                accepted += 1;
                assert_eq!(parse(&value.header_value(), now()), Ok(value), "{text:?}");
            }
            Err(err) => {
                let message = err.to_string();
                assert!(
                    !message.is_empty() && message.len() < 200,
                    "{text:?}: {message}"
                );
            }
        }
        // Where httpdate is right (IMF-fixdate, 1970 on, no leap second, nothing to trim),
        // both parsers must give the same answer.
        let bytes = text.as_bytes();
        if bytes.len() == 29 && bytes.get(3) == Some(&b',') && text.trim() == text {
            let ours = match parse(&text, now()) {
                Ok(RetryAfter::Date(unix)) => Some(unix),
                _ => None,
            };
            let theirs = httpdate::parse_http_date(&text)
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .and_then(|d| i64::try_from(d.as_secs()).ok());
            let httpdate_cannot =
                text.get(12..16).is_some_and(|y| y < "1970") || text.get(23..25) == Some("60");
            if !httpdate_cannot {
                assert_eq!(ours, theirs, "{text:?}");
                dates_compared_with_httpdate += 1;
            }
        }
    }
    assert!(
        accepted > 5_000,
        "the mutations should keep many inputs valid: {accepted}"
    );
    assert!(
        dates_compared_with_httpdate > 5_000,
        "{dates_compared_with_httpdate}"
    );
}
