"""The Django middleware: driven through Django's test ``Client``, through Django's own WSGI
handler the way a server calls it, and under a real Gunicorn serving a Django project.

The project is ``django_site.py`` (settings, views and URLs in one module). Each in-process
test brings its own ``settings.TIDEGATE`` and a client whose middleware was built with it.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults
from wsgiref.validate import validator

import django_site
import pytest
from conftest import Reply
from django.core.handlers.wsgi import WSGIHandler
from django.test import Client, override_settings
from gunicorn_apps import Meter
from servers import GunicornServer, Response, settled, stats, until_served, wait_for

from tidegate import CapacityGate, CircuitBreaker, HealthChecks, MaintenanceSwitch
from tidegate.django import TideGateMiddleware, exempt

TOKEN = "0123456789abcdef-token"
DEFAULT_MIDDLEWARE = ["tidegate.django.TideGateMiddleware"]


def client_for(middleware: list[str] = DEFAULT_MIDDLEWARE, **options: Any) -> Client:
    """A test client whose middleware was built with ``settings.TIDEGATE = options``."""
    with override_settings(TIDEGATE=options, MIDDLEWARE=middleware):
        client = Client()
        client.handler.load_middleware()
    return client


def serve_once(app: Any, path: str = "/", method: str = "GET") -> Reply:
    """One request to a WSGI app the way a server makes it: call, iterate, close."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
    }
    setup_testing_defaults(environ)
    captured: list[Any] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        captured[:] = [status, headers]
        return lambda data: None

    body = app(environ, start_response)
    try:
        data = b"".join(body)
    finally:
        body.close()
    status, headers = captured
    return Reply(status, dict(headers), data)


def handler_for(**options: Any) -> WSGIHandler:
    """Django's own WSGI handler (what ``get_wsgi_application()`` gives a server), built with
    ``settings.TIDEGATE = options``."""
    with override_settings(TIDEGATE=options):
        return WSGIHandler()


@pytest.fixture
def gate() -> Iterator[CapacityGate]:
    """A gate of one; whatever the test did, nothing is in flight at its end."""
    gate = CapacityGate(1)
    yield gate
    assert gate.in_flight == 0, "a permit was not given back"


@pytest.fixture
def switch() -> MaintenanceSwitch:
    switch = MaintenanceSwitch(env_var=None)
    switch.enable(message="Back soon", retry_after=300)
    return switch


def assert_full_503(reply: Any, reason: str, retry_after: str) -> dict[str, Any]:
    assert reply.status_code == 503
    assert reply.reason_phrase == "Service Unavailable"
    assert reply.headers["Retry-After"] == retry_after
    assert reply.headers["Cache-Control"] == "no-store"
    assert reply.headers["Content-Type"] == "application/json"
    assert int(reply.headers["Content-Length"]) == len(reply.content)
    document: dict[str, Any] = reply.json()
    assert document["error"] == "Service Unavailable"
    assert document["reason"] == reason
    assert document["retry_after"] == int(retry_after)
    return document


# -- the gate ----------------------------------------------------------------------------------


def test_admits_and_gives_the_permit_back(gate: CapacityGate) -> None:
    client = client_for(gate=gate)
    reply = client.get("/")
    assert (reply.status_code, reply.content) == (200, b"hello")
    assert (gate.admitted, gate.in_flight) == (1, 0)


def test_sheds_with_the_full_503_before_the_view_runs(gate: CapacityGate) -> None:
    client = client_for(gate=gate, retry_after=3)
    entered = django_site.meter.snapshot()["entered"]
    with gate.try_acquire():
        reply = client.get("/work?ms=0")
        assert gate.in_flight == 1, "the refused request gave back a permit it never had"
    assert_full_503(reply, "overload", "3")
    assert django_site.meter.snapshot()["entered"] == entered, "a shed request reached the view"
    assert (gate.admitted, gate.rejected) == (1, 1), "only the test's own permit was admitted"


def test_a_path_no_url_matches_is_gated_too(gate: CapacityGate) -> None:
    client = client_for(gate=gate)
    with gate.try_acquire():
        assert client.get("/no-such-page").status_code == 503
    assert client.get("/no-such-page").status_code == 404
    assert (gate.admitted, gate.rejected) == (2, 1)


def test_html_for_browsers_and_head_without_a_body(gate: CapacityGate) -> None:
    client = client_for(gate=gate)
    with gate.try_acquire():
        json_get = client.get("/")
        page = client.get("/", headers={"Accept": "text/html,application/xhtml+xml"})
        head = client.head("/")
        page_head = client.head("/", headers={"Accept": "text/html"})
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert page.content.startswith(b"<!doctype html>")
    assert int(page.headers["Content-Length"]) == len(page.content)
    for reply, full in ((head, json_get), (page_head, page)):
        assert reply.status_code == 503 and reply.content == b""
        assert dict(reply.headers) == dict(full.headers), "HEAD says what GET would"


def test_head_gets_no_body_from_djangos_own_wsgi_handler(gate: CapacityGate) -> None:
    """Django's WSGI handler sends whatever body a response holds (Django's test client and
    some servers drop it for HEAD, not every server does): the middleware's HEAD answers hold
    none, with the GET's Content-Length."""
    app = validator(handler_for(gate=gate))
    with gate.try_acquire():
        get = serve_once(app, "/")
        head = serve_once(app, "/", method="HEAD")
    assert get.code == head.code == 503
    assert head.body == b""
    assert head.headers["Content-Length"] == str(len(get.body)) != "0"
    assert head.headers["Retry-After"] == get.headers["Retry-After"] == "1"
    assert serve_once(app, "/").body == b"hello", "the WSGI handler closed the response"


def test_the_handler_gives_the_permit_back_when_the_server_closes_the_response(
    gate: CapacityGate,
) -> None:
    app = handler_for(gate=gate)
    environ: dict[str, Any] = {"REQUEST_METHOD": "GET", "PATH_INFO": "/"}
    setup_testing_defaults(environ)
    body = app(environ, lambda status, headers, exc_info=None: lambda data: None)
    assert b"".join(body) == b"hello"
    assert gate.in_flight == 1, "sent but not yet closed: the request still holds its permit"
    body.close()  # type: ignore[attr-defined]
    assert gate.in_flight == 0
    body.close()  # type: ignore[attr-defined]
    assert gate.in_flight == 0


def test_many_threads_never_push_a_view_past_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    limit, threads, rounds = 3, 24, 30
    gate = CapacityGate(limit)
    client = client_for(gate=gate)
    meter = Meter()
    monkeypatch.setattr(django_site, "meter", meter)
    codes: Counter[int] = Counter()
    lock = threading.Lock()
    start = threading.Barrier(threads)

    def hammer() -> None:
        start.wait(timeout=10)
        mine = Counter(client.get("/work?ms=1").status_code for _ in range(rounds))
        with lock:
            codes.update(mine)

    workers = [threading.Thread(target=hammer) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    seen = meter.snapshot()
    assert set(codes) <= {200, 503}
    assert sum(codes.values()) == threads * rounds
    assert gate.admitted == codes[200] == seen["entered"]
    assert gate.rejected == codes[503] > 0
    assert 1 <= seen["worst"] <= limit
    assert gate.peak <= limit and gate.in_flight == 0 and seen["inside"] == 0


# -- releasing ---------------------------------------------------------------------------------


def test_a_streamed_response_holds_its_permit_until_its_stream_is_closed(
    gate: CapacityGate,
) -> None:
    client = client_for(gate=gate)
    reply = client.get("/stream?chunks=3")
    assert reply.streaming
    assert gate.in_flight == 1, "the view returned, but the body is not sent yet"
    assert client.get("/").status_code == 503
    assert b"".join(reply.streaming_content) == b"tick\n" * 3
    assert gate.in_flight == 0

    abandoned = client.get("/stream?chunks=3")
    chunks = iter(abandoned.streaming_content)
    assert next(chunks) == b"tick\n"
    assert gate.in_flight == 1
    closed_early = django_site.meter.snapshot()["streams_closed_early"]
    abandoned.close()
    assert gate.in_flight == 0
    assert django_site.meter.snapshot()["streams_closed_early"] == closed_early + 1
    assert (gate.admitted, gate.rejected) == (2, 1)


def test_a_view_that_raises_gives_its_permit_back(gate: CapacityGate) -> None:
    with pytest.raises(django_site.Boom):
        client_for(gate=gate).get("/boom")
    assert gate.in_flight == 0
    reply = Client(raise_request_exception=False)
    with override_settings(TIDEGATE={"gate": gate}):
        reply.handler.load_middleware()
    assert reply.get("/boom").status_code == 500
    assert (gate.in_flight, gate.admitted) == (0, 2)


def test_an_exception_through_the_middleware_gives_the_permit_back(gate: CapacityGate) -> None:
    """With ``DEBUG_PROPAGATE_EXCEPTIONS`` the view's error passes through the middleware
    instead of becoming a 500."""
    client = client_for(gate=gate)
    with override_settings(DEBUG_PROPAGATE_EXCEPTIONS=True), pytest.raises(django_site.Boom):
        client.get("/boom")
    assert (gate.in_flight, gate.admitted) == (0, 1)


# -- maintenance and exempt views --------------------------------------------------------------


def test_maintenance_with_its_bypasses(switch: MaintenanceSwitch) -> None:
    client = client_for(
        maintenance=switch,
        bypass_networks=["10.0.0.0/8"],
        bypass_header="X-Maintenance-Bypass",
        bypass_token=TOKEN,
    )
    document = assert_full_503(client.get("/"), "maintenance", "300")
    assert document["message"] == "Back soon"
    page = client.get("/", headers={"Accept": "text/html"})
    assert page.status_code == 503 and b"Back soon" in page.content
    assert client.get("/", headers={"X-Maintenance-Bypass": TOKEN}).content == b"hello"
    assert client.get("/", headers={"X-Maintenance-Bypass": TOKEN + "x"}).status_code == 503
    assert client.get("/", REMOTE_ADDR="10.9.9.9").content == b"hello"
    forged = client.get("/", headers={"X-Forwarded-For": "10.9.9.9"})
    assert forged.status_code == 503, "no proxy is trusted, so the header is ignored"
    switch.disable()
    assert client.get("/").content == b"hello"


def test_maintenance_mode_works_without_a_maintenance_option(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MAINTENANCE_MODE", "true")
    client = client_for(limit=4)
    assert client.get("/").json()["reason"] == "maintenance"
    assert client_for(limit=4, maintenance=False).get("/").content == b"hello"


def test_exempt_views_skip_what_they_are_exempt_from(
    gate: CapacityGate, switch: MaintenanceSwitch
) -> None:
    client = client_for(gate=gate, maintenance=switch)
    # Maintenance on, gate free.
    assert client.get("/status").content == b"status"
    assert client.get("/class-view").content == b"class-view"
    assert client.get("/dispatch-view").content == b"dispatch-view"
    assert client.get("/maintenance-only").content == b"maintenance-only"
    assert client.get("/gated-only").json()["reason"] == "maintenance"
    switch.disable()
    # Maintenance off, gate full.
    with gate.try_acquire():
        assert client.get("/status").content == b"status"
        assert client.get("/class-view").content == b"class-view"
        assert client.get("/dispatch-view").content == b"dispatch-view"
        assert client.get("/gated-only").content == b"gated-only"
        assert client.get("/maintenance-only").json()["reason"] == "overload"
        assert client.get("/").json()["reason"] == "overload"
    # Permits went to the two requests to /maintenance-only that were admitted (not exempt
    # from the gate) and to the test's own; the exempt views took none.
    assert client.get("/maintenance-only").status_code == 200
    assert (gate.admitted, gate.rejected) == (3, 2)


def test_exempt_marks_views_bare_with_arguments_and_through_decorators() -> None:
    from functools import wraps

    def logged(view: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return view(*args, **kwargs)

        return wrapper

    @logged
    @exempt(gate=False)
    def inner(request: Any) -> None: ...

    assert inner.tidegate_exempt == 2  # type: ignore[attr-defined]
    assert exempt(lambda request: None).tidegate_exempt == 3  # type: ignore[attr-defined]
    with pytest.raises(TypeError, match=r"^exempt: expected a view, got 5$"):
        exempt(5)  # type: ignore[call-overload]


def test_views_marked_when_the_first_request_imports_the_urlconf_are_exempt(
    gate: CapacityGate, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Django imports a project's URLconf, and with it its views, on the first request, after
    the middleware was built: that request already finds its view's mark."""
    from django.urls import clear_url_caches

    import tidegate.django

    monkeypatch.setattr(tidegate.django, "_views_marked", False)
    (tmp_path / "django_late_urls.py").write_text(
        "from django.http import HttpResponse\n"
        "from django.urls import path\n"
        "from tidegate.django import exempt\n"
        "@exempt\n"
        "def ping(request):\n"
        "    return HttpResponse(b'pong')\n"
        "urlpatterns = [path('ping', ping)]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "django_late_urls", raising=False)
    with override_settings(ROOT_URLCONF="django_late_urls"):
        client = client_for(gate=gate)
        try:
            with gate.try_acquire():
                assert "django_late_urls" not in sys.modules
                assert client.get("/ping").content == b"pong"
                assert client.get("/ping").content == b"pong"
                assert client.get("/").status_code == 503
        finally:
            sys.modules.pop("django_late_urls", None)
            clear_url_caches()


def test_the_same_path_under_another_urlconf_is_resolved_again(gate: CapacityGate) -> None:
    from django import urls
    from django.http import HttpResponse

    def open_view(request: Any) -> HttpResponse:
        return HttpResponse(b"open")

    marked = type("marked", (), {"urlpatterns": [urls.path("x", exempt(lambda r: open_view(r)))]})
    plain = type("plain", (), {"urlpatterns": [urls.path("x", open_view)]})
    client = client_for(gate=gate)
    with gate.try_acquire():
        for _ in range(2):
            with override_settings(ROOT_URLCONF=marked):
                assert client.get("/x").content == b"open"
            with override_settings(ROOT_URLCONF=plain):
                assert client.get("/x").status_code == 503


def test_clients_inventing_paths_change_no_exemption(gate: CapacityGate) -> None:
    client = client_for(gate=gate)
    with gate.try_acquire():
        for index in range(1100):
            assert client.get(f"/invented/{index}").status_code == 503
        assert client.get("/status").content == b"status"
        assert client.get("/").status_code == 503
    assert client.get("/invented/1").status_code == 404


# -- health and the dependency 503 -------------------------------------------------------------


def test_health_is_answered_without_a_url_pattern(
    gate: CapacityGate, switch: MaintenanceSwitch
) -> None:
    health = HealthChecks()
    health.add("db", lambda: True, timeout=1.0)
    client = client_for(gate=gate, maintenance=switch, health=health)
    with gate.try_acquire():
        ready = client.get("/health")
        live = client.get("/health/live")
        live_head = client.head("/health/live")
    assert ready.status_code == 200
    assert ready.headers["Cache-Control"] == "no-store"
    assert ready.json()["maintenance"] is True, "readiness stays 200 and says so"
    assert (live.status_code, live.json()) == (200, {"status": "alive"})
    assert live_head.status_code == 200 and live_head.content == b""
    assert live_head.headers["Content-Length"] == live.headers["Content-Length"]
    assert (gate.admitted, gate.rejected) == (1, 0), "health answers take no permit"


def test_a_failing_readiness_check_is_a_503_with_retry_after() -> None:
    health = HealthChecks(cache_ttl=0)
    health.add("db", lambda: False, timeout=1.0)
    ready = client_for(health=health, maintenance=False).get("/health")
    assert ready.status_code == 503
    assert ready.headers["Retry-After"] == str(ready.json()["retry_after"])


def test_an_open_breaker_in_a_view_becomes_the_dependency_503(gate: CapacityGate) -> None:
    client = client_for(gate=gate, maintenance=False)
    reply = client.get("/dependency")
    assert_full_503(reply, "dependency", str(django_site.DEPENDENCY_RESET_TIMEOUT))
    page = client.get("/dependency", headers={"Accept": "text/html"})
    assert page.status_code == 503 and page.content.startswith(b"<!doctype html>")
    head = client.head("/dependency")
    assert head.status_code == 503 and head.content == b""
    assert head.headers["Content-Length"] == reply.headers["Content-Length"]
    assert (gate.admitted, gate.in_flight) == (3, 0)


def test_a_breaker_opened_by_one_failure_answers_the_dependency_503() -> None:
    breaker = CircuitBreaker("payments", failure_threshold=1, reset_timeout=30)

    def charge() -> None:
        raise ConnectionError("payments are down")

    with pytest.raises(ConnectionError):
        breaker.call(charge)
    assert breaker.state == "open"
    from django.http import HttpResponse
    from django.urls import path

    def pay(request: Any) -> HttpResponse:
        return HttpResponse(breaker.call(charge))

    urls = type("urls", (), {"urlpatterns": [path("pay", pay)]})
    with override_settings(ROOT_URLCONF=urls):
        reply = client_for(maintenance=False).get("/pay")
    assert reply.status_code == 503
    assert reply.json()["reason"] == "dependency"
    assert 1 <= int(reply.headers["Retry-After"]) <= 30


def test_other_errors_stay_djangos(gate: CapacityGate) -> None:
    reply = Client(raise_request_exception=False)
    with override_settings(TIDEGATE={"gate": gate}):
        reply.handler.load_middleware()
    assert reply.get("/boom").status_code == 500


def test_tidegates_503s_are_not_logged_as_server_errors(
    gate: CapacityGate, caplog: pytest.LogCaptureFixture
) -> None:
    """Django logs every 5xx as an error (and mails it to the admins); a shed request is not
    one, and logging each would add work exactly when there is too much."""
    client = client_for(gate=gate, maintenance=False)
    with caplog.at_level(logging.WARNING, logger="django.request"):
        with gate.try_acquire():
            assert client.get("/").status_code == 503
        assert client.get("/dependency").status_code == 503
        assert not [r for r in caplog.records if r.name == "django.request"]
        # Django's own 5xx are still logged.
        quiet = Client(raise_request_exception=False)
        with override_settings(TIDEGATE={"gate": gate}):
            quiet.handler.load_middleware()
        assert quiet.get("/boom").status_code == 500
    assert [r.levelname for r in caplog.records if r.name == "django.request"] == ["ERROR"]


# -- settings ----------------------------------------------------------------------------------


def test_options_come_from_settings_read_when_the_middleware_is_built() -> None:
    with override_settings(TIDEGATE={"limit": 7, "maintenance": False}):
        middleware = TideGateMiddleware(lambda request: None)
    assert middleware.gate.limit == 7
    assert middleware.maintenance is None
    with override_settings():
        from django.conf import settings

        del settings.TIDEGATE
        default = TideGateMiddleware(lambda request: None)
    assert default.gate is None
    assert isinstance(default.maintenance, MaintenanceSwitch)


@pytest.mark.parametrize(
    ("setting", "error", "message"),
    [
        ("limit=8", TypeError, "TIDEGATE: must be a dict of tidegate options"),
        (None, TypeError, "TIDEGATE: must be a dict of tidegate options"),
        ({"limt": 8}, TypeError, "TIDEGATE: unknown option 'limt'"),
        ({1: 8}, TypeError, "TIDEGATE: option names must be str, got 1"),
        ({"limit": 0}, ValueError, "limit: must be an integer >= 1, got 0"),
    ],
)
def test_bad_settings_are_refused_when_the_middleware_is_built(
    setting: object, error: type[Exception], message: str
) -> None:
    with override_settings(TIDEGATE=setting), pytest.raises(error) as raised:
        TideGateMiddleware(lambda request: None)
    assert str(raised.value).startswith(message)


# -- under a real Gunicorn ---------------------------------------------------------------------

SERVED = "django_site:application"
LIMIT = 4
CLIENTS = 24

Start = Callable[..., GunicornServer]


def assert_served_503(reply: Response, reason: str) -> dict[str, Any]:
    assert (reply.status, reply.reason) == (503, "Service Unavailable")
    assert reply.headers["Cache-Control"] == "no-store"
    assert reply.headers["Content-Type"] == "application/json"
    assert int(reply.headers["Content-Length"]) == len(reply.body)
    document: dict[str, Any] = reply.json()
    assert document["reason"] == reason
    assert reply.headers["Retry-After"] == str(document["retry_after"])
    return document


def assert_clean_log(server: GunicornServer) -> None:
    output = server.output()
    assert "Traceback" not in output, output
    assert "[ERROR]" not in output, output


@pytest.mark.server
def test_gunicorn_never_lets_more_than_the_limit_into_django(start_gunicorn: Start) -> None:
    server = start_gunicorn(SERVED, threads=4 * LIMIT, env={"TIDEGATE_TEST_LIMIT": str(LIMIT)})
    replies = until_served(server, "/work?ms=30", clients=CLIENTS, times=2, seconds=20)

    codes = Counter(reply.status for reply in replies)
    assert set(codes) == {200, 503}, codes
    for reply in replies:
        if reply.status == 200:
            assert reply.body == b"done"
        else:
            assert assert_served_503(reply, "overload")["retry_after"] == 1
    final = settled(server)
    assert final["admitted"] == codes[200] == final["entered"]
    assert final["rejected"] == codes[503]
    assert 2 <= final["worst"] <= LIMIT, final
    assert final["peak"] == LIMIT
    head = server.fetch("/work", method="HEAD")
    assert head.status == 200
    assert_clean_log(server)


@pytest.mark.server
def test_gunicorn_a_stream_holds_its_permit_until_the_client_has_read_it(
    start_gunicorn: Start,
) -> None:
    server = start_gunicorn(SERVED, threads=4, env={"TIDEGATE_TEST_LIMIT": "1"})
    conn = server.connection(timeout=10)
    try:
        conn.request("GET", "/stream?chunks=20&ms=20")
        reply = conn.getresponse()
        assert reply.status == 200
        assert reply.read(len(b"tick\n")) == b"tick\n"
        during = stats(server)
        assert during["in_flight"] == 1 and during["streams_started"] == 1
        shed = server.fetch("/work?ms=0")
        assert_served_503(shed, "overload")
        head = server.fetch("/work?ms=0", method="HEAD")
        assert head.status == 503 and head.body == b""
        assert head.headers["Content-Length"] == shed.headers["Content-Length"]
        assert reply.read() == b"tick\n" * 19
    finally:
        conn.close()
    after = settled(server)
    assert after["streams_closed"] == after["streams_finished"] == 1
    assert after["worst"] == 1
    assert server.fetch("/work?ms=0").body == b"done"
    assert_clean_log(server)


@pytest.mark.server
def test_gunicorn_every_worker_follows_the_maintenance_state_file(
    start_gunicorn: Start, tmp_path: Path
) -> None:
    state = tmp_path / "tidegate.json"
    workers = 2
    server = start_gunicorn(
        SERVED, workers=workers, threads=2, env={"TIDEGATE_TEST_STATE": str(state)}
    )
    pids = set(server.worker_pids())
    assert len(pids) == workers

    def every_worker(path: str, expect: Callable[[Response], bool]) -> None:
        """Asks until each worker has answered as ``expect`` wants (bounded)."""
        followed: set[str] = set()
        deadline = time.monotonic() + 10
        while followed != {str(pid) for pid in pids}:
            assert time.monotonic() < deadline, f"only workers {followed} of {pids} followed"
            reply = server.fetch(path)
            if expect(reply):
                followed.add(reply.headers["X-Worker-Pid"])

    def in_maintenance(reply: Response) -> bool:
        if reply.status != 503:
            return False
        document = assert_served_503(reply, "maintenance")
        return bool(document["message"] == "Upgrading the DB" and document["retry_after"] == 120)

    every_worker("/", lambda reply: reply.status == 200 and reply.body == b"hello")
    switch = MaintenanceSwitch(state, env_var=None)
    switch.enable(message="Upgrading the DB", retry_after=120)
    every_worker("/", in_maintenance)
    every_worker("/status", lambda reply: reply.status == 200 and reply.body == b"status")
    switch.disable()
    every_worker("/", lambda reply: reply.status == 200 and reply.body == b"hello")
    assert_clean_log(server)


def test_the_readme_project_works_as_the_readme_says(tmp_path: Path) -> None:
    from django import urls
    from test_pytest_plugin import readme_python

    settings_block, views_block = readme_python("## Django")
    state = tmp_path / "tidegate.json"
    project: dict[str, Any] = {}
    exec(settings_block.replace("/run/myproject/tidegate.json", str(state)), project)
    assert project["MIDDLEWARE"][0] == "tidegate.django.TideGateMiddleware"

    def charge(request: Any) -> str:
        raise ConnectionError("payments are down")

    def rows() -> Iterator[str]:
        yield "a,b\n"
        yield "c,d\n"

    views: dict[str, Any] = {"__name__": "readme_views", "charge": charge, "rows": rows}
    exec(views_block, views)
    module = type(
        "urls",
        (),
        {
            "urlpatterns": [
                urls.path(name, views[name]) for name in ("ping", "status", "checkout", "export")
            ]
        },
    )
    with override_settings(
        ROOT_URLCONF=module, MIDDLEWARE=project["MIDDLEWARE"], TIDEGATE=project["TIDEGATE"]
    ):
        client = Client(raise_request_exception=False)
        client.handler.load_middleware()
        assert client.get("/health").json()["status"] == "ready"
        assert client.get("/health/live").json() == {"status": "alive"}
        export = client.get("/export")
        assert b"".join(export.streaming_content) == b"a,b\nc,d\n"
        for _ in range(5):  # failure_threshold failures open the breaker
            assert client.get("/checkout").status_code == 500
        assert client.get("/checkout").json()["reason"] == "dependency"
        MaintenanceSwitch(state, env_var=None).enable(message="Back at noon")
        wait_for(
            lambda: client.get("/checkout").json()["reason"],
            lambda reason: reason == "maintenance",
            what="maintenance from the state file",
        )
        assert client.get("/export").json()["message"] == "Back at noon"
        assert client.get("/ping").content == b"pong"
        assert client.get("/status").status_code == 503
