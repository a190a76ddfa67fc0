"""The Gunicorn benchmarks run end to end: each starts its servers, drives them, prints its
table and exits 0 in ``--quick`` mode. Their numbers are not asserted: they are measurements
for a quiet machine, not facts a test run can rely on."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import need_redis

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"

pytestmark = pytest.mark.server


def run_quick(script: str, timeout: float = 90) -> str:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--quick"],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"{script} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def table_row(output: str, label: str) -> list[str]:
    """The cells of the table row that starts with ``label``."""
    for line in output.splitlines():
        if line.startswith(label):
            return line[len(label) :].split()
    raise AssertionError(f"no row {label!r} in:\n{output}")


def test_overload_prints_both_cases_and_the_targets() -> None:
    output = run_quick("overload.py")
    assert "ungated" in output and "gated, retry at once" in output
    assert "gated, honour Retry-After" in output
    successes = table_row(output, "successes/s")
    assert len(successes) == 3 and all(float(cell) > 0 for cell in successes)
    sheds = table_row(output, "503s/s")
    assert sheds[0] == "0" and float(sheds[1]) > 0
    assert table_row(output, "503 p90 ms")[0] == "-"
    assert output.count("target <=") + output.count("target >=") == 6
    assert "Load generator:" in output
    last = output.rstrip().splitlines()[-1]
    assert last == "targets met" or last.startswith("TARGETS MISSED: gated")


def test_gunicorn_cost_prints_every_candidate() -> None:
    output = run_quick("gunicorn_cost.py")
    for label in ("bare app", "tidegate, admitted", "static 503", "tidegate, shedding"):
        cells = table_row(output, label)
        assert len(cells) == 6 and float(cells[0]) > 0
    assert "x the throughput of the bare app" in output
    assert "x the throughput of the static 503" in output
    assert "Load generator at the busiest run" in output


def test_request_cost_prints_every_candidate_and_target() -> None:
    output = run_quick("request_cost.py")
    for label in (
        "careful pure-Python gate",
        "tidegate middleware",
        "tidegate middleware, auto",
        "two empty Flask hooks",
        "seed Flask hooks",
        "tidegate Flask extension",
        "tidegate Flask extension: 503",
    ):
        assert len(table_row(output, label)) >= 1, label
    assert "(target <= 0.25)" in output and "(target <= 0.50)" in output
    assert "x a fixed limit's (target <= 1.50)" in output
    assert output.rstrip().splitlines()[-1] in ("targets met", "TARGETS MISSED")


def test_adaptive_prints_its_three_parts_and_the_targets() -> None:
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        pytest.skip("nginx is not installed (tools/test-servers.sh installs it)")
    output = run_quick("adaptive.py", timeout=300)
    assert "1. limit='auto'" in output and "N = 8: ungated" in output
    assert "2. max_queue_time behind nginx" in output and "queue_gated:" in output
    assert "3. priorities" in output and "critical:" in output
    # Four auto-limit targets for the one pool size, two for queue time, one for priority.
    assert output.count("target <=") + output.count("target >=") == 7


def test_fleet_prints_its_three_parts_and_the_targets() -> None:
    need_redis()
    output = run_quick("fleet.py")
    assert "state file" in output and "Redis store" in output
    assert "polling only   median" in output and "change notice  median" in output
    for label in ("Redis up", "Redis killed halfway"):
        ok, failed = table_row(output, "   " + label)[0], table_row(output, "   " + label)[2]
        assert int(ok) > 0, output
        assert failed.isdigit(), output
    assert output.count("(target <=") == 4
    last = output.rstrip().splitlines()[-1]
    assert last == "targets met" or last.startswith("TARGETS MISSED: ")


def test_metrics_scrape_prints_both_scrapes_and_the_target() -> None:
    output = run_quick("metrics_scrape.py")
    assert len(table_row(output, "by a worker (metrics.render())")) == 2
    assert len(table_row(output, "by another process (path=...)")) == 2
    assert "target: a worker's scrape under 1000 us at 8 processes:" in output


def test_asgi_cost_prints_every_candidate_and_the_target() -> None:
    output = run_quick("asgi_cost.py")
    for name in ("bare app", "careful pure-Python gate", "tidegate", "tidegate, refusing"):
        assert name in output
    assert "x what the careful gate adds (target <= 0.3)" in output


def test_asgi_overload_prints_every_case_and_the_targets() -> None:
    output = run_quick("asgi_overload.py")
    header = table_row(output, " " * 26)
    assert " ".join(header) == "ungated uvicorn limit 8 uvicorn limit 72 tidegate limit=8"
    successes = table_row(output, "successes/s")
    # Uvicorn's limit of 8 may serve nothing at all in a window this short.
    assert len(successes) == 4 and float(successes[1]) >= 0
    assert all(float(successes[case]) > 0 for case in (0, 2, 3))
    sheds = table_row(output, "503s/s")
    assert sheds[0] == "0" and float(sheds[1]) > 0 and float(sheds[3]) > 0
    hinted = table_row(output, "503s with Retry-After %")
    # Uvicorn's own 503 says nothing of when to come back; tidegate's always does.
    assert (hinted[1], hinted[3]) == ("0", "100")
    assert "every refusal carried Retry-After" in output
    assert output.count("met") + output.count("MISSED") >= 3
    last = output.rstrip().splitlines()[-1]
    assert last == "targets met" or last.startswith("TARGETS MISSED: ")
