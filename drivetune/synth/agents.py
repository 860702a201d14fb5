"""Agent sizes (WOMD-like per type) and driver styles (cautious 0 .. aggressive 1)."""

from __future__ import annotations

import numpy as np

def _clip(x: float, lo: float, hi: float) -> float:
    return min(max(float(x), lo), hi)


def vehicle_size(rng: np.random.Generator, allow_large: bool = True) -> tuple[float, float, float]:
    """(length, width, height) of a car (most), SUV/van or truck/bus."""
    u = rng.random()
    if u < 0.88 or not allow_large:
        return (_clip(rng.normal(4.7, 0.35), 3.8, 5.5), _clip(rng.normal(2.0, 0.1), 1.75, 2.25),
                _clip(rng.normal(1.6, 0.18), 1.3, 2.0))
    if u < 0.97:
        return float(rng.uniform(5.2, 6.2)), float(rng.uniform(2.05, 2.3)), float(rng.uniform(1.9, 2.5))
    return float(rng.uniform(7.5, 11.0)), float(rng.uniform(2.4, 2.6)), float(rng.uniform(2.8, 3.5))


def pedestrian_size(rng: np.random.Generator) -> tuple[float, float, float]:
    return float(rng.uniform(0.45, 0.85)), float(rng.uniform(0.45, 0.85)), float(rng.uniform(1.5, 1.95))


def cyclist_size(rng: np.random.Generator) -> tuple[float, float, float]:
    return float(rng.uniform(1.6, 2.0)), float(rng.uniform(0.6, 0.8)), float(rng.uniform(1.5, 1.9))


# name -> (cautious value, aggressive value): linear in the style, then jittered by a few per cent
STYLE_RANGES = {
    "speed_factor": (0.85, 1.15),  # desired speed / speed limit
    "headway": (1.9, 0.9),  # IDM time headway, s
    "accel": (1.0, 2.6),  # IDM max acceleration, m/s^2
    "decel": (1.6, 3.2),  # IDM comfortable deceleration, m/s^2
    "min_gap": (3.0, 1.6),  # IDM jam distance, m
    "gap_accept": (5.5, 3.0),  # accepted time gap before a conflict, s
    "yellow_go": (4.5, 2.0),  # go through yellow when stopping needs more than this deceleration, m/s^2
    "stop_wait": (1.8, 0.4),  # dwell at a stop sign, s
    "lat_accel": (2.0, 3.4),  # comfortable lateral acceleration, m/s^2
    "lane_change_rate": (0.01, 0.08),  # spontaneous lane changes per second
}


def style_params(style: float, rng: np.random.Generator) -> dict[str, float]:
    """Behaviour parameters of one driver with style in [0, 1]."""
    jitter = rng.uniform(0.95, 1.05, len(STYLE_RANGES))  # the same draws as one call per parameter
    return {k: float((lo + (hi - lo) * style) * j) for (k, (lo, hi)), j in zip(STYLE_RANGES.items(), jitter.tolist())}
