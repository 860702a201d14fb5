"""Padded tensor batches of tokenized scenes: `MapBatch`, `AgentBatch`, and `collate` from `Scene`s."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Sequence

import numpy as np
import torch

from drivetune.scene import Scene
from drivetune.tokenizer import AgentTokens, MapTokens, MotionVocab, TorchVocab, tokenize_map, tokenize_scene

SHAPE_SCALE = 5.0  # metres per unit of the map segment shape features
MAP_FEAT_DIM = 7


def _to(obj, device: torch.device | str):
    return type(obj)(**{f.name: getattr(obj, f.name).to(device) for f in fields(obj)})


@dataclass
class MapBatch:
    """Map tokens of S scenes padded to M: pos [S, M, 2], heading [S, M], feat [S, M, 7], category/signal [S, M]
    long, valid [S, M]."""

    pos: torch.Tensor
    heading: torch.Tensor
    feat: torch.Tensor
    category: torch.Tensor
    signal: torch.Tensor
    valid: torch.Tensor

    def to(self, device: torch.device | str) -> "MapBatch":
        return _to(self, device)


@dataclass
class AgentBatch:
    """Agent token sequences: tokens [B, A, T] long, poses [B, A, T, 3] (end pose of each token), valid [B, A, T],
    type_idx [B, A] long, size [B, A, 3] (length, width, height in m)."""

    tokens: torch.Tensor
    poses: torch.Tensor
    valid: torch.Tensor
    type_idx: torch.Tensor
    size: torch.Tensor

    def to(self, device: torch.device | str) -> "AgentBatch":
        return _to(self, device)

    def slice_time(self, start: int, stop: int) -> "AgentBatch":
        return replace(self, tokens=self.tokens[:, :, start:stop], poses=self.poses[:, :, start:stop],
                       valid=self.valid[:, :, start:stop])


def _map_features(mt: MapTokens) -> np.ndarray:
    """[S, 7]: length and the first / middle / last resampled points in the segment's own frame (scaled)."""
    count = mt.point_mask.sum(axis=1)
    rows = np.arange(mt.num_segments)
    picks = np.stack([np.zeros_like(count), count // 2, count - 1], axis=1)  # [S, 3]
    pts = mt.points[rows[:, None], picks] - mt.position[:, None, :]  # [S, 3, 2]
    c, s = np.cos(mt.heading)[:, None], np.sin(mt.heading)[:, None]
    local = np.stack([c * pts[..., 0] + s * pts[..., 1], -s * pts[..., 0] + c * pts[..., 1]], axis=-1)
    return np.concatenate([mt.length[:, None], local.reshape(-1, 6)], axis=1) / SHAPE_SCALE


def map_batch(tokens: Sequence[MapTokens]) -> MapBatch:
    """Pad per-scene map tokens into one MapBatch (at least one, invalid, token per scene)."""
    s, m = len(tokens), max([1] + [t.num_segments for t in tokens])
    pos, heading, feat = np.zeros((s, m, 2)), np.zeros((s, m)), np.zeros((s, m, MAP_FEAT_DIM))
    cat, sig, valid = np.zeros((s, m), np.int64), np.zeros((s, m), np.int64), np.zeros((s, m), bool)
    for i, t in enumerate(tokens):
        n = t.num_segments
        pos[i, :n], heading[i, :n], feat[i, :n] = t.position, t.heading, _map_features(t)
        cat[i, :n], sig[i, :n], valid[i, :n] = t.category, t.signal_state + 1, True
    f32 = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    return MapBatch(f32(pos), f32(heading), f32(feat), torch.as_tensor(cat), torch.as_tensor(sig),
                    torch.as_tensor(valid))


def agent_batch(tokens: Sequence[AgentTokens], agents: Sequence[np.ndarray] | None = None) -> AgentBatch:
    """Pad per-scene agent tokens into one AgentBatch; `agents` optionally picks track indices per scene."""
    picks = [np.arange(t.token_ids.shape[0]) if agents is None else np.asarray(agents[i])
             for i, t in enumerate(tokens)]
    b, a = len(tokens), max([1] + [len(p) for p in picks])
    nt = tokens[0].token_ids.shape[1] if tokens else 0
    ids, poses = np.zeros((b, a, nt), np.int64), np.zeros((b, a, nt, 3))
    valid, types, size = np.zeros((b, a, nt), bool), np.zeros((b, a), np.int64), np.zeros((b, a, 3), np.float32)
    for i, (t, p) in enumerate(zip(tokens, picks)):
        n = len(p)
        v = t.token_valid[p]
        ids[i, :n] = np.where(v, t.token_ids[p], 0)
        poses[i, :n] = np.where(v[..., None], t.poses[p, 1:], 0.0)
        valid[i, :n], types[i, :n], size[i, :n] = v, t.type_idx[p], t.size[p]
    return AgentBatch(torch.as_tensor(ids), torch.as_tensor(poses, dtype=torch.float32), torch.as_tensor(valid),
                      torch.as_tensor(types), torch.as_tensor(size))


def select_agents(scene: Scene) -> np.ndarray:
    """Track indices of the agents the model is trained on and simulates: every sim agent (valid at the current
    step), in track order; the one rule for pretraining, closed-loop rollouts and serving. No cap: attention is over
    the k nearest neighbours, so memory grows linearly with the agent count."""
    return np.flatnonzero(scene.sim_agent_mask())


def collate(scenes: Sequence[Scene], vocab: MotionVocab | TorchVocab) -> tuple[MapBatch, AgentBatch, list[np.ndarray]]:
    """Tokenize scenes into a (MapBatch, AgentBatch) pair of their `select_agents`; also returns those track
    indices per scene."""
    picks = [select_agents(s) for s in scenes]
    agents = agent_batch([tokenize_scene(s, vocab) for s in scenes], picks)
    return map_batch([tokenize_map(s) for s in scenes]), agents, picks
