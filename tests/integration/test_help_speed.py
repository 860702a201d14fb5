"""Issue 24: `drivetune COMMAND --help` costs under a second for every command, because command modules load torch
and Ray only when they run. Measured as a user would start it, a fresh `python -m drivetune.cli` process, by the
CPU time that process uses (user + system): unlike wall time it does not grow when other work shares the machine's
cores. Best of 3."""

from __future__ import annotations

import os
import resource
import subprocess
import sys

import pytest

from drivetune.cli import COMMANDS

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}


def _help_cpu_seconds(name: str) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run([sys.executable, "-m", "drivetune.cli", *name.split(), "--help"], capture_output=True,
                         text=True, env=ENV)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert out.returncode == 0 and f"usage: drivetune {name}" in out.stdout, out.stderr
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_is_under_a_second(name):
    best = min(_help_cpu_seconds(name) for _ in range(3))
    assert best < 1.0, f"drivetune {name} --help took {best:.2f} CPU seconds (best of 3)"


def test_the_measure_sees_an_import_of_torch():
    """The measure can fail: a process that imports torch costs more than a second of CPU."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", "import torch, ray"], check=True, env=ENV)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime) > 1.0
