"""Public API of the WOSAC realism metric: batched over scenes and rollouts, CPU or CUDA.

    from drivetune.realism import realism_metrics
    results = realism_metrics([scene], [rollouts], config="2025", device="cpu")
    results[0]["metametric"]

One pass computes the per-step features of the log (rollout 0) and every rollout, turns them into per-rollout bin
counts, and reads the group likelihoods (and, for rewards, single-rollout and leave-one-out ones) from those counts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from drivetune.realism.batch import Batch, Rollouts, build_batch
from drivetune.realism.challenge import BUCKETS, FEATURE_NAMES, MetricConfig, get_config
from drivetune.realism.features import (displacement_error, distance_to_nearest_object, kinematic_validity,
                                        kinematics, time_to_collision)
from drivetune.realism.likelihood import bin_index, log_prob, masked_mean_exp, rollout_counts
from drivetune.realism.map_features import build_edges, distance_to_road_edge
from drivetune.realism.traffic_lights import build_lanes_and_signals, red_light_violation
from drivetune.scene import Scene

METRIC_FIELDS = (
    "metametric", "average_displacement_error", "min_average_displacement_error",
    *(f"{n}_likelihood" for n in FEATURE_NAMES),
    "simulated_collision_rate", "simulated_offroad_rate", "simulated_traffic_light_violation_rate",
)


# The headline fields of every results table, chart and log (meta, the buckets, event rates, minADE) and their short
# labels; the other official fields follow them in full reports.
HEADLINE_METRICS: dict[str, str] = {
    "metametric": "meta", "kinematic_metrics": "kinematic", "interactive_metrics": "interactive",
    "map_based_metrics": "map", "simulated_collision_rate": "collision", "simulated_offroad_rate": "offroad",
    "simulated_traffic_light_violation_rate": "red light", "min_average_displacement_error": "minADE",
}


@dataclass
class Terms:
    """Everything the likelihoods need, per feature: per-rollout counts, logged bins and the scoring mask."""

    counts: dict[str, Tensor]  # [S, R, E, bins] (or [S, R, E, T, bins])
    log_bins: dict[str, Tensor]  # [S, E, T] (T = 1 for Bernoulli terms)
    masks: dict[str, Tensor]  # [S, E, T]
    indicators: dict[str, Tensor]  # sim "ever happened" [S, R, E] for collision / offroad / red light (scored)
    first_collision: Tensor  # long [S, R, E]: the first future step (0-79) with a collision, -1 without one
    ade: Tensor  # [S, R, E]
    rates: dict[str, Tensor]  # [S]


def compute_features(batch: Batch, scenes: list[Scene], cap: float = 40.0) -> dict[str, Tensor]:
    """Per-step features [S, R1, E, 80] (rollout 0 = log); bool per-step events included.

    Distances to the nearest object above `cap` (the histogram ceiling) are only bounded below.
    """
    cur = scenes[0].current_time_index
    kin = kinematics(batch.scored_traj)
    feats = {k: v[..., cur + 1 :] for k, v in kin.items()}
    feats["distance_to_nearest_object"] = distance_to_nearest_object(batch, cur, cap)
    feats["time_to_collision"] = time_to_collision(batch, cur)
    feats["distance_to_road_edge"] = distance_to_road_edge(batch, build_edges(scenes, batch), cur)
    lanes, sig = build_lanes_and_signals(scenes, batch)
    feats["traffic_light_violation_per_step"] = red_light_violation(batch, lanes, sig, cur)
    feats["collision_per_step"] = feats["distance_to_nearest_object"] < 0.0
    feats["offroad_per_step"] = feats["distance_to_road_edge"] > 0.0
    return feats


def build_terms(batch: Batch, feats: dict[str, Tensor], cfg: MetricConfig, cur: int) -> Terms:
    """Bins, per-rollout counts and masks of every term; "ever happened" events over logged-valid steps."""
    log_valid = batch.scored_valid[:, 0, :, cur + 1 :]  # [S, E, 80]
    speed_ok, accel_ok = kinematic_validity(log_valid)
    veh = batch.is_vehicle[:, :, None]
    masks = {"linear_speed": speed_ok, "angular_speed": speed_ok, "linear_acceleration": accel_ok,
             "angular_acceleration": accel_ok, "distance_to_nearest_object": log_valid,
             "distance_to_road_edge": log_valid, "time_to_collision": log_valid & veh}
    counts, log_bins = {}, {}
    for name, mask in masks.items():
        fc = cfg.features[name]
        bins = bin_index(feats[name], fc)
        counts[name] = rollout_counts(bins[:, 1:], fc)
        log_bins[name] = bins[:, 0]
    events = {"collision_indication": feats["collision_per_step"] & log_valid[:, None],
              "offroad_indication": feats["offroad_per_step"] & log_valid[:, None],
              "traffic_light_violation": feats["traffic_light_violation_per_step"] & (log_valid & veh)[:, None]}
    sm = batch.scored_mask
    indicators = {}
    for name, ev in events.items():
        fc = cfg.features[name]
        ever = ev.any(-1) & sm[:, None]  # [S, R1, E]
        indicators[name] = ever[:, 1:]
        counts[name] = rollout_counts(ever[:, 1:, :, None].long(), fc)
        log_bins[name] = ever[:, 0, :, None].long()
        masks[name] = sm[:, :, None]
    hit = events["collision_indication"][:, 1:] & sm[:, None, :, None]  # [S, R, E, 80]
    first_collision = torch.where(hit.any(-1), hit.to(torch.uint8).argmax(-1), -1)
    red_any = (feats["traffic_light_violation_per_step"] & log_valid[:, None]).any(-1)[:, 1:]
    denom = sm.sum(1).to(torch.float64) * batch.num_rollouts
    rate = lambda ind: (ind & sm[:, None]).sum((1, 2)).to(torch.float64) / denom  # noqa: E731
    rates = {"simulated_collision_rate": rate(indicators["collision_indication"]),
             "simulated_offroad_rate": rate(indicators["offroad_indication"]),
             "simulated_traffic_light_violation_rate": rate(red_any)}
    return Terms(counts, log_bins, masks, indicators, first_collision, displacement_error(batch), rates)


def likelihoods(terms: Terms, cfg: MetricConfig, counts: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    """Likelihood per feature from (possibly reduced) counts [..., S, E, bins]; defaults to all rollouts pooled."""
    out = {}
    for name in FEATURE_NAMES:
        c = counts[name] if counts is not None else terms.counts[name].sum(1)
        out[name] = masked_mean_exp(log_prob(c, terms.log_bins[name], cfg.features[name]), terms.masks[name])
    return out


def metametric(liks: dict[str, Tensor], cfg: MetricConfig) -> Tensor:
    return sum(float(np.float32(cfg.weight(n))) * liks[n].to(torch.float64) for n in FEATURE_NAMES)


def bucketed(values: dict[str, float], cfg: MetricConfig) -> dict[str, float]:
    """Official bucket aggregation (weighted mean of the likelihoods within each bucket)."""
    out = {}
    for bucket, names in BUCKETS.items():
        w = [float(np.float32(cfg.weight(n))) for n in names]
        if sum(w) == 0:
            raise ValueError(f"config {cfg.name}: bucket {bucket} has zero total weight")
        out[f"{bucket}_metrics"] = sum(wi * values[f"{n}_likelihood"] for wi, n in zip(w, names)) / sum(w)
    return out


def evaluate(
    scenes: list[Scene], rollouts: list[Rollouts], config: str | MetricConfig = "2025", device: str = "cpu",
    scored: str = "evaluated", dtype: torch.dtype = torch.float32,
) -> tuple[Batch, Terms, MetricConfig]:
    """Validate inputs and run the feature pass; the shared first half of metrics and rewards."""
    cfg = get_config(config)
    with torch.no_grad():
        batch = build_batch(scenes, rollouts, scored=scored, dtype=dtype, device=device)
        feats = compute_features(batch, scenes, cfg.features["distance_to_nearest_object"].max_val)
        terms = build_terms(batch, feats, cfg, scenes[0].current_time_index)
    return batch, terms, cfg


def summarize(batch: Batch, terms: Terms, cfg: MetricConfig) -> list[dict[str, float]]:
    """Per-scene dict with the official SimAgentMetrics fields plus the bucket scores."""
    liks = likelihoods(terms, cfg)
    meta = metametric(liks, cfg)
    sm = batch.scored_mask[:, None].to(terms.ade.dtype)
    per_rollout = (terms.ade * sm).sum(-1) / sm.sum(-1)  # [S, R]
    cols = {"metametric": meta, "average_displacement_error": per_rollout.mean(1),
            "min_average_displacement_error": per_rollout.amin(1)}
    cols.update({f"{n}_likelihood": liks[n] for n in FEATURE_NAMES})
    cols.update(terms.rates)
    cpu = {k: v.detach().double().cpu().numpy() for k, v in cols.items()}
    out = []
    for s, sid in enumerate(batch.scenario_ids):
        row = {"scenario_id": sid, **{k: float(cpu[k][s]) for k in METRIC_FIELDS}}
        row.update(bucketed(row, cfg))
        out.append(row)
    return out


def mean_metrics(rows: list[dict[str, float]]) -> dict[str, float]:
    """Dataset-level result: the mean of every numeric field over scenes (the official aggregation)."""
    keys = [k for k, v in rows[0].items() if isinstance(v, float)]
    return {k: float(np.mean([r[k] for r in rows])) for k in keys}


def realism_metrics(
    scenes: Scene | list[Scene], rollouts: Rollouts | list[Rollouts], config: str | MetricConfig = "2025",
    device: str = "cpu", scored: str = "evaluated", dtype: torch.dtype = torch.float32,
) -> list[dict[str, float]]:
    """Realism metrics of one or several scenes (each with its own rollout set); one dict per scene.

    `scored`: "evaluated" (SDC + tracks_to_predict, the official set) or "all" (every sim agent).
    Each dict also carries `seconds`, the wall time of the whole batch divided by the number of scenes.
    """
    scenes = [scenes] if isinstance(scenes, Scene) else list(scenes)
    rollouts = [rollouts] if isinstance(rollouts, Rollouts) else list(rollouts)
    t0 = time.perf_counter()
    batch, terms, cfg = evaluate(scenes, rollouts, config, device, scored, dtype)
    rows = summarize(batch, terms, cfg)
    dt = (time.perf_counter() - t0) / len(rows)
    for r in rows:
        r["seconds"] = dt
    return rows
