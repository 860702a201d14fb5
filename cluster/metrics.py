"""Scalars of the training loops on the Ray dashboard / Prometheus: `RayMetrics` turns a dict of floats into
`ray.util.metrics` Gauges named `drivetune_<key>` (Prometheus shows them as `ray_drivetune_<key>` on every node's
metrics export port, about 10 s after the first value).

    metrics = RayMetrics(tags={"run": "rft-001", "stage": "rft"})
    metrics.record({"reward/collision": 0.12, "kl": 0.004, "groups_per_s": 3.5})

Record every iteration: a gauge that is not set again drops off the endpoint after a while (observed here within
about a minute), while counters stay.
"""

from __future__ import annotations

import math
import numbers
import re
from typing import Any

_BAD_CHARS = re.compile(r"[^a-zA-Z0-9_]+")

# What deploy/grafana/drivetune.json plots from the RL driver's per-iteration `record` (cluster/rft.py: the learner's
# stats plus the driver's timings), key -> meaning; reward terms are every key under REWARD_PREFIX.
DASHBOARD_KEYS = {
    "reward": "mean total reward of the iteration's rollouts",
    "kl_k1": "k1 KL estimate to the frozen reference policy",
    "kl_k3": "k3 KL estimate to the frozen reference policy",
    "collision_rate": "share of scored agents in a collision",
    "offroad_rate": "share of scored agents off the road",
    "red_light_rate": "share of scored agents running a red light",
    "groups_per_s": "rollout groups per second of iteration",
    "learner_tokens_per_s": "tokens the learner trains on per second",
    "policy_version_lag": "policy versions between the learner and the rollouts it trains on",
    "iteration": "RL iteration",
    "seconds_update": "seconds per learner update",
    "seconds_rollout": "seconds the driver waited for the iteration's rollouts",
}
REWARD_PREFIX = "reward_"


def metric_name(prefix: str, key: str) -> str:
    """`prefix` + `key` with every run of characters Prometheus does not allow replaced by one underscore
    ("reward/collision rate" -> "drivetune_reward_collision_rate")."""
    name = _BAD_CHARS.sub("_", f"{prefix}{key}").strip("_")
    if not name or name[0].isdigit():
        raise ValueError(f"metric key {key!r} with prefix {prefix!r} gives no valid metric name")
    return name


class RayMetrics:
    """Scalars as ray.util.metrics Gauges named drivetune_<key> (sanitised), created lazily, tagged."""

    def __init__(self, prefix: str = "drivetune_", tags: dict[str, str] | None = None) -> None:
        self.prefix = prefix
        self.tags = {str(k): str(v) for k, v in (tags or {}).items()}
        self._gauges: dict[str, Any] = {}
        self.skipped: dict[str, Any] = {}  # the last value of each key that was not a finite number

    def record(self, values: dict[str, float]) -> None:
        """Set one gauge per key; non-finite (NaN, inf) and non-numeric values are skipped (kept in `skipped`)."""
        for key, value in values.items():
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                self.skipped[key] = value
                continue
            self._gauge(key).set(float(value), tags=self.tags)

    def _gauge(self, key: str) -> Any:
        name = metric_name(self.prefix, key)
        gauge = self._gauges.get(name)
        if gauge is None:
            from ray.util.metrics import Gauge

            gauge = Gauge(name, description=f"drivetune {key}", tag_keys=tuple(self.tags))
            self._gauges[name] = gauge
        return gauge
