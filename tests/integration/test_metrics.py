"""Metrics on the node's Prometheus endpoint: RayMetrics gauges from the driver, the rollout workers' own series
(tagged with their actor names) and the pool's restart counter, scraped from the metrics export port."""

from __future__ import annotations

import os
import re
import sys
import time
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))
from rollout_helpers import GROUP, SAMPLER, SEED, micro_policy  # noqa: E402

from cluster.metrics import RayMetrics, metric_name  # noqa: E402
from rollout_workers import PoolConfig, RolloutPool  # noqa: E402


def test_metric_names_are_sanitised():
    assert metric_name("drivetune_", "reward/collision rate") == "drivetune_reward_collision_rate"
    assert metric_name("drivetune_", "kl") == "drivetune_kl"
    with pytest.raises(ValueError, match="no valid metric name"):
        metric_name("", "9lives")


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def _scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    """name -> [(labels, value)] from the Prometheus text format."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and not line.startswith("#"):
            labels = dict(_LABEL.findall(match.group(2) or ""))
            out.setdefault(match.group(1), []).append((labels, float(match.group(3))))
    return out


def _value(samples, name: str, **labels: str) -> float | None:
    for got, value in samples.get(name, []):
        if all(got.get(k) == v for k, v in labels.items()):
            return value
    return None


@pytest.mark.slow
def test_driver_and_rollout_worker_metrics_reach_prometheus(ray_local, womd_637):
    run = f"metrics-test-{os.getpid()}"
    metrics = RayMetrics(tags={"run": run, "stage": "rft"})
    values = {"kl_k3": 0.0125, "reward/collision": -0.5, "groups_per_s": 3, "bad": float("nan"), "also_bad": "high",
              "flag": True}
    metrics.record(values)
    assert set(metrics.skipped) == {"bad", "also_bad", "flag"}

    scenes, weights, spec = micro_policy([womd_637], copies=2)
    port = ray_local.nodes()[0]["MetricsExportPort"]
    pool = RolloutPool(spec, PoolConfig(num_workers=1, num_cpus=0.5, max_restarts=1))
    try:
        worker = pool.names[0]
        assert ray_local.get_actor(worker) is not None  # a named actor: the dashboard lists it by role
        assert worker.startswith("drivetune-rollout-")
        pool.set_weights(weights, 1)
        assert len(list(pool.generate(scenes, GROUP, SAMPLER, SEED))) == 2
        wanted = {"kl": ("ray_drivetune_kl_k3", {"run": run, "stage": "rft"}, 0.0125),
                  "reward": ("ray_drivetune_reward_collision", {"run": run}, -0.5),
                  "throughput": ("ray_drivetune_groups_per_s", {"run": run}, 3.0),
                  "groups": ("ray_drivetune_rollout_groups_total", {"worker": worker}, 2.0)}
        # Ray exports a gauge while it is being set (a loop records every iteration): record as a loop would.
        samples = _wait_for(port, lambda got: all(_value(got, n, **lab) == v for n, lab, v in wanted.values()) and
                            _value(got, "ray_drivetune_rollout_task_seconds", worker=worker) is not None,
                            refresh=lambda: metrics.record(values))
        for key, (name, labels, expected) in wanted.items():
            assert _value(samples, name, **labels) == expected, (key, samples.get(name))
        assert _value(samples, "ray_drivetune_rollout_task_seconds", worker=worker) > 0
        assert not any("drivetune_bad" in name or "drivetune_flag" in name for name in samples)

        ray_local.kill(pool.workers[0], no_restart=False)  # the next generate meets the failure: a restart
        assert len(list(pool.generate(scenes[:1], GROUP, SAMPLER, SEED))) == 1
        assert pool.restarts_seen == 1
    finally:
        pool.shutdown()
    restarts = "ray_drivetune_rollout_worker_restarts_total"
    samples = _wait_for(port, lambda got: (_value(got, restarts) or 0) >= 1)
    assert _value(samples, restarts) >= 1


def _wait_for(port: int, done, timeout_s: float = 120.0, refresh=lambda: None):
    """Scrape until `done(samples)` (metrics reach the endpoint about 10 s after they are set)."""
    deadline, samples = time.monotonic() + timeout_s, {}
    while time.monotonic() < deadline:
        refresh()
        samples = _scrape(port)
        if done(samples):
            break
        time.sleep(2)
    return samples
