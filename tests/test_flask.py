"""The Flask extension: hooks that own their permit, config keys, exemptions, 503 handlers."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import hammer
from flask import Blueprint, Flask, Response, abort, stream_with_context

from tidegate import CapacityGate
from tidegate.flask import TideGate, TideGateState, TideGateUnavailable


def make_app(**config: Any) -> Flask:
    app = Flask("tidegate_test")
    app.config.update(config)

    @app.get("/")
    def index() -> str:
        return "hello"

    @app.get("/stream")
    def stream() -> Response:
        def chunks() -> Iterator[str]:
            yield "a"
            yield "b"

        return Response(stream_with_context(chunks()))

    return app


def state(app: Flask) -> TideGateState:
    found: TideGateState = app.extensions["tidegate"]
    return found


def test_admits_and_releases() -> None:
    app = make_app()
    TideGate(app, limit=2)
    client = app.test_client()
    assert client.get("/").text == "hello"
    assert state(app).gate.in_flight == 0
    assert state(app).gate.admitted == 1


def test_sheds_with_the_full_503() -> None:
    app = make_app()
    TideGate(app, limit=1)
    held = state(app).gate.try_acquire()
    reply = app.test_client().get("/")
    assert reply.status_code == 503
    assert reply.headers["Retry-After"] == "1"
    assert reply.headers["Cache-Control"] == "no-store"
    assert reply.json is not None and reply.json["reason"] == "overload"
    assert int(reply.headers["Content-Length"]) == len(reply.data)
    held.release()
    assert state(app).gate.in_flight == 0, "a rejected request released nothing"
    assert app.test_client().get("/").status_code == 200


def test_rejected_requests_release_nothing_under_overload() -> None:
    """The seed's bug: rejected requests decremented the counter in teardown, so the gate
    melted. Here the slot held outside stays held through any number of rejections."""
    app = make_app()
    TideGate(app, limit=1)
    held = state(app).gate.try_acquire()
    client = app.test_client()
    for _ in range(50):
        assert client.get("/").status_code == 503
    assert state(app).gate.in_flight == 1
    held.release()


def test_a_request_short_circuited_by_an_earlier_hook_releases_nothing() -> None:
    app = make_app()
    TideGate(app, limit=1)

    def deny() -> tuple[str, int]:
        return "denied", 403

    # Runs before tidegate's hook, so tidegate never takes a permit for this request.
    app.before_request_funcs[None].insert(0, deny)
    held = state(app).gate.try_acquire()
    assert app.test_client().get("/").status_code == 403
    assert state(app).gate.in_flight == 1
    held.release()
    assert state(app).gate.in_flight == 0


def test_a_request_short_circuited_by_a_later_hook_gives_its_permit_back() -> None:
    app = make_app()
    TideGate(app, limit=1)

    @app.before_request
    def deny() -> tuple[str, int]:
        return "denied", 403

    for _ in range(5):
        assert app.test_client().get("/").status_code == 403
    assert state(app).gate.in_flight == 0


def test_blueprint_hooks_and_url_value_preprocessors_still_run_in_flasks_order() -> None:
    app = make_app()
    TideGate(app, limit=1, maintenance=False)
    ran: list[str] = []
    shop = Blueprint("shop", __name__)

    @shop.url_value_preprocessor
    def pull(endpoint: str | None, values: dict[str, Any] | None) -> None:
        ran.append("preprocessor")

    @shop.before_request
    def shop_hook() -> None:
        ran.append(f"hook, {state(app).gate.in_flight} in flight")

    @shop.get("/item")
    def item() -> str:
        return "item"

    app.register_blueprint(shop, url_prefix="/shop")
    client = app.test_client()
    assert client.get("/shop/item").data == b"item"
    assert ran == ["preprocessor", "hook, 1 in flight"]
    assert state(app).gate.in_flight == 0
    held = state(app).gate.try_acquire()
    assert client.get("/shop/item").status_code == 503
    # URL value preprocessors come before every before_request hook, tidegate's too.
    assert ran[2:] == ["preprocessor"], "a shed request runs no later hook"
    held.release()


def test_an_apps_own_preprocess_request_still_runs() -> None:
    calls: list[int] = []

    class Counting(Flask):
        def preprocess_request(self) -> Any:
            calls.append(1)
            return super().preprocess_request()

    app = Counting("counting")
    app.get("/")(lambda: "ok")
    TideGate(app, limit=1, maintenance=False)
    held = state(app).gate.try_acquire()
    assert app.test_client().get("/").status_code == 503
    held.release()
    assert app.test_client().get("/").status_code == 200
    assert len(calls) == 2
    assert state(app).gate.in_flight == 0


def test_after_request_hooks_run_while_the_permit_is_held() -> None:
    app = make_app()
    TideGate(app, limit=1, maintenance=False)
    seen: list[int] = []

    @app.after_request
    def look(response: Response) -> Response:
        seen.append(state(app).gate.in_flight)
        return response

    assert app.test_client().get("/").status_code == 200
    assert seen == [1]
    assert state(app).gate.in_flight == 0


def test_a_request_context_that_makes_no_response_gives_its_permit_back_when_dropped() -> None:
    app = make_app()
    TideGate(app, limit=1, maintenance=False)
    with app.test_request_context("/"):
        assert app.preprocess_request() is None
        assert state(app).gate.in_flight == 1
        refused = app.preprocess_request()
        assert refused is not None and refused.status_code == 503
    gc.collect()
    assert state(app).gate.in_flight == 0


def test_a_view_that_raises_gives_its_permit_back() -> None:
    app = make_app()
    TideGate(app, limit=1)

    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("boom")

    with app.test_client().get("/boom") as reply:
        assert reply.status_code == 500
    assert state(app).gate.in_flight == 0


def test_a_finished_response_gives_its_permit_back_before_its_body_is_closed() -> None:
    app = make_app()
    TideGate(app, limit=1, maintenance=False)
    client = app.test_client()
    first = client.get("/")  # held, never closed: as test suites do
    assert state(app).gate.in_flight == 0
    second = client.get("/")
    assert (first.status_code, second.status_code) == (200, 200)


def test_an_exception_out_of_flask_gives_the_permit_back_without_the_collector() -> None:
    app = make_app(PROPAGATE_EXCEPTIONS=True)
    TideGate(app, limit=1, maintenance=False)

    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("boom")

    client = app.test_client()
    gc.disable()  # the exception's traceback cycle must not be what gives the permit back
    try:
        with pytest.raises(RuntimeError):
            client.get("/boom")
        assert state(app).gate.in_flight == 0
        assert client.get("/").status_code == 200
    finally:
        gc.enable()


def test_a_plain_generator_stream_holds_its_permit_until_closed() -> None:
    app = make_app()
    TideGate(app, limit=1, maintenance=False)

    @app.get("/plain")
    def plain() -> Response:
        return Response(iter(["a", "b"]))  # no stream_with_context: teardown runs first

    client = app.test_client()
    reply = client.get("/plain", buffered=False)
    assert state(app).gate.in_flight == 1
    assert client.get("/").status_code == 503
    reply.close()
    assert state(app).gate.in_flight == 0


def test_a_streamed_response_holds_its_permit_until_closed() -> None:
    app = make_app()
    TideGate(app, limit=1)
    client = app.test_client()
    reply = client.get("/stream", buffered=False)
    assert state(app).gate.in_flight == 1, "teardown ran, but the body is still open"
    assert client.get("/").status_code == 503
    assert b"".join(reply.response) == b"ab"  # type: ignore[arg-type]
    reply.close()
    assert state(app).gate.in_flight == 0
    assert client.get("/").status_code == 200


def test_exempt_views_bare_and_with_arguments() -> None:
    app = make_app()
    ext = TideGate(app, limit=1)

    @app.get("/free")
    @ext.exempt
    def free() -> str:
        return "free"

    @app.get("/ungated")
    @ext.exempt(maintenance=False)
    def ungated() -> str:
        return "ungated"

    held = state(app).gate.try_acquire()
    client = app.test_client()
    assert client.get("/free").text == "free"
    assert client.get("/ungated").text == "ungated"
    assert client.get("/").status_code == 503
    held.release()
    assert state(app).gate.in_flight == 0


def test_config_keys_and_constructor_precedence() -> None:
    app = make_app(TIDEGATE_LIMIT=3, TIDEGATE_RETRY_AFTER=7)
    TideGate(app, retry_after=9)
    assert state(app).gate.limit == 3
    held = [state(app).gate.try_acquire() for _ in range(3)]
    reply = app.test_client().get("/")
    assert reply.headers["Retry-After"] == "9", "constructor arguments win over config"
    for permit in held:
        assert permit is not None
        permit.release()


def test_bad_config_names_the_parameter() -> None:
    with pytest.raises(ValueError, match="limit"):
        TideGate(make_app(TIDEGATE_LIMIT=0))
    with pytest.raises(TypeError, match="limitt"):
        TideGate(limitt=3)


def test_double_registration_raises() -> None:
    app = make_app()
    ext = TideGate(app, limit=1)
    with pytest.raises(RuntimeError, match="already registered"):
        ext.init_app(app)
    with pytest.raises(RuntimeError, match="already registered"):
        TideGate(app)
    app.extensions.clear()
    with pytest.raises(RuntimeError, match="already registered"):
        TideGate(app)


def test_one_extension_serves_several_apps_with_their_own_gates() -> None:
    ext = TideGate(limit=1)
    first, second = make_app(), make_app()
    ext.init_app(first)
    ext.init_app(second)
    held = state(first).gate.try_acquire()
    assert first.test_client().get("/").status_code == 503
    assert second.test_client().get("/").status_code == 200
    held.release()
    assert state(first).extension is state(second).extension is ext
    assert state(first).gate is not state(second).gate


def test_a_shared_gate_can_be_passed_in() -> None:
    gate = CapacityGate(1)
    app = make_app()
    TideGate(app, gate=gate)
    held = gate.try_acquire()
    assert app.test_client().get("/").status_code == 503
    held.release()


def test_retry_after_survives_the_apps_own_503_handler() -> None:
    app = make_app()
    TideGate(app, limit=1, retry_after=42)
    seen: list[Any] = []

    @app.errorhandler(503)
    def custom(error: Any) -> tuple[str, int]:
        seen.append(error)
        return "our own busy page", 503

    held = state(app).gate.try_acquire()
    reply = app.test_client().get("/")
    held.release()
    assert reply.status_code == 503
    assert reply.text == "our own busy page"
    assert reply.headers["Retry-After"] == "42"
    assert reply.headers["Cache-Control"] == "no-store"
    assert isinstance(seen[0], TideGateUnavailable) and seen[0].reason == "overload"


def test_the_apps_own_503s_are_left_alone() -> None:
    app = make_app()
    TideGate(app, limit=1)

    @app.get("/down")
    def down() -> str:
        abort(503)

    with app.test_client().get("/down") as reply:
        assert reply.status_code == 503
        assert "Retry-After" not in reply.headers
    assert state(app).gate.in_flight == 0


def test_html_for_browsers_and_head_without_body() -> None:
    app = make_app()
    TideGate(app, limit=1)
    held = state(app).gate.try_acquire()
    client = app.test_client()
    page = client.get("/", headers={"Accept": "text/html"})
    head = client.head("/")
    held.release()
    assert page.headers["Content-Type"].startswith("text/html")
    assert b"<!doctype html>" in page.data
    assert head.status_code == 503 and head.data == b""
    assert head.headers["Retry-After"] == "1"


def test_many_threads_never_push_a_view_past_the_limit() -> None:
    app = Flask("threads")
    limit, threads, rounds = 3, 32, 40
    inside = 0
    worst = 0
    lock = threading.Lock()

    @app.get("/")
    def index() -> str:
        nonlocal inside, worst
        with lock:
            inside += 1
            worst = max(worst, inside)
        with lock:
            inside -= 1
        return "ok"

    TideGate(app, limit=limit)
    clients = [app.test_client() for _ in range(threads)]
    codes = hammer(
        lambda thread, turn: clients[thread].get("/").status_code, threads=threads, times=rounds
    ).results
    gate = state(app).gate
    assert worst <= limit
    assert gate.in_flight == 0
    assert gate.admitted == codes.count(200)
    assert gate.admitted + gate.rejected == threads * rounds


def test_serves_health_endpoints_ahead_of_the_gate() -> None:
    from tidegate import HealthChecks

    health = HealthChecks()
    health.add("db", lambda: True)
    app = make_app()
    TideGate(app, limit=1, health=health)
    held = state(app).gate.try_acquire()
    client = app.test_client()
    ready = client.get("/health")
    assert ready.status_code == 200
    assert ready.json is not None and ready.json["status"] == "ready"
    assert client.get("/health/live").json == {"status": "alive"}
    held.release()


def test_an_open_breaker_in_a_view_becomes_a_dependency_503() -> None:
    from tidegate import CircuitBreaker

    breaker = CircuitBreaker("api", failure_threshold=1, reset_timeout=5)
    breaker.open()
    app = make_app()
    TideGate(app, limit=1)

    @app.get("/remote")
    def remote() -> str:
        return breaker.call(lambda: "fresh")

    with app.test_client().get("/remote") as reply:
        assert reply.status_code == 503
        assert reply.json is not None and reply.json["reason"] == "dependency"
        assert 1 <= int(reply.headers["Retry-After"]) <= 5
    assert state(app).gate.in_flight == 0


def test_maintenance_mode_works_without_a_maintenance_option(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MAINTENANCE_MODE", "true")
    app = make_app()
    TideGate(app, limit=16)
    reply = app.test_client().get("/")
    assert reply.status_code == 503
    assert reply.json is not None and reply.json["reason"] == "maintenance"
    assert state(app).maintenance.status().source == "env"


@pytest.mark.parametrize("how", ["argument", "config"])
def test_maintenance_false_means_no_switch_at_all(
    monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    monkeypatch.setenv("MAINTENANCE_MODE", "true")
    if how == "argument":
        app = make_app()
        TideGate(app, limit=16, maintenance=False)
    else:
        app = make_app(TIDEGATE_MAINTENANCE=False)
        TideGate(app, limit=16)
    assert state(app).maintenance is None
    assert app.test_client().get("/").text == "hello"


def test_maintenance_page_exempt_views_and_bypass() -> None:
    from tidegate import MaintenanceSwitch

    switch = MaintenanceSwitch(env_var=None)
    switch.enable(message="Back soon", retry_after=300)
    app = make_app()
    ext = TideGate(app, maintenance=switch, bypass_networks=["10.0.0.0/8"])

    @app.get("/status")
    @ext.exempt
    def status() -> str:
        return "up"

    @app.get("/gated-only")
    @ext.exempt(maintenance=False)
    def gated_only() -> str:
        return "not gated"

    client = app.test_client()
    reply = client.get("/")
    assert reply.status_code == 503
    assert reply.json is not None and reply.json["reason"] == "maintenance"
    assert reply.json["message"] == "Back soon"
    assert reply.headers["Retry-After"] == "300"
    assert client.get("/status").text == "up"
    assert client.get("/gated-only").status_code == 503
    assert client.get("/", environ_base={"REMOTE_ADDR": "10.9.9.9"}).text == "hello"
    forged = client.get("/", headers={"X-Forwarded-For": "10.9.9.9"})
    assert forged.status_code == 503, "no proxy is trusted, so the header is ignored"
    switch.disable()
    assert client.get("/").text == "hello"
