"""Frozen reference: the incremental decoder as it was before the issue-15 speed work (commit cc90b4e).

`ReferenceEngine(model)` runs `encode_map` / `start` / `step` with the old arithmetic (Fourier features concatenated,
relative keys/values materialised per pair, brute-force map neighbours over every map token, caches rolled with
`cat`) on the *same parameters* as `model`, so `drivetune.closed_loop.simulate(ReferenceEngine(model), ...)` gives
"today's engine" for the identity tests and the rollout benchmark. It is kept small and is not used by the product.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from drivetune.model import BehaviorModel
from drivetune.model.batch import AgentBatch, MapBatch
from drivetune.model.layers import FourierEmbedding, RelAttention, pose_features


def nearest(dist: torch.Tensor, k: int, radius: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The k smallest entries of `dist` [..., N] by topk, nearest first, and their mask (< radius)."""
    d, idx = torch.topk(dist, min(k, dist.shape[-1]), dim=-1, largest=False, sorted=True)
    return idx, d < radius


def _fourier(emb: FourierEmbedding, x: torch.Tensor) -> torch.Tensor:
    angle = 2 * math.pi * x.unsqueeze(-1) * emb.freqs
    feats = torch.cat([torch.cos(angle), torch.sin(angle), x.unsqueeze(-1)], dim=-1)
    return emb.out(feats.flatten(-2) @ emb.weight.flatten(0, 1) + emb.bias)


def _attend(blk: RelAttention, x: torch.Tensor, kv: torch.Tensor, rel: torch.Tensor, mask: torch.Tensor):
    n, k = mask.shape
    h = x.shape[-1]
    dh = h // blk.heads
    xn = blk.norm_q(x)
    q = blk.q(xn).view(n, blk.heads, dh)
    kv = (kv + blk.kv_rel(rel)).view(n, k, 2, blk.heads, dh)
    scores = (q[:, None] * kv[:, :, 0]).sum(-1) / math.sqrt(dh)
    m = mask[:, :, None]
    weights = torch.softmax(scores.masked_fill(~m, torch.finfo(scores.dtype).min), dim=-1) * m
    attended = (weights[..., None] * kv[:, :, 1]).sum(1).reshape(n, h)
    gate = torch.sigmoid(blk.gate(torch.cat([attended, xn], dim=-1)))
    x = x + blk.out(attended + gate * (blk.self_proj(xn) - attended))
    return x + blk.ff(x)


@dataclass
class RefMapContext:
    poses: torch.Tensor
    valid: torch.Tensor
    kv: list[torch.Tensor]

    @property
    def num_scenes(self) -> int:
        return int(self.valid.shape[0])


@dataclass
class RefState:
    map_ctx: RefMapContext
    scene_index: torch.Tensor
    type_idx: torch.Tensor
    kv: torch.Tensor  # [L, B, A, W, 2H], oldest first
    poses: torch.Tensor
    valid: torch.Tensor

    def select(self, rows: torch.Tensor) -> "RefState":
        return RefState(self.map_ctx, self.scene_index[rows], self.type_idx[rows], self.kv[:, rows],
                        self.poses[rows], self.valid[rows])


class ReferenceEngine(nn.Module):
    """The pre-change decoder on `model`'s parameters (eval only)."""

    def __init__(self, model: BehaviorModel) -> None:
        super().__init__()
        self.model = model

    @property
    def cfg(self):
        return self.model.cfg

    def _map_neighbours(self, ctx: RefMapContext, scene_index: torch.Tensor, poses: torch.Tensor):
        m, cfg = ctx.poses.shape[1], self.model.cfg
        mpos = ctx.poses[scene_index]
        dist = torch.cdist(poses[..., :2], mpos[..., :2], compute_mode="donot_use_mm_for_euclid_dist")
        dist = dist.masked_fill(~ctx.valid[scene_index][:, None, :], float("inf"))
        idx, mask = nearest(dist, cfg.map_neighbors, cfg.map_radius)
        key = torch.gather(mpos[:, None].expand(-1, idx.shape[1], -1, -1), 2, idx[..., None].expand(-1, -1, -1, 3))
        rel = _fourier(self.model.rel_map, pose_features(poses[:, :, None], key))
        return scene_index[:, None, None] * m + idx, rel, mask

    def _agent_neighbours(self, poses: torch.Tensor, valid: torch.Tensor):
        a, cfg = poses.shape[1], self.model.cfg
        dist = torch.cdist(poses[..., :2], poses[..., :2], compute_mode="donot_use_mm_for_euclid_dist")
        eye = torch.eye(a, dtype=torch.bool, device=poses.device)
        dist = dist.masked_fill(eye | ~valid[:, None, :], float("inf"))
        idx, mask = nearest(dist, cfg.agent_neighbors, cfg.agent_radius)
        key = torch.gather(poses[:, None].expand(-1, a, -1, -1), 2, idx[..., None].expand(-1, -1, -1, 3))
        return idx, _fourier(self.model.rel_agent, pose_features(poses[:, :, None], key)), mask

    def encode_map(self, mb: MapBatch) -> RefMapContext:
        md, cfg = self.model, self.model.cfg
        s, m = mb.valid.shape
        poses = torch.cat([mb.pos, mb.heading[..., None]], -1).masked_fill(~mb.valid[..., None], 0.0)
        x = md.map_cat_emb(mb.category) + md.map_sig_emb(mb.signal) + md.map_feat_emb(mb.feat)
        dist = torch.cdist(poses[..., :2], poses[..., :2], compute_mode="donot_use_mm_for_euclid_dist")
        eye = torch.eye(m, dtype=torch.bool, device=dist.device)
        dist = dist.masked_fill(eye | ~mb.valid[:, None, :], float("inf"))
        idx, mask = nearest(dist, cfg.map_map_neighbors, cfg.map_map_radius)
        key = torch.gather(poses[:, None].expand(-1, m, -1, -1), 2, idx[..., None].expand(-1, -1, -1, 3))
        rel = _fourier(md.rel_map_map, pose_features(poses[:, :, None], key)).flatten(0, 1)
        flat = (torch.arange(s, device=idx.device)[:, None, None] * m + idx).flatten(0, 1)
        mask, x = mask.flatten(0, 1), x.flatten(0, 1)
        for block in md.map_blocks:
            x = _attend(block, x, block.project(x)[flat], rel, mask)
        return RefMapContext(poses=poses, valid=mb.valid, kv=[blk.project(x) for blk in md.map_agent_blocks])

    def start(self, ctx: RefMapContext, history: AgentBatch, num_rollouts: int = 1):
        cfg = self.model.cfg
        s, a, th = history.tokens.shape
        w, dev = cfg.time_span, history.tokens.device
        scenes = torch.arange(s, device=dev)
        state = RefState(ctx, scenes, history.type_idx.clone(),
                         torch.zeros(cfg.agent_layers, s, a, w, 2 * cfg.hidden, device=dev),
                         torch.zeros(s, a, w, 3, device=dev), torch.zeros(s, a, w, dtype=torch.bool, device=dev))
        for i in range(th):
            logits = self.step(state, history.tokens[:, :, i], history.poses[:, :, i], history.valid[:, :, i])
        fan = scenes.repeat_interleave(num_rollouts)
        return state.select(fan), logits[fan]

    def step(self, state: RefState, tokens: torch.Tensor, poses: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        md, cfg = self.model, self.model.cfg
        b, a = tokens.shape
        poses = poses.masked_fill(~valid[..., None], 0.0)
        x = md._embed(tokens, state.type_idx).flatten(0, 1)
        lag = torch.arange(cfg.time_span, 0, -1, device=poses.device).float()
        t_rel = _fourier(md.rel_time, pose_features(poses[:, :, None], state.poses, lag)).flatten(0, 1)
        t_mask = state.valid.flatten(0, 1)
        m_idx, m_rel, m_mask = self._map_neighbours(state.map_ctx, state.scene_index, poses)
        m_idx, m_rel, m_mask = m_idx.flatten(0, 1), m_rel.flatten(0, 1), m_mask.flatten(0, 1)
        a_idx, a_rel, a_mask = self._agent_neighbours(poses, valid)
        a_idx = (torch.arange(b, device=poses.device).view(b, 1, 1) * a + a_idx).flatten(0, 1)
        a_rel, a_mask = a_rel.flatten(0, 1), a_mask.flatten(0, 1)
        new_kv = []
        for layer in range(cfg.agent_layers):
            tb, mblk, ab = md.time_blocks[layer], md.map_agent_blocks[layer], md.agent_blocks[layer]
            new_kv.append(tb.project(x))
            x = _attend(tb, x, state.kv[layer].flatten(0, 1), t_rel, t_mask)
            x = _attend(mblk, x, state.map_ctx.kv[layer][m_idx], m_rel, m_mask)
            x = _attend(ab, x, ab.project(x)[a_idx], a_rel, a_mask)
        kv_now = torch.stack(new_kv).view(cfg.agent_layers, b, a, 1, -1)
        state.kv = torch.cat([state.kv[:, :, :, 1:], kv_now], dim=3)
        state.poses = torch.cat([state.poses[:, :, 1:], poses[:, :, None]], dim=2)
        state.valid = torch.cat([state.valid[:, :, 1:], valid[:, :, None]], dim=2)
        return md._logits(x.view(b, a, -1), state.type_idx)
