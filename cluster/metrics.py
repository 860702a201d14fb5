"""Per-iteration scalars as Ray metrics (Prometheus, through each node's metrics agent): `drivetune_<key>` gauges."""

from __future__ import annotations

import math
import re
from typing import Any


class RayMetrics:
    """Scalars as ray.util.metrics Gauges named drivetune_<key> (sanitised), created lazily, tagged."""

    def __init__(self, prefix: str = "drivetune_", tags: dict[str, str] | None = None) -> None:
        self.prefix, self.tags = prefix, dict(tags or {})
        self._gauges: dict[str, Any] = {}

    def record(self, values: dict[str, Any]) -> None:
        """Set one gauge per finite numeric value (others are skipped)."""
        from ray.util.metrics import Gauge

        for key, value in values.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            name = self.prefix + re.sub(r"[^a-zA-Z0-9_]", "_", key)
            if name not in self._gauges:
                self._gauges[name] = Gauge(name, description=f"drivetune {key}", tag_keys=tuple(self.tags))
            self._gauges[name].set(float(value), tags=self.tags)
