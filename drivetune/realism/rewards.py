"""Per-rollout realism outputs for RL rewards, all from one batched metric pass.

For each scene and rollout: per-agent collision / offroad / red-light indicators ("ever happened" over the agent's
logged-valid future steps, red light for vehicles only, as in the likelihood), whether the agent was at fault in its
first collision (`collision_at_fault`, drivetune's own rule, not the metric's), the meta metric of that rollout alone,
the group meta metric without it, M(-i), and its leave-one-out contribution r_i = mean_j M(-j) - M(-i) (positive when
the group scores worse without rollout i). The scored set is the official evaluated agents or every sim agent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from drivetune.realism.batch import Batch, Rollouts
from drivetune.realism.challenge import MetricConfig
from drivetune.realism.metrics import evaluate, likelihoods, metametric, summarize
from drivetune.scene import Scene


@dataclass
class RolloutRewards:
    """Shapes: S scenes, R rollouts, E scored agents (padded; see `scored_mask` and `scored_ids`)."""

    scenario_ids: list[str]
    scored_ids: list[np.ndarray]
    scored_mask: Tensor  # bool [S, E]
    collision: Tensor  # bool [S, R, E]
    collision_at_fault: Tensor  # bool [S, R, E]: in a collision, and the other object was ahead of it (see below)
    offroad: Tensor
    red_light: Tensor
    meta_single: Tensor  # float64 [S, R]
    meta_without: Tensor  # float64 [S, R]: M(-i)
    loo_contribution: Tensor  # float64 [S, R]: mean_j M(-j) - M(-i)
    metrics: list[dict[str, float]]  # the group metrics, one dict per scene


def _meta_from_counts(terms, cfg: MetricConfig, counts: dict[str, Tensor]) -> Tensor:
    """Meta metric for counts with a leading rollout axis [R, S, E, bins] -> [S, R]."""
    return metametric(likelihoods(terms, cfg, counts), cfg).transpose(0, 1)


def collision_at_fault(batch: Batch, first_collision: Tensor, cur: int) -> Tensor:
    """bool [S, R, E]: a scored agent collided and, at its first colliding step, the nearest other valid object's
    centre lay in front of it (its heading's half-plane): the follower of a rear-end, both cars of a head-on, the
    striker of a side impact; the car hit from behind is not at fault."""
    out = torch.zeros(first_collision.shape, dtype=torch.bool, device=first_collision.device)
    s, r, e = torch.nonzero(first_collision >= 0, as_tuple=True)
    if len(s) == 0:
        return out
    t = cur + 1 + first_collision[s, r, e]
    ego = batch.scored[s, e]
    everyone = batch.traj[s, r + 1, :, t]  # [n, A, 4] every agent's pose at that step (rollout 0 is the log)
    here = batch.traj[s, r + 1, ego, t]  # [n, 4]
    rel = everyone[..., :2] - here[:, None, :2]
    dist = torch.hypot(rel[..., 0], rel[..., 1])
    row = torch.arange(len(s), device=out.device)
    others = batch.valid[s, r + 1, :, t].clone()
    others[row, ego] = False
    nearest = torch.where(others, dist, torch.full_like(dist, float("inf"))).argmin(1)
    ahead = rel[row, nearest]
    out[s, r, e] = ahead[:, 0] * torch.cos(here[:, 3]) + ahead[:, 1] * torch.sin(here[:, 3]) > 0
    return out


def rollout_rewards(
    scenes: Scene | list[Scene], rollouts: Rollouts | list[Rollouts], config: str | MetricConfig = "2025",
    device: str = "cpu", scored: str = "evaluated", dtype: torch.dtype = torch.float32,
) -> RolloutRewards:
    """Group metrics plus per-rollout indicators, single-rollout and leave-one-out meta metrics (R >= 2)."""
    scenes = [scenes] if isinstance(scenes, Scene) else list(scenes)
    rollouts = [rollouts] if isinstance(rollouts, Rollouts) else list(rollouts)
    batch, terms, cfg = evaluate(scenes, rollouts, config, device, scored, dtype)
    if batch.num_rollouts < 2:
        raise ValueError(f"leave-one-out rewards need at least 2 rollouts, got {batch.num_rollouts}")
    with torch.no_grad():
        per = {k: v.movedim(1, 0) for k, v in terms.counts.items()}  # [R, S, E, bins]
        single = _meta_from_counts(terms, cfg, per)
        without = _meta_from_counts(terms, cfg, {k: v.sum(0, keepdim=True) - v for k, v in per.items()})
        contribution = without.mean(1, keepdim=True) - without
    ind = terms.indicators
    return RolloutRewards(
        scenario_ids=batch.scenario_ids, scored_ids=batch.scored_ids, scored_mask=batch.scored_mask,
        collision=ind["collision_indication"],
        collision_at_fault=collision_at_fault(batch, terms.first_collision, scenes[0].current_time_index),
        offroad=ind["offroad_indication"],
        red_light=ind["traffic_light_violation"], meta_single=single, meta_without=without,
        loo_contribution=contribution, metrics=summarize(batch, terms, cfg),
    )
