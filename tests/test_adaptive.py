"""limit="auto", max_queue_time and priorities, through every adapter (WSGI, Flask, Django)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import django_site  # noqa: F401  (configures Django)
import pytest
from conftest import drive
from django import urls
from django.http import HttpRequest, HttpResponse
from django.test import Client, override_settings
from flask import Flask

import tidegate.django
from tidegate import AdaptiveGate, CapacityGate
from tidegate.flask import TideGate
from tidegate.wsgi import TideGateMiddleware

#: What each app records: requests that reached it.
entered: list[str] = []


def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    entered.append(environ.get("PATH_INFO", ""))
    if environ.get("PATH_INFO") == "/slow":
        time.sleep(0.002)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


def wsgi_get(app: Any, path: str = "/", **environ: Any) -> tuple[str, bytes]:
    base = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "SERVER_NAME": "test",
        "SERVER_PORT": "80",
        "REMOTE_ADDR": "192.0.2.7",
        "wsgi.url_scheme": "http",
    }
    status, _headers, body = drive(app, {**base, **environ})
    return status, body


@pytest.fixture(autouse=True)
def _clear() -> None:
    entered.clear()


def stale(seconds: float = 5.0) -> str:
    """An nginx ``X-Request-Start`` for a request that arrived ``seconds`` ago."""
    return f"t={time.time() - seconds:.3f}"


# -- limit="auto" --------------------------------------------------------------------------


def test_wsgi_auto_limit_counts_admitted_requests_only() -> None:
    app = TideGateMiddleware(wsgi_app, limit="auto", exempt_paths=["/exempt"])
    gate = app.gate
    assert isinstance(gate, AdaptiveGate)
    assert gate.probing and gate.limit == 2
    # Exempt paths never take a permit, so they are never samples.
    for _ in range(5):
        assert wsgi_get(app, "/exempt")[0] == "200 OK"
    assert gate.admitted == 0
    # Enough admitted requests (2 ms each) end the first probe: the baseline is measured and
    # the limit goes back to its initial value.
    for _ in range(30):
        assert wsgi_get(app, "/slow")[0] == "200 OK"
    assert gate.admitted == 30 and gate.in_flight == 0
    assert not gate.probing
    assert gate.baseline is not None and 0.0015 < gate.baseline < 0.1
    assert gate.limit == 20


def test_wsgi_auto_limit_sheds_beyond_its_limit() -> None:
    app = TideGateMiddleware(wsgi_app, limit="auto")
    gate = app.gate
    assert gate is not None
    held = [gate.try_acquire() for _ in range(gate.limit)]
    status, body = wsgi_get(app)
    assert status.startswith("503")
    assert json.loads(body)["reason"] == "overload"
    assert entered == []
    assert gate.rejected == 1
    for permit in held:
        assert permit is not None
        permit.release()
    assert wsgi_get(app)[0] == "200 OK"


def test_flask_auto_limit_from_config() -> None:
    app = Flask("auto")
    app.config["TIDEGATE_LIMIT"] = "auto"
    app.add_url_rule("/", "index", lambda: "hello")
    ext = TideGate(app)
    gate = app.extensions["tidegate"].gate
    assert isinstance(gate, AdaptiveGate)
    assert app.test_client().get("/").status_code == 200
    assert gate.admitted == 1 and gate.in_flight == 0
    assert ext.__class__ is TideGate


def django_view(request: HttpRequest) -> HttpResponse:
    entered.append(request.path)
    return HttpResponse(b"hello", content_type="text/plain")


@tidegate.django.priority("sheddable")
def django_sheddable(request: HttpRequest) -> HttpResponse:
    entered.append(request.path)
    return HttpResponse(b"later", content_type="text/plain")


@tidegate.django.priority("critical")
def django_critical(request: HttpRequest) -> HttpResponse:
    entered.append(request.path)
    return HttpResponse(b"now", content_type="text/plain")


#: This module is the Django project's URLconf.
urlpatterns = [
    urls.path("", django_view),
    urls.path("sheddable", django_sheddable),
    urls.path("critical", django_critical),
]


def django_client(options: dict[str, Any]) -> Callable[..., Any]:
    settings = override_settings(
        TIDEGATE=options,
        MIDDLEWARE=["tidegate.django.TideGateMiddleware"],
        ROOT_URLCONF=__name__,
    )
    with settings:
        client = Client()
        client.handler.load_middleware()

    def get(path: str, **headers: str) -> Any:
        with settings:
            return client.get(path, headers=headers)

    return get


def test_django_auto_limit_from_settings() -> None:
    with override_settings(TIDEGATE={"limit": "auto", "maintenance": False}):
        middleware = tidegate.django.TideGateMiddleware(lambda request: HttpResponse(b"hi"))
    assert isinstance(middleware.gate, AdaptiveGate)
    get = django_client({"limit": "auto", "maintenance": False})
    assert get("/").status_code == 200
    assert entered == ["/"]


# -- max_queue_time ------------------------------------------------------------------------


def test_wsgi_queue_time_sheds_stale_requests_before_the_app() -> None:
    app = TideGateMiddleware(wsgi_app, max_queue_time=0.5, limit=10)
    status, body = wsgi_get(app, HTTP_X_REQUEST_START=stale())
    assert status.startswith("503")
    assert json.loads(body)["reason"] == "overload"
    assert entered == []
    assert app.gate is not None and app.gate.admitted == 0, "a stale request takes no permit"
    # Fresh, in every format, or with no header at all: served.
    now = time.time()
    for header in (f"t={now:.3f}", f"{now * 1e3:.0f}", f"t={now * 1e6:.0f}"):
        assert wsgi_get(app, HTTP_X_REQUEST_START=header)[0] == "200 OK", header
    assert wsgi_get(app)[0] == "200 OK"
    assert len(entered) == 4


def test_wsgi_queue_time_is_recorded_in_the_environ() -> None:
    seen: dict[str, Any] = {}

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.update(environ)
        start_response("200 OK", [])
        return [b""]

    wsgi_get(TideGateMiddleware(app, max_queue_time=0.5), HTTP_X_REQUEST_START=stale(0.2))
    assert 0.15 < seen["tidegate.queue_time"] < 0.5
    # Without max_queue_time the header is never read.
    seen.clear()
    wsgi_get(TideGateMiddleware(app), HTTP_X_REQUEST_START=stale(0.2))
    assert "tidegate.queue_time" not in seen


def test_queue_time_spares_exempt_and_health_paths() -> None:
    app = TideGateMiddleware(wsgi_app, max_queue_time=0.5, exempt_paths=["/exempt"])
    assert wsgi_get(app, "/exempt", HTTP_X_REQUEST_START=stale())[0] == "200 OK"


def test_flask_queue_time() -> None:
    app = Flask("queue")
    app.add_url_rule("/", "index", lambda: "hello")
    app.config["TIDEGATE_MAX_QUEUE_TIME"] = 0.5
    TideGate(app)
    client = app.test_client()
    reply = client.get("/", headers={"X-Request-Start": stale()})
    assert reply.status_code == 503 and reply.json is not None
    assert reply.json["reason"] == "overload"
    assert client.get("/", headers={"X-Request-Start": stale(0.1)}).status_code == 200


def test_django_queue_time() -> None:
    get = django_client({"max_queue_time": 0.5, "maintenance": False})
    reply = get("/", **{"X-Request-Start": stale()})
    assert reply.status_code == 503
    assert json.loads(reply.content)["reason"] == "overload"
    assert entered == []
    assert get("/", **{"X-Request-Start": stale(0.1)}).status_code == 200
    assert entered == ["/"]


# -- priorities ----------------------------------------------------------------------------


def test_wsgi_priority_callable_sheds_sheddable_first() -> None:
    gate = CapacityGate(10)

    def level(environ: dict[str, Any]) -> str:
        return str(environ.get("QUERY_STRING") or "default")

    app = TideGateMiddleware(wsgi_app, gate=gate, priority=level)
    held = [gate.try_acquire() for _ in range(5)]
    # Half the limit is in use: sheddable requests are refused, the others pass.
    assert wsgi_get(app, QUERY_STRING="sheddable")[0].startswith("503")
    assert wsgi_get(app, QUERY_STRING="default")[0] == "200 OK"
    held += [gate.try_acquire() for _ in range(4)]
    # 9 of 10: only critical requests still pass.
    assert wsgi_get(app, QUERY_STRING="default")[0].startswith("503")
    assert wsgi_get(app, QUERY_STRING="critical")[0] == "200 OK"
    held.append(gate.try_acquire())
    assert wsgi_get(app, QUERY_STRING="critical")[0].startswith("503")
    for permit in held:
        assert permit is not None
        permit.release()
    assert gate.in_flight == 0


def test_without_priorities_every_request_may_fill_the_limit() -> None:
    gate = CapacityGate(10)
    app = TideGateMiddleware(wsgi_app, gate=gate)
    held = [gate.try_acquire() for _ in range(9)]
    assert wsgi_get(app)[0] == "200 OK"
    for permit in held:
        assert permit is not None
        permit.release()


def test_priority_header_only_from_bypass_networks_or_behind_proxies() -> None:
    gate = CapacityGate(4)
    held = [gate.try_acquire() for _ in range(2)]
    direct = TideGateMiddleware(
        wsgi_app, gate=gate, priority_header="X-Priority", bypass_networks=["10.0.0.0/8"]
    )
    # From an ordinary client the header is ignored (the request is default: 90 %).
    assert wsgi_get(direct, HTTP_X_PRIORITY="sheddable")[0] == "200 OK"
    assert wsgi_get(direct, HTTP_X_PRIORITY="sheddable", REMOTE_ADDR="10.0.0.9")[0].startswith(
        "503"
    )
    proxied = TideGateMiddleware(
        wsgi_app, gate=gate, priority_header="X-Priority", trusted_proxies=1
    )
    assert wsgi_get(proxied, HTTP_X_PRIORITY="sheddable")[0].startswith("503")
    for permit in held:
        assert permit is not None
        permit.release()


def test_flask_priority_callable_and_decorator() -> None:
    gate = CapacityGate(4)
    app = Flask("priority")
    ext = TideGate(gate=gate, maintenance=False)

    @app.get("/")
    def index() -> str:
        return "hello"

    @app.get("/report")
    @ext.priority("sheddable")
    def report() -> str:
        return "later"

    @app.get("/checkout")
    @ext.priority("critical")
    def checkout() -> str:
        return "now"

    ext.init_app(app)
    client = app.test_client()
    held = [gate.try_acquire() for _ in range(2)]
    assert client.get("/report").status_code == 503
    assert client.get("/").status_code == 200
    held += [gate.try_acquire()]
    # 3 of 4 in use: only a critical view may take the last slot... and a default one, since
    # 90 % of 4 rounds up to 4.
    assert client.get("/checkout").status_code == 200
    for permit in held:
        assert permit is not None
        permit.release()

    # A callable given the Flask request.
    gate2 = CapacityGate(4)
    app2 = Flask("priority2")
    app2.add_url_rule("/", "index", lambda: "hello")
    TideGate(
        app2,
        gate=gate2,
        maintenance=False,
        priority=lambda request: request.args.get("p", "default"),
    )
    held = [gate2.try_acquire() for _ in range(2)]
    client2 = app2.test_client()
    assert client2.get("/?p=sheddable").status_code == 503
    assert client2.get("/?p=critical").status_code == 200
    for permit in held:
        assert permit is not None
        permit.release()


def test_django_priority_decorator_and_callable() -> None:
    gate = CapacityGate(4)
    get = django_client({"gate": gate, "maintenance": False})
    held = [gate.try_acquire() for _ in range(2)]
    assert get("/sheddable").status_code == 503
    assert get("/critical").status_code == 200
    assert "/sheddable" not in entered

    gate2 = CapacityGate(4)
    calls: list[Any] = []

    def level(request: HttpRequest) -> str:
        calls.append(request)
        return "sheddable"

    get2 = django_client({"gate": gate2, "maintenance": False, "priority": level})
    held += [gate2.try_acquire() for _ in range(2)]
    assert get2("/").status_code == 503
    assert isinstance(calls[0], HttpRequest)
    for permit in held:
        assert permit is not None
        permit.release()
