"""`RolloutBatch`: one scene's group of G closed-loop rollouts, as plain numpy arrays (cheap to ship through Ray)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class RolloutBatch:
    """G rollouts of one scene. A = the scene's sim agents (valid at the current step), in track order.

    `token_mask` marks the (rollout, agent, token) entries the policy chose (False for a log-replayed SDC): the entries
    an RL objective trains on. `boundary_poses` are the rollout's token-boundary poses (current step + 16 future), the
    context the learner needs to re-score tokens. `rewards` holds per-rollout arrays with leading dim G;
    `group_rewards` holds group-level scalars (drivetune.realism outputs).
    """

    scenario_id: str
    object_ids: np.ndarray  # int64 [A]
    track_index: np.ndarray  # int64 [A] indices into the scene's tracks (what re-scoring rebuilds the input from)
    agent_type: np.ndarray  # int64 [A] tokenizer type index (0 vehicle, 1 pedestrian, 2 cyclist)
    sdc: str  # how the SDC was driven: "policy", "log" or "external" (closed_loop.SDC_MODES)
    policy_version: int
    base_seed: int
    rollout_indices: np.ndarray  # int64 [G]
    seeds: np.ndarray  # int64 [G] per-rollout seeds (see drivetune.samplers.rollout_seed)
    sampler: dict[str, Any]
    tokens: np.ndarray  # int64 [G, A, 16]
    logp: np.ndarray  # float32 [G, A, 16] behaviour log-prob (full policy softmax, temperature 1)
    sampler_logp: np.ndarray  # float32 [G, A, 16] log-prob under the distribution sampled from
    token_mask: np.ndarray  # bool [G, A, 16]
    boundary_poses: np.ndarray  # float32 [G, A, 17, 3] (x, y, heading) at steps 10, 15, ..., 90
    x: np.ndarray  # float32 [G, A, 80]
    y: np.ndarray
    z: np.ndarray
    heading: np.ndarray
    rewards: dict[str, np.ndarray] = field(default_factory=dict)
    group_rewards: dict[str, float] = field(default_factory=dict)
    topk: np.ndarray | None = None  # int64 [G, A, 16, K] candidate sets, when asked
    sft_target: np.ndarray | None = None  # int64 [G, A, 16], CAT-K only (-1 where the log is invalid)
    seconds: dict[str, float] = field(default_factory=dict)  # worker time: "rollout" (its share), "reward"

    @property
    def group_size(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def num_agents(self) -> int:
        return int(self.tokens.shape[1])

    def key(self) -> tuple[str, int, int]:
        """Identity of the group: (scenario id, base seed, policy version)."""
        return (self.scenario_id, self.base_seed, self.policy_version)

    def trajectories(self) -> dict[str, np.ndarray]:
        """The realism CLI's npz arrays: object_id [A], x/y/z/heading [G, A, 80]."""
        return {"object_id": self.object_ids, "x": self.x, "y": self.y, "z": self.z, "heading": self.heading}
