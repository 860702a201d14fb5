"""Held-out evaluation of behaviour policies on fixed scenes: realism per scene, bootstrap CIs, paired differences.

Every policy (an in-memory model or a checkpoint) is rolled out with `drivetune.closed_loop.simulate` on the same
scenes, with the same sampler, base seed and policy version (0 by default: the rollouts of every policy use the same
random numbers, "common random numbers", which makes the paired differences less noisy), and scored with
`drivetune.realism.realism_metrics`, batched over `batch_scenes` scenes. Each scene gives one row of `METRICS`.

Confidence intervals are percentile bootstraps over scenes: B resamples of S scene indices drawn with replacement
(`numpy.random.default_rng(seed)`, the same resamples for every metric and every policy), the mean of each resample,
and the (1−level)/2 and (1+level)/2 percentiles of those means (numpy's linear interpolation). A paired difference
to the first policy resamples the per-scene differences with the same indices. With one scene an interval is the
point itself. The JSON schema of `evaluate_checkpoints` is documented in docs/evaluation.md.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

import numpy as np

from drivetune.realism.metrics import HEADLINE_METRICS, METRIC_FIELDS
from drivetune.samplers import SamplerConfig
from drivetune.scene import Scene

if TYPE_CHECKING:
    from drivetune.model import BehaviorModel
    from drivetune.tokenizer import TorchVocab

EVAL_FORMAT = "drivetune-eval-v1"
EVAL_POLICY_VERSION = 0  # the seed component every evaluated policy shares (common random numbers)
# The headline fields first (meta, buckets, event rates, minADE), then the other official fields.
METRICS: tuple[str, ...] = (*HEADLINE_METRICS, *(f for f in METRIC_FIELDS if f not in HEADLINE_METRICS))

Progress = Callable[[int], None]


@dataclass
class BootstrapConfig:
    """Percentile bootstrap over scenes: `resamples` (B), two-sided `level`, `seed` of the resampling."""

    resamples: int = 2000
    level: float = 0.95
    seed: int = 0

    def validate(self) -> "BootstrapConfig":
        if self.resamples < 1:
            raise ValueError(f"bootstrap resamples must be >= 1, got {self.resamples}")
        if not 0.0 < self.level < 1.0:
            raise ValueError(f"bootstrap level must be in (0, 1), got {self.level}")
        return self

    def indices(self, num_scenes: int) -> np.ndarray:
        """[B, S] scene indices of every resample (a pure function of the seed and S)."""
        self.validate()
        return np.random.default_rng(self.seed).integers(0, num_scenes, size=(self.resamples, num_scenes))


def table(rows: Sequence[dict]) -> np.ndarray:
    """[S, len(METRICS)] float64 matrix of per-scene rows."""
    return np.array([[float(r[m]) for m in METRICS] for r in rows], dtype=np.float64)


def bootstrap_ci(values: np.ndarray, boot: BootstrapConfig) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval (lo, hi) of the mean over scenes of `values` [S, M] (or [S])."""
    idx = boot.indices(values.shape[0])
    means = values[idx].mean(axis=1)  # [B, ...]
    tail = 100.0 * (1.0 - boot.level) / 2.0
    lo, hi = np.percentile(means, [tail, 100.0 - tail], axis=0)
    return lo, hi


def summarize(values: np.ndarray, boot: BootstrapConfig) -> dict[str, dict]:
    """{"mean": {metric: v}, "ci": {metric: [lo, hi]}} of a [S, M] matrix."""
    lo, hi = bootstrap_ci(values, boot)
    mean = values.mean(axis=0)
    return {"mean": {m: float(mean[i]) for i, m in enumerate(METRICS)},
            "ci": {m: [float(lo[i]), float(hi[i])] for i, m in enumerate(METRICS)}}


def paired_difference(rows: Sequence[dict], base_rows: Sequence[dict], boot: BootstrapConfig) -> dict[str, dict]:
    """Mean and bootstrap interval of the per-scene difference rows − base_rows (scenes matched by scenario id)."""
    ids, base_ids = [r["scenario_id"] for r in rows], [r["scenario_id"] for r in base_rows]
    if ids != base_ids:
        raise ValueError("paired difference needs the same scenes in the same order")
    return summarize(table(rows) - table(base_rows), boot)


# ------------------------------------------------------------------------------------------------ inputs
def load_eval_scenes(specs: Sequence[str], scenario_ids: Iterable[str] | None = None,
                     max_scenes: int | None = None) -> list[Scene]:
    """The scenes of several source specs (files, directories, globs, shard directories), in spec order; optionally
    only `scenario_ids` and at most `max_scenes`. A scenario id met twice is an error (scenes are paired by id)."""
    from drivetune.sources import iter_scenes

    wanted = set(scenario_ids or ())
    scenes: list[Scene] = []
    seen: set[str] = set()
    for scene in iter_scenes(list(specs)):
        if wanted and scene.scenario_id not in wanted:
            continue
        if scene.scenario_id in seen:
            raise ValueError(f"scenario {scene.scenario_id} appears twice in {', '.join(map(str, specs))}")
        seen.add(scene.scenario_id)
        scenes.append(scene)
        if max_scenes is not None and len(scenes) >= max_scenes:
            break
    if not scenes:
        raise ValueError(f"no scenes{' matched ' + str(sorted(wanted)) if wanted else ''} in {', '.join(specs)}")
    if wanted - seen:
        raise ValueError(f"scenarios not found: {sorted(wanted - seen)}")
    return scenes


def parse_sampler_grid(text: str, base: SamplerConfig) -> list[SamplerConfig]:
    """`"k=8,32 warm_lambda=0,1,4"` → the Cartesian product of those `SamplerConfig` fields (first key outermost),
    every other field taken from `base`."""
    casts = {f.name: {"str": str, "int": int, "float": float}[str(f.type)] for f in fields(SamplerConfig)}
    axes: dict[str, list] = {}
    for part in text.split():
        key, sep, values = part.partition("=")
        key = key.replace("-", "_")
        if not sep or not values:
            raise ValueError(f"sampler grid: {part!r} is not KEY=V1,V2,...")
        if key not in casts:
            raise ValueError(f"sampler grid: unknown key {key!r} (choose from {', '.join(casts)})")
        if key in axes:
            raise ValueError(f"sampler grid: key {key!r} given twice")
        try:
            axes[key] = [casts[key](v) for v in values.split(",")]
        except ValueError as e:
            raise ValueError(f"sampler grid: bad value in {part!r} ({e})") from e
    if not axes:
        raise ValueError("sampler grid is empty (expected e.g. 'k=8,32 warm_lambda=0,1,4')")
    grid = [replace(base, **dict(zip(axes, combo))) for combo in itertools.product(*axes.values())]
    for cfg in grid:
        cfg.validate()
    return grid


# ------------------------------------------------------------------------------------------------ evaluation
def evaluate_policy(
    model: BehaviorModel,
    vocab: TorchVocab | None,
    scenes: Sequence[Scene],
    rollouts: int,
    sampler: SamplerConfig,
    seed: int = 0,
    *,
    batch_scenes: int = 1,
    device: str = "cpu",
    sdc: str = "policy",
    config: str = "2025",
    policy_version: int = EVAL_POLICY_VERSION,
    boot: BootstrapConfig | None = None,
    keep_rollouts: Iterable[str] = (),
    progress: Progress | None = None,
) -> dict:
    """Roll out an in-memory `model` (a `BehaviorModel` on `device`) with its `vocab` (`TorchVocab`, or None for the
    model's own) on `scenes` and score them.

    Returns {"sampler", "rollouts", "seed", "policy_version", "scenes": per-scene rows (scenario_id + METRICS),
    "mean", "ci" (bootstrap, `boot` or the default), "seconds": {"simulate", "score", "cpu"},
    "rollouts_xy": {scenario_id: float32 [R, A_sim, 80, 2]} for the scenes in `keep_rollouts`}.
    """
    from drivetune.closed_loop import simulate
    from drivetune.realism import realism_metrics

    sampler.validate()
    boot = (boot or BootstrapConfig()).validate()
    if rollouts < 1 or batch_scenes < 1:
        raise ValueError(f"rollouts and batch_scenes must be >= 1 (got {rollouts}, {batch_scenes})")
    if not scenes:
        raise ValueError("evaluate_policy needs at least one scene")
    if vocab is None:
        vocab = model.vocab.to_torch(device)
    if vocab.hash != model.vocab_hash:
        raise ValueError(f"vocabulary {vocab.hash[:12]} is not the model's ({model.vocab_hash[:12]})")
    keep = set(keep_rollouts)
    rows, kept, sim_s, score_s = [], {}, 0.0, 0.0
    cpu0 = time.process_time()
    for start in range(0, len(scenes), batch_scenes):
        batch = list(scenes[start:start + batch_scenes])
        t0 = time.perf_counter()
        results = simulate(model, vocab, batch, rollouts, sampler, base_seed=seed, policy_version=policy_version,
                           sdc=sdc)
        t1 = time.perf_counter()
        scored = realism_metrics(batch, [r.realism_rollouts() for r in results], config=config, device=device)
        score_s += time.perf_counter() - t1
        sim_s += t1 - t0
        for res, row in zip(results, scored):
            rows.append({"scenario_id": row["scenario_id"], **{m: float(row[m]) for m in METRICS}})
            if res.scenario_id in keep:
                kept[res.scenario_id] = np.stack([res.x, res.y], axis=-1)
        if progress is not None:
            progress(len(batch))
    return {"sampler": sampler.to_dict(), "rollouts": rollouts, "seed": seed, "policy_version": policy_version,
            "scenes": rows, **summarize(table(rows), boot),
            "seconds": {"simulate": sim_s, "score": score_s, "cpu": time.process_time() - cpu0},
            "rollouts_xy": kept}


def checkpoint_labels(paths: Sequence[str]) -> list[str]:
    """Display names: the path as given; a repeated path gets ' (2)', ' (3)', ..."""
    counts: dict[str, int] = {}
    out = []
    for p in map(str, paths):
        counts[p] = counts.get(p, 0) + 1
        out.append(p if counts[p] == 1 else f"{p} ({counts[p]})")
    return out


def evaluate_checkpoints(
    checkpoints: Sequence[str | Path],
    scenes: Sequence[Scene],
    rollouts: int,
    sampler: SamplerConfig,
    seed: int = 0,
    *,
    batch_scenes: int = 1,
    device: str = "cpu",
    sdc: str = "policy",
    config: str = "2025",
    boot: BootstrapConfig | None = None,
    grid: Sequence[SamplerConfig] = (),
    keep_rollouts: Iterable[str] = (),
    progress: Progress | None = None,
) -> dict:
    """Evaluate checkpoint (or run) directories one after another on the same scenes, seeds and sampler; every
    checkpoint after the first is also compared with the first (paired over scenes). `grid` adds one row per
    checkpoint and grid sampler (the test-time sampler table). Returns the eval.json payload; each checkpoint entry
    also holds "rollouts_xy" (numpy arrays, not JSON) for the scenes in `keep_rollouts`."""
    from drivetune.checkpoint import load_checkpoint, resolve_checkpoint

    if not checkpoints:
        raise ValueError("evaluate_checkpoints needs at least one checkpoint")
    boot = (boot or BootstrapConfig()).validate()
    resolved = [resolve_checkpoint(c) for c in checkpoints]  # every path is checked before any work starts
    keep = list(keep_rollouts)
    common = dict(batch_scenes=batch_scenes, device=device, sdc=sdc, config=config, boot=boot, progress=progress)
    entries, grid_rows = [], []
    for label, path in zip(checkpoint_labels(checkpoints), resolved):
        model, meta = load_checkpoint(path, device=device)
        vocab = model.vocab.to_torch(device)
        res = evaluate_policy(model, vocab, scenes, rollouts, sampler, seed, keep_rollouts=keep, **common)
        entries.append({"name": label, "path": str(path), "step": int(meta.get("step", 0)),
                        "vocab_hash": meta.get("vocab_hash"), **{k: res[k] for k in
                                                                ("mean", "ci", "scenes", "seconds", "rollouts_xy")}})
        for cfg in grid:
            g = evaluate_policy(model, vocab, scenes, rollouts, cfg, seed, **common)
            grid_rows.append({"checkpoint": label, "sampler": cfg.to_dict(), "mean": g["mean"], "ci": g["ci"],
                              "seconds": g["seconds"]})
        del model, vocab
    base = entries[0]
    diffs = [{"name": e["name"], "baseline": base["name"], **paired_difference(e["scenes"], base["scenes"], boot)}
             for e in entries[1:]]
    return {
        "format": EVAL_FORMAT,
        "settings": {"scenario_ids": [s.scenario_id for s in scenes], "rollouts": rollouts,
                     "sampler": sampler.to_dict(), "seed": seed, "policy_version": EVAL_POLICY_VERSION, "sdc": sdc,
                     "config": config, "batch_scenes": batch_scenes, "device": device,
                     "bootstrap": {"method": "percentile", "resamples": boot.resamples, "level": boot.level,
                                   "seed": boot.seed}},
        "metrics": list(METRICS),
        "checkpoints": entries,
        "differences": diffs,
        "sampler_grid": grid_rows,
    }

