"""How a closed-loop rollout is run: which next-token sampler with which parameters, and who drives the SDC.
Torch-free, so commands offer these choices in `--help`; the samplers themselves are `drivetune.samplers`, the loop
`drivetune.closed_loop`."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

SAMPLERS = ("topk", "catk", "warmk", "greedy")
WOSAC_ROLLOUTS = 32  # the challenge's rollouts per scenario; scores from another count are not comparable
# Who drives the SDC: the policy, a replay of its log, or the service's caller (`external`, serving only).
SDC_MODES = ("policy", "log", "external")
SDC_MODES_OFFLINE = ("policy", "log")  # the modes of a run without a caller (simulate, eval, training)


@dataclass
class SamplerConfig:
    """Which sampler and its parameters. `temperature` is τ of top-K and Warm-K; `warm_lambda` is Warm-K's λ [1/m];
    `target_guard` is CAT-K's drift guard: no SFT target where even the best token ends more than this many of the
    type's box lengths from the log (0: no guard)."""

    kind: str = "topk"
    k: int = 32
    temperature: float = 1.0
    warm_lambda: float = 1.0
    target_guard: float = 1.0

    def validate(self) -> "SamplerConfig":
        if self.kind not in SAMPLERS:
            raise ValueError(f"sampler kind {self.kind!r} unknown (choose from {', '.join(SAMPLERS)})")
        if self.k < 1:
            raise ValueError(f"sampler k must be >= 1, got {self.k}")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ValueError(f"sampler temperature must be a positive finite number, got {self.temperature}")
        if not (self.warm_lambda >= 0 and math.isfinite(self.warm_lambda)):
            raise ValueError(f"sampler warm_lambda must be >= 0 and finite, got {self.warm_lambda}")
        if not (self.target_guard >= 0 and math.isfinite(self.target_guard)):
            raise ValueError(f"sampler target_guard must be >= 0 and finite, got {self.target_guard}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)
