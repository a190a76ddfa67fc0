"""Property tests: arbitrary requests into the middleware and the Flask extension.

Whatever a request carries (headers of any type and size, lone surrogates, odd paths and
methods, forged proxies and tokens), tidegate never raises into the server (only the app's
own errors pass through), never keeps a permit after the body is closed, never admits more
than the limit, and answers every 503 with matching ``Retry-After`` header and body.

CI runs Hypothesis's default number of examples; a long run is
``python -m pytest tests/test_hypothesis.py --hypothesis-profile=long``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tidegate import CapacityGate, HealthChecks, MaintenanceSwitch
from tidegate.wsgi import TideGateMiddleware

LIMIT = 3
TOKEN = "hypothesis-bypass-token-0123"
HEADER_KEY = "HTTP_X_MAINTENANCE_BYPASS"


class AppError(Exception):
    """The app's own failure: the only exception allowed out of the middleware."""


# -- strategies ---------------------------------------------------------------------------

# Every code point, lone surrogates included.
any_text = st.text(st.characters(exclude_categories=()), max_size=64)
huge_text = st.builds(
    lambda piece, times: piece * times, st.text(min_size=1, max_size=4), st.integers(1, 50_000)
)
# Lone surrogates are rare in any_text; a server never sends them, but environ may hold them.
surrogates = st.text(st.characters(categories=["Cs"]), min_size=1, max_size=4)
odd_value = st.one_of(
    any_text,
    surrogates,
    st.builds(str.__add__, surrogates, any_text),
    huge_text,
    st.binary(max_size=32),
    st.integers(),
    st.floats(allow_nan=True),
    st.none(),
    st.lists(st.integers(), max_size=3),
)
address = st.one_of(
    st.ip_addresses().map(str),
    st.sampled_from(["10.1.2.3", "::ffff:10.1.2.3", "fe80::1%eth0", "127.0.0.1", "unknown"]),
    any_text,
)
forwarded = st.one_of(
    st.lists(address, max_size=5).map(", ".join),
    odd_value,
)
accept = st.one_of(
    st.lists(
        st.sampled_from(["text/html", "application/json", "*/*", "text/*", "x/y", "", "q"]).flatmap(
            lambda media: st.sampled_from(
                [media, f"{media};q=0", f"{media};q=0.5", f"{media};q=1.000", f"{media};q=x"]
            )
        ),
        max_size=5,
    ).map(",".join),
    odd_value,
)
token = st.one_of(
    st.just(TOKEN),
    st.sampled_from([TOKEN[:-1], TOKEN + "x", TOKEN.upper(), " " + TOKEN, TOKEN.encode()]),
    odd_value,
)
path = st.one_of(
    st.sampled_from(["/", "/health", "/health/live", "/stream", "/raise", "/raise-midway"]),
    any_text,
    huge_text,
    odd_value,
)
method = st.one_of(st.sampled_from(["GET", "HEAD", "POST", "OPTIONS", "get", ""]), odd_value)
extra_headers = st.dictionaries(
    st.text(st.sampled_from("ABCXYZ_-"), min_size=1, max_size=12).map(lambda k: "HTTP_" + k),
    odd_value,
    max_size=4,
)


@st.composite
def environs(draw: st.DrawFn) -> dict[str, Any]:
    environ: dict[str, Any] = {"wsgi.url_scheme": "http", "SERVER_NAME": "localhost"}
    for key, strategy in [
        ("REQUEST_METHOD", method),
        ("PATH_INFO", path),
        ("REMOTE_ADDR", address),
        ("HTTP_X_FORWARDED_FOR", forwarded),
        ("HTTP_ACCEPT", accept),
        (HEADER_KEY, token),
    ]:
        if draw(st.booleans()):
            environ[key] = draw(strategy)
    environ.update(draw(extra_headers))
    return environ


# -- the app and the server ---------------------------------------------------------------


def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    route = environ.get("PATH_INFO")
    if route == "/raise":
        raise AppError("before start_response")
    start_response("200 OK", [("Content-Type", "text/plain")])
    if route == "/raise-midway":
        return _midway()
    if route == "/stream":
        return iter([b"a", b"b"])
    return [b"ok"]


def _midway() -> Iterable[bytes]:
    yield b"a"
    raise AppError("midway")


def check_response(statuses: list[tuple[str, list[tuple[str, str]]]], body: bytes) -> None:
    """What a server needs from a response: one status line, latin-1 headers, and for a 503
    a Retry-After that the JSON body repeats."""
    assert len(statuses) == 1
    status, headers = statuses[0]
    assert isinstance(status, str) and status[:3].isdigit()
    for name, value in headers:
        assert isinstance(name, str) and isinstance(value, str)
        name.encode("latin-1")
        value.encode("latin-1")
    fields = dict(headers)
    if status.startswith("503"):
        assert fields["Cache-Control"] == "no-store"
        retry_after = int(fields["Retry-After"])
        assert retry_after >= 0
        if body and fields["Content-Type"] == "application/json":
            assert json.loads(body)["retry_after"] in (retry_after, None)


def serve(mw: Any, environ: dict[str, Any], *, keep_open: bool = False) -> Any:
    """Drives one request like a server; returns the still-open body if ``keep_open``."""
    statuses: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        if exc_info is not None and statuses:
            statuses.clear()
        statuses.append((status, headers))
        return lambda data: None

    try:
        result = mw(environ, start_response)
    except AppError:
        return None
    if keep_open:
        return result
    chunks: list[bytes] = []
    try:
        for chunk in result:
            assert isinstance(chunk, bytes)
            chunks.append(chunk)
    except AppError:
        pass
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    check_response(statuses, b"".join(chunks))
    return None


def middleware(*, maintenance_on: bool, trusted_proxies: int) -> TideGateMiddleware:
    switch = MaintenanceSwitch(env_var=None)
    if maintenance_on:
        switch.enable(message="<b>maintenance</b> \u2603")
    health = HealthChecks(cache_ttl=60)
    health.add("ok", lambda: True)
    return TideGateMiddleware(
        app,
        gate=CapacityGate(LIMIT),
        maintenance=switch,
        health=health,
        bypass_networks=["10.0.0.0/8", "fe80::/10"],
        trusted_proxies=trusted_proxies,
        bypass_header="X-Maintenance-Bypass",
        bypass_token=TOKEN,
        status_url="https://status.example/?a=<b>",
        retry_after=2,
        retry_jitter=3,
    )


PROPERTY = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(
    requests=st.lists(st.tuples(environs(), st.booleans()), min_size=1, max_size=12),
    maintenance_on=st.booleans(),
    trusted_proxies=st.integers(0, 3),
)
def test_any_request_leaves_the_middleware_whole(
    requests: list[tuple[dict[str, Any], bool]], maintenance_on: bool, trusted_proxies: int
) -> None:
    mw = middleware(maintenance_on=maintenance_on, trusted_proxies=trusted_proxies)
    gate = mw.gate
    held = []
    for environ, keep_open in requests:
        before = gate.admitted + gate.rejected
        body = serve(mw, environ, keep_open=keep_open)
        if body is not None:
            held.append(body)
        assert gate.in_flight <= LIMIT
        assert gate.admitted + gate.rejected - before in (0, 1)
    assert gate.in_flight == len([b for b in held if getattr(b, "released", True) is False])
    for body in held:
        close = getattr(body, "close", None)
        if close is not None:
            close()
    assert gate.in_flight == 0
    assert gate.peak <= LIMIT


@PROPERTY
@given(environ=environs())
def test_a_request_dropped_unclosed_gives_its_permit_back(environ: dict[str, Any]) -> None:
    mw = middleware(maintenance_on=False, trusted_proxies=1)
    body = serve(mw, environ, keep_open=True)
    del body
    assert mw.gate.in_flight == 0


@PROPERTY
@given(
    requests=st.lists(
        st.tuples(
            st.one_of(st.sampled_from(["/", "/stream", "/health", "/exempt"]), st.text()),
            st.sampled_from(["GET", "HEAD", "POST", "DELETE", "PATCH"]),
            st.dictionaries(
                st.sampled_from(
                    ["Accept", "X-Forwarded-For", "X-Maintenance-Bypass", "X-Other", "Cookie"]
                ),
                st.one_of(
                    st.text(st.characters(codec="latin-1", exclude_characters="\r\n")),
                    st.just(TOKEN),
                    st.just("text/html"),
                ),
            ),
            st.sampled_from(["10.1.2.3", "192.0.2.7", "::ffff:10.1.2.3", "garbage"]),
            st.booleans(),
        ),
        min_size=1,
        max_size=10,
    ),
    maintenance_on=st.booleans(),
    trusted_proxies=st.integers(0, 2),
)
def test_any_request_leaves_the_flask_extension_whole(
    requests: list[tuple[str, str, dict[str, str], str, bool]],
    maintenance_on: bool,
    trusted_proxies: int,
) -> None:
    from flask import Flask, Response, stream_with_context

    from tidegate.flask import TideGate

    flask_app = Flask(__name__)
    flask_app.config["PROPAGATE_EXCEPTIONS"] = True
    switch = MaintenanceSwitch(env_var=None)
    if maintenance_on:
        switch.enable(message="<i>back soon</i>")
    health = HealthChecks(cache_ttl=60)
    ext = TideGate(
        flask_app,
        limit=LIMIT,
        maintenance=switch,
        health=health,
        bypass_networks=["10.0.0.0/8"],
        trusted_proxies=trusted_proxies,
        bypass_header="X-Maintenance-Bypass",
        bypass_token=TOKEN,
    )

    @flask_app.route("/", methods=["GET", "HEAD", "POST", "DELETE", "PATCH"])
    def index() -> str:
        return "hello"

    @flask_app.get("/stream")
    def stream() -> Response:
        return Response(stream_with_context(iter(["a", "b"])))

    @flask_app.get("/exempt")
    @ext.exempt
    def exempt() -> str:
        return "free"

    gate = flask_app.extensions["tidegate"].gate
    client = flask_app.test_client()
    held = []
    for route, verb, headers, remote, keep_open in requests:
        reply = client.open(
            route,
            method=verb,
            headers=headers,
            environ_base={"REMOTE_ADDR": remote},
            buffered=not keep_open,
        )
        # Flask's own answers (404, 405, a 308 to add a slash) are fine; a 500 is not.
        assert reply.status_code < 500 or reply.status_code == 503, reply.status_code
        if reply.status_code == 503:
            assert int(reply.headers["Retry-After"]) >= 0
        assert gate.in_flight <= LIMIT
        if keep_open:
            held.append(reply)
        else:
            reply.close()
    for reply in held:
        reply.close()
    assert gate.in_flight == 0
    assert gate.peak <= LIMIT
