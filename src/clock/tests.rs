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
