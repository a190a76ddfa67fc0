use super::*;

fn huge(negative: bool) -> WholeNumber {
    let digits = format!("1{}", "0".repeat(40));
    let shown = if negative {
        format!("-{digits}")
    } else {
        digits
    };
    WholeNumber::Huge { negative, shown }
}

#[test]
fn a_whole_number_in_range_comes_back_in_the_type_asked_for() {
    assert_eq!(WholeNumber::Exact(7).at_least::<u32>("n", 1), Ok(7_u32));
    assert_eq!(WholeNumber::Exact(0).at_least::<u64>("n", 0), Ok(0_u64));
    let max = i128::from(u32::MAX);
    assert_eq!(
        WholeNumber::Exact(max).at_least::<u32>("n", 1),
        Ok(u32::MAX)
    );
}

#[test]
fn out_of_range_is_a_value_error_naming_the_parameter_and_the_value() {
    let cases = [
        (
            WholeNumber::Exact(0),
            "n: must be an integer >= 1, got 0".to_owned(),
        ),
        (
            WholeNumber::Exact(-3),
            "n: must be an integer >= 1, got -3".to_owned(),
        ),
        (
            WholeNumber::Exact(i128::from(u32::MAX) + 1),
            "n: is too large: 4294967296".to_owned(),
        ),
        (huge(false), format!("n: is too large: 1{}", "0".repeat(40))),
        (
            huge(true),
            format!("n: must be an integer >= 1, got -1{}", "0".repeat(40)),
        ),
    ];
    for (number, message) in cases {
        let err = number.at_least::<u32>("n", 1).expect_err("out of range");
        assert!(matches!(err, ArgError::Value { param: "n", .. }), "{err:?}");
        assert_eq!(err.to_string(), message);
    }
}

#[test]
fn saturation_pins_huge_values_to_the_ends() {
    assert_eq!(WholeNumber::Exact(-5).saturated(), -5);
    assert_eq!(huge(false).saturated(), i128::MAX);
    assert_eq!(huge(true).saturated(), i128::MIN);
}

#[test]
fn an_instant_a_datetime_cannot_hold_is_named_in_the_message() {
    assert_eq!(
        BeyondDatetime::Instant(253_402_300_800).to_string(),
        "instant 253402300800 is outside the years 1 to 9999"
    );
    assert_eq!(
        BeyondDatetime::When("now + 10 seconds".to_owned()).to_string(),
        "now + 10 seconds is outside the years 1 to 9999 that a datetime can hold"
    );
}
