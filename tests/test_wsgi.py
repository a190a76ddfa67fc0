"""TideGateMiddleware: shedding, the 503 response, permits that never leak."""

from __future__ import annotations

import gc
import random
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Boom, RecordingApp, call, environ_for, hammer

from tidegate import CapacityGate
from tidegate.wsgi import TideGateMiddleware


def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
    return lambda data: None


def test_admitted_requests_pass_through_and_release(recording_app: RecordingApp) -> None:
    mw = TideGateMiddleware(recording_app, limit=2)
    reply = call(mw, "/")
    assert (reply.code, reply.body) == (200, b"ok")
    assert mw.gate.in_flight == 0
    assert (mw.gate.admitted, mw.gate.rejected) == (1, 0)


def test_overload_gets_the_full_503_and_never_reaches_the_app(
    recording_app: RecordingApp,
) -> None:
    mw = TideGateMiddleware(recording_app, limit=1)
    held = mw(environ_for("/stream"), start_response)
    reply = call(mw, "/")
    assert reply.status == "503 Service Unavailable"
    assert reply.headers["Retry-After"] == "1"
    assert reply.headers["Cache-Control"] == "no-store"
    assert reply.headers["Content-Type"] == "application/json"
    assert int(reply.headers["Content-Length"]) == len(reply.body)
    assert reply.json() == {
        "error": "Service Unavailable",
        "reason": "overload",
        "message": reply.json()["message"],
        "retry_after": 1,
        "estimated_return": None,
    }
    assert isinstance(reply.json()["message"], str) and reply.json()["message"]
    assert recording_app.calls == 1, "the shed request never ran"
    held.close()
    assert mw.gate.in_flight == 0
    assert call(mw, "/").code == 200


def test_browsers_get_a_self_contained_escaped_page(recording_app: RecordingApp) -> None:
    mw = TideGateMiddleware(
        recording_app,
        limit=1,
        messages={"overload": "<script>alert(1)</script> busy & full"},
        status_url='https://status.example/?a="b"',
    )
    held = mw(environ_for("/stream"), start_response)
    reply = call(mw, "/", HTTP_ACCEPT="text/html,application/xhtml+xml,*/*;q=0.8")
    held.close()
    page = reply.body.decode()
    assert reply.code == 503
    assert reply.headers["Content-Type"].startswith("text/html")
    assert "&lt;script&gt;alert(1)&lt;/script&gt; busy &amp; full" in page
    assert "<script>" not in page
    assert 'href="https://status.example/?a=&quot;b&quot;"' in page
    assert "http" not in page.replace("https://status.example/?a=&quot;b&quot;", "")


def test_head_gets_headers_and_no_body(recording_app: RecordingApp) -> None:
    mw = TideGateMiddleware(recording_app, limit=1)
    held = mw(environ_for("/stream"), start_response)
    reply = call(mw, "/", method="HEAD")
    held.close()
    assert reply.code == 503
    assert reply.body == b""
    assert reply.headers["Retry-After"] == "1"
    assert int(reply.headers["Content-Length"]) > 0


def test_jitter_spreads_retry_after(recording_app: RecordingApp) -> None:
    mw = TideGateMiddleware(recording_app, limit=1, retry_after=5, retry_jitter=4)
    held = mw(environ_for("/stream"), start_response)
    seen = set()
    for _ in range(400):
        reply = call(mw, "/")
        value = int(reply.headers["Retry-After"])
        assert reply.json()["retry_after"] == value
        seen.add(value)
    held.close()
    assert seen == {5, 6, 7, 8, 9}


def test_an_app_that_raises_gives_the_permit_back_at_once(recording_app: RecordingApp) -> None:
    mw = TideGateMiddleware(recording_app, limit=1)
    with pytest.raises(Boom):
        mw(environ_for("/raise"), start_response)
    assert mw.gate.in_flight == 0
    assert call(mw, "/").code == 200


def test_a_streamed_body_holds_its_permit_until_closed(recording_app: RecordingApp) -> None:
    mw = TideGateMiddleware(recording_app, limit=1)
    body = mw(environ_for("/stream"), start_response)
    chunks = iter(body)
    assert next(chunks) == b"one "
    assert mw.gate.in_flight == 1
    assert call(mw, "/").code == 503
    assert b"".join(chunks) == b"two three"
    assert mw.gate.in_flight == 1, "exhausted is not closed: the server still owns it"
    body.close()
    assert mw.gate.in_flight == 0
    assert recording_app.closed == 1


@pytest.mark.parametrize("how", ["raise-midway", "early-close", "never-iterated", "never-closed"])
def test_no_way_of_ending_a_body_leaks(recording_app: RecordingApp, how: str) -> None:
    mw = TideGateMiddleware(recording_app, limit=1)
    path = "/raise-midway" if how == "raise-midway" else "/stream"
    body = mw(environ_for(path), start_response)
    if how == "raise-midway":
        with pytest.raises(Boom):
            b"".join(body)
        body.close()
    elif how == "early-close":
        next(iter(body))
        body.close()
    elif how == "never-iterated":
        body.close()
    else:
        del body
        gc.collect()
    assert mw.gate.in_flight == 0
    assert recording_app.inside == 0, "the app's own body was closed too"
    assert call(mw, "/").code == 200


class _BodyFailingToClose:
    def __iter__(self) -> Any:
        return iter([b"x"])

    def close(self) -> None:
        raise Boom("close failed")


def app_whose_body_fails_to_close(environ: Any, start_response: Any) -> Any:
    start_response("200 OK", [])
    return _BodyFailingToClose()


def test_a_close_that_fails_on_a_dropped_body_is_reported_not_raised() -> None:
    mw = TideGateMiddleware(app_whose_body_fails_to_close, limit=1)
    seen: list[Any] = []
    hook, sys.unraisablehook = sys.unraisablehook, seen.append
    try:
        body = mw(environ_for("/"), start_response)
        del body
        gc.collect()
    finally:
        sys.unraisablehook = hook
    assert mw.gate.in_flight == 0
    assert len(seen) == 1 and isinstance(seen[0].exc_value, Boom)


def test_closing_twice_releases_once(recording_app: RecordingApp) -> None:
    mw = TideGateMiddleware(recording_app, limit=2)
    first = mw(environ_for("/stream"), start_response)
    second = mw(environ_for("/stream"), start_response)
    first.close()
    first.close()
    assert mw.gate.in_flight == 1, "a second close must not free the other request's slot"
    second.close()
    assert mw.gate.in_flight == 0


def test_a_failing_close_still_releases() -> None:
    mw = TideGateMiddleware(app_whose_body_fails_to_close, limit=1)
    body = mw(environ_for("/"), start_response)
    with pytest.raises(Boom):
        body.close()
    assert mw.gate.in_flight == 0


def test_exempt_paths_skip_the_gate(recording_app: RecordingApp) -> None:
    mw = TideGateMiddleware(recording_app, limit=1, exempt_paths=["/ping"])
    held = mw(environ_for("/stream"), start_response)
    assert call(mw, "/ping").code == 200
    assert call(mw, "/health").code == 503, "custom exempt_paths replace the defaults"
    held.close()


def test_exempt_paths_of_any_length_match_only_themselves(recording_app: RecordingApp) -> None:
    long = "/" + "x" * 80
    near = "/" + "x" * 79 + "y"  # as long, and 63 or more characters like it
    mw = TideGateMiddleware(recording_app, limit=1, exempt_paths=["/", long, "/é"])
    held = mw(environ_for("/stream"), start_response)
    for path in ("/", long, "/é"):
        assert call(mw, path).code == 200, path
    for path in (near, "/e", "/x", "//"):
        assert call(mw, path).code == 503, path
    held.close()


def test_health_paths_are_exempt_by_default(recording_app: RecordingApp) -> None:
    mw = TideGateMiddleware(recording_app, limit=1)
    held = mw(environ_for("/stream"), start_response)
    assert call(mw, "/health").code == 200
    assert call(mw, "/health/live").code == 200
    assert call(mw, "/other").code == 503
    held.close()


def test_several_bodies_open_at_once_keep_the_limit(recording_app: RecordingApp) -> None:
    mw = TideGateMiddleware(recording_app, limit=3)
    bodies = [mw(environ_for("/stream"), start_response) for _ in range(3)]
    assert call(mw, "/").code == 503
    bodies[1].close()
    assert call(mw, "/").code == 200
    again = mw(environ_for("/stream"), start_response)
    assert call(mw, "/").code == 503
    for body in [*bodies, again]:
        body.close()
    assert mw.gate.in_flight == 0
    assert recording_app.worst <= 3


def test_random_faults_over_thousands_of_requests_never_leak() -> None:
    """Open bodies pile up and are ended in every possible way, in random order; at every step
    the gate's count equals the bodies still open, and never exceeds the limit."""
    app = RecordingApp()
    limit = 5
    mw = TideGateMiddleware(app, limit=limit)
    rng = random.Random(1234)
    open_bodies: list[tuple[str, Any]] = []
    shed = 0
    for _ in range(5_000):
        action = rng.random()
        if action < 0.5 or not open_bodies:
            path = rng.choice(["/", "/stream", "/raise", "/raise-midway"])
            try:
                body = mw(environ_for(path), start_response)
            except Boom:
                continue
            if getattr(body, "released", None) is None:
                shed += 1
                continue
            open_bodies.append((path, body))
        else:
            path, body = open_bodies.pop(rng.randrange(len(open_bodies)))
            ending = rng.choice(["iterate", "partial", "close", "drop"])
            if ending in ("iterate", "partial"):
                try:
                    for i, _chunk in enumerate(body):
                        if ending == "partial" and i == 0:
                            break
                except Boom:
                    pass
            if ending == "drop":
                # A server that never calls close(): the permit still comes back, and the
                # app's own body is closed first.
                del body
            else:
                body.close()
        assert mw.gate.in_flight == len(open_bodies) <= limit
    for _path, body in open_bodies:
        body.close()
    assert mw.gate.in_flight == 0
    assert mw.gate.peak <= limit
    assert shed > 0
    assert app.inside == 0


def test_many_threads_never_push_the_app_past_the_limit() -> None:
    app = RecordingApp()
    limit, threads, rounds = 4, 32, 300
    mw = TideGateMiddleware(app, limit=limit)
    codes = hammer(
        lambda thread, turn: call(mw, "/stream" if turn % 2 else "/").code,
        threads=threads,
        times=rounds,
    ).results
    assert len(codes) == threads * rounds
    assert set(codes) <= {200, 503}
    assert app.worst <= limit
    assert mw.gate.admitted + mw.gate.rejected == threads * rounds
    assert mw.gate.admitted == codes.count(200)
    assert mw.gate.in_flight == 0


def test_a_shared_gate_counts_across_middlewares(recording_app: RecordingApp) -> None:
    gate = CapacityGate(1)
    one = TideGateMiddleware(recording_app, gate=gate)
    two = TideGateMiddleware(recording_app, gate=gate)
    held = one(environ_for("/stream"), start_response)
    assert call(two, "/").code == 503
    held.close()
    assert call(two, "/").code == 200


def test_without_a_gate_requests_are_not_counted(recording_app: RecordingApp) -> None:
    mw = TideGateMiddleware(recording_app)
    assert mw.gate is None
    assert call(mw, "/").code == 200


def test_a_non_dict_environ_is_served() -> None:
    class Environ(dict):  # type: ignore[type-arg]
        pass

    def app(environ: Any, start_response: Any) -> Any:
        start_response("200 OK", [])
        return [b"fine"]

    mw = TideGateMiddleware(app, limit=1)
    body = mw(Environ(environ_for("/")), start_response)
    assert b"".join(body) == b"fine"
    body.close()
    assert mw.gate.in_flight == 0


@pytest.mark.parametrize(
    ("options", "error", "param"),
    [
        ({"limit": 0}, ValueError, "limit"),
        ({"limit": "8"}, TypeError, "limit"),
        ({"limit": 2, "gate": CapacityGate(2)}, ValueError, "limit"),
        ({"gate": 3}, TypeError, "gate"),
        ({"retry_after": -1}, ValueError, "retry_after"),
        ({"retry_after": 1.5}, TypeError, "retry_after"),
        ({"retry_jitter": 1000}, ValueError, "retry_jitter"),
        ({"exempt_paths": "/health"}, TypeError, "exempt_paths"),
        ({"exempt_paths": ["health"]}, ValueError, "exempt_paths"),
        ({"health_path": "health"}, ValueError, "health_path"),
        ({"health": object()}, TypeError, "health"),
        ({"maintenance": 42}, TypeError, "maintenance"),
        ({"bypass_networks": ["10.0.0.0/33"]}, ValueError, "bypass_networks"),
        ({"bypass_networks": "10.0.0.0/8"}, TypeError, "bypass_networks"),
        ({"trusted_proxies": -1}, ValueError, "trusted_proxies"),
        ({"bypass_header": "X-Bypass"}, ValueError, "bypass_header"),
        ({"bypass_header": "X-Bypass", "bypass_token": "short"}, ValueError, "bypass_token"),
        ({"messages": {"overlaod": "typo"}}, ValueError, "messages"),
        ({"messages": {"overload": 3}}, TypeError, "messages"),
        ({"template": "$unclosed ${"}, ValueError, "template"),
        ({"status_url": 5}, TypeError, "status_url"),
    ],
)
def test_bad_options_name_the_parameter(
    options: dict[str, Any], error: type[Exception], param: str
) -> None:
    with pytest.raises(error, match=param):
        TideGateMiddleware(RecordingApp(), **options)


def test_app_must_be_callable() -> None:
    with pytest.raises(TypeError, match="app"):
        TideGateMiddleware("not an app")  # type: ignore[arg-type]


def test_serves_readiness_and_liveness_even_when_full(recording_app: RecordingApp) -> None:
    from tidegate import HealthChecks

    health = HealthChecks()
    healthy = True
    health.add("db", lambda: healthy)
    mw = TideGateMiddleware(recording_app, limit=1, health=health)
    held = mw(environ_for("/stream"), start_response)
    ready = call(mw, "/health")
    assert ready.code == 200 and ready.json()["status"] == "ready"
    assert ready.headers["Cache-Control"] == "no-store"
    assert call(mw, "/health/live").json() == {"status": "alive"}
    healthy = False
    failing = call(TideGateMiddleware(recording_app, health=_fresh_failing_health()), "/health")
    assert failing.code == 503
    assert failing.headers["Retry-After"] == str(failing.json()["retry_after"])
    assert "Boom" not in failing.body.decode(), "error details stay hidden by default"
    held.close()
    assert recording_app.calls == 1, "health was answered by tidegate, not the app"


def _fresh_failing_health() -> object:
    from tidegate import HealthChecks

    def db() -> None:
        raise Boom("connection refused by db.internal")

    health = HealthChecks()
    health.add("db", db)
    return health


def test_an_open_breaker_in_the_app_becomes_a_dependency_503() -> None:
    from tidegate import CircuitBreaker

    now = [0.0]
    breaker = CircuitBreaker("db", failure_threshold=1, reset_timeout=30, clock=lambda: now[0])

    @breaker
    def query() -> bytes:
        raise ConnectionError("db down")

    def app(environ: Any, start_response: Any) -> Any:
        try:
            data = query()
        except ConnectionError:
            data = b"stale"
        start_response("200 OK", [])
        return [data]

    mw = TideGateMiddleware(app, limit=2)
    assert call(mw, "/").body == b"stale", "the first failure trips the breaker"
    now[0] = 12.2
    reply = call(mw, "/")
    assert reply.code == 503
    assert reply.json()["reason"] == "dependency"
    assert reply.headers["Retry-After"] == "18", "the time left until a probe, rounded up"
    assert reply.json()["retry_after"] == 18
    assert mw.gate.in_flight == 0


def maintenance_on(**options: Any) -> Any:
    from tidegate import MaintenanceSwitch

    switch = MaintenanceSwitch(env_var=None)
    switch.enable(**options)
    return switch


def test_estimated_return_is_an_iso_instant_a_state_file_reads(tmp_path: Path) -> None:
    import json
    from datetime import datetime, timedelta, timezone

    from tidegate import MaintenanceSwitch
    from tidegate.responses import ErrorPages

    def returning(moment: datetime) -> str:
        rendered = ErrorPages().render("maintenance", retry_after=1, estimated_return=moment)
        text = json.loads(rendered.body)["estimated_return"]
        assert isinstance(text, str)
        return text

    # Four-digit years, whole seconds, in UTC: the form the state file stores.
    early = datetime(999, 3, 4, 5, 6, 7, 890_000, tzinfo=timezone(timedelta(hours=-2)))
    assert returning(early) == "0999-03-04T07:06:07Z"
    assert returning(datetime(2031, 6, 1, 14, 0)) == "2031-06-01T14:00:00Z"
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"active": True, "until": returning(early)}))
    until = MaintenanceSwitch(state, env_var=None).status().until
    assert until == early.replace(microsecond=0)


def test_maintenance_answers_with_message_and_estimated_return(
    recording_app: RecordingApp,
) -> None:
    from datetime import datetime, timedelta, timezone

    until = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(minutes=10)
    switch = maintenance_on(message="Upgrading <db>", until=until)
    mw = TideGateMiddleware(recording_app, limit=2, maintenance=switch)
    reply = call(mw, "/")
    assert reply.code == 503
    document = reply.json()
    assert document["reason"] == "maintenance"
    assert document["message"] == "Upgrading <db>"
    assert document["estimated_return"] == until.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert 590 <= int(reply.headers["Retry-After"]) <= 600
    assert document["retry_after"] == int(reply.headers["Retry-After"])
    page = call(mw, "/", HTTP_ACCEPT="text/html").body.decode()
    assert "Upgrading &lt;db&gt;" in page and "<db>" not in page
    assert recording_app.calls == 0
    assert mw.gate.in_flight == 0 and mw.gate.admitted == 0, "maintenance takes no permit"
    assert call(mw, "/health").code == 200, "health paths are exempt"
    switch.disable()
    assert call(mw, "/").code == 200


def test_maintenance_mode_works_without_a_maintenance_option(
    recording_app: RecordingApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAINTENANCE_MODE", "true")
    mw = TideGateMiddleware(recording_app, limit=16)
    reply = call(mw, "/")
    assert reply.code == 503 and reply.json()["reason"] == "maintenance"
    assert mw.maintenance is not None and mw.maintenance.status().source == "env"
    assert recording_app.calls == 0
    # The default switch is this process's own too: code can turn it on and off.
    monkeypatch.delenv("MAINTENANCE_MODE")
    quiet = TideGateMiddleware(recording_app, limit=16)
    assert call(quiet, "/").code == 200
    quiet.maintenance.enable(message="Back soon")
    assert call(quiet, "/").json()["message"] == "Back soon"
    other = TideGateMiddleware(recording_app, limit=16)
    assert call(other, "/").code == 200, "each middleware has a switch of its own"


def test_maintenance_false_means_no_switch_at_all(
    recording_app: RecordingApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAINTENANCE_MODE", "true")
    mw = TideGateMiddleware(recording_app, limit=16, maintenance=False)
    assert mw.maintenance is None
    assert call(mw, "/").code == 200
    assert recording_app.calls == 1


def test_maintenance_from_a_state_file_path(recording_app: RecordingApp, tmp_path: Any) -> None:
    from tidegate import MaintenanceSwitch

    state = tmp_path / "maintenance.json"
    mw = TideGateMiddleware(recording_app, maintenance=str(state))
    assert call(mw, "/").code == 200
    MaintenanceSwitch(state, env_var=None).enable(retry_after=120)
    # Another process's write reaches this one within the poll interval (1 s by default).
    deadline = time.monotonic() + 3
    while call(mw, "/").code == 200:
        assert time.monotonic() < deadline, "the state file was never noticed"
        time.sleep(0.02)
    reply = call(mw, "/")
    assert reply.json()["reason"] == "maintenance"
    assert reply.headers["Retry-After"] == "120"


@pytest.mark.parametrize(
    ("environ", "bypassed"),
    [
        ({"REMOTE_ADDR": "10.1.2.3"}, True),
        ({"REMOTE_ADDR": "192.0.2.7"}, False),
        ({"REMOTE_ADDR": "192.0.2.7", "HTTP_X_FORWARDED_FOR": "10.1.2.3"}, False),
        ({"REMOTE_ADDR": "not an address"}, False),
        ({"REMOTE_ADDR": "192.0.2.7", "HTTP_X_MAINTENANCE_BYPASS": "s3cret-s3cret-s3cret"}, True),
        ({"REMOTE_ADDR": "192.0.2.7", "HTTP_X_MAINTENANCE_BYPASS": "s3cret-s3cret-s3creT"}, False),
        ({"REMOTE_ADDR": "192.0.2.7", "HTTP_X_MAINTENANCE_BYPASS": "\udcff"}, False),
    ],
)
def test_maintenance_bypass_without_trusted_proxies(
    recording_app: RecordingApp, environ: dict[str, str], bypassed: bool
) -> None:
    mw = TideGateMiddleware(
        recording_app,
        maintenance=maintenance_on(),
        bypass_networks=["10.0.0.0/8"],
        bypass_header="X-Maintenance-Bypass",
        bypass_token="s3cret-s3cret-s3cret",
    )
    assert call(mw, "/", **environ).code == (200 if bypassed else 503)


@pytest.mark.parametrize(
    ("forwarded", "bypassed"),
    [
        ("10.1.2.3", True),  # the client as our one trusted proxy saw it
        ("10.1.2.3, 192.0.2.9", False),  # a forged first entry; the proxy saw 192.0.2.9
        ("192.0.2.9, 10.1.2.3", True),
        ("", False),
        (" , ,", False),
    ],
)
def test_forwarded_for_is_read_only_through_trusted_proxies(
    recording_app: RecordingApp, forwarded: str, bypassed: bool
) -> None:
    mw = TideGateMiddleware(
        recording_app,
        maintenance=maintenance_on(),
        bypass_networks=["10.0.0.0/8"],
        trusted_proxies=1,
    )
    reply = call(mw, "/", REMOTE_ADDR="192.0.2.1", HTTP_X_FORWARDED_FOR=forwarded)
    assert reply.code == (200 if bypassed else 503)


def test_a_bypassed_request_is_still_gated(recording_app: RecordingApp) -> None:
    mw = TideGateMiddleware(
        recording_app, limit=1, maintenance=maintenance_on(), bypass_networks=["127.0.0.0/8"]
    )
    held = mw(environ_for("/stream"), start_response)
    reply = call(mw, "/")
    held.close()
    assert reply.code == 503 and reply.json()["reason"] == "overload"


def test_an_open_breaker_on_an_exempt_path_is_still_a_dependency_503() -> None:
    from tidegate import CircuitBreaker

    breaker = CircuitBreaker("cache", reset_timeout=5)
    breaker.open()

    def app(environ: Any, start_response: Any) -> Any:
        return breaker.call(lambda: [b"never"])

    mw = TideGateMiddleware(app, limit=1, exempt_paths=["/ping"])
    reply = call(mw, "/ping")
    assert reply.code == 503 and reply.json()["reason"] == "dependency"
    assert mw.gate.admitted == 0, "exempt paths take no permit"


def test_a_call_with_the_wrong_arguments_is_a_type_error(recording_app: RecordingApp) -> None:
    mw = TideGateMiddleware(recording_app, limit=1)
    with pytest.raises(TypeError, match="environ, start_response"):
        mw(environ_for("/"))  # type: ignore[call-arg]
    assert mw.gate.in_flight == 0
