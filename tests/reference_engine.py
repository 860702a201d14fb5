"""Full recomputation references for the identity tests (not used by the product).

- `RecomputeEngine(model)` stands in for a `BehaviorModel` in `drivetune.closed_loop.simulate`: every step appends the
  new tokens and runs the full-context teacher-forced `model(map, agents)` over the whole sequence so far (no cache, no
  grid, no chunks, the gathered-keys attention path), so the incremental engine's tokens and log-probs must equal it.
- `naive_fourier` / `naive_attention`: the v2 layers written out per pair (relative embeddings LayerNorm-ed and
  projected for every pair, per-input MLPs one by one), for the folded-arithmetic checks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch import nn

from drivetune.model import BehaviorModel
from drivetune.model.batch import AgentBatch, MapBatch
from drivetune.model.layers import FourierEmbedding, RelAttention


@dataclass
class RecomputeMaps:
    """The map batch itself: every step re-encodes it inside the full forward."""

    batch: MapBatch

    @property
    def num_scenes(self) -> int:
        return int(self.batch.valid.shape[0])


@dataclass
class RecomputeState:
    map_ctx: RecomputeMaps
    scene_index: torch.Tensor
    agents: AgentBatch  # the whole sequence so far [B, A, T]

    def select(self, rows: torch.Tensor) -> "RecomputeState":
        a = self.agents
        return RecomputeState(self.map_ctx, self.scene_index[rows],
                              AgentBatch(**{f.name: getattr(a, f.name)[rows] for f in fields(a)}))


class RecomputeEngine(nn.Module):
    """`BehaviorModel`'s decoding API by full recomputation (eval only)."""

    def __init__(self, model: BehaviorModel) -> None:
        super().__init__()
        self.model = model

    @property
    def cfg(self):
        return self.model.cfg

    def encode_map(self, mb: MapBatch) -> RecomputeMaps:
        return RecomputeMaps(mb)

    def start(self, ctx: RecomputeMaps, history: AgentBatch, num_rollouts: int = 1):
        scenes = torch.arange(ctx.num_scenes)
        state = RecomputeState(ctx, scenes, history)
        logits = self._logits(state)
        fan = scenes.repeat_interleave(num_rollouts)
        return state.select(fan), logits[fan]

    def step(self, state: RecomputeState, tokens: torch.Tensor, poses: torch.Tensor, valid: torch.Tensor):
        a = state.agents
        state.agents = replace(a, tokens=torch.cat([a.tokens, tokens[:, :, None]], 2),
                               poses=torch.cat([a.poses, poses[:, :, None]], 2),
                               valid=torch.cat([a.valid, valid[:, :, None]], 2))
        return self._logits(state)

    def _logits(self, state: RecomputeState) -> torch.Tensor:
        mb = state.map_ctx.batch
        rows = MapBatch(**{f.name: getattr(mb, f.name)[state.scene_index] for f in fields(mb)})
        return self.model(rows, state.agents)[:, :, -1]


def naive_fourier(emb: FourierEmbedding, x: torch.Tensor) -> torch.Tensor:
    """SMART's Fourier embedding one input at a time: [..., D] -> [..., H]."""
    total = 0
    for d in range(x.shape[-1]):
        angle = 2 * math.pi * x[..., d:d + 1] * emb.freqs[d]
        feats = torch.cat([torch.cos(angle), torch.sin(angle), x[..., d:d + 1]], -1)
        hid = feats @ emb.w_in[d] + emb.b_in[d, 0]
        hid = F.layer_norm(hid, hid.shape[-1:], emb.ln_weight[d, 0], emb.ln_bias[d, 0])
        total = total + torch.relu(hid) @ emb.w_out[d] + emb.b_out[d]
    return emb.out(total)


def naive_attention(blk: RelAttention, x: torch.Tensor, src: torch.Tensor, rel: torch.Tensor,
                    mask: torch.Tensor) -> torch.Tensor:
    """SMART's attention written per pair: x [N, H] queries, src [N, K, H] raw source features of each query, rel
    [N, K, H] raw relative embeddings, mask [N, K] -> [N, H]."""
    n, k = mask.shape
    h = x.shape[-1]
    dh = h // blk.heads
    xn = (blk.norm_q if blk.bipartite else blk.norm_src)(x)
    sn = blk.norm_src(src)
    r = blk.norm_rel(rel)
    q = blk.q(xn).view(n, 1, blk.heads, dh)
    keys = (blk.k(sn) + blk.k_rel(r)).view(n, k, blk.heads, dh)
    values = (blk.v(sn) + blk.v_rel(r)).view(n, k, blk.heads, dh)
    scores = (q * keys).sum(-1) / math.sqrt(dh)  # [N, K, heads]
    weights = torch.softmax(scores.masked_fill(~mask[..., None], -math.inf), dim=1).nan_to_num(0.0)
    attended = (weights[..., None] * values).sum(1).reshape(n, h)
    gate = torch.sigmoid(blk.gate(torch.cat([attended, xn], -1)))
    x = x + blk.post_norm(blk.out(attended + gate * (blk.self_proj(xn) - attended)))
    return x + blk.ff_post_norm(blk.ff(blk.ff_norm(x)))
