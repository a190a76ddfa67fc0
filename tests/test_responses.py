"""``tidegate.responses``: the one renderer of a 503. What the JSON says, what the page shows
and escapes, the headers every 503 carries, templates, status links, and which clients get the
page. The adapters' use of it is tested with each adapter; the same 503 through real servers in
``test_wsgi_conformance.py``."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from typing import Any

import pytest
from conftest import BAD_STATUS_URLS, GOOD_STATUS_URLS, HOSTILE, assert_inert

from tidegate.responses import (
    DEFAULT_MESSAGES,
    DEFAULT_TEMPLATE,
    REASONS,
    ErrorPages,
    prefers_html,
    status_url_problem,
)

EVERY_PLACEHOLDER = """<html><head><title>$title</title></head><body data-reason="$reason">
<h1 title="$message">$message</h1><a href="$status_url">$status_url</a>
<time datetime="$estimated_return">$estimated_return</time>$estimated_return_html
$status_link_html<p>$retry_after</p></body></html>"""


def html_page(pages: ErrorPages, **details: Any) -> str:
    rendered = pages.render("maintenance", retry_after=5, html_page=True, **details)
    return rendered.body.decode()


class Page(HTMLParser):
    """What a browser would read from a page: its text and its links."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.text: list[str] = []
        self.links: list[str] = []
        self.times: list[str] = []
        self.feed(page)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "a" and values.get("href") is not None:
            self.links.append(str(values["href"]))
        if tag == "time" and values.get("datetime") is not None:
            self.times.append(str(values["datetime"]))

    def handle_data(self, data: str) -> None:
        if data.strip():
            self.text.append(data.strip())


# -- the JSON body and the headers --------------------------------------------------------------


@pytest.mark.parametrize("reason", REASONS)
def test_the_json_503_says_why_and_when_to_come_back(reason: str) -> None:
    rendered = ErrorPages().render(reason, retry_after=7)
    assert rendered.status == "503 Service Unavailable"
    assert json.loads(rendered.body) == {
        "error": "Service Unavailable",
        "reason": reason,
        "message": DEFAULT_MESSAGES[reason],
        "retry_after": 7,
        "estimated_return": None,
    }
    assert len(rendered.headers) == 4, "one of each header"
    assert dict(rendered.headers) == {
        "Content-Type": "application/json",
        "Content-Length": str(len(rendered.body)),
        "Retry-After": "7",
        "Cache-Control": "no-store",
    }


@pytest.mark.parametrize("reason", REASONS)
def test_the_page_503_carries_the_same_headers(reason: str) -> None:
    rendered = ErrorPages().render(reason, retry_after=30, html_page=True)
    assert rendered.status == "503 Service Unavailable"
    assert dict(rendered.headers) == {
        "Content-Type": "text/html; charset=utf-8",
        "Content-Length": str(len(rendered.body)),
        "Retry-After": "30",
        "Cache-Control": "no-store",
    }
    page = Page(rendered.body.decode("utf-8"))
    assert DEFAULT_MESSAGES[reason] in page.text
    assert "503 Service Unavailable · retry after 30 s" in page.text
    assert page.links == [], "no status link unless one is configured"


def test_content_length_counts_bytes_not_characters() -> None:
    message = "Wartung läuft, gleich zurück ✓"
    pages = ErrorPages(messages={"maintenance": message})
    page = pages.render("maintenance", retry_after=1, html_page=True)
    assert message in page.body.decode("utf-8")
    assert len(page.body) > len(page.body.decode("utf-8"))
    assert dict(page.headers)["Content-Length"] == str(len(page.body))
    document = pages.render("maintenance", retry_after=1)
    assert json.loads(document.body)["message"] == message
    assert dict(document.headers)["Content-Length"] == str(len(document.body))


def test_each_reason_has_its_own_title_on_the_page() -> None:
    titles = {
        reason: Page(ErrorPages().render(reason, retry_after=1, html_page=True).body.decode()).text[
            0
        ]
        for reason in REASONS
    }
    assert titles == {
        "overload": "Busy right now",
        "maintenance": "Down for maintenance",
        "dependency": "Temporarily unavailable",
        "draining": "Restarting",
    }


# -- messages -----------------------------------------------------------------------------------


def test_configured_messages_replace_the_defaults_reason_by_reason() -> None:
    pages = ErrorPages(messages={"overload": "Too many shoppers, back in a minute."})
    assert json.loads(pages.render("overload", retry_after=1).body)["message"] == (
        "Too many shoppers, back in a minute."
    )
    assert (
        json.loads(pages.render("draining", retry_after=1).body)["message"]
        == (DEFAULT_MESSAGES["draining"])
    )


def test_a_message_for_one_response_wins_over_the_configured_one() -> None:
    pages = ErrorPages(messages={"maintenance": "configured"})
    rendered = pages.render("maintenance", retry_after=1, message="Upgrading the database")
    assert json.loads(rendered.body)["message"] == "Upgrading the database"
    page = html_page(pages, message="Upgrading the database")
    assert "Upgrading the database" in Page(page).text and "configured" not in page
    # An empty message is a message: it is not replaced by the default.
    assert json.loads(pages.render("maintenance", retry_after=1, message="").body)["message"] == ""


# -- when the service comes back ----------------------------------------------------------------


@pytest.mark.parametrize(
    "until",
    [
        datetime(2099, 3, 1, 8, 0, tzinfo=timezone.utc),
        datetime(2099, 3, 1, 10, 0, tzinfo=timezone(timedelta(hours=2))),
        datetime(2099, 3, 1, 8, 0),  # naive: read as UTC
        datetime(2099, 3, 1, 8, 0, 0, 999_999, tzinfo=timezone.utc),
    ],
    ids=["utc", "plus-two-hours", "naive", "microseconds"],
)
def test_the_estimated_return_is_given_in_utc(until: datetime) -> None:
    pages = ErrorPages()
    rendered = pages.render("maintenance", retry_after=60, estimated_return=until)
    assert json.loads(rendered.body)["estimated_return"] == "2099-03-01T08:00:00Z"
    page = Page(html_page(pages, estimated_return=until))
    assert page.times == ["2099-03-01T08:00:00Z"]
    assert "2099-03-01 08:00:00 UTC" in page.text


def test_without_an_estimate_the_page_promises_no_time() -> None:
    page = html_page(ErrorPages())
    assert "<time" not in page and "Expected back" not in page


# -- what reaches the page ----------------------------------------------------------------------


@pytest.mark.parametrize("template", [None, EVERY_PLACEHOLDER])
def test_every_operator_string_is_escaped_on_the_page(template: str | None) -> None:
    pages = ErrorPages(
        messages=dict.fromkeys(("overload", "maintenance", "dependency", "draining"), HOSTILE),
        template=template,
        status_url='https://status.example/?q="><script>alert(1)</script>',
    )
    for reason in ("overload", "maintenance", "dependency", "draining"):
        page = pages.render(reason, retry_after=5, html_page=True).body.decode()
        assert_inert(page)
    page = html_page(pages, message=HOSTILE)
    assert_inert(page)
    assert 'href="https://status.example/?q=&quot;&gt;&lt;script&gt;' in page


def test_json_carries_the_text_as_it_is() -> None:
    rendered = ErrorPages().render("maintenance", retry_after=5, message=HOSTILE)
    assert json.loads(rendered.body)["message"] == HOSTILE


def test_a_template_gets_every_placeholder_filled() -> None:
    pages = ErrorPages(template=EVERY_PLACEHOLDER, status_url="/status?a=1&b=2")
    until = datetime(2099, 3, 1, 8, 0, tzinfo=timezone.utc)
    page = pages.render(
        "dependency", retry_after=42, html_page=True, message="m", estimated_return=until
    ).body.decode()
    assert page == (
        '<html><head><title>Temporarily unavailable</title></head><body data-reason="dependency">\n'
        '<h1 title="m">m</h1><a href="/status?a=1&amp;b=2">/status?a=1&amp;b=2</a>\n'
        '<time datetime="2099-03-01T08:00:00Z">2099-03-01T08:00:00Z</time>'
        '<p>Expected back by <time datetime="2099-03-01T08:00:00Z">2099-03-01 08:00:00 UTC'
        "</time>.</p>\n"
        '<p><a href="/status?a=1&amp;b=2">Current status</a></p><p>42</p></body></html>'
    )


def test_a_template_without_a_status_link_or_estimate_leaves_them_empty() -> None:
    pages = ErrorPages(template="[$status_url|$status_link_html|$estimated_return_html]")
    assert html_page(pages) == "[||]"


def test_a_template_may_write_a_dollar_sign() -> None:
    pages = ErrorPages(template="<p>$$5 off when we are back: $message</p>")
    assert html_page(pages, message="soon") == "<p>$5 off when we are back: soon</p>"


def test_the_built_in_template_is_the_default_page() -> None:
    assert html_page(ErrorPages(template=DEFAULT_TEMPLATE)) == html_page(ErrorPages())


# -- status links -------------------------------------------------------------------------------


@pytest.mark.parametrize("url", BAD_STATUS_URLS)
def test_a_status_link_must_be_a_web_link_or_a_path_on_this_site(url: str) -> None:
    problem = status_url_problem(url)
    assert problem is not None and problem.startswith("must"), problem
    assert repr(url) in problem, "the message names the link it refused"
    with pytest.raises(ValueError, match=r"^status_url: must"):
        ErrorPages(status_url=url)


@pytest.mark.parametrize("url", GOOD_STATUS_URLS)
def test_web_links_and_paths_are_accepted(url: str) -> None:
    assert status_url_problem(url) is None
    assert f'href="{url}"' in html_page(ErrorPages(status_url=url))
    assert Page(html_page(ErrorPages(status_url=url))).links == [url]


# -- who gets the page --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "page"),
    [
        # What browsers send for a page.
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", True),
        ("TEXT/HTML", True),
        ("text/*", True),
        ("text/html;q=0.9, application/json;q=0.5", True),
        # API clients, tools and everything undecided get JSON.
        ("application/json", False),
        ("*/*", False),
        ("", False),
        ("text/html, application/json", False),
        ("text/html, application/xhtml+xml, */*", False),  # a tie: */* weighs JSON as 1
        ("text/html;q=0.5, application/json", False),
        ("application/json;q=0.2, text/html;q=0.1", False),
        ("text/html;q=0", False),
        ("text/html;q=abc", False),
        ("not a media type", False),
        ("text/html\udc80", False),
        ("text/\udc80html", False),
    ],
)
def test_pages_go_to_clients_that_rank_html_above_json(accept: str, page: bool) -> None:
    assert prefers_html(accept) is page


def test_prefers_html_takes_only_a_str() -> None:
    with pytest.raises(TypeError, match=r"^accept: must be a str, got bytes"):
        prefers_html(b"text/html")  # type: ignore[arg-type]


# -- what is refused ----------------------------------------------------------------------------


def test_an_unknown_reason_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^reason: must be one of .*'overlaod'"):
        ErrorPages().render("overlaod", retry_after=1)
