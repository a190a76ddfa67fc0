"""Metrics: what a scrape shows, in both exposition formats, read back by prometheus_client's
own parsers; and a shared file summed over real processes that start, exit and get killed."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics import parser as om_parser
from prometheus_client.parser import text_string_to_metric_families
from servers import GunicornServer, ServerError

from tidegate import CircuitBreaker, _tidegate, metrics

PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
    "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(body: bytes, *, openmetrics: bool = False) -> Samples:
    """Every sample by (name, sorted labels), through prometheus_client's parser."""
    text = body.decode()
    families = (
        om_parser.text_string_to_metric_families(text)
        if openmetrics
        else text_string_to_metric_families(text)
    )
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def requests(samples: Samples, outcome: str, reason: str) -> float:
    key = ("tidegate_requests_total", (("outcome", outcome), ("reason", reason)))
    return samples[key]


def buckets(samples: Samples, name: str) -> list[tuple[float, float]]:
    found = [
        (float(dict(labels)["le"]), value)
        for (sample, labels), value in samples.items()
        if sample == f"{name}_bucket"
    ]
    return sorted(found)


def check_histogram(samples: Samples, name: str) -> None:
    """Buckets cumulative, ending at +Inf, whose count is the histogram's count."""
    found = buckets(samples, name)
    assert [le for le, _ in found][-1] == math.inf
    counts = [count for _, count in found]
    assert counts == sorted(counts), f"{name} buckets are not cumulative: {found}"
    assert counts[-1] == samples[(f"{name}_count", ())]


# -- one process ---------------------------------------------------------------------------


def test_a_scrape_counts_what_was_recorded_in_both_formats() -> None:
    before = parse(metrics.render()[1])
    _tidegate.metrics_record("shed", "overload")
    _tidegate.metrics_record("shed", "overload")
    _tidegate.metrics_record("admitted", "none")
    _tidegate.metrics_release(0.004)
    _tidegate.metrics_record("admitted", "none")
    _tidegate.metrics_release(0.3)
    _tidegate.metrics_queue_time(0.02)
    content_type, body = metrics.render(None)
    assert content_type == metrics.TEXT_CONTENT_TYPE
    after = parse(body)
    assert requests(after, "shed", "overload") - requests(before, "shed", "overload") == 2
    assert requests(after, "admitted", "none") - requests(before, "admitted", "none") == 2

    def delta(name: str, labels: tuple[tuple[str, str], ...] = ()) -> float:
        return after[(name, labels)] - before[(name, labels)]

    duration = "tidegate_request_duration_seconds"
    assert delta(f"{duration}_count") == 2
    assert delta(f"{duration}_sum") == pytest.approx(0.304)
    assert delta(f"{duration}_bucket", (("le", "0.005"),)) == 1
    assert delta(f"{duration}_bucket", (("le", "0.25"),)) == 1
    assert delta(f"{duration}_bucket", (("le", "0.5"),)) == 2
    assert delta("tidegate_queue_time_seconds_bucket", (("le", "0.025"),)) == 1
    for name in (duration, "tidegate_queue_time_seconds"):
        check_histogram(after, name)

    content_type, body = metrics.render(PROMETHEUS_ACCEPT)
    assert content_type == metrics.OPENMETRICS_CONTENT_TYPE
    assert body.endswith(b"# EOF\n")
    open_samples = parse(body, openmetrics=True)
    assert requests(open_samples, "shed", "overload") == requests(after, "shed", "overload")
    check_histogram(open_samples, duration)


_LABELS_SCRIPT = """
import sys
sys.path.insert(0, sys.argv[1])
from test_metrics import PROMETHEUS_ACCEPT, parse
from tidegate import CircuitBreaker, _tidegate, metrics

_tidegate.metrics_set_gauge("concurrency_limit", 12)
_tidegate.metrics_set_gauge("maintenance_active", 1)
_tidegate.metrics_breaker_state('pay"ments', "open")
_tidegate.metrics_breaker_call('pay"ments', "rejected")
_tidegate.metrics_health_check("db\\n", True)
for accept, openmetrics in ((None, False), (PROMETHEUS_ACCEPT, True)):
    samples = parse(metrics.render(accept)[1], openmetrics=openmetrics)
    assert samples[("tidegate_concurrency_limit", ())] == 12
    assert samples[("tidegate_maintenance_active", ())] == 1
    state = "tidegate_breaker_state"
    assert samples[(state, (("breaker", 'pay"ments'), ("state", "open")))] == 1
    assert samples[(state, (("breaker", 'pay"ments'), ("state", "closed")))] == 0
    calls = "tidegate_breaker_calls_total"
    assert samples[(calls, (("breaker", 'pay"ments'), ("outcome", "rejected")))] == 1
    assert samples[("tidegate_health_check_up", (("check", "db\\n"),))] == 1
print("ok")
"""


def test_gauges_breakers_and_checks_show_with_their_labels() -> None:
    # A fresh process: this one's breakers and checks, made by other tests, may fill the
    # table of names (32 a process) before these get in.
    done = subprocess.run(
        [sys.executable, "-c", _LABELS_SCRIPT, str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.stdout.strip() == "ok", done.stderr


def test_the_collector_gives_prometheus_client_the_same_numbers() -> None:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(metrics.TideGateCollector())
    _tidegate.metrics_record("refused", "maintenance")
    ours = parse(metrics.render()[1])
    theirs = parse(generate_latest(registry))
    assert requests(theirs, "refused", "maintenance") == requests(ours, "refused", "maintenance")
    check_histogram(theirs, "tidegate_request_duration_seconds")
    assert set(ours) == set(theirs)


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, metrics.TEXT_CONTENT_TYPE),
        ("*/*", metrics.TEXT_CONTENT_TYPE),
        ("text/plain;version=0.0.4", metrics.TEXT_CONTENT_TYPE),
        ("application/openmetrics-text", metrics.OPENMETRICS_CONTENT_TYPE),
        ("application/openmetrics-text;q=0, text/plain", metrics.TEXT_CONTENT_TYPE),
        ("\x00garbage;;q=x", metrics.TEXT_CONTENT_TYPE),
    ],
)
def test_the_format_follows_accept(accept: str | None, expected: str) -> None:
    assert metrics.render(accept)[0] == expected


def test_bad_arguments_name_the_parameter(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^outcome: unknown outcome/reason"):
        _tidegate.metrics_record("shed", "maintenance")
    with pytest.raises(ValueError, match=r"^seconds: "):
        _tidegate.metrics_release(-1.0)
    with pytest.raises(ValueError, match=r"^seconds: "):
        _tidegate.metrics_queue_time(math.nan)
    with pytest.raises(ValueError, match=r"^state: "):
        _tidegate.metrics_breaker_state("db", "ajar")
    with pytest.raises(ValueError, match=r"^slots: must be an integer from 1 to 4096, got 0$"):
        metrics.create_shared(tmp_path, slots=0)
    with pytest.raises(TypeError, match=r"^slots: "):
        metrics.create_shared(tmp_path, slots=True)


def test_an_unwritable_or_missing_directory_is_an_oserror_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(OSError, match=f"cannot create metrics file {missing}"):
        metrics.create_shared(missing)
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    with pytest.raises(OSError, match=f"cannot create metrics file {not_a_folder}"):
        metrics.create_shared(not_a_folder)


def test_garbage_and_truncated_files_are_refused(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.shm"
    garbage.write_bytes(os.urandom(8 * 4096))
    with pytest.raises(ValueError, match="not a usable metrics file: not a tidegate metrics"):
        metrics.render(path=garbage)
    good = Path(metrics.create_shared(tmp_path, slots=4))
    with good.open("r+b") as f:
        f.truncate(good.stat().st_size - 8)
    with pytest.raises(ValueError, match="not a usable metrics file"):
        metrics.render(path=good)
    with pytest.raises(ValueError, match="not a usable metrics file"):
        metrics.fold(good, 1)


# -- several processes, one file -----------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import sys
    from tidegate import _tidegate as t
    path, admitted, shed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    try:
        t.metrics_attach(path)
    except (OSError, ValueError) as exc:
        print("refused", type(exc).__name__, exc, flush=True)
        sys.exit(3)
    for i in range(admitted):
        t.metrics_record("admitted", "none")
        if i % 2 == 0:
            t.metrics_release(0.001 * (i % 40))
    for _ in range(shed):
        t.metrics_record("shed", "overload")
    t.metrics_set_gauge("concurrency_limit", 4)
    t.metrics_breaker_state("db", "open")
    t.metrics_breaker_call("db", "failure")
    print("ready", flush=True)
    sys.stdin.readline()
    """
)


class Child:
    def __init__(self, path: Path, admitted: int, shed: int = 0) -> None:
        self.admitted, self.shed = admitted, shed
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path), str(admitted), str(shed)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.line = self.proc.stdout.readline().strip()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def exit(self) -> int:
        """Lets the process end (or waits for it to), closes its pipes, gives its status."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        status = self.proc.wait(timeout=30)
        self.proc.stdout.close()
        return status

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.exit()


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[Path]:
    yield Path(metrics.create_shared(tmp_path, slots=4))


def scrape(path: Path) -> Samples:
    return parse(metrics.render(path=path)[1])


def counters(samples: Samples) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        key: value
        for key, value in samples.items()
        if key[0].endswith(("_total", "_bucket", "_count", "_sum"))
    }


def assert_never_decreased(
    before: dict[tuple[str, tuple[tuple[str, str], ...]], float],
    after: dict[tuple[str, tuple[tuple[str, str], ...]], float],
) -> None:
    for key, value in before.items():
        assert after[key] >= value, f"{key} went back from {value} to {after[key]}"


def test_live_processes_add_up_exactly_and_exited_ones_are_kept(shared: Path) -> None:
    children = [Child(shared, admitted=10 * (n + 1), shed=n) for n in range(3)]
    try:
        assert [c.line for c in children] == ["ready"] * 3
        samples = scrape(shared)
        assert requests(samples, "admitted", "none") == 10 + 20 + 30
        assert requests(samples, "shed", "overload") == 0 + 1 + 2
        assert samples[("tidegate_in_flight_requests", ())] == 5 + 10 + 15
        assert samples[("tidegate_concurrency_limit", ())] == 3 * 4
        assert samples[("tidegate_breaker_state", (("breaker", "db"), ("state", "open")))] == 3
        assert samples[("tidegate_request_duration_seconds_count", ())] == 5 + 10 + 15
        check_histogram(samples, "tidegate_request_duration_seconds")
        children[0].exit()
        after = scrape(shared)
        assert_never_decreased(counters(samples), counters(after))
        assert counters(after) == counters(samples), "an exited process's counts stay"
        assert after[("tidegate_concurrency_limit", ())] == 2 * 4, "its gauges go"
        assert after[("tidegate_breaker_state", (("breaker", "db"), ("state", "open")))] == 2
    finally:
        for child in children:
            if child.proc.poll() is None:
                child.exit()
    final = scrape(shared)
    assert requests(final, "admitted", "none") == 60
    assert final[("tidegate_in_flight_requests", ())] == 0
    calls = ("tidegate_breaker_calls_total", (("breaker", "db"), ("outcome", "failure")))
    assert final[calls] == 3


def test_a_killed_process_is_folded_and_no_counter_goes_back(shared: Path) -> None:
    a, b = Child(shared, admitted=7, shed=2), Child(shared, admitted=5)
    try:
        before = counters(scrape(shared))
        b.kill()
        assert metrics.fold(shared, b.pid) is True, "the master folds it on child_exit"
        assert metrics.fold(shared, b.pid) is False, "once"
        after = counters(scrape(shared))
        assert after == before
        c = Child(shared, admitted=1)
        assert c.line == "ready"
        a.kill()  # found dead by the next scrape, not folded by anyone
        later = counters(scrape(shared))
        assert_never_decreased(after, later)
        assert requests(scrape(shared), "admitted", "none") == 7 + 5 + 1
        c.exit()
    finally:
        for child in (a, b):
            if child.proc.poll() is None:
                child.kill()


def test_fifty_replacements_keep_the_file_size_and_every_count(shared: Path) -> None:
    size = shared.stat().st_size
    live: list[Child] = []
    seen: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for n in range(50):
        live.append(Child(shared, admitted=2))
        assert live[-1].line == "ready", live[-1].line
        if len(live) == 3:  # 3 alive in 4 slots: each new one takes a freed slot
            old = live.pop(0)
            old.kill() if n % 2 else old.exit()
            metrics.fold(shared, old.pid)
        now = counters(scrape(shared))
        assert_never_decreased(seen, now)
        seen = now
        assert shared.stat().st_size == size
    for child in live:
        child.exit()
    samples = scrape(shared)
    assert requests(samples, "admitted", "none") == 100
    assert samples[("tidegate_request_duration_seconds_count", ())] == 50
    assert shared.stat().st_size == size


def test_a_process_finds_every_slot_taken_and_says_so(tmp_path: Path) -> None:
    path = Path(metrics.create_shared(tmp_path, slots=1))
    first = Child(path, admitted=1)
    try:
        second = Child(path, admitted=1)
        assert second.line.startswith("refused OSError all 1 slots of metrics file")
        assert second.exit() == 3
    finally:
        first.exit()


def test_a_garbage_file_is_refused_by_a_worker_too(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.shm"
    garbage.write_bytes(b"\xff" * 100_000)
    child = Child(garbage, admitted=1)
    assert child.line.startswith("refused ValueError"), child.line
    assert "not a usable metrics file" in child.line
    assert child.exit() == 3


# -- a real Gunicorn -----------------------------------------------------------------------


@pytest.mark.server
def test_gunicorn_workers_replaced_by_max_requests_report_one_server(tmp_path: Path) -> None:
    """Three sync workers behind the middleware, each replaced after 7 requests, one of them
    killed with SIGKILL halfway: every scrape, whichever worker answers it, counts every
    request the server was sent, by outcome and reason; no counter ever goes back; and the one
    file keeps its size over 50 and more replacements."""
    with GunicornServer(
        "metrics_app:application",
        worker_class="sync",
        workers=3,
        config="python:tidegate.gunicorn",
        args=["--max-requests", "7"],
        env={metrics.METRICS_DIR_ENV: str(tmp_path)},
        startup_timeout=60.0,
    ) as server:
        [path] = tmp_path.iterdir()
        size = path.stat().st_size
        seen: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        sent = {"admitted": 0, "exempt": 0, "failed_fast": 0}
        pids: set[int] = set()
        scrapes_extra = lost = 0
        for scrapes in range(1, 61):
            for _ in range(3):
                reply = server.fetch("/work")
                assert reply.status == 200
                pids.add(int(reply.body))
            assert server.fetch("/exempt").status == 200
            assert server.fetch("/dependency").status == 503
            sent["admitted"] += 4
            sent["exempt"] += 1
            sent["failed_fast"] += 1
            if scrapes == 30:
                os.kill(server.worker_pids()[0], signal.SIGKILL)
            reply = server.fetch("/metrics")
            assert reply.headers["Content-Type"] == metrics.TEXT_CONTENT_TYPE
            samples = counters(parse(reply.body))
            assert requests(samples, "admitted", "none") == sent["admitted"]
            assert requests(samples, "exempt", "none") == sent["exempt"]
            assert requests(samples, "failed_fast", "dependency") == sent["failed_fast"]
            # The scrape answering is counted once it has answered.
            assert requests(samples, "probe", "none") == scrapes - 1 + scrapes_extra
            assert requests(samples, "shed", "overload") == 0
            # A worker times a request once the server has closed its body, which may be just
            # after the client has the whole response: the count catches up at once.
            if samples[("tidegate_request_duration_seconds_count", ())] != sent["admitted"]:
                time.sleep(0.2)
                samples = counters(parse(server.fetch("/metrics").body))
                scrapes_extra += 1
                assert requests(samples, "probe", "none") == scrapes + scrapes_extra - 1
            timed = samples[("tidegate_request_duration_seconds_count", ())]
            if scrapes == 30:
                # The killed worker may have died between sending its last answer and closing
                # its body: that request was admitted but is never timed.
                lost = sent["admitted"] - timed
                assert lost in (0, 1)
            assert timed == sent["admitted"] - lost
            assert_never_decreased(seen, samples)
            seen = samples
            assert path.stat().st_size == size
        reply = server.fetch("/metrics", headers={"Accept": PROMETHEUS_ACCEPT})
        assert reply.headers["Content-Type"] == metrics.OPENMETRICS_CONTENT_TYPE
        openmetrics = parse(reply.body, openmetrics=True)
        assert requests(openmetrics, "admitted", "none") == sent["admitted"]
        assert openmetrics[("tidegate_in_flight_requests", ())] == 0
        assert openmetrics[("tidegate_concurrency_limit", ())] in (4, 8, 12)  # workers starting: 0
        assert len(pids) > 50, f"max_requests replaced workers {len(pids)} times, not 50"
    assert list(tmp_path.iterdir()) == [], "the master removed its file"


@pytest.mark.server
def test_gunicorn_refuses_to_start_with_an_unusable_metrics_dir(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    server = GunicornServer(
        "metrics_app:application",
        config="python:tidegate.gunicorn",
        env={metrics.METRICS_DIR_ENV: str(not_a_folder)},
    )
    with pytest.raises(ServerError) as failure:
        server.start()
    assert f"Error: TIDEGATE_METRICS_DIR: cannot create metrics file {not_a_folder}" in str(
        failure.value
    )
    assert server.returncode == 1


@pytest.mark.server
def test_two_servers_on_one_metrics_dir_keep_their_own_counts(tmp_path: Path) -> None:
    """Two Gunicorn servers given the same TIDEGATE_METRICS_DIR each make a file of their own:
    neither counts the other's requests."""
    servers = [
        GunicornServer(
            "metrics_app:application",
            worker_class="sync",
            workers=2,
            config="python:tidegate.gunicorn",
            env={metrics.METRICS_DIR_ENV: str(tmp_path)},
        )
        for _ in range(2)
    ]
    with servers[0], servers[1]:
        assert len(list(tmp_path.iterdir())) == 2
        for count, server in zip((3, 5), servers, strict=True):
            for _ in range(count):
                assert server.fetch("/work").status == 200
        for count, server in zip((3, 5), servers, strict=True):
            samples = counters(parse(server.fetch("/metrics").body))
            assert requests(samples, "admitted", "none") == count
    assert list(tmp_path.iterdir()) == []


def test_the_grafana_dashboard_asks_only_for_series_tidegate_serves() -> None:
    import json
    import re

    dashboard = json.loads(
        (Path(__file__).parent.parent / "docs" / "grafana-dashboard.json").read_text()
    )
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert exprs
    breaker = CircuitBreaker("dashboard-db")  # breaker series exist once there is a breaker
    served = {name for name, _ in parse(metrics.render()[1])}
    for expr in exprs:
        for name in re.findall(r"tidegate_\w+", expr):
            assert name in served, (name, expr)
    assert breaker.state == "closed"
