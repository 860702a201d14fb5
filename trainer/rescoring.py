"""Teacher-forced re-scoring: per-token log-probs of closed-loop rollouts under any policy, with gradients.

A rollout's model input is rebuilt exactly as `drivetune.closed_loop` fed it to the incremental decoder: the scene's
map, the logged history tokens of its sim agents (tracks valid at the current step, `RolloutBatch.track_index`), then
the rollout's own tokens 0..14 ending at its boundary poses 1..15, every sim agent valid at every future step except a
log-replayed SDC, which is valid where the log is. One full-context forward (`BehaviorModel.forward`) over these 17
tokens gives the logits that chose future tokens 0..15; with dropout off (`model.eval()`) re-scoring a rollout with
the policy that generated it returns its behaviour log-probs (tests: max |delta| <= 1e-4).

Forwards are chunked over rollouts, so a 32-rollout group of a 50-agent scene fits in a few GB with `tiny`; a caller
that trains calls `backward` per chunk (`RescoreInputs.chunks`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Protocol

import numpy as np
import torch

from drivetune.model import AgentBatch, BehaviorModel, MapBatch, agent_batch, map_batch
from drivetune.scene import Scene
from drivetune.tokenizer import TOKEN_STEPS, TorchVocab, tokenize_map, tokenize_scene
from drivetune.tokenizer.layout import CURRENT_BOUNDARY

FUTURE_TOKENS = 16


class RolloutGroup(Protocol):
    """What the learner reads from a `rollout_workers.batch.RolloutBatch` (trainer does not import rollout_workers:
    groups arrive as data)."""

    scenario_id: str
    object_ids: np.ndarray  # int64 [A]
    track_index: np.ndarray  # int64 [A]
    sdc: str
    policy_version: int
    tokens: np.ndarray  # int64 [G, A, 16]
    logp: np.ndarray  # float32 [G, A, 16] behaviour log-probs
    token_mask: np.ndarray  # bool [G, A, 16]
    boundary_poses: np.ndarray  # float32 [G, A, 17, 3]
    group_rewards: dict[str, Any]
    sft_target: np.ndarray | None  # int64 [G, A, 16] CAT-K targets (-1 where the log has none)


@dataclass
class TokenScores:
    """Per-token outputs of one chunk of rollouts: log-prob of the taken token and the policy's entropy [g, A, 16];
    on request the full log-probabilities [g, A, 16, V]."""

    logp: torch.Tensor
    entropy: torch.Tensor
    log_probs: torch.Tensor | None = None


@dataclass
class RescoreInputs:
    """The model input of every rollout of one group, built once and fed in chunks of rollouts."""

    maps: MapBatch
    history: AgentBatch  # [1, A, 2] logged history tokens of the sim agents
    future_valid: torch.Tensor  # bool [A, 15]: validity of the fed future tokens 0..14 (False: SDC off the log)
    tokens: torch.Tensor  # long [G, A, 16] the rollouts' tokens
    poses: torch.Tensor  # float32 [G, A, 17, 3] boundary poses (current step + 16 future)

    @classmethod
    def build(cls, scene: Scene, batch: RolloutGroup, vocab: TorchVocab) -> "RescoreInputs":
        if scene.scenario_id != batch.scenario_id:
            raise ValueError(f"scene {scene.scenario_id} does not match rollout batch {batch.scenario_id}")
        agents = np.asarray(batch.track_index)
        if not np.array_equal(scene.track_ids[agents], batch.object_ids):
            raise ValueError(f"scenario {scene.scenario_id}: batch track_index does not point at its object ids")
        history = agent_batch([tokenize_scene(scene, vocab)], [agents]).slice_time(0, CURRENT_BOUNDARY)
        valid = np.ones((len(agents), FUTURE_TOKENS - 1), bool)
        if batch.sdc == "log":  # a log-replayed SDC is valid where its log is, at each fed token's end step
            sdc = np.flatnonzero(agents == scene.sdc_index)
            ends = scene.current_time_index + TOKEN_STEPS * np.arange(1, FUTURE_TOKENS)
            valid[sdc] = scene.valid[scene.sdc_index, ends]
        device = vocab.device
        return cls(
            maps=map_batch([tokenize_map(scene)]).to(device), history=history.to(device),
            future_valid=torch.as_tensor(valid, device=device),
            tokens=torch.tensor(np.asarray(batch.tokens), device=device),  # copies: object-store arrays are read-only
            poses=torch.tensor(np.asarray(batch.boundary_poses), dtype=torch.float32, device=device),
        )

    @property
    def num_rollouts(self) -> int:
        return int(self.tokens.shape[0])

    def agent_inputs(self, rows: torch.Tensor) -> AgentBatch:
        """Teacher-forcing input [g, A, 17] for the given rollout rows: history, then tokens 0..14."""
        g, h = len(rows), self.history
        a = h.tokens.shape[1]
        fut_valid = self.future_valid[None].expand(g, -1, -1)
        return AgentBatch(
            tokens=torch.cat([h.tokens.expand(g, -1, -1), self.tokens[rows, :, :-1]], dim=2),
            poses=torch.cat([h.poses.expand(g, -1, -1, -1), self.poses[rows, :, 1:-1]], dim=2),
            valid=torch.cat([h.valid.expand(g, -1, -1), fut_valid], dim=2),
            type_idx=h.type_idx.expand(g, a).contiguous(),
            size=h.size.expand(g, a, 3).contiguous(),
        )

    def chunks(self, chunk: int, rows: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
        """Rollout-row index tensors of at most `chunk` rows (all rollouts by default)."""
        if chunk < 1:
            raise ValueError(f"re-scoring chunk must be >= 1, got {chunk}")
        rows = torch.arange(self.num_rollouts) if rows is None else rows
        yield from torch.split(rows, chunk)


def score_rows(model: BehaviorModel, inputs: RescoreInputs, rows: torch.Tensor,
               targets: torch.Tensor | None = None, full: bool = False) -> TokenScores:
    """Log-probs and entropies [g, A, 16] of the given rollouts' tokens (or of other `targets` [g, A, 16] in the same
    context, e.g. CAT-K's SFT targets; negative ids score 0) under `model`; gradients flow if enabled. The caller sets
    the model's mode; RL keeps it in eval mode (no dropout)."""
    rows = rows.to(inputs.tokens.device)
    logits = model(inputs.maps, inputs.agent_inputs(rows))[:, :, CURRENT_BOUNDARY - 1 :]  # predict tokens 0..15
    logp_all = torch.log_softmax(logits, dim=-1)
    chosen = inputs.tokens[rows] if targets is None else targets.clamp_min(0)
    logp = logp_all.gather(-1, chosen[..., None])[..., 0]
    if targets is not None:
        logp = logp.masked_fill(targets < 0, 0.0)
    probs = logp_all.exp()
    entropy = -(probs * torch.where(probs > 0, logp_all, torch.zeros_like(logp_all))).sum(-1)
    return TokenScores(logp=logp, entropy=entropy, log_probs=logp_all if full else None)


@torch.no_grad()
def score_group(model: BehaviorModel, inputs: RescoreInputs, chunk: int = 8) -> TokenScores:
    """No-grad scores of every rollout of a group, chunk by chunk (reference and behaviour checks)."""
    parts = [score_rows(model, inputs, rows) for rows in inputs.chunks(chunk)]
    return TokenScores(torch.cat([p.logp for p in parts]), torch.cat([p.entropy for p in parts]))
