"""Stopping one Ray head on a shared machine (`python -m cluster.head_stop TEMP_DIR`): every process of that head
goes, its agents included (their command lines do not name the temp dir), while a second head beside it and an
unrelated process keep running."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))
from ray_head import RayHead  # noqa: E402

from cluster.head_stop import alive, head_processes  # noqa: E402


@pytest.mark.slow
def test_stopping_one_head_stops_all_its_processes_and_nothing_else():
    bystander = subprocess.Popen(["sleep", "600"])  # a process of no head
    other = RayHead(num_cpus=1).start()
    head = RayHead(num_cpus=1)
    try:
        head.start()
        procs, theirs = head_processes(head.temp_dir), head_processes(other.temp_dir)
        names = [p.name for p in procs]
        for wanted in ("gcs_server", "raylet", "ray::DashboardAgent", "ray::RuntimeEnvAgent"):
            assert any(wanted in n for n in names), (wanted, names)
        mark = str(head.temp_dir)
        agents = [p for p in procs if "Agent" in p.name]
        assert agents and all(mark not in Path(f"/proc/{p.pid}/cmdline").read_text() for p in agents)
        assert {(p.pid, p.start) for p in procs}.isdisjoint({(p.pid, p.start) for p in theirs})
        assert bystander.pid not in {p.pid for p in procs}

        listed = subprocess.run([sys.executable, "-m", "cluster.head_stop", str(head.temp_dir), "--list"],
                                capture_output=True, text=True, timeout=60)
        assert listed.returncode == 0 and "ray::RuntimeEnvAgent" in listed.stdout
        assert all(alive(p) for p in procs)  # --list stops nothing
        done = subprocess.run([sys.executable, "-m", "cluster.head_stop", str(head.temp_dir), "--grace", "10"],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "; 0 left" in done.stdout
        assert [p.name for p in procs if alive(p)] == []
        assert head_processes(head.temp_dir) == []

        assert [p.name for p in theirs if not alive(p)] == []  # the other head is untouched and still serves
        version = httpx.get(f"{other.address}/api/version", headers={"Authorization": f"Bearer {other.token}"},
                            timeout=30)
        assert version.status_code == 200
        assert bystander.poll() is None
    finally:
        head.stop()
        other.stop()
        bystander.kill()
        bystander.wait()
