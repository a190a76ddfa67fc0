"""Security review, as tests: who may pass through maintenance, what reaches the page, what
health bodies tell, how the state file is written, and where the bypass token never shows up.
docs/security.md explains each decision."""

from __future__ import annotations

import hmac
import json
import logging
import os
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import BAD_STATUS_URLS, GOOD_STATUS_URLS, HOSTILE, RecordingApp, assert_inert, call

from tidegate import HealthChecks, MaintenanceSwitch
from tidegate.wsgi import TideGateMiddleware

TOKEN = "k3y-0f-the-0ps-team-9f2b"
HEADER = "X-Maintenance-Bypass"
ENVIRON_KEY = "HTTP_X_MAINTENANCE_BYPASS"
INSIDE = "10.0.0.0/8"


def maintenance_on(message: str | None = None) -> MaintenanceSwitch:
    switch = MaintenanceSwitch(env_var=None)
    switch.enable(message=message)
    return switch


def middleware(**options: Any) -> TideGateMiddleware:
    return TideGateMiddleware(RecordingApp(), maintenance=maintenance_on(), **options)


def passes(mw: TideGateMiddleware, **environ: Any) -> bool:
    """Whether the request got through maintenance (200) rather than the 503."""
    code = call(mw, "/", **environ).code
    assert code in (200, 503)
    return code == 200


# -- maintenance bypass by network ---------------------------------------------------------


@pytest.mark.parametrize(
    "forged",
    ["10.1.2.3", "10.1.2.3, 10.1.2.4", " 10.1.2.3 ", "127.0.0.1", "::ffff:10.1.2.3", "10.1.2.3, "],
)
def test_without_trusted_proxies_forwarded_for_is_ignored(forged: str) -> None:
    mw = middleware(bypass_networks=[INSIDE, "127.0.0.0/8"])
    assert not passes(mw, REMOTE_ADDR="192.0.2.7", HTTP_X_FORWARDED_FOR=forged)
    assert passes(mw, REMOTE_ADDR="10.9.9.9", HTTP_X_FORWARDED_FOR="192.0.2.7")


def forwarded_chain(client: str, proxies: int, forged: list[str]) -> tuple[str, str]:
    """``(X-Forwarded-For, REMOTE_ADDR)`` as the app sees them behind ``proxies`` proxies
    that each append the address they received the request from. ``forged`` is what the
    client itself put in the header."""
    hops = [f"198.51.100.{i + 1}" for i in range(proxies)]  # the proxies' own addresses
    chain = [*forged, client, *hops[:-1]]
    return ", ".join(chain), hops[-1]


@pytest.mark.parametrize("proxies", [1, 2, 3])
@pytest.mark.parametrize("forged", [[], ["10.1.2.3"], ["10.1.2.3", "10.4.5.6", "junk"]])
def test_with_n_trusted_proxies_only_the_nth_address_from_the_right_counts(
    proxies: int, forged: list[str]
) -> None:
    mw = middleware(bypass_networks=[INSIDE], trusted_proxies=proxies)
    header, peer = forwarded_chain("192.0.2.7", proxies, forged)
    assert not passes(mw, REMOTE_ADDR=peer, HTTP_X_FORWARDED_FOR=header), header
    header, peer = forwarded_chain("10.8.8.8", proxies, ["192.0.2.66", *forged])
    assert passes(mw, REMOTE_ADDR=peer, HTTP_X_FORWARDED_FOR=header), header


@pytest.mark.parametrize("proxies", [2, 3])
def test_a_header_shorter_than_the_proxy_chain_is_not_used(proxies: int) -> None:
    # Fewer entries than trusted proxies: the header did not come through the whole chain,
    # so the address is the peer's (the nearest proxy, here outside the bypass network).
    mw = middleware(bypass_networks=[INSIDE], trusted_proxies=proxies)
    short = ", ".join(["10.1.2.3"] * (proxies - 1))
    assert not passes(mw, REMOTE_ADDR="198.51.100.1", HTTP_X_FORWARDED_FOR=short)
    assert not passes(mw, REMOTE_ADDR="198.51.100.1")


@pytest.mark.parametrize(
    "entry", ["10.1.2.3:8080", "[10.1.2.3]", "10.1.2.3/8", "010.1.2.3", "unknown", "", "10.1.2"]
)
def test_an_entry_that_is_not_a_plain_address_never_bypasses(entry: str) -> None:
    mw = middleware(bypass_networks=[INSIDE], trusted_proxies=1)
    assert not passes(mw, REMOTE_ADDR="192.0.2.1", HTTP_X_FORWARDED_FOR=entry)


def test_an_ipv4_peer_on_a_dual_stack_socket_matches_ipv4_networks() -> None:
    mw = middleware(bypass_networks=[INSIDE])
    assert passes(mw, REMOTE_ADDR="::ffff:10.1.2.3")
    assert not passes(mw, REMOTE_ADDR="::ffff:192.0.2.7")
    assert passes(middleware(bypass_networks=["fe80::/10"]), REMOTE_ADDR="fe80::1%eth0")


# -- maintenance bypass by secret header --------------------------------------------------


@pytest.mark.parametrize(
    "offered",
    [
        TOKEN[:-1] + "X",  # same length, last character wrong
        "X" + TOKEN[1:],  # same length, first character wrong
        TOKEN[:-1],  # a prefix
        TOKEN + "0",  # longer
        TOKEN.upper(),
        " " + TOKEN + "x",
        "",
        "\ud800" + TOKEN,  # not even UTF-8
        "\udcff" * 40,
        TOKEN.encode(),  # bytes, not the str a server hands over
        16,
    ],
)
def test_a_wrong_token_never_bypasses_and_never_raises(offered: Any) -> None:
    mw = middleware(bypass_header=HEADER, bypass_token=TOKEN)
    assert not passes(mw, **{ENVIRON_KEY: offered})
    assert passes(mw, **{ENVIRON_KEY: TOKEN})


def test_the_token_only_works_in_its_own_header() -> None:
    mw = middleware(bypass_header=HEADER, bypass_token=TOKEN)
    assert not passes(mw, HTTP_X_BYPASS=TOKEN, HTTP_AUTHORIZATION=TOKEN)
    assert not passes(mw, QUERY_STRING=f"bypass={TOKEN}")


def test_the_token_is_compared_with_hmac_compare_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    """The decision is compare_digest's (constant time), not ``==``'s: a spy that answers the
    opposite of the truth flips the outcome both ways."""
    calls: list[tuple[bytes, bytes]] = []
    verdict = [True]

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return verdict[0]

    mw = middleware(bypass_header=HEADER, bypass_token=TOKEN)
    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert passes(mw, **{ENVIRON_KEY: "a wrong token of another length"})
    assert calls == [(b"a wrong token of another length", TOKEN.encode())]
    verdict[0] = False
    assert not passes(mw, **{ENVIRON_KEY: TOKEN})
    assert len(calls) == 2


@pytest.mark.parametrize(
    ("token", "error", "message"),
    [
        ("short-but-secret", None, None),
        ("too-short-secret"[:15], ValueError, "bypass_token: must be a str of at least 16"),
        ("pass phrase with spaces", ValueError, "bypass_token: must be visible ASCII"),
        ("t\u00f6k\u00e9n-t\u00f6k\u00e9n-t\u00f6k\u00e9n", ValueError, "visible ASCII"),
        ("\ud800" * 16, ValueError, "visible ASCII"),
        (b"bytes-are-not-a-token", TypeError, "bypass_token: must be a str, got bytes"),
    ],
)
def test_a_bad_token_is_refused_without_repeating_it(
    token: Any, error: type[Exception] | None, message: str | None
) -> None:
    if error is None:
        middleware(bypass_header=HEADER, bypass_token=token)
        return
    with pytest.raises(error) as caught:
        middleware(bypass_header=HEADER, bypass_token=token)
    assert message is not None and message in str(caught.value)
    shown = token.decode() if isinstance(token, bytes) else token
    assert shown not in str(caught.value)


# -- what reaches the page ----------------------------------------------------------------

# ErrorPages escapes every operator string on the page: tests/test_responses.py.


def test_a_maintenance_message_from_the_state_file_is_escaped(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"active": True, "message": HOSTILE}))
    mw = TideGateMiddleware(RecordingApp(), maintenance=MaintenanceSwitch(state, env_var=None))
    reply = call(mw, "/", HTTP_ACCEPT="text/html")
    assert reply.code == 503
    assert_inert(reply.body.decode())
    assert call(mw, "/").json()["message"] == HOSTILE, "JSON carries the text as it is"


def test_a_maintenance_message_is_escaped_by_the_flask_extension() -> None:
    from flask import Flask

    from tidegate.flask import TideGate

    app = Flask(__name__)
    app.get("/")(lambda: "hello")
    TideGate(app, maintenance=maintenance_on(HOSTILE))
    reply = app.test_client().get("/", headers={"Accept": "text/html"})
    assert reply.status_code == 503
    assert_inert(reply.text)


# What makes a status link (status_url_problem, ErrorPages): tests/test_responses.py. Every
# other way in refuses the same links.


@pytest.mark.parametrize("url", BAD_STATUS_URLS)
def test_the_middleware_and_the_extension_refuse_the_same_status_links(
    url: str, recording_app: RecordingApp
) -> None:
    from flask import Flask

    from tidegate.flask import TideGate

    with pytest.raises(ValueError, match=r"^status_url: must"):
        TideGateMiddleware(recording_app, status_url=url)
    with pytest.raises(ValueError, match=r"^status_url: must"):
        TideGate(Flask(__name__), status_url=url)


@pytest.mark.parametrize("url", BAD_STATUS_URLS)
def test_the_cli_refuses_the_same_status_links(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from tidegate.cli import main

    assert main(["page", "--status-url", url]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1, err
    assert err.startswith("tidegate page: error: argument --status-url: must")


@pytest.mark.parametrize("url", GOOD_STATUS_URLS)
def test_web_links_are_accepted_by_the_cli(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    from tidegate.cli import main

    assert main(["page", "--status-url", url]) == 0
    assert f'href="{url}"' in capsys.readouterr().out


# -- health bodies ------------------------------------------------------------------------


SECRET_DETAIL = "postgres://admin:hunter2@db.internal:5432"


def failing_health(**options: Any) -> HealthChecks:
    def db() -> None:
        raise ConnectionError(f"cannot reach {SECRET_DETAIL}")

    health = HealthChecks(**options)
    health.add("db", db)
    health.add("cache", lambda: {"dsn": SECRET_DETAIL}, critical=False)
    return health


def test_health_details_are_hidden_by_default(caplog: pytest.LogCaptureFixture) -> None:
    mw = TideGateMiddleware(RecordingApp(), health=failing_health())
    with caplog.at_level(logging.WARNING, logger="tidegate"):
        reply = call(mw, "/health")
    assert reply.code == 503
    assert SECRET_DETAIL not in reply.body.decode()
    assert "hunter2" not in reply.body.decode()
    assert set(reply.json()["checks"]["db"]) == {"ok", "critical", "duration_ms", "timed_out"}
    assert any("db" in r.getMessage() for r in caplog.records), "the operator's log has it"


def test_health_details_show_only_when_asked() -> None:
    mw = TideGateMiddleware(RecordingApp(), health=failing_health(show_details=True))
    body = call(mw, "/health").json()
    assert SECRET_DETAIL in body["checks"]["db"]["error"]
    assert body["checks"]["cache"]["detail"] == {"dsn": SECRET_DETAIL}


# -- the state file -----------------------------------------------------------------------


@pytest.fixture
def umask() -> Iterator[Callable[[int], int]]:
    previous = os.umask(0o022)
    os.umask(previous)
    try:
        yield os.umask
    finally:
        os.umask(previous)


@pytest.mark.parametrize("mask", [0o000, 0o022, 0o077])
def test_the_state_file_is_0o644_whatever_the_umask(
    tmp_path: Path, umask: Callable[[int], int], mask: int
) -> None:
    umask(mask)
    state = tmp_path / "state.json"
    switch = MaintenanceSwitch(state, env_var=None)
    switch.enable(message="upgrading")
    switch.disable()
    assert stat.S_IMODE(state.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"], "no temp file left"


def test_a_symlink_planted_at_the_state_file_name_is_replaced_not_followed(
    tmp_path: Path,
) -> None:
    victim = tmp_path / "victim.conf"
    victim.write_text("precious")
    victim.chmod(0o600)
    state = tmp_path / "state.json"
    state.symlink_to(victim)
    MaintenanceSwitch(state, env_var=None).enable(message="upgrading")
    assert victim.read_text() == "precious"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600
    assert not state.is_symlink()
    assert json.loads(state.read_text())["message"] == "upgrading"


def test_a_dangling_symlink_at_the_state_file_name_creates_nothing_at_its_target(
    tmp_path: Path,
) -> None:
    target = tmp_path / "elsewhere" / "created-by-the-attacker"
    target.parent.mkdir()
    state = tmp_path / "state.json"
    state.symlink_to(target)
    MaintenanceSwitch(state, env_var=None).enable()
    assert not target.exists()
    assert not state.is_symlink() and json.loads(state.read_text())["active"] is True


# -- the token never shows -----------------------------------------------------------------


def test_the_token_never_reaches_logs_reprs_or_responses(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from flask import Flask

    from tidegate.flask import TideGate

    state = tmp_path / "state.json"
    switch = MaintenanceSwitch(state, env_var=None, poll_interval=0)
    switch.enable(message="upgrading")
    mw = TideGateMiddleware(
        RecordingApp(),
        limit=1,
        maintenance=switch,
        bypass_header=HEADER,
        bypass_token=TOKEN,
        health=failing_health(show_details=True),
    )
    app = Flask(__name__)
    app.get("/")(lambda: "hello")
    ext = TideGate(app, maintenance=switch, bypass_header=HEADER, bypass_token=TOKEN)
    client = app.test_client()
    seen: list[str] = []
    with caplog.at_level(logging.DEBUG):
        for offered in (TOKEN, TOKEN[:-1], "nope"):
            seen.append(call(mw, "/", **{ENVIRON_KEY: offered}).body.decode())
            seen.append(client.get("/", headers={HEADER: offered}).text)
        seen.append(call(mw, "/health").body.decode())
        state.write_text("{ half written")  # a bad file: warned about by the poller
        deadline = time.monotonic() + 5
        while not caplog.records and time.monotonic() < deadline:
            time.sleep(0.005)
        seen.append(call(mw, "/").body.decode())
        switch.disable()
    seen += [r.getMessage() for r in caplog.records]
    seen += [repr(mw), repr(mw.policy), repr(ext), repr(app.extensions["tidegate"])]
    seen += [repr(switch), repr(switch.status())]
    assert any("maintenance state file" in text for text in seen), "the log was captured"
    for text in seen:
        assert TOKEN not in text and TOKEN[:-1] not in text
