"""Issue 24: `drivetune COMMAND --help` answers in under a second for every command, because command modules load
torch and Ray only when they run. Measured as a user would: a fresh `python -m drivetune.cli` process, best of 3 (one
slow start on a busy machine is not the command's cost)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from drivetune.cli import COMMANDS

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}


def _help_seconds(name: str) -> float:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "drivetune.cli", *name.split(), "--help"], capture_output=True,
                         text=True, env=ENV)
    elapsed = time.perf_counter() - t0
    assert out.returncode == 0 and f"usage: drivetune {name}" in out.stdout, out.stderr
    return elapsed


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_is_under_a_second(name):
    best = min(_help_seconds(name) for _ in range(3))
    assert best < 1.0, f"drivetune {name} --help took {best:.2f} s (best of 3)"
