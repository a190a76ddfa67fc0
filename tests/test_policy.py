"""The options, defined once (tidegate._options), and Policy: what every adapter is built from."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import RecordingApp, call
from flask import Flask

from tidegate import CapacityGate, HealthChecks, MaintenanceSwitch
from tidegate._options import DEFAULTS, FLASK_CONFIG_KEYS, OPTION_NAMES, Options
from tidegate._policy import Policy
from tidegate.flask import TideGate
from tidegate.responses import Rendered
from tidegate.wsgi import TideGateMiddleware

README = Path(__file__).resolve().parent.parent / "README.md"


def test_every_option_has_one_default_and_one_flask_key() -> None:
    assert tuple(Options.__annotations__) == OPTION_NAMES
    assert set(DEFAULTS) == set(OPTION_NAMES)
    assert {name: "TIDEGATE_" + name.upper() for name in OPTION_NAMES} == FLASK_CONFIG_KEYS


def test_the_readme_lists_every_option_with_its_default_and_key() -> None:
    rows = re.findall(r"^\| `(\w+)` \| `([^`]*)` \| `(TIDEGATE_\w+)` \|", README.read_text(), re.M)
    assert [name for name, _, _ in rows] == list(OPTION_NAMES)
    for name, default, key in rows:
        assert key == FLASK_CONFIG_KEYS[name]
        assert default == repr(DEFAULTS[name]).replace("'", '"'), name  # type: ignore[literal-required]


@pytest.mark.parametrize("adapter", ["TideGateMiddleware", "TideGate"])
def test_help_shows_every_option_keyword_only_with_its_default(adapter: str) -> None:
    cls: Any = TideGateMiddleware if adapter == "TideGateMiddleware" else TideGate
    parameters = inspect.signature(cls).parameters
    options = {n: p for n, p in parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert list(options) == list(OPTION_NAMES)
    assert {n: p.default for n, p in options.items()} == DEFAULTS


@pytest.mark.parametrize(
    "build",
    [
        lambda: TideGateMiddleware(RecordingApp(), limt=8),
        lambda: TideGate(Flask(__name__), limt=8),
        lambda: Policy("Policy", limt=8),
    ],
    ids=["middleware", "flask", "policy"],
)
def test_an_unknown_option_is_a_type_error_naming_it(build: Any) -> None:
    with pytest.raises(TypeError, match=r": unknown option 'limt'$"):
        build()


def test_flask_config_keys_feed_the_same_options() -> None:
    app = Flask(__name__)
    app.config["TIDEGATE_LIMIT"] = 3
    app.config["TIDEGATE_RETRY_AFTER"] = 7
    app.config["TIDEGATE_MAINTENANCE"] = False
    TideGate(app, retry_after=9)
    policy = app.extensions["tidegate"].policy
    assert policy.gate.limit == 3
    assert policy.retry_after == 9, "arguments win over config"
    assert policy.maintenance is None


def test_core_config_routes_health_paths_to_the_health_answer_and_exempts_the_rest() -> None:
    health = HealthChecks()
    policy = Policy("Policy", limit=2, health=health, exempt_paths=["/static", "/health"])
    config = policy.core_config()
    assert config["gate"] is policy.gate and config["maintenance"] is policy.maintenance
    routes = config["routes"]
    assert routes["/static"] is None
    assert routes["/health"] == policy.health_response
    assert routes["/health/live"] == policy.health_response
    answer = routes["/health/live"]("/health/live")
    assert isinstance(answer, Rendered) and answer.status == "200 OK"
    assert routes["/health"]("/somewhere-else") is None


def test_the_overload_503_is_rendered_ahead_for_every_jittered_retry_after() -> None:
    policy = Policy("Policy", limit=1, retry_after=2, retry_jitter=3)
    overload = policy.core_config()["overload"]
    assert [(j.retry_after, h.retry_after) for j, h in overload] == [(s, s) for s in range(2, 6)]
    for as_json, as_html in overload:
        assert (as_json.reason, as_html.reason) == ("overload", "overload")
        assert dict(as_json.headers)["Content-Type"] == "application/json"
        assert dict(as_html.headers)["Content-Type"].startswith("text/html")
        assert dict(as_json.headers)["Retry-After"] == str(as_json.retry_after)


def test_the_one_jitter_picker_spreads_retry_after_over_the_whole_range() -> None:
    gate = CapacityGate(1)
    held = gate.try_acquire()
    mw = TideGateMiddleware(RecordingApp(), gate=gate, retry_after=1, retry_jitter=4)
    app = Flask(__name__)
    app.get("/")(lambda: "ok")
    TideGate(app, gate=gate, retry_after=1, retry_jitter=4, maintenance=False)
    client = app.test_client()
    seen_wsgi = {call(mw, "/").headers["Retry-After"] for _ in range(200)}
    seen_flask = {client.get("/").headers["Retry-After"] for _ in range(200)}
    assert held is not None
    held.release()
    assert seen_wsgi == seen_flask == {"1", "2", "3", "4", "5"}


def test_maintenance_answers_carry_their_reason_and_retry_after() -> None:
    switch = MaintenanceSwitch(env_var=None)
    switch.enable(message="Upgrading", retry_after=42, local=True)
    policy = Policy("Policy", maintenance=switch)
    rendered = policy.maintenance_response({"HTTP_ACCEPT": "text/html"})
    assert rendered is not None
    assert (rendered.reason, rendered.retry_after) == ("maintenance", 42)
    assert dict(rendered.headers)["Retry-After"] == "42"
    assert b"Upgrading" in rendered.body
    switch.disable(local=True)
    assert policy.maintenance_response({}) is None
