"""Reward components of one rollout group from `drivetune.realism`, per rollout and per group (one batched pass)."""

from __future__ import annotations

import numpy as np

from drivetune.closed_loop import SceneRollouts
from drivetune.realism import realism_metrics
from drivetune.realism.rewards import rollout_rewards
from drivetune.scene import Scene

SCORED = ("evaluated", "all")


def group_rewards(
    scene: Scene, out: SceneRollouts, scored: str = "evaluated", config: str = "2025", device: str = "cpu"
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """(per-rollout arrays with leading dim G, group-level scalars) for the G rollouts of one scene.

    Per rollout: `collision`, `collision_at_fault`, `offroad`, `red_light` bool [G, E] ("ever happened" per scored
    agent, ids in `scored_object_ids` [G, E]), `meta_single` [G] (the rollout's own meta metric), `meta_without` [G]
    (the group's meta metric without it) and `loo_contribution` [G] (leave-one-out contribution). Group: the realism
    metric dict.
    Leave-one-out needs G >= 2; a single rollout gets the group metrics only.
    """
    if scored not in SCORED:
        raise ValueError(f"reward agents {scored!r} unknown (choose from {', '.join(SCORED)})")
    rollouts = out.realism_rollouts()
    if out.x.shape[0] < 2:
        row = realism_metrics(scene, rollouts, config=config, device=device, scored=scored)[0]
        return {}, {k: float(v) for k, v in row.items() if k != "scenario_id"}
    rr = rollout_rewards(scene, rollouts, config=config, device=device, scored=scored)
    keep = rr.scored_mask[0].cpu().numpy()
    G = out.x.shape[0]
    per = {name: getattr(rr, name)[0][:, keep].cpu().numpy().astype(bool)
           for name in ("collision", "collision_at_fault", "offroad", "red_light")}
    per["scored_object_ids"] = np.broadcast_to(np.asarray(rr.scored_ids[0], np.int64)[None], (G, int(keep.sum())))
    per.update({name: getattr(rr, name)[0].cpu().numpy().astype(np.float64)
                for name in ("meta_single", "meta_without", "loo_contribution")})
    group = {k: float(v) for k, v in rr.metrics[0].items() if k != "scenario_id"}
    return per, group
