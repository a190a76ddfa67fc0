"""Every adapter says a 503 the same way, to the byte.

One table of requests (overload, maintenance, dependency, a stale queue time, a sheddable request
through each adapter configured with the same options:

- ``wsgi``: ``tidegate.wsgi.TideGateMiddleware`` around a plain WSGI app, called the way a server
  calls it (call, iterate, close);
- ``flask``: the ``TideGate`` extension, through Flask's test client;
- ``django``: ``tidegate.django.TideGateMiddleware``, through Django's test client, with
  Django's usual security middleware after it;
- ``django-wsgi``: the same Django project through Django's own WSGI handler, called as a
  server calls it (Django's test client drops HEAD bodies itself; the handler does not);
- ``asgi``: ``tidegate.asgi.TideGateMiddleware`` around a bare ASGI app, through the
  hand-written server loop of ``asgi_driver``;
- ``asgi-starlette``: the same around a Starlette app, whose own error handling answers the
  open breaker with a 500 before raising it again.

Each must give the same status line, the same headers and the same body. Ignored are only
headers the framework adds to responses passing through it, never ones tidegate sets:
Django's ``SecurityMiddleware`` and ``XFrameOptionsMiddleware`` put theirs on the dependency
503, which is answered from inside the middleware stack (see :data:`FRAMEWORK_HEADERS`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from wsgiref.util import setup_testing_defaults

import asgi_driver
import django_site  # noqa: F401  (configures Django)
import pytest
from conftest import drive
from django import urls
from django.core.handlers.wsgi import WSGIHandler
from django.http import HttpRequest, HttpResponse
from django.test import Client, override_settings
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from tidegate import AdaptiveGate, CapacityGate, CircuitBreaker, MaintenanceSwitch
from tidegate.asgi import TideGateMiddleware as AsgiMiddleware
from tidegate.flask import TideGate
from tidegate.wsgi import TideGateMiddleware

#: Headers a framework adds to responses that pass through it; tidegate sets none of them.
FRAMEWORK_HEADERS = frozenset(
    {
        "cross-origin-opener-policy",  # django.middleware.security.SecurityMiddleware
        "referrer-policy",  # SecurityMiddleware
        "x-content-type-options",  # SecurityMiddleware
        "x-frame-options",  # django.middleware.clickjacking.XFrameOptionsMiddleware
    }
)

DJANGO_MIDDLEWARE = [
    "tidegate.django.TideGateMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

#: What every adapter is configured with, besides the gate and switch of each case.
SHARED = {
    "retry_after": 2,
    "status_url": "/status",
    "messages": {"overload": "Too busy <right> now & then."},
}

#: Opened afresh before each call through it, so every dependency 503 says the same
#: Retry-After: the whole reset_timeout.
breaker = CircuitBreaker("agree-db", failure_threshold=1, reset_timeout=900)


def _through_open_breaker() -> str:
    breaker.open()
    return breaker.call(lambda: "fresh")


@dataclass(frozen=True)
class Answer:
    status: str
    headers: tuple[tuple[str, str], ...]
    body: bytes


def answer(status: str, headers: Iterable[tuple[str, str]], body: bytes) -> Answer:
    kept = sorted((name.lower(), value) for name, value in headers)
    return Answer(status, tuple(h for h in kept if h[0] not in FRAMEWORK_HEADERS), body)


# -- the adapters --------------------------------------------------------------------------


def plain_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    if environ["PATH_INFO"] == "/dependency":
        _through_open_breaker()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"hello"]


def serve_once(app: Any, method: str, path: str, headers: dict[str, str]) -> Answer:
    """One request the way a server makes it: call, iterate, close."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
    }
    environ.update({"HTTP_" + name.upper().replace("-", "_"): v for name, v in headers.items()})
    setup_testing_defaults(environ)
    return answer(*drive(app, environ))


def via_wsgi(options: dict[str, Any]) -> Callable[[str, str, dict[str, str]], Answer]:
    app = TideGateMiddleware(plain_app, **options)
    return lambda method, path, headers: serve_once(app, method, path, headers)


def via_flask(options: dict[str, Any]) -> Callable[[str, str, dict[str, str]], Answer]:
    app = Flask("agree")

    @app.route("/", methods=["GET"])
    def index() -> str:
        return "hello"

    @app.route("/dependency", methods=["GET"])
    def dependency() -> str:
        return _through_open_breaker()

    TideGate(app, **options)
    client = app.test_client()

    def send(method: str, path: str, headers: dict[str, str]) -> Answer:
        with client.open(path, method=method, headers=headers) as reply:
            return answer(reply.status, reply.headers.items(), reply.get_data())

    return send


def django_index(request: HttpRequest) -> HttpResponse:
    return HttpResponse(b"hello", content_type="text/plain")


def django_dependency(request: HttpRequest) -> HttpResponse:
    return HttpResponse(_through_open_breaker())


#: This module is the Django project's URLconf.
urlpatterns = [urls.path("", django_index), urls.path("dependency", django_dependency)]


def django_settings(options: dict[str, Any]) -> override_settings:
    return override_settings(TIDEGATE=options, MIDDLEWARE=DJANGO_MIDDLEWARE, ROOT_URLCONF=__name__)


def via_django(options: dict[str, Any]) -> Callable[[str, str, dict[str, str]], Answer]:
    with django_settings(options):
        client = Client()
        client.handler.load_middleware()

    def send(method: str, path: str, headers: dict[str, str]) -> Answer:
        # Requests are resolved against the URLconf of the settings in force.
        with django_settings(options):
            reply = client.generic(method, path, headers=headers)
        status = f"{reply.status_code} {reply.reason_phrase}"
        return answer(status, reply.headers.items(), reply.content)

    return send


def via_django_wsgi(options: dict[str, Any]) -> Callable[[str, str, dict[str, str]], Answer]:
    with django_settings(options):
        app = WSGIHandler()

    def send(method: str, path: str, headers: dict[str, str]) -> Answer:
        with django_settings(options):
            return serve_once(app, method, path, headers)

    return send


async def plain_asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["path"] == "/dependency":
        _through_open_breaker()
    headers = [(b"content-type", b"text/plain"), (b"content-length", b"5")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"hello"})


def serve_asgi(app: Any, method: str, path: str, headers: dict[str, str]) -> Answer:
    reply = asgi_driver.run(asgi_driver.serve(app, method, path, headers))
    status = f"{reply.status} {HTTPStatus(reply.status).phrase}"
    return answer(status, reply.headers, reply.body)


def via_asgi(options: dict[str, Any]) -> Callable[[str, str, dict[str, str]], Answer]:
    app = AsgiMiddleware(plain_asgi_app, **options)
    return lambda method, path, headers: serve_asgi(app, method, path, headers)


def via_asgi_starlette(options: dict[str, Any]) -> Callable[[str, str, dict[str, str]], Answer]:
    async def index(request: Request) -> PlainTextResponse:
        return PlainTextResponse("hello")

    async def dependency(request: Request) -> PlainTextResponse:
        return PlainTextResponse(_through_open_breaker())

    routes = [
        Route("/", index, methods=["GET", "HEAD"]),
        Route("/dependency", dependency, methods=["GET", "HEAD"]),
    ]
    app = AsgiMiddleware(Starlette(routes=routes), **options)
    return lambda method, path, headers: serve_asgi(app, method, path, headers)


ADAPTERS = {
    "wsgi": via_wsgi,
    "flask": via_flask,
    "django": via_django,
    "django-wsgi": via_django_wsgi,
    "asgi": via_asgi,
    "asgi-starlette": via_asgi_starlette,
}

# -- the table -----------------------------------------------------------------------------


@pytest.fixture
def held_gate() -> Iterator[CapacityGate]:
    gate = CapacityGate(1)
    with gate.try_acquire():
        yield gate
    assert gate.in_flight == 0


@pytest.fixture
def switch_on() -> MaintenanceSwitch:
    switch = MaintenanceSwitch(env_var=None)
    switch.enable(message="Upgrading <the> database & more", retry_after=300)
    return switch


CASES = [
    pytest.param(reason, accept, method, id=f"{reason}-{kind}-{method}")
    for reason in ("overload", "maintenance", "dependency", "queue_time", "priority", "auto")
    for kind, accept in (("json", "application/json"), ("html", "text/html,*/*;q=0.8"))
    for method in ("GET", "HEAD")
]


@pytest.mark.parametrize(("reason", "accept", "method"), CASES)
def test_every_adapter_gives_the_same_503(
    reason: str,
    accept: str,
    method: str,
    held_gate: CapacityGate,
    switch_on: MaintenanceSwitch,
) -> None:
    options: dict[str, Any] = dict(SHARED)
    headers = {"Accept": accept}
    held = ExitStack()
    if reason == "overload":
        options.update(gate=held_gate, maintenance=False)
    elif reason == "maintenance":
        options.update(maintenance=switch_on)
    elif reason == "queue_time":
        # Five seconds in front of the app, by nginx's header.
        options.update(maintenance=False, max_queue_time=0.5)
        headers["X-Request-Start"] = f"t={time.time() - 5:.3f}"
    elif reason == "priority":
        # One of two slots taken: a sheddable request may fill only half the limit.
        gate = CapacityGate(2)
        held.enter_context(gate.try_acquire())  # type: ignore[arg-type]
        options.update(gate=gate, maintenance=False, priority=lambda request: "sheddable")
    elif reason == "auto":
        # An adaptive gate starts with its limit held at 2 while it measures the service.
        adaptive = AdaptiveGate()
        for _ in range(adaptive.limit):
            held.enter_context(adaptive.try_acquire())  # type: ignore[arg-type]
        options.update(gate=adaptive, maintenance=False)
    else:
        options.update(maintenance=False)
    path = "/dependency" if reason == "dependency" else "/"
    with held:
        answers = {
            name: adapter(options)(method, path, headers) for name, adapter in ADAPTERS.items()
        }

    reference = answers["wsgi"]
    assert reference.status == "503 Service Unavailable", reference
    headers = dict(reference.headers)
    assert headers["cache-control"] == "no-store"
    assert headers["content-type"].startswith(
        "text/html" if "html" in accept else "application/json"
    )
    retry_after = {"maintenance": 300, "dependency": 900}.get(reason, 2)
    assert int(headers["retry-after"]) == retry_after
    if method == "HEAD":
        assert reference.body == b""
        assert int(headers["content-length"]) > 0, "HEAD says the GET's length"
    else:
        assert int(headers["content-length"]) == len(reference.body)
    for name, seen in answers.items():
        assert seen == reference, f"{name} differs from the WSGI middleware"
    assert held_gate.in_flight == 1 and held_gate.admitted == 1, "nothing else was admitted"


def test_a_wsgi_wrapper_cannot_answer_the_dependency_503_for_a_framework() -> None:
    """Why Flask and Django have adapters of their own: each framework answers an error out of
    a view with a 500 before a WSGI wrapper around it could see the ``CircuitOpenError``."""
    flask_app = Flask("wrapped")

    @flask_app.route("/dependency")
    def dependency() -> str:
        return _through_open_breaker()

    flask_app.wsgi_app = TideGateMiddleware(flask_app.wsgi_app, maintenance=False)  # type: ignore[method-assign]
    plain_django = override_settings(MIDDLEWARE=[], ROOT_URLCONF=__name__)
    with plain_django:
        django_app = TideGateMiddleware(WSGIHandler(), maintenance=False)
        wrapped_django = serve_once(django_app, "GET", "/dependency", {})
    wrapped_flask = serve_once(flask_app, "GET", "/dependency", {})
    assert wrapped_flask.status.startswith("500")
    assert wrapped_django.status.startswith("500")
    for adapter in (via_flask, via_django):
        answer = adapter({"maintenance": False})("GET", "/dependency", {})
        assert answer.status == "503 Service Unavailable"


# -- metrics -------------------------------------------------------------------------------


def _requests(body: bytes) -> dict[tuple[str, str], float]:
    counts = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == "tidegate_requests_total":
                counts[(sample.labels["outcome"], sample.labels["reason"])] = sample.value
            elif sample.name == "tidegate_request_duration_seconds_count":
                counts[("duration", "count")] = sample.value
    return counts


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_every_adapter_counts_its_decisions_and_serves_them(adapter: str) -> None:
    gate = CapacityGate(1)
    switch = MaintenanceSwitch(env_var=None)
    send = ADAPTERS[adapter]({"gate": gate, "maintenance": switch, "metrics_path": "/metrics"})

    def scrape() -> dict[tuple[str, str], float]:
        reply = send("GET", "/metrics", {})
        assert reply.status == "200 OK"
        assert ("content-type", "text/plain; version=0.0.4; charset=utf-8") in reply.headers
        return _requests(reply.body)

    before = scrape()
    for _ in range(3):
        assert send("GET", "/", {}).status == "200 OK"
    # Exempt (the health paths are, by default), then whatever the app says there.
    assert not send("GET", "/health", {}).status.startswith("503")
    assert send("GET", "/dependency", {}).status.startswith("503")
    with gate.try_acquire():
        assert send("GET", "/", {}).status.startswith("503")
    switch.enable()
    assert send("GET", "/", {}).status.startswith("503")
    switch.disable()
    after = scrape()
    changed = {
        key: after[key] - before.get(key, 0) for key in after if after[key] != before.get(key, 0)
    }
    assert changed == {
        ("admitted", "none"): 4,
        ("duration", "count"): 4,
        ("exempt", "none"): 1,
        ("failed_fast", "dependency"): 1,
        ("shed", "overload"): 1,
        ("refused", "maintenance"): 1,
        ("probe", "none"): 1,
    }
    assert gate.in_flight == 0
