"""The pytest plugin: generated test files use the fixtures against a Flask app and a WSGI
middleware, and the tests after them see the apps as they were."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import RecordingApp, call
from flask import Flask
from starlette.applications import Starlette
from starlette.middleware import Middleware

from tidegate import CapacityGate, MaintenanceSwitch, process_draining
from tidegate.asgi import TideGateMiddleware as AsgiMiddleware
from tidegate.pytest_plugin import CapacityFixture, MaintenanceFixture
from tidegate.wsgi import TideGateMiddleware

# The plugin is also autoloaded through its entry point: naming it here must be harmless.
pytest_plugins = ["pytester", "tidegate.pytest_plugin"]

APPS = """
from flask import Flask
from starlette.applications import Starlette
from starlette.middleware import Middleware

from tidegate import HealthChecks, MaintenanceSwitch
from tidegate.flask import TideGate
from tidegate.wsgi import TideGateMiddleware

STATE = {state!r}

flask_app = Flask(__name__)


@flask_app.get("/")
def index():
    return "hello"


TideGate(flask_app, limit=2, maintenance=MaintenanceSwitch(env_var=None))


def hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


middleware = TideGateMiddleware(
    hello, limit=3, maintenance=STATE, health=HealthChecks()
)
observer = MaintenanceSwitch(STATE, env_var=None, poll_interval=0)


def get(app, path="/"):
    seen = []
    body = b"".join(app({{"REQUEST_METHOD": "GET", "PATH_INFO": path}},
                        lambda status, headers, exc_info=None: seen.extend([status, headers])))
    status, headers = seen
    return int(status.split()[0]), dict(headers), body
"""

USES = """
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

from apps import STATE, flask_app, get, middleware, observer


def test_flask_in_maintenance(tidegate_maintenance):
    switch = tidegate_maintenance(flask_app, message="Back at noon", retry_after=120)
    assert switch is flask_app.extensions["tidegate"].maintenance
    reply = flask_app.test_client().get("/")
    assert reply.status_code == 503
    assert reply.headers["Retry-After"] == "120"
    assert reply.get_json()["reason"] == "maintenance"
    assert reply.get_json()["message"] == "Back at noon"


def test_flask_at_capacity(tidegate_at_capacity):
    gate = tidegate_at_capacity(flask_app)
    assert gate.in_flight == gate.limit == 2
    reply = flask_app.test_client().get("/")
    assert reply.status_code == 503
    assert reply.get_json()["reason"] == "overload"


def test_middleware_in_maintenance_leaves_the_state_file_alone(tidegate_maintenance):
    before = Path(STATE).read_bytes()
    until = datetime.now(timezone.utc) + timedelta(hours=1)
    tidegate_maintenance(middleware, message="upgrading", until=until)
    status, headers, body = get(middleware)
    assert status == 503
    assert json.loads(body)["message"] == "upgrading"
    assert 3590 <= int(headers["Retry-After"]) <= 3600
    assert get(middleware, "/health")[0] == 200, "maintenance is not a drain"
    assert Path(STATE).read_bytes() == before
    assert not observer.active, "another switch on the file saw it"


def test_middleware_at_capacity_and_both_fixtures_at_once(
    tidegate_at_capacity, tidegate_maintenance
):
    tidegate_at_capacity(middleware)
    status, _, body = get(middleware)
    assert (status, json.loads(body)["reason"]) == (503, "overload")
    tidegate_maintenance(middleware.maintenance)
    assert json.loads(get(middleware)[2])["reason"] == "maintenance"


def test_a_failing_test_is_undone_too(tidegate_maintenance, tidegate_at_capacity):
    tidegate_maintenance(flask_app)
    tidegate_at_capacity(middleware)
    raise AssertionError("on purpose")


def test_draining(tidegate_draining):
    status, _, body = get(middleware, "/health")
    assert (status, json.loads(body)["reason"]) == (503, "draining")
    assert get(middleware)[0] == 200


def test_afterwards_everything_is_as_before():
    assert flask_app.test_client().get("/").status_code == 200
    assert flask_app.extensions["tidegate"].gate.in_flight == 0
    assert get(middleware) == (200, {{"Content-Type": "text/plain"}}, b"hello")
    assert middleware.gate.in_flight == 0
    assert not middleware.maintenance.active
    assert get(middleware, "/health")[0] == 200
    assert Path(STATE).read_text() == {file_text!r}
"""

FILE_TEXT = '{"active": false, "message": "left as it was"}'


@pytest.fixture
def generated(pytester: pytest.Pytester) -> pytest.Pytester:
    state = pytester.path / "state.json"
    state.write_text(FILE_TEXT)
    pytester.makepyfile(
        apps=APPS.format(state=str(state)),
        test_uses=USES.format(file_text=FILE_TEXT),
    )
    return pytester


def assert_ran_as_expected(result: pytest.RunResult) -> None:
    result.assert_outcomes(passed=6, failed=1)
    result.stdout.fnmatch_lines(["FAILED *::test_a_failing_test_is_undone_too - AssertionError*"])


@pytest.mark.parametrize(
    "args",
    [[], ["-p", "tidegate.pytest_plugin"], ["-p", "tidegate"]],
    ids=["autoloaded", "-p module", "-p entry point"],
)
def test_generated_tests_use_the_fixtures_and_leave_no_trace(
    generated: pytest.Pytester, args: list[str]
) -> None:
    assert_ran_as_expected(generated.runpytest(*args))


@pytest.mark.parametrize("plugin", ["tidegate.pytest_plugin", "tidegate"])
def test_without_autoloading_it_loads_with_p(
    generated: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, plugin: str
) -> None:
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert_ran_as_expected(generated.runpytest("-p", plugin))
    unloaded = generated.runpytest()
    unloaded.stdout.fnmatch_lines(["*fixture 'tidegate_maintenance' not found*"])


README = Path(__file__).resolve().parent.parent / "README.md"


def readme_python(heading: str) -> list[str]:
    """The ```python blocks of the README section under ``heading``, in order."""
    section = README.read_text(encoding="utf-8").split(f"\n{heading}\n", 1)[1]
    section = re.split(r"\n##+ ", section, maxsplit=1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


def test_the_readme_pytest_example_runs_on_the_readme_flask_app(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MAINTENANCE_MODE", raising=False)
    quickstart = readme_python("## Flask")[0]
    assert "TideGate(app, limit=16)" in quickstart
    files = {}
    for block in readme_python("## Testing your app: the pytest plugin"):
        name, _, source = block.partition("\n")
        assert name.startswith("# ") and name.endswith(".py"), "each block names its file"
        files[name[2:-3]] = source
    assert set(files) == {"conftest", "test_unavailable"}
    pytester.makepyfile(myapp=quickstart, **files)
    pytester.runpytest_subprocess().assert_outcomes(passed=3)


def test_a_previous_local_maintenance_comes_back_exactly(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        from tidegate import MaintenanceSwitch

        switch = MaintenanceSwitch(env_var=None)
        switch.enable(message="earlier", retry_after=33)
        before = repr(switch.status())


        def test_twice(tidegate_maintenance):
            tidegate_maintenance(switch, message="first")
            tidegate_maintenance(switch, message="second", retry_after=1)
            assert switch.status().message == "second"


        def test_after():
            assert repr(switch.status()) == before
            assert switch.status().retry_after.delay() == 33
        """
    )
    pytester.runpytest().assert_outcomes(passed=2)


ASGI_APPS = """
import asyncio

import httpx
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from tidegate import MaintenanceSwitch
from tidegate.asgi import TideGateMiddleware


async def hello(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


class Outer:
    \"""Someone else's middleware around tidegate's: it keeps what it wraps as .app.\"""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        await self.app(scope, receive, send)


def switch():
    return MaintenanceSwitch(env_var=None)


middleware = TideGateMiddleware(hello, limit=2, maintenance=switch())
wrapped = Outer(TideGateMiddleware(hello, limit=3, maintenance=switch()))
starlette_app = Starlette(
    routes=[Route("/", lambda request: PlainTextResponse("hello"))],
    middleware=[Middleware(TideGateMiddleware, limit=4, maintenance=switch())],
)
fastapi_app = FastAPI()
fastapi_app.add_middleware(TideGateMiddleware, limit=5, maintenance=switch())
fastapi_app.get("/", response_class=PlainTextResponse)(lambda: "hello")

TARGETS = {"middleware": middleware, "wrapped": wrapped, "starlette": starlette_app,
           "fastapi": fastapi_app}


def get(app):
    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get("/")

    reply = asyncio.run(go())
    return reply.status_code, reply.headers, reply.text
"""

ASGI_USES = """
import json

import pytest

from asgi_targets import TARGETS, get

NAMES = sorted(TARGETS)


@pytest.mark.parametrize("name", NAMES)
def test_in_maintenance(tidegate_maintenance, name):
    switch = tidegate_maintenance(TARGETS[name], message="Back soon", retry_after=60)
    status, headers, body = get(TARGETS[name])
    assert (status, headers["Retry-After"]) == (503, "60")
    assert json.loads(body)["message"] == "Back soon"
    assert switch.active


@pytest.mark.parametrize("name", NAMES)
def test_at_capacity(tidegate_at_capacity, name):
    gate = tidegate_at_capacity(TARGETS[name])
    assert gate.in_flight == gate.limit
    status, headers, body = get(TARGETS[name])
    assert (status, json.loads(body)["reason"]) == (503, "overload")
    assert headers["Retry-After"] == "1"


@pytest.mark.parametrize("name", NAMES)
def test_afterwards_everything_is_as_before(name):
    assert get(TARGETS[name])[::2] == (200, "hello")
"""


def test_asgi_targets_middlewares_and_the_apps_they_wrap(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(asgi_targets=ASGI_APPS, test_asgi_targets=ASGI_USES)
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=12)


# -- the fixtures in this session, and what they refuse ----------------------------------------


def test_targets_are_found_on_switches_middlewares_and_flask_apps(
    tidegate_maintenance: MaintenanceFixture,
    tidegate_at_capacity: CapacityFixture,
    recording_app: RecordingApp,
) -> None:
    gate = CapacityGate(2)
    switch = MaintenanceSwitch(env_var=None)
    assert tidegate_at_capacity(gate) is gate
    assert tidegate_maintenance(switch) is switch
    middleware = TideGateMiddleware(recording_app, gate=CapacityGate(1), maintenance=switch)
    assert tidegate_at_capacity(middleware) is middleware.gate
    assert call(middleware, "/").json()["reason"] == "maintenance"


def test_a_target_without_the_part_is_a_clear_error(
    tidegate_maintenance: MaintenanceFixture,
    tidegate_at_capacity: CapacityFixture,
    recording_app: RecordingApp,
) -> None:
    bare = TideGateMiddleware(recording_app, maintenance=False)
    with pytest.raises(
        ValueError, match=r"^target: .* has no maintenance switch; .*maintenance=False"
    ):
        tidegate_maintenance(bare)
    with pytest.raises(ValueError, match=r"^target: .* has no capacity gate; .*limit= or gate="):
        tidegate_at_capacity(bare)
    with pytest.raises(TypeError, match=r"^target: .* has no tidegate extension"):
        tidegate_maintenance(Flask(__name__))
    with pytest.raises(TypeError, match=re.escape("target: expected a CapacityGate")):
        tidegate_at_capacity(MaintenanceSwitch(env_var=None))
    with pytest.raises(TypeError, match=re.escape("target: expected a MaintenanceSwitch")):
        tidegate_maintenance(Starlette(), message="no tidegate in its middleware")
    with pytest.raises(ValueError, match=r"^target: .* has no capacity gate; .*limit= or gate="):
        tidegate_at_capacity(Starlette(middleware=[Middleware(AsgiMiddleware)]))
    with pytest.raises(TypeError, match="message"):
        tidegate_maintenance(MaintenanceSwitch(env_var=None), message=3)  # type: ignore[arg-type]


def test_the_draining_fixture_keeps_a_drain_that_was_there(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        from tidegate import drain_process, process_draining, undrain_process


        def test_drained(tidegate_draining):
            assert process_draining()


        def test_then_not():
            assert not process_draining()
            drain_process()


        def test_drained_again(tidegate_draining):
            assert process_draining()


        def test_still_drained():
            assert process_draining()
            undrain_process()
        """
    )
    pytester.runpytest().assert_outcomes(passed=4)
    assert not process_draining()


def test_at_capacity_fills_a_limit_that_sets_itself(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        from tidegate.wsgi import TideGateMiddleware

        def app(environ, start_response):
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok"]

        wrapped = TideGateMiddleware(app, limit="auto")

        def test_full(tidegate_at_capacity):
            gate = tidegate_at_capacity(wrapped)
            assert gate.in_flight == gate.limit
            assert gate.try_acquire() is None

        def test_after():
            assert wrapped.gate.in_flight == 0
        """
    )
    pytester.runpytest("-p", "tidegate.pytest_plugin").assert_outcomes(passed=2)
