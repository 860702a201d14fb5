"""`ModelConfig` (dataclass, YAML-loadable), the named sizes micro / nano / tiny and the model-definition version."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any


MODEL_VERSION = 2  # the model definition: 1 = attention normalised over heads (before SMART parity), 2 = SMART's


@dataclass
class ModelConfig:
    """Sizes and radii of a `BehaviorModel`. `size` names a preset; explicit fields override it via `resolved()`."""

    size: str = "micro"
    hidden: int = 0  # 0 = take from the preset
    heads: int = 0
    map_layers: int = -1
    agent_layers: int = -1
    ff_mult: int = 0
    fourier_bands: int = 0
    time_span: int = 6  # temporal window, in tokens (6 = 3 s)
    map_radius: float = 30.0  # map -> agent (m)
    agent_radius: float = 60.0  # agent <-> agent (m)
    map_map_radius: float = 10.0  # map encoder (m)
    map_neighbors: int = 32  # nearest map tokens per agent (within map_radius)
    agent_neighbors: int = 32  # nearest agents per agent (within agent_radius)
    map_map_neighbors: int = 16  # nearest map tokens per map token (within map_map_radius)
    dropout: float = 0.1  # attention weights and feed-forward (SMART / CAT-K: 0.1)
    hist_drop: float = 0.1  # training only: each past token hidden from temporal attention (SMART's hist_drop_prob)

    def resolved(self) -> "ModelConfig":
        """This config with every 0 / -1 size field filled in from the named preset."""
        if self.size not in MODEL_SIZES:
            raise ValueError(f"unknown model size {self.size!r} (known: {sorted(MODEL_SIZES)})")
        preset = MODEL_SIZES[self.size]
        out: dict[str, Any] = {}
        for key, value in preset.items():
            current = getattr(self, key)
            out[key] = value if current in (0, -1) else current
        cfg = replace(self, **out)
        if cfg.hidden % cfg.heads:
            raise ValueError(f"hidden {cfg.hidden} is not divisible by heads {cfg.heads}")
        if cfg.time_span < 1:
            raise ValueError(f"time_span must be >= 1, got {cfg.time_span}")
        return cfg

    @classmethod
    def named(cls, size: str, **overrides: Any) -> "ModelConfig":
        return cls(size=size, **overrides).resolved()


# SMART-tiny: hidden 128, 8 heads, 3 map + 6 agent layers (~7M with 2048-token vocabularies).
MODEL_SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(hidden=128, heads=8, map_layers=3, agent_layers=6, ff_mult=4, fourier_bands=64),
    "nano": dict(hidden=64, heads=4, map_layers=2, agent_layers=4, ff_mult=2, fourier_bands=32),
    "micro": dict(hidden=48, heads=4, map_layers=1, agent_layers=2, ff_mult=2, fourier_bands=16),
}
