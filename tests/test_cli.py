"""The ``tidegate`` command, called as ``main(argv)``: what it prints, what it leaves in the
state file, and how it refuses bad arguments (one line, the right exit code, nothing written)."""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
from servers import GunicornServer, Response

from tidegate import MaintenanceSwitch
from tidegate.cli import STATE_ENV, main, parse_duration, parse_until
from tidegate.responses import ErrorPages


@pytest.fixture(autouse=True)
def _no_state_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(STATE_ENV, raising=False)


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "tidegate.json"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def on_disk(path: Path) -> dict[str, Any]:
    document = json.loads(path.read_text())
    assert isinstance(document, dict)
    return document


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# -- durations and dates -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("15m", 900),
        ("2h", 7200),
        ("1h30m", 5400),
        ("1d", 86400),
        ("1d2h3m4s", 93784),
        ("45", 45),
        (" 2H ", 7200),
    ],
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "h", "1.5h", "1m1h", "1 h", "2x", "-1m", "1w", "\u00b2"])
def test_bad_durations_say_what_is_expected(text: str) -> None:
    with pytest.raises(ValueError, match=r"not a duration.*use e\.g\. 90s, 15m, 2h, 1h30m or 1d"):
        parse_duration(text)


def test_until_is_utc_and_must_be_ahead() -> None:
    now = datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc)
    assert parse_until("2030-01-01T12:30:00Z", now) == datetime(
        2030, 1, 1, 12, 30, tzinfo=timezone.utc
    )
    assert parse_until("2030-01-01T14:30+02:00", now) == datetime(
        2030, 1, 1, 12, 30, tzinfo=timezone.utc
    )
    # No offset means UTC, as in the state file.
    assert parse_until("2030-01-01T13:00", now) == datetime(2030, 1, 1, 13, 0, tzinfo=timezone.utc)
    with pytest.raises(ValueError, match="is in the past"):
        parse_until("2030-01-01T12:00:00Z", now)
    with pytest.raises(ValueError, match="not an ISO-8601 date and time"):
        parse_until("tomorrow", now)
    with pytest.raises(ValueError, match="is out of range"):
        parse_until("9999-12-31T23:59:59-05:00", now)


def test_until_reads_what_a_state_file_reads_plus_a_bare_date(
    capsys: pytest.CaptureFixture[str], state: Path
) -> None:
    now = datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc)
    assert parse_until("2099-01-01", now) == datetime(2099, 1, 1, tzinfo=timezone.utc)
    assert parse_until(" 2099-01-01t12:00:00.75z ", now) == datetime(
        2099, 1, 1, 12, tzinfo=timezone.utc
    )
    # Forms a state file would refuse are refused here too, so what the command accepts is
    # what every worker reads back.
    for text in ("2099-01-01T12", "20990101T120000Z", "2099-01-01T12:00+0200", "2099-W01-1"):
        with pytest.raises(ValueError, match="not an ISO-8601 date and time"):
            parse_until(text, now)
    run(capsys, "maintenance", "on", "--state", str(state), "--until", "2099-06-01 14:00-02:30")
    until = MaintenanceSwitch(state, env_var=None).status().until
    assert until == datetime(2099, 6, 1, 16, 30, tzinfo=timezone.utc)


# -- maintenance on / off / status ---------------------------------------------------------


def test_on_writes_the_state_file_every_worker_reads(
    capsys: pytest.CaptureFixture[str], state: Path
) -> None:
    code, out, err = run(
        capsys, "maintenance", "on", "--state", str(state), "--message", "Upgrading the DB",
        "--for", "1h30m",
    )  # fmt: skip
    assert (code, err) == (0, "")
    document = on_disk(state)
    assert document["version"] == 1
    assert document["active"] is True
    assert document["message"] == "Upgrading the DB"
    assert document["draining"] is False
    ahead = parse_iso(document["until"]) - datetime.now(timezone.utc)
    assert timedelta(minutes=89) < ahead <= timedelta(minutes=90)
    assert "ON" in out and "Upgrading the DB" in out
    assert "(in 1h 29m)" in out or "(in 1h 30m)" in out
    # An app's switch on the same file agrees.
    status = MaintenanceSwitch(state, env_var=None).status()
    assert status.active and status.message == "Upgrading the DB"
    assert 5300 < status.retry_after.delay() <= 5400


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("15m", 900), ("2h", 7200), ("1d", 86400)]
)
def test_on_for_a_duration(
    capsys: pytest.CaptureFixture[str], state: Path, text: str, seconds: int
) -> None:
    before = datetime.now(timezone.utc).replace(microsecond=0)
    code, _, _ = run(capsys, "maintenance", "on", "--state", str(state), "--for", text)
    assert code == 0
    until = parse_iso(on_disk(state)["until"])
    assert before + timedelta(seconds=seconds) <= until <= before + timedelta(seconds=seconds + 2)


def test_on_until_is_stored_in_utc(capsys: pytest.CaptureFixture[str], state: Path) -> None:
    code, out, _ = run(
        capsys, "maintenance", "on", "--state", str(state), "--until", "2099-06-01T14:00+02:00"
    )
    assert code == 0
    assert on_disk(state)["until"] == "2099-06-01T12:00:00Z"
    assert "2099-06-01 12:00:00 UTC" in out


def test_on_with_retry_after_and_no_end(capsys: pytest.CaptureFixture[str], state: Path) -> None:
    code, out, _ = run(capsys, "maintenance", "on", "--state", str(state), "--retry-after", "5m")
    assert code == 0
    document = on_disk(state)
    assert (document["retry_after"], document["until"], document["message"]) == (300, None, None)
    assert "  Retry-After 300 s" in out


def test_off_clears_maintenance_and_keeps_drain(
    capsys: pytest.CaptureFixture[str], state: Path
) -> None:
    run(capsys, "maintenance", "on", "--state", str(state), "--message", "x", "--for", "1h")
    run(capsys, "drain", "--state", str(state))
    code, out, err = run(capsys, "maintenance", "off", "--state", str(state))
    assert (code, err) == (0, "")
    document = on_disk(state)
    assert document["active"] is False
    assert (document["message"], document["until"], document["retry_after"]) == (None, None, None)
    assert document["draining"] is True
    assert "maintenance   off" in out and "draining      ON" in out


def test_off_without_a_file_creates_an_off_file(
    capsys: pytest.CaptureFixture[str], state: Path
) -> None:
    assert run(capsys, "maintenance", "off", "--state", str(state))[0] == 0
    assert on_disk(state)["active"] is False


def test_status_in_words(capsys: pytest.CaptureFixture[str], state: Path) -> None:
    code, out, err = run(capsys, "maintenance", "status", "--state", str(state))
    assert (code, err) == (0, "")
    assert "maintenance   off" in out and "draining      off" in out
    assert f"state file    {state} (not there yet: nothing is on)" in out
    assert not state.exists()  # looking writes nothing

    run(capsys, "maintenance", "on", "--state", str(state), "--message", "Back soon", "--for", "2h")
    code, out, _ = run(capsys, "maintenance", "status", "--state", str(state))
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "maintenance   ON: requests get 503 maintenance"
    assert lines[1] == "  message     Back soon"
    assert lines[2].startswith("  until       ")
    assert lines[2].endswith(("(in 2h)", "(in 1h 59m)"))
    assert lines[3] in ("  Retry-After 7199 s", "  Retry-After 7200 s")
    assert lines[4] == "draining      off"
    assert lines[5].startswith(f"state file    {state} (last changed ")


def test_status_as_json(capsys: pytest.CaptureFixture[str], state: Path) -> None:
    code, out, _ = run(capsys, "maintenance", "status", "--state", str(state), "--json")
    assert code == 0
    assert json.loads(out) == {
        "state_file": str(state),
        "exists": False,
        "active": False,
        "message": None,
        "until": None,
        "retry_after": None,
        "draining": False,
        "error": None,
    }
    run(capsys, "maintenance", "on", "--state", str(state), "--until", "2099-01-01T00:00:00Z")
    run(capsys, "drain", "--state", str(state))
    code, out, _ = run(capsys, "maintenance", "status", "--state", str(state), "--json")
    document = json.loads(out)
    assert code == 0
    assert (document["exists"], document["active"], document["draining"]) == (True, True, True)
    assert document["until"] == "2099-01-01T00:00:00Z"
    assert document["retry_after"] > 365 * 86400


def test_status_of_an_unreadable_file_fails_without_guessing(
    capsys: pytest.CaptureFixture[str], state: Path
) -> None:
    state.write_text('{"active": tr')  # half-written by something else
    code, out, err = run(capsys, "maintenance", "status", "--state", str(state))
    assert (code, out) == (1, "")
    assert err.count("\n") == 1 and "not a valid state file" in err
    code, out, err = run(capsys, "maintenance", "status", "--state", str(state), "--json")
    document = json.loads(out)
    assert code == 1
    assert document["active"] is None and document["draining"] is None
    assert "not a valid state file" in document["error"]
    assert state.read_text() == '{"active": tr'


def test_on_replaces_an_unreadable_file_and_says_so(
    capsys: pytest.CaptureFixture[str], state: Path
) -> None:
    state.write_text("garbage")
    code, _, err = run(capsys, "maintenance", "on", "--state", str(state))
    assert code == 0
    assert err.startswith("tidegate: note: replaced a state file that could not be read")
    assert on_disk(state)["active"] is True


def test_state_from_the_environment(
    capsys: pytest.CaptureFixture[str], state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(STATE_ENV, str(state))
    assert run(capsys, "maintenance", "on")[0] == 0
    assert on_disk(state)["active"] is True


# -- drain ---------------------------------------------------------------------------------


def test_drain_and_undo_keep_maintenance(capsys: pytest.CaptureFixture[str], state: Path) -> None:
    run(capsys, "maintenance", "on", "--state", str(state), "--message", "m", "--for", "1h")
    before = on_disk(state)
    code, out, err = run(capsys, "drain", "--state", str(state))
    assert (code, err) == (0, "")
    after = on_disk(state)
    assert after["draining"] is True
    assert {k: after[k] for k in ("active", "message", "until")} == {
        k: before[k] for k in ("active", "message", "until")
    }
    assert "draining      ON: readiness answers 503 draining" in out
    assert MaintenanceSwitch(state, env_var=None).draining

    code, out, _ = run(capsys, "drain", "--state", str(state), "--off")
    assert code == 0
    assert on_disk(state)["draining"] is False
    assert on_disk(state)["active"] is True
    assert "draining      off" in out


def test_drain_shows_in_status(capsys: pytest.CaptureFixture[str], state: Path) -> None:
    run(capsys, "drain", "--state", str(state))
    code, out, _ = run(capsys, "maintenance", "status", "--state", str(state))
    assert code == 0
    assert "maintenance   off" in out and "draining      ON" in out


# -- bad arguments -------------------------------------------------------------------------

ON = ["maintenance", "on", "--state", "{state}"]
BAD = [
    ([*ON, "--for", "2x"], "argument --for: not a duration: '2x'"),
    ([*ON, "--for", "1m1h"], "not a duration: '1m1h'"),
    ([*ON, "--for", "0s"], "must be longer than zero"),
    ([*ON, "--for", "99999999999d"], "duration too long"),
    ([*ON, "--for", "3000000d"], "too far in the future"),
    ([*ON, "--for"], "argument --for: expected one argument"),
    ([*ON, "--until", "2020-01-01T00:00:00Z"], "is in the past"),
    ([*ON, "--until", "soon"], "not an ISO-8601"),
    (
        [*ON, "--for", "1h", "--until", "2099-01-01"],
        "argument --until: not allowed with argument --for",
    ),
    ([*ON, "--retry-after", "later"], "not a duration"),
    (["maintenance", "on", "--state", "{tmp}/missing/s.json"], "missing does not exist"),
    (["maintenance", "on", "--state", "{tmp}/a-file/s.json"], "a-file is not a folder"),
    (["maintenance", "off", "--state", "{tmp}"], "is a folder; name a file in it"),
    (["maintenance", "status", "--state", "{tmp}/missing/s.json"], "does not exist"),
    (["maintenance", "on", "--state", "{tmp}/" + "x" * 300], "File name too long"),
    (["maintenance", "on"], "argument --state is required (or set TIDEGATE_STATE_FILE)"),
    (["drain", "--state", "{tmp}/missing/s.json"], "does not exist"),
    (["drain", "--state", "{state}", "--now"], "unrecognized arguments: --now"),
    ([], "choose a command: maintenance, drain, page or demo"),
    (["maintenance"], "choose on, off or status"),
    (["maintenance", "pause", "--state", "{state}"], "invalid choice: 'pause'"),
    (["restart"], "invalid choice: 'restart'"),
    (["page", "--status-url", "javascript:alert(1)"], "must be an http(s) URL with a host"),
    (["page", "--output", "{tmp}/missing/page.html"], "does not exist"),
    (["page", "--output", "{tmp}"], "is a folder"),
    (["page", "--template", "{tmp}/missing.html"], "argument --template: cannot read it"),
    (["page", "--template", "{tmp}/bad-template.html"], "argument --template: bad placeholder"),
    (["page", "--for", "1h", "--until", "2099-01-01"], "not allowed with argument --for"),
    (["page", "--state", "{tmp}/missing/s.json"], "does not exist"),
    (["demo", "--fast"], "unrecognized arguments: --fast"),
]


@pytest.mark.parametrize(
    ("argv", "reason"), BAD, ids=[" ".join(a)[:60] or "nothing" for a, _ in BAD]
)
def test_bad_arguments_exit_2_with_one_line_and_write_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str], reason: str
) -> None:
    (tmp_path / "a-file").write_text("")
    (tmp_path / "bad-template.html").write_text("<p>$message ${oops</p>")
    before = sorted(os.listdir(tmp_path))
    state = tmp_path / "tidegate.json"
    code, out, err = run(capsys, *(a.format(state=state, tmp=tmp_path) for a in argv))
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1, err
    assert "Traceback" not in err
    assert err.startswith("tidegate") and ": error: " in err
    assert reason in err
    assert err.rstrip().endswith("--help)")
    assert sorted(os.listdir(tmp_path)) == before


def test_a_refused_command_leaves_the_state_file_as_it_was(
    capsys: pytest.CaptureFixture[str], state: Path
) -> None:
    run(capsys, "maintenance", "on", "--state", str(state), "--message", "first", "--for", "1h")
    before = state.read_bytes()
    for argv in (
        ["maintenance", "on", "--state", str(state), "--message", "second", "--for", "soon"],
        ["maintenance", "on", "--state", str(state), "--until", "2001-01-01"],
        ["maintenance", "off", "--state", str(state), "--force"],
    ):
        assert run(capsys, *argv)[0] == 2
    assert state.read_bytes() == before


def test_a_failed_write_exits_1_and_leaves_nothing_behind(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # The name is allowed, but the temporary file written next to it is not: a real write
    # failure, whoever runs the test.
    state = tmp_path / ("s" * 250)
    for argv in (["maintenance", "on"], ["maintenance", "off"], ["drain"], ["drain", "--off"]):
        code, out, err = run(capsys, *argv, "--state", str(state))
        assert (code, out) == (1, "")
        assert err.startswith("tidegate: error: cannot write ") and err.count("\n") == 1
        assert "Traceback" not in err
    code, _, err = run(capsys, "page", "--output", str(tmp_path / ("p" * 250)))
    assert code == 1 and err.startswith("tidegate: error: cannot write ")
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write anywhere")
def test_an_unwritable_folder_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        code, _, err = run(capsys, "maintenance", "on", "--state", str(folder / "s.json"))
    finally:
        folder.chmod(stat.S_IRWXU)
    assert code == 2 and "is not writable" in err
    assert os.listdir(folder) == []


def test_help_teaches_with_examples(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    assert "examples:" in out and "tidegate maintenance on --state" in out and "demo" in out
    code, out, _ = run(capsys, "maintenance", "on", "--help")
    out = " ".join(out.split())  # as wrapped for any terminal width
    assert code == 0
    for text in ("--message", "--for", "--until", "--retry-after", "1h30m", "no offset means"):
        assert text in out
    code, out, _ = run(capsys, "drain", "--help")
    assert code == 0 and "--off" in out and "503" in out
    code, out, _ = run(capsys, "page", "--help")
    assert code == 0 and "--output" in out and "--status-url" in out


def test_the_console_script_is_declared() -> None:
    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    assert scripts.get("tidegate") == "tidegate.cli:main"


# -- page ----------------------------------------------------------------------------------

VOID = {"meta", "br", "hr", "img", "input", "link"}


class _Structure(HTMLParser):
    """Checks that every element is closed in order and collects what may load assets."""

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.tags: list[str] = []
        self.links: list[str] = []
        self.problems: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "srcset", "action"):
                self.problems.append(f"{tag} {name}={value}")
            if name == "href":
                self.links.append(value or "")
        if tag not in VOID:
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open.pop() != tag:
            self.problems.append(f"unbalanced </{tag}>")


def check_page(text: str) -> _Structure:
    assert text.startswith("<!doctype html>")
    parser = _Structure()
    parser.feed(text)
    parser.close()
    assert parser.problems == []
    assert parser.open == []
    assert "script" not in parser.tags and "link" not in parser.tags
    assert "url(" not in text and "@import" not in text
    return parser


def test_page_to_stdout_is_self_contained_and_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    message = '<script>alert("hi")</script> & "quotes"'
    code, out, err = run(
        capsys, "page", "--message", message, "--until", "2099-01-01T12:00:00Z",
        "--status-url", "https://status.example.com/?a=1&b=<2>",
    )  # fmt: skip
    assert (code, err) == (0, "")
    parser = check_page(out)
    assert "<script>" not in out
    assert "&lt;script&gt;alert(&quot;hi&quot;)&lt;/script&gt; &amp; &quot;quotes&quot;" in out
    assert '<time datetime="2099-01-01T12:00:00Z">2099-01-01 12:00:00 UTC</time>' in out
    assert parser.links == ["https://status.example.com/?a=1&b=<2>"]  # unescaped by the parser
    assert "&amp;b=&lt;2&gt;" in out


def test_page_is_the_apps_own_maintenance_page(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "page", "--message", "Back soon", "--retry-after", "5m")
    assert code == 0
    expected = ErrorPages().render(
        "maintenance", retry_after=300, html_page=True, message="Back soon"
    )
    assert out.encode() == expected.body
    code, out, _ = run(capsys, "page")
    assert "retry after 60 s" in out
    assert "We are down for scheduled maintenance" in out


def test_page_retry_counts_down_to_until(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "page", "--for", "10m")
    assert code == 0
    assert "retry after 600 s" in out or "retry after 599 s" in out


def test_page_to_a_file_replaces_it_atomically(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    target = tmp_path / "maintenance.html"
    target.write_text("old page")
    code, out, err = run(capsys, "page", "--message", "Back soon", "--output", str(target))
    assert (code, out) == (0, "")
    assert err.startswith(f"wrote {target} (")
    check_page(target.read_text())
    assert "Back soon" in target.read_text()
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert os.listdir(tmp_path) == ["maintenance.html"]


def test_page_from_the_state_file(capsys: pytest.CaptureFixture[str], state: Path) -> None:
    run(capsys, "maintenance", "on", "--state", str(state), "--message", "DB upgrade",
        "--until", "2099-03-01T08:00:00Z")  # fmt: skip
    code, out, _ = run(capsys, "page", "--state", str(state))
    assert code == 0
    assert "DB upgrade" in out and "2099-03-01 08:00:00 UTC" in out
    code, out, _ = run(capsys, "page", "--state", str(state), "--message", "Override")
    assert "Override" in out and "DB upgrade" not in out and "2099-03-01" in out


def test_page_from_a_state_file_whose_end_has_passed(
    capsys: pytest.CaptureFixture[str], state: Path
) -> None:
    state.write_text('{"active": true, "until": "2001-01-01T00:00:00Z", "retry_after": 120}')
    code, out, _ = run(capsys, "page", "--state", str(state))
    assert code == 0
    # As the app would say it: the estimate is shown, the retry hint never points back.
    assert "2001-01-01 00:00:00 UTC" in out and "retry after 120 s" in out


def test_page_with_a_template(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    template = tmp_path / "page.html"
    template.write_text(
        "<!doctype html><html><body><p>$message</p><p>$retry_after</p></body></html>"
    )
    code, out, _ = run(
        capsys, "page", "--template", str(template), "--message", "a<b", "--retry-after", "90s"
    )
    assert code == 0
    assert out == "<!doctype html><html><body><p>a&lt;b</p><p>90</p></body></html>"


# -- every worker of a real Gunicorn follows -----------------------------------------------

WORKERS = 3
POLL_INTERVAL = 0.2


def _batch(server: GunicornServer, path: str, count: int = 24) -> list[Response]:
    """``count`` requests, eight at a time, each on its own connection (so the workers share
    them)."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(lambda _: server.fetch(path), range(count)))


def _every_worker(
    server: GunicornServer, path: str, expect: Callable[[Response], bool], within: float
) -> float:
    """Seconds until each worker has answered ``path`` as ``expect`` wants (a worker may still
    answer the old way meanwhile); fails after ``within`` seconds. Then one more batch must
    be all as expected, from every worker."""
    start = time.monotonic()
    pids = set(server.worker_pids())
    assert len(pids) == WORKERS
    followed: set[int] = set()
    while followed != pids:
        elapsed = time.monotonic() - start
        assert elapsed <= within, f"after {elapsed:.2f}s only workers {followed} of {pids} followed"
        for reply in _batch(server, path):
            if expect(reply):
                followed.add(int(reply.headers["X-Worker-Pid"]))
    took = time.monotonic() - start
    settled = _batch(server, path, 30)
    assert all(expect(reply) for reply in settled), [(r.status, r.body) for r in settled]
    assert {int(r.headers["X-Worker-Pid"]) for r in settled} <= pids
    return took


def _maintenance_503(reply: Response) -> bool:
    return (
        reply.status == 503
        and reply.json()["reason"] == "maintenance"
        and reply.json()["message"] == "Upgrading the DB"
        and 0 < int(reply.headers["Retry-After"]) <= 600
    )


def _served(reply: Response) -> bool:
    return reply.status == 200 and reply.body.startswith(b"hello from ")


@pytest.mark.server
def test_every_gunicorn_worker_follows_the_cli(
    start_gunicorn: Callable[..., GunicornServer],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    state = tmp_path / "tidegate.json"
    server = start_gunicorn(
        "operator_app:application",
        workers=WORKERS,
        env={"TIDEGATE_TEST_STATE": str(state), "TIDEGATE_TEST_POLL": str(POLL_INTERVAL)},
    )
    within = POLL_INTERVAL + 1.0
    _every_worker(server, "/", _served, within)

    assert main(["maintenance", "on", "--state", str(state), "--message", "Upgrading the DB",
                 "--for", "10m"]) == 0  # fmt: skip
    assert _every_worker(server, "/", _maintenance_503, within) <= within
    # Readiness stays 200 during maintenance, and says so, in every worker.
    _every_worker(
        server,
        "/health",
        lambda r: r.status == 200 and r.json()["maintenance"] is True,
        within,
    )

    assert main(["maintenance", "off", "--state", str(state)]) == 0
    assert _every_worker(server, "/", _served, within) <= within

    assert main(["drain", "--state", str(state)]) == 0
    _every_worker(
        server,
        "/health",
        lambda r: (
            r.status == 503 and r.json()["reason"] == "draining" and "Retry-After" in r.headers
        ),
        within,
    )
    # Draining workers still serve what reaches them.
    _every_worker(server, "/", _served, within)

    assert main(["drain", "--state", str(state), "--off"]) == 0
    _every_worker(server, "/health", lambda r: r.status == 200, within)
    capsys.readouterr()


README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_readme_static_page_and_its_nginx_block_agree(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The README's `tidegate page` command runs, and the nginx block that serves its page
    sends the Retry-After the page states and passes the Host header on to the app."""
    import re
    import shlex

    section = README.read_text(encoding="utf-8").split("### A static page", 1)[1]
    section = section.split("\n### ", 1)[0]
    [command] = re.findall(r"```sh\n(tidegate page .*)\n```", section)
    [nginx] = re.findall(r"```nginx\n(.*?)```", section, flags=re.DOTALL)
    argv = shlex.split(command)[1:]
    page_seconds = argv[argv.index("--retry-after") + 1]
    assert re.search(rf"add_header Retry-After {page_seconds} always;", nginx)
    assert re.search(r"^\s*proxy_set_header Host \$host;", nginx, flags=re.MULTILINE)
    output = argv[argv.index("-o") + 1]
    assert re.search(rf"root {re.escape(str(Path(output).parent))};", nginx)
    switch = MaintenanceSwitch(tmp_path / "tidegate.json", env_var=None)
    switch.enable(message="Upgrading the database")
    argv[argv.index("--state") + 1] = str(tmp_path / "tidegate.json")
    argv[argv.index("-o") + 1] = str(tmp_path / Path(output).name)
    assert run(capsys, *argv)[0] == 0
    page = (tmp_path / Path(output).name).read_text(encoding="utf-8")
    assert f"retry after {page_seconds} s" in page
    assert "Upgrading the database" in page
