"""Process drain: ``drain_process()`` makes readiness 503 with reason ``draining`` for the whole
process, through every ``MaintenanceSwitch`` and without one, while requests are still served."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from conftest import RecordingApp, call, hammer
from flask import Flask

from tidegate import (
    HealthChecks,
    MaintenanceSwitch,
    drain_process,
    process_draining,
    undrain_process,
)
from tidegate.flask import TideGate
from tidegate.wsgi import TideGateMiddleware


@pytest.fixture(autouse=True)
def undrained() -> Iterator[None]:
    assert not process_draining(), "an earlier test left the process draining"
    yield
    undrain_process()


def test_drain_and_undrain_round_trip() -> None:
    assert process_draining() is False
    drain_process()
    drain_process()
    assert process_draining() is True
    undrain_process()
    assert process_draining() is False
    undrain_process()
    assert process_draining() is False


def test_readiness_fails_with_reason_draining_without_any_switch() -> None:
    health = HealthChecks(cache_ttl=0)
    ran: list[str] = []
    health.add("db", lambda: ran.append("db"))
    assert health.readiness()[0] == 200
    drain_process()
    code, body = health.readiness()
    assert code == 503
    assert (body["status"], body["reason"], body["draining"]) == ("unavailable", "draining", True)
    assert body["retry_after"] == 1
    assert body["checks"] == {}, "checks are not run while draining"
    undrain_process()
    assert health.readiness()[0] == 200
    assert ran == ["db", "db"]


def test_every_switch_reports_the_process_drain_and_it_outranks_maintenance(
    tmp_path: object,
) -> None:
    plain = MaintenanceSwitch(env_var=None)
    shared = MaintenanceSwitch(f"{tmp_path}/state.json", env_var=None)
    plain.enable(message="upgrading")
    drain_process()
    for switch in (plain, shared):
        assert switch.draining
        assert switch.status().draining
    assert plain.active and not shared.active, "a drain is not maintenance"
    code, body = HealthChecks().readiness(plain)
    assert (code, body["reason"], body["maintenance"]) == (503, "draining", True)
    # Undraining a switch leaves the process drain alone.
    plain.undrain(local=True)
    shared.undrain(local=True)
    assert plain.draining and shared.draining
    undrain_process()
    assert not plain.draining and not shared.draining
    assert HealthChecks().readiness(plain)[1]["status"] == "maintenance"


def test_the_middleware_keeps_serving_while_readiness_fails(recording_app: RecordingApp) -> None:
    app = TideGateMiddleware(recording_app, limit=2, health=HealthChecks())
    drain_process()
    ready = call(app, "/health")
    assert ready.code == 503
    assert ready.json()["reason"] == "draining"
    # The default maintenance switch says when to come back: its default_retry_after.
    assert ready.headers["Retry-After"] == str(app.maintenance.default_retry_after) == "60"
    assert ready.headers["Cache-Control"] == "no-store"
    assert call(app, "/health/live").code == 200
    for _ in range(3):
        served = call(app, "/")
        assert served.code == 200
    assert recording_app.calls == 3
    assert app.gate.in_flight == 0
    undrain_process()
    assert call(app, "/health").code == 200


def test_the_middleware_still_sheds_and_serves_maintenance_while_draining(
    recording_app: RecordingApp,
) -> None:
    switch = MaintenanceSwitch(env_var=None)
    app = TideGateMiddleware(recording_app, limit=1, maintenance=switch, health=HealthChecks())
    drain_process()
    held = app.gate.try_acquire()
    assert held is not None
    assert call(app, "/").json()["reason"] == "overload"
    held.release()
    switch.enable(message="back soon")
    assert call(app, "/").json()["reason"] == "maintenance"
    assert call(app, "/health").json()["reason"] == "draining"


def test_flask_keeps_serving_while_readiness_fails() -> None:
    flask_app = Flask(__name__)

    @flask_app.get("/")
    def index() -> str:
        return "hello"

    TideGate(flask_app, limit=2, health=HealthChecks())
    client = flask_app.test_client()
    drain_process()
    ready = client.get("/health")
    assert ready.status_code == 503
    assert ready.get_json()["reason"] == "draining"
    assert client.get("/").get_data() == b"hello"
    undrain_process()
    assert client.get("/health").status_code == 200


def test_once_drained_every_thread_sees_it() -> None:
    health = HealthChecks(cache_ttl=0)
    drained = threading.Event()

    def probe(thread: int, turn: int) -> int:
        assert drained.wait(10)
        return health.readiness()[0]

    def drain() -> None:
        drain_process()
        drained.set()

    # Every thread is running before the drain: what it sees was changed by another thread.
    seen = hammer(probe, threads=32, times=50, during=drain).results
    assert seen == [503] * 32 * 50
