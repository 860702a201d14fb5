"""`RolloutGroup`: what the learner, its rewards and its re-scoring read from one group of rollouts.

Rollout workers produce `rollout_workers.batch.RolloutBatch`; trainer does not import rollout_workers (groups arrive
as data), so this protocol names the fields it reads, once.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np


class RolloutGroup(Protocol):
    """The fields of a `RolloutBatch` the learner reads (G rollouts of one scene, A sim agents)."""

    scenario_id: str
    object_ids: np.ndarray  # int64 [A]
    track_index: np.ndarray  # int64 [A]
    agent_type: np.ndarray  # int64 [A] tokenizer type index
    sdc: str
    policy_version: int
    tokens: np.ndarray  # int64 [G, A, 16]
    logp: np.ndarray  # float32 [G, A, 16] behaviour log-probs (full softmax, temperature 1)
    sampler_logp: np.ndarray  # float32 [G, A, 16] log-probs under the distribution the sampler drew from
    sampler: dict[str, Any]  # the SamplerConfig the rollouts used (kind, k, temperature, ...)
    topk: np.ndarray | None  # int64 [G, A, 16, K] candidate sets, when the rollouts kept them
    token_mask: np.ndarray  # bool [G, A, 16]
    boundary_poses: np.ndarray  # float32 [G, A, 17, 3]
    rewards: dict[str, np.ndarray]
    group_rewards: dict[str, Any]
    sft_target: np.ndarray | None  # int64 [G, A, 16] CAT-K targets (-1 where the log has none)

    @property
    def group_size(self) -> int: ...
