"""RL rewards of a rollout group: a weighted sum of named realism and safety terms, per rollout or per agent.

Realism terms (added, weight × value): `meta_single` (the rollout's own realism meta metric), `loo_contribution`
(MLOO: the group's meta without the rollout, subtracted from the mean of those) and `group_meta` (the group's meta
metric, the same for all G rollouts: MPO's scalar). Safety terms (subtracted, weight × value): `collision`,
`collision_at_fault` (only the agent that drove into the other: `drivetune.realism.rewards.collision_at_fault`),
`offroad` (vehicles and cyclists only: a pedestrian on a sidewalk is "offroad" in the official metric and must never
be taught to walk on the road) and `red_light` (vehicles only). Per rollout a safety term is the number of scored
agents with the event divided by the number of scored agents (all types), so the rollout's safety penalty is the mean
of its scored agents' own penalties.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

from drivetune.tokenizer import TYPE_CYCLIST, TYPE_PEDESTRIAN, TYPE_VEHICLE
from trainer.groups import RolloutGroup

REALISM_TERMS = ("meta_single", "loo_contribution", "group_meta")
SAFETY_TERMS = ("collision", "collision_at_fault", "offroad", "red_light")
# Agent types (the tokenizer's type index, `RolloutBatch.agent_type`) whose events count, per safety term.
ALL_TYPES = (TYPE_VEHICLE, TYPE_PEDESTRIAN, TYPE_CYCLIST)
ELIGIBLE_TYPES = {"collision": ALL_TYPES, "collision_at_fault": ALL_TYPES, "offroad": (TYPE_VEHICLE, TYPE_CYCLIST),
                  "red_light": (TYPE_VEHICLE,)}


@dataclass
class RewardConfig:
    """Weights of the reward terms (all >= 0; safety weights are penalties). Every available term is logged."""

    meta_single: float = 0.0
    loo_contribution: float = 0.0
    group_meta: float = 0.0
    collision: float = 0.0
    collision_at_fault: float = 0.0
    offroad: float = 0.0
    red_light: float = 0.0
    # Per-agent rewards: each scored agent receives share × the rollout's weighted realism reward (a rollout's realism
    # is a property of the joint behaviour; 1.0 gives every agent all of it), minus its own safety penalties.
    agent_realism_share: float = 1.0

    def validate(self) -> "RewardConfig":
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"reward.{f.name} must be a finite number, got {v!r}")
            if v < 0:
                raise ValueError(f"reward.{f.name} must be >= 0 (safety weights are penalty sizes), got {v}")
        if all(getattr(self, n) == 0 for n in REALISM_TERMS + SAFETY_TERMS):
            raise ValueError(f"reward weights are all zero: set at least one of {', '.join(REALISM_TERMS + SAFETY_TERMS)}")
        return self

    @classmethod
    def preset(cls, name: str) -> "RewardConfig":
        """drivetune's starting weights per algorithm (docs/algorithms.md)."""
        presets = {
            "mpo": cls(group_meta=1.0),
            "grpo": cls(meta_single=1.0),
            "grbo": cls(meta_single=1.0, collision=1.0, offroad=1.0, red_light=1.0),
        }
        if name not in presets:
            raise ValueError(f"no reward preset {name!r} (choose from {', '.join(presets)})")
        return presets[name]


def _realism_terms(batch: RolloutGroup, cfg: RewardConfig) -> dict[str, np.ndarray]:
    G = batch.group_size
    out = {n: np.asarray(batch.rewards[n], np.float64).reshape(G) for n in ("meta_single", "loo_contribution")
           if n in batch.rewards}
    if "metametric" in batch.group_rewards:
        out["group_meta"] = np.full(G, float(batch.group_rewards["metametric"]))
    for name in REALISM_TERMS:
        if getattr(cfg, name) != 0 and name not in out:
            raise ValueError(f"reward term {name!r} has weight {getattr(cfg, name)} but group "
                             f"{getattr(batch, 'scenario_id', '?')} has no such reward (G < 2, or rewards off?)")
    return out


def _scored_events(batch: RolloutGroup) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(agent index [G, E] of each scored id, eligible event indicators bool [G, E] per safety term)."""
    if "scored_object_ids" not in batch.rewards:
        raise ValueError("batch.rewards has no scored_object_ids: the group carries no per-agent indicators")
    ids = np.asarray(batch.rewards["scored_object_ids"], np.int64)
    obj = np.asarray(batch.object_ids, np.int64)
    order = np.argsort(obj, kind="stable")
    pos = np.minimum(np.searchsorted(obj, ids, sorter=order), max(len(obj) - 1, 0))
    idx = order[pos] if len(obj) else np.zeros_like(ids)
    if ids.size and not (len(obj) and np.array_equal(obj[idx], ids)):
        missing = sorted(set(ids.ravel().tolist()) - set(obj.tolist()))
        raise ValueError(f"scored_object_ids {missing[:5]} are not sim agents of the batch (object_ids)")
    agent_type = np.asarray(batch.agent_type, np.int64)[idx]
    events = {}
    for name in SAFETY_TERMS:
        if name not in batch.rewards:  # a group without this term: an error only if the term has a weight (_weighted)
            continue
        ind = np.asarray(batch.rewards[name], bool)
        if ind.shape != ids.shape:
            raise ValueError(f"rewards[{name!r}] shape {ind.shape} differs from scored_object_ids {ids.shape}")
        events[name] = ind & np.isin(agent_type, ELIGIBLE_TYPES[name])
    return idx, events


def _require(name: str, available: dict, cfg: RewardConfig) -> None:
    if name not in available:
        raise ValueError(f"reward term {name!r} has weight {getattr(cfg, name)} but the group carries no {name!r}")


def _weighted(terms: dict[str, np.ndarray], cfg: RewardConfig, names: tuple[str, ...], G: int) -> np.ndarray:
    total = np.zeros(G)
    for n in names:
        if getattr(cfg, n) != 0:
            _require(n, terms, cfg)
            total += getattr(cfg, n) * terms[n]
    return total


def weighted_rewards(batch: RolloutGroup, cfg: RewardConfig) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(reward [G], every available term [G], unweighted). Safety terms are shares of scored agents (see module)."""
    G = batch.group_size
    terms = _realism_terms(batch, cfg)
    if "scored_object_ids" in batch.rewards or any(getattr(cfg, n) != 0 for n in SAFETY_TERMS):
        idx, events = _scored_events(batch)
        n_scored = max(idx.shape[1], 1)
        terms.update({n: e.sum(1) / n_scored for n, e in events.items()})
    reward = _weighted(terms, cfg, REALISM_TERMS, G) - _weighted(terms, cfg, SAFETY_TERMS, G)
    return reward, terms


def agent_rewards(batch: RolloutGroup, cfg: RewardConfig) -> tuple[np.ndarray, np.ndarray]:
    """(reward [G, A] in object_ids order, scored bool [A]). A scored agent gets agent_realism_share × the rollout's
    weighted realism reward minus its own weighted collision / offroad / red-light indicators; unscored agents 0."""
    G, A = batch.group_size, len(batch.object_ids)
    realism = _weighted(_realism_terms(batch, cfg), cfg, REALISM_TERMS, G)
    idx, events = _scored_events(batch)
    penalty = np.zeros((G, A))
    scored_ga = np.zeros((G, A), bool)
    rows = np.arange(G)[:, None]
    scored_ga[rows, idx] = True
    for n in SAFETY_TERMS:
        if getattr(cfg, n) != 0:
            _require(n, events, cfg)
            np.add.at(penalty, (np.broadcast_to(rows, idx.shape), idx), getattr(cfg, n) * events[n])
    scored = scored_ga.any(0)
    reward = np.where(scored_ga, cfg.agent_realism_share * realism[:, None] - penalty, 0.0)
    return reward, scored
