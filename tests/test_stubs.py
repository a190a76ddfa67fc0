"""The type stubs of the native module match what the built module really has."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.timeout(300)
def test_stubs_match_the_built_module() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "tidegate._tidegate"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
