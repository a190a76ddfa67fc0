"""The soak run of ``benchmarks/soak.py``, at a length CI can afford.

The full run is ``python benchmarks/soak.py`` (a million requests); this one pushes 50,000
requests with every fault through the middleware and checks the same invariants.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

SOAK_PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "soak.py"


@pytest.fixture(scope="module")
def soak() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("soak", SOAK_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["soak"] = module  # dataclasses look their module up by name
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("soak", None)


@pytest.mark.parametrize(("threads", "limit"), [(8, 4), (32, 8)])
def test_no_fault_leaks_a_permit_or_passes_the_limit(
    soak: ModuleType, threads: int, limit: int
) -> None:
    result = soak.soak(50_000, threads=threads, limit=limit, seed=threads)
    assert result.unexpected == []
    assert result.in_flight == 0
    assert result.app_inside_at_end == 0
    assert 0 < result.peak <= limit
    assert result.app_peak <= limit
    assert result.admitted + result.rejected == result.requests - result.exempt
    assert result.admitted == result.app_calls
    assert result.rejected == result.shed_seen
    # The run was a real test: the gate was full often, and every fault and ending happened.
    assert result.rejected > 1000 and result.admitted > 1000
    assert result.exempt > 0
    assert set(result.faults) == set(soak.APP_FAULTS)
    assert set(result.endings) == set(soak.CLIENT_ENDINGS)
    assert result.violations() == []


def test_the_script_prints_the_invariants_and_exits_zero(
    soak: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    assert soak.main(["--requests", "5000", "--threads", "4", "--limit", "2"]) == 0
    out = capsys.readouterr().out
    assert "soak: 5000 requests over 4 threads, limit 2" in out
    assert "requests/s" in out
    assert "in_flight at the end 0" in out
    assert "invariants: all hold" in out


def test_a_broken_invariant_is_reported(soak: ModuleType) -> None:
    result = soak.soak(2_000, threads=2, limit=2)
    result.in_flight = 1
    result.rejected += 1
    broken = result.violations()
    assert "in_flight is 1 at the end, not 0" in broken
    assert any(line.startswith("admitted") and "!= gated" in line for line in broken)
    assert "BROKEN" in result.report()
