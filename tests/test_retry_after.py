"""RetryAfter: building, formatting, parsing and reading Retry-After values."""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone, tzinfo
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidegate import RetryAfter

UTC = timezone.utc
EXAMPLE = datetime(1994, 11, 6, 8, 49, 37, tzinfo=UTC)
EXAMPLE_TEXT = "Sun, 06 Nov 1994 08:49:37 GMT"
CAP = 2147483648
DAY_NAMES = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
LONG_DAY_NAMES = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


def imf_fixdate(d: datetime) -> str:
    return (
        f"{DAY_NAMES[d.weekday()]}, {d.day:02} {MONTHS[d.month - 1]} {d.year:04} "
        f"{d.hour:02}:{d.minute:02}:{d.second:02} GMT"
    )


def rfc850(d: datetime) -> str:
    return (
        f"{LONG_DAY_NAMES[d.weekday()]}, {d.day:02}-{MONTHS[d.month - 1]}-{d.year % 100:02} "
        f"{d.hour:02}:{d.minute:02}:{d.second:02} GMT"
    )


def asctime(d: datetime) -> str:
    return (
        f"{DAY_NAMES[d.weekday()]} {MONTHS[d.month - 1]} {d.day:2} "
        f"{d.hour:02}:{d.minute:02}:{d.second:02} {d.year:04}"
    )


class FixedOffset(tzinfo):
    """A tzinfo whose utcoffset may be None, to check it is read as UTC."""

    def __init__(self, offset: timedelta | None) -> None:
        self.offset = offset

    def utcoffset(self, dt: datetime | None) -> timedelta | None:
        return self.offset

    def dst(self, dt: datetime | None) -> timedelta | None:
        return None

    def tzname(self, dt: datetime | None) -> str | None:
        return None


# after


@pytest.mark.parametrize(
    ("seconds", "header"),
    [
        (0, "0"),
        (120, "120"),
        (CAP - 1, str(CAP - 1)),
        (CAP, str(CAP)),
        (CAP + 1, str(CAP)),
        (10**100, str(CAP)),
        (0.0, "0"),
        (-0.0, "0"),
        (1e-300, "1"),
        (0.1, "1"),
        (1.0, "1"),
        (1.2, "2"),
        (119.000001, "120"),
        (1e300, str(CAP)),
        (timedelta(0), "0"),
        (timedelta(seconds=90), "90"),
        (timedelta(microseconds=1), "1"),
        (timedelta(minutes=2, microseconds=999_999), "121"),
        (timedelta(days=1), "86400"),
        (timedelta.max, str(CAP)),
    ],
)
def test_after_gives_delay_seconds(seconds: float | timedelta, header: str) -> None:
    value = RetryAfter.after(seconds)
    assert value.header_value() == header
    assert str(value) == header
    assert value.delay() == int(header)


def test_after_takes_int_subclasses() -> None:
    class Minutes(enum.IntEnum):
        TWO = 120

    assert RetryAfter.after(Minutes.TWO) == RetryAfter.after(120)


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (-1, "-1"),
        (-(10**100), "-1000"),
        (-0.5, "-0.5"),
        (-1e-300, "-1e-300"),
        (math.nan, "nan"),
        (math.inf, "inf"),
        (-math.inf, "-inf"),
        (timedelta(microseconds=-1), "timedelta(days=-1"),
        (timedelta.min, "timedelta(days=-999999999)"),
    ],
)
def test_after_rejects_negative_and_non_finite(seconds: float | timedelta, shown: str) -> None:
    with pytest.raises(ValueError, match=r"^seconds: must be a finite number >= 0, got ") as info:
        RetryAfter.after(seconds)
    assert shown in str(info.value)


@pytest.mark.parametrize(
    ("seconds", "kind"),
    [
        (True, "bool"),
        (False, "bool"),
        ("120", "str"),
        (b"120", "bytes"),
        (None, "NoneType"),
        (Decimal("1.5"), "Decimal"),
        (Fraction(3, 2), "Fraction"),
        ([120], "list"),
        (EXAMPLE, "datetime"),
    ],
)
def test_after_rejects_other_types(seconds: object, kind: str) -> None:
    with pytest.raises(TypeError, match=r"^seconds: expected an int, float or datetime\.timedelta"):
        RetryAfter.after(seconds)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=f"got {kind}$"):
        RetryAfter.after(seconds)  # type: ignore[arg-type]


# at


@pytest.mark.parametrize(
    ("when", "header"),
    [
        (datetime(1994, 11, 6, 8, 49, 37), EXAMPLE_TEXT),
        (EXAMPLE, EXAMPLE_TEXT),
        (datetime(1994, 11, 6, 10, 49, 37, tzinfo=timezone(timedelta(hours=2))), EXAMPLE_TEXT),
        (
            datetime(1994, 11, 6, 3, 19, 37, tzinfo=timezone(timedelta(hours=-5, minutes=-30))),
            EXAMPLE_TEXT,
        ),
        (datetime(1994, 11, 6, 8, 49, 37, tzinfo=FixedOffset(None)), EXAMPLE_TEXT),
        # A fraction of a second rounds up: a client must not come back early.
        (datetime(1994, 11, 6, 8, 49, 36, 1), EXAMPLE_TEXT),
        (datetime(1994, 11, 6, 8, 49, 36, 999_999), EXAMPLE_TEXT),
        (datetime(1999, 12, 31, 23, 59, 59), "Fri, 31 Dec 1999 23:59:59 GMT"),
        (datetime(1969, 12, 31, 23, 59, 59), "Wed, 31 Dec 1969 23:59:59 GMT"),
        (datetime(2024, 2, 29), "Thu, 29 Feb 2024 00:00:00 GMT"),
        (datetime(1, 1, 1), "Mon, 01 Jan 0001 00:00:00 GMT"),
        (datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5))), "Sun, 31 Dec 0000 19:00:00 GMT"),
        (datetime(9999, 12, 31, 23, 59, 59), "Fri, 31 Dec 9999 23:59:59 GMT"),
        (
            datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(minutes=1))),
            "Fri, 31 Dec 9999 23:58:59 GMT",
        ),
    ],
)
def test_at_gives_an_imf_fixdate(when: datetime, header: str) -> None:
    assert RetryAfter.at(when).header_value() == header
    assert str(RetryAfter.at(when)) == header


@pytest.mark.parametrize(
    "when",
    [
        datetime(9999, 12, 31, 23, 59, 59, 1),
        datetime(9999, 12, 31, 23, 30, tzinfo=timezone(timedelta(hours=-1))),
        datetime.max,
    ],
)
def test_at_rejects_instants_past_the_last_http_date(when: datetime) -> None:
    with pytest.raises(ValueError, match=r"^when: datetime\.datetime\(9999.*the last HTTP-date$"):
        RetryAfter.at(when)


@pytest.mark.parametrize(
    ("when", "kind"),
    [(date(1994, 11, 6), "date"), (EXAMPLE_TEXT, "str"), (None, "NoneType"), (784111777, "int")],
)
def test_at_rejects_other_types(when: object, kind: str) -> None:
    with pytest.raises(TypeError, match=rf"^when: expected a datetime\.datetime, got {kind}$"):
        RetryAfter.at(when)  # type: ignore[arg-type]


# parse

NOW = datetime(2025, 6, 15, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("120", RetryAfter.after(120)),
        ("0", RetryAfter.after(0)),
        ("000120", RetryAfter.after(120)),
        (" \t120\t ", RetryAfter.after(120)),
        ("2147483649", RetryAfter.after(CAP)),
        ("9" * 10_000, RetryAfter.after(CAP)),
        (EXAMPLE_TEXT, RetryAfter.at(EXAMPLE)),
        ("Sunday, 06-Nov-94 08:49:37 GMT", RetryAfter.at(EXAMPLE)),
        ("Sun Nov  6 08:49:37 1994", RetryAfter.at(EXAMPLE)),
        ("Sun Nov 06 08:49:37 1994", RetryAfter.at(EXAMPLE)),
        ("  Sun Nov  6 08:49:37 1994 ", RetryAfter.at(EXAMPLE)),
        ("Thu, 29 Feb 2024 00:00:00 GMT", RetryAfter.at(datetime(2024, 2, 29))),
        ("Sat, 31 Dec 2016 23:59:60 GMT", RetryAfter.at(datetime(2017, 1, 1))),
        ("Fri, 31 Dec 9999 23:59:59 GMT", RetryAfter.at(datetime(9999, 12, 31, 23, 59, 59))),
    ],
)
def test_parse_reads_every_rfc_9110_form(text: str, expected: RetryAfter) -> None:
    assert RetryAfter.parse(text, now=NOW) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty value"),
        ("   ", "empty value"),
        ("-1", 'not delay-seconds or an HTTP-date: "-1"'),
        ("1.5", "not delay-seconds or an HTTP-date"),
        ("+5", "not delay-seconds or an HTTP-date"),
        ("120\r\n", "not delay-seconds or an HTTP-date"),
        ("in a minute", "not delay-seconds or an HTTP-date"),
        ("sun, 06 Nov 1994 08:49:37 GMT", '"sun" must be written "Sun"'),
        ("Sun, 06 NOV 1994 08:49:37 GMT", '"NOV" must be written "Nov"'),
        ("Sun, 06 Nov 1994 08:49:37 gmt", 'expected " GMT" at offset 25'),
        ("Sun, 06 Nov 1994 08:49:37", 'expected " GMT" at offset 25'),
        ("Sun, 06 Nov 1994 08:49:37 GMT+1", "unexpected text after the date"),
        ("Tue, 31 Feb 1994 08:49:37 GMT", "Feb 1994 has no day 31"),
        ("Wed, 29 Feb 2023 08:49:37 GMT", "Feb 2023 has no day 29"),
        ("Sun, 06 Nov 1994 24:00:00 GMT", "hour 24 is out of range"),
        ("Sun, 06 Nov 1994 12:00:60 GMT", "second 60 is out of range"),
        ("Mon, 06 Nov 1994 08:49:37 GMT", "day name Mon does not match 06 Nov 1994, a Sunday"),
        ("Sun Nov 6 08:49:37 1994", "expected a two-digit day, or a space and one digit"),
        ("Sun, 06 Nov 1994 08:49:37 GMT\u00a0", "unexpected text after the date"),
        ("Fri, 31 Dec 9999 23:59:60 GMT", "outside the years 0000 to 9999"),
    ],
)
def test_parse_rejects_with_the_reason(text: str, reason: str) -> None:
    with pytest.raises(ValueError) as info:
        RetryAfter.parse(text, now=NOW)
    assert reason in str(info.value)


def test_parse_error_names_the_text_and_cuts_it_short() -> None:
    with pytest.raises(ValueError) as info:
        RetryAfter.parse("x" * 100_000)
    message = str(info.value)
    assert message == 'not delay-seconds or an HTTP-date: "' + "x" * 48 + '"...'
    with pytest.raises(ValueError, match="bad HTTP-date"):
        RetryAfter.parse("Sun, 06 Nov 1994 08:49:37 GMT" + "y" * 100_000)


def test_parse_rejects_lone_surrogates_as_a_value_error() -> None:
    with pytest.raises(ValueError, match="not delay-seconds or an HTTP-date"):
        RetryAfter.parse("12\ud800")


def test_parse_rfc_850_year_follows_now() -> None:
    text = "Sunday, 06-Nov-94 08:49:37 GMT"
    assert RetryAfter.parse(text, now=datetime(1990, 1, 1)) == RetryAfter.at(EXAMPLE)
    in_2090 = datetime(2090, 1, 1, tzinfo=UTC)
    later = "Saturday, 06-Nov-94 08:49:37 GMT"
    assert RetryAfter.parse(later, now=in_2090).when() == EXAMPLE.replace(year=2094)
    # 2094 is more than 50 years after 2025, so in 2025 the date is 1994 and its name is wrong.
    with pytest.raises(ValueError, match="day name Saturday does not match 06 Nov 1994"):
        RetryAfter.parse(later, now=NOW)
    # Exactly 50 years ahead stays; one second more goes back a century.
    fifty = NOW.replace(year=2075)
    assert RetryAfter.parse(rfc850(fifty), now=NOW).when() == fifty
    past = NOW.replace(year=1975, second=1)
    assert RetryAfter.parse(rfc850(past), now=NOW).when() == past
    # A naive now is UTC; an aware one is converted.
    assert RetryAfter.parse(rfc850(fifty), now=datetime(2025, 6, 15, 12)).when() == fifty
    tokyo = timezone(timedelta(hours=9))
    assert RetryAfter.parse(rfc850(fifty), now=NOW.astimezone(tokyo)).when() == fifty


def test_parse_without_now_uses_the_current_time() -> None:
    text = rfc850(datetime.now(UTC).replace(microsecond=0) + timedelta(days=1))
    assert RetryAfter.parse(text) == RetryAfter.parse(text, now=datetime.now(UTC))
    assert 0 < RetryAfter.parse(text).delay() <= 86_400


@pytest.mark.parametrize("text", [b"120", 120, None, ["120"]])
def test_parse_rejects_non_str_text(text: object) -> None:
    with pytest.raises(TypeError, match=r"^text: expected a str, got "):
        RetryAfter.parse(text)  # type: ignore[arg-type]


def test_parse_rejects_a_bad_now() -> None:
    with pytest.raises(TypeError, match=r"^now: expected a datetime\.datetime, got date$"):
        RetryAfter.parse("120", now=date(2025, 1, 1))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        RetryAfter.parse("120", datetime(2025, 1, 1))  # type: ignore[call-arg]


# delay and when


def test_delay_of_a_date_counts_from_now() -> None:
    value = RetryAfter.at(EXAMPLE)
    assert value.delay(EXAMPLE - timedelta(minutes=2)) == 120
    assert value.delay(now=EXAMPLE) == 0
    assert value.delay(now=EXAMPLE + timedelta(days=1)) == 0, "a past date means now"
    assert value.delay(now=datetime(1994, 11, 6, 8, 47, 37)) == 120
    paris = timezone(timedelta(hours=1))
    assert value.delay(now=datetime(1994, 11, 6, 9, 48, 37, tzinfo=paris)) == 60
    # Half a second before is a whole second to wait, never zero.
    assert value.delay(now=datetime(1994, 11, 6, 8, 49, 36, 500_000)) == 1
    assert RetryAfter.at(datetime(1, 1, 1)).delay() == 0


def test_delay_without_now_uses_the_current_time() -> None:
    value = RetryAfter.at(datetime.now(UTC) + timedelta(hours=1))
    # The target rounds up and now rounds down, so a client never comes back early.
    assert 3598 <= value.delay() <= 3601
    assert value.delay(None) == value.delay()


def test_delay_seconds_do_not_depend_on_now() -> None:
    value = RetryAfter.after(90)
    assert value.delay() == 90
    assert value.delay(datetime(1, 1, 1)) == 90
    assert value.delay(now=datetime.max) == 90


def test_when_is_aware_utc() -> None:
    tokyo = timezone(timedelta(hours=9))
    when = RetryAfter.at(EXAMPLE.astimezone(tokyo)).when()
    assert when == EXAMPLE
    assert when.tzinfo is UTC
    assert RetryAfter.after(90).when(now=EXAMPLE) == EXAMPLE + timedelta(seconds=90)
    assert RetryAfter.after(90).when(now=datetime(1994, 11, 6, 8, 49, 37)) == EXAMPLE + timedelta(
        seconds=90
    )
    before = datetime.now(UTC).replace(microsecond=0)
    when = RetryAfter.after(60).when()
    after = datetime.now(UTC)
    # The current time rounds up to the next whole second, so at most one second later.
    assert before + timedelta(seconds=60) <= when <= after + timedelta(seconds=61)
    assert RetryAfter.at(EXAMPLE).when(now=datetime(2000, 1, 1)) == EXAMPLE
    # Counted from a fraction of a second, the instant rounds up, never early.
    half_past = datetime(1994, 11, 6, 8, 49, 36, 500_000)
    assert RetryAfter.after(1).when(now=half_past) == EXAMPLE + timedelta(seconds=1)


def test_when_outside_what_a_datetime_holds_is_a_value_error() -> None:
    with pytest.raises(ValueError, match=r"^now \+ 2147483648 seconds is outside the years 1"):
        RetryAfter.after(CAP).when(now=datetime(9999, 1, 1))
    year_zero = RetryAfter.parse("Sat, 01 Jan 0000 00:00:00 GMT")
    assert year_zero.delay() == 0
    with pytest.raises(ValueError, match=r"^Sat, 01 Jan 0000 00:00:00 GMT is outside the years 1"):
        year_zero.when()


@pytest.mark.parametrize("method", ["delay", "when"])
def test_delay_and_when_reject_a_bad_now(method: str) -> None:
    with pytest.raises(TypeError, match=r"^now: expected a datetime\.datetime, got float$"):
        getattr(RetryAfter.after(1), method)(now=1.5)


# value semantics


def test_equality_and_hash_are_by_value() -> None:
    a = RetryAfter.parse(EXAMPLE_TEXT)
    b = RetryAfter.parse("Sun Nov  6 08:49:37 1994")
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b, RetryAfter.at(EXAMPLE), RetryAfter.after(5), RetryAfter.after(5.0)}) == 2
    assert RetryAfter.after(5) != RetryAfter.after(6)
    assert RetryAfter.after(0) != RetryAfter.at(datetime(1970, 1, 1))
    assert RetryAfter.after(5) != 5
    assert RetryAfter.after(5) != "5"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (RetryAfter.after(120), "RetryAfter.after(120)"),
        (RetryAfter.after(1e99), "RetryAfter.after(2147483648)"),
        (RetryAfter.at(EXAMPLE), f"RetryAfter.parse('{EXAMPLE_TEXT}')"),
    ],
)
def test_repr_rebuilds_the_value(value: RetryAfter, text: str) -> None:
    assert repr(value) == text
    assert eval(text, {"RetryAfter": RetryAfter}) == value


def test_is_immutable_and_built_only_by_its_constructors() -> None:
    value = RetryAfter.after(1)
    with pytest.raises(AttributeError):
        value.seconds = 2  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        RetryAfter()
    with pytest.raises(TypeError):
        type("Sub", (RetryAfter,), {})


# properties

# Pieces of HTTP-dates, right and nearly right, for building near-valid text.
NEAR_NAMES = ["sun", "SUN", "nov", "Sept", "GMT", "gmt", "UTC"]
NUMBERS = ["0", "00", "06", "6", "29", "31", "32", "60", "61", "24"]
YEARS = ["94", "70", "1994", "0000", "9999", "10000", "2147483648"]
SEPARATORS = [" GMT", ", ", ",", " ", "  ", "\t", "-", ":", " 6"]
ODD_CHARACTERS = ["\u00e9", "\u00a0", "\r\n", "\x00", "\uff11"]
DATE_PIECES = st.sampled_from(
    [
        *DAY_NAMES,
        *LONG_DAY_NAMES,
        *MONTHS,
        *NEAR_NAMES,
        *NUMBERS,
        *YEARS,
        *SEPARATORS,
        *ODD_CHARACTERS,
    ]
)


def check_round_trip(text: str) -> None:
    try:
        value = RetryAfter.parse(text, now=NOW)
    except ValueError as err:
        assert str(err)
        assert len(str(err)) < 200
        return
    header = value.header_value()
    assert RetryAfter.parse(header, now=NOW) == value
    assert RetryAfter.parse(header) == value, "a header value never depends on now"
    assert str(value) == header


@settings(max_examples=400, deadline=None)
@given(st.text())
def test_any_text_parses_or_raises_value_error(text: str) -> None:
    check_round_trip(text)


@settings(max_examples=800, deadline=None)
@given(st.lists(DATE_PIECES, max_size=16).map("".join))
def test_near_valid_text_parses_or_raises_value_error(text: str) -> None:
    check_round_trip(text)


@st.composite
def near_valid_dates(draw: st.DrawFn) -> str:
    """A real date in one of the three forms, then up to three small edits."""
    when = draw(st.datetimes(min_value=datetime(1, 1, 1)))
    form = draw(st.sampled_from([imf_fixdate, rfc850, asctime]))
    text = form(when)
    for _ in range(draw(st.integers(0, 3))):
        start = draw(st.integers(0, len(text)))
        end = start + draw(st.integers(0, 3))
        text = text[:start] + draw(DATE_PIECES | st.just("")) + text[end:]
    return text


@settings(max_examples=800, deadline=None)
@given(near_valid_dates())
def test_edited_dates_parse_or_raise_value_error(text: str) -> None:
    check_round_trip(text)


@settings(max_examples=400, deadline=None)
@given(
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59)),
    st.sampled_from([imf_fixdate, rfc850, asctime]),
    st.sampled_from([(" ", ""), ("\t", "\t"), ("", "  ")]),
)
def test_every_form_reads_back_the_instant(
    when: datetime, form: Callable[[datetime], str], padding: tuple[str, str]
) -> None:
    when = when.replace(microsecond=0)
    text = padding[0] + form(when) + padding[1]
    # With now at the instant itself, an RFC 850 year means that very year.
    value = RetryAfter.parse(text, now=when)
    assert value == RetryAfter.at(when)
    assert value.when().replace(tzinfo=None) == when
    assert value.header_value() == imf_fixdate(when)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.integers(min_value=0), st.floats(min_value=0, allow_infinity=False)))
def test_after_never_comes_back_early(seconds: float) -> None:
    value = RetryAfter.after(seconds)
    assert value.delay() == min(math.ceil(seconds), CAP)
    assert RetryAfter.parse(value.header_value()) == value
