"""Building blocks: relative-pose features, Fourier embeddings, neighbour selection, relative attention."""

from __future__ import annotations

import math

import torch
from torch import nn

from drivetune.tokenizer.layout import relative

DIST_SCALE = 10.0  # metres per unit of the distance feature
TIME_SCALE = 5.0  # tokens per unit of the Δt feature


def pose_features(query: torch.Tensor, key: torch.Tensor, dt: torch.Tensor | None = None) -> torch.Tensor:
    """Invariant features of `key` poses [..., 3] seen from `query` poses [..., 3] (broadcast):
    distance, direction (cos, sin) in the query frame, relative heading (cos, sin) and optionally Δt [...]."""
    rel = relative(query, key)
    dist = torch.linalg.vector_norm(rel[..., :2], dim=-1)
    safe = dist.clamp_min(1e-6)
    cos_dir = torch.where(dist > 1e-6, rel[..., 0] / safe, torch.ones_like(dist))
    sin_dir = torch.where(dist > 1e-6, rel[..., 1] / safe, torch.zeros_like(dist))
    feats = [dist / DIST_SCALE, cos_dir, sin_dir, torch.cos(rel[..., 2]), torch.sin(rel[..., 2])]
    if dt is not None:
        feats.append(torch.broadcast_to(dt, dist.shape).to(dist.dtype) / TIME_SCALE)
    return torch.stack(feats, dim=-1)


class FourierEmbedding(nn.Module):
    """Scalars [..., D] -> [..., H]: each scalar goes through learnable frequencies (cos, sin, identity) and its own
    linear map; the per-scalar vectors are summed, then LayerNorm -> ReLU -> Linear."""

    def __init__(self, in_dim: int, hidden: int, bands: int) -> None:
        super().__init__()
        self.freqs = nn.Parameter(torch.randn(in_dim, bands))
        self.weight = nn.Parameter(torch.randn(in_dim, 2 * bands + 1, hidden) / math.sqrt(in_dim * (2 * bands + 1)))
        self.bias = nn.Parameter(torch.zeros(hidden))
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.ReLU(), nn.Linear(hidden, hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        angle = 2 * math.pi * x.unsqueeze(-1) * self.freqs  # [..., D, B]
        feats = torch.cat([torch.cos(angle), torch.sin(angle), x.unsqueeze(-1)], dim=-1)  # [..., D, 2B+1]
        return self.out(feats.flatten(-2) @ self.weight.flatten(0, 1) + self.bias)  # sum over scalars and features


def nearest(dist: torch.Tensor, k: int, radius: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices [..., k'] of the k smallest entries of `dist` [..., N] (inf = excluded) and their mask (< radius);
    k' = min(k, N)."""
    k = min(k, dist.shape[-1])
    if k == 0:
        shape = (*dist.shape[:-1], 0)
        return torch.zeros(shape, dtype=torch.long, device=dist.device), torch.zeros(shape, dtype=torch.bool,
                                                                                     device=dist.device)
    d, idx = torch.topk(dist, k, dim=-1, largest=False, sorted=True)
    return idx, d < radius


def _masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim where mask; rows with no valid entry give all-zero weights."""
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return torch.softmax(scores, dim=-1) * mask


class RelAttention(nn.Module):
    """Pre-norm multi-head attention of queries over gathered source keys/values, each key/value shifted by a
    relative-pose embedding (keys = W_k src + W_kr rel, values = W_v src + W_vr rel); a sigmoid gate mixes the
    attended vector with a projection of the query; then a feed-forward block."""

    def __init__(self, hidden: int, heads: int, ff_mult: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm_q = nn.LayerNorm(hidden)
        self.norm_src = nn.LayerNorm(hidden)
        self.q = nn.Linear(hidden, hidden)
        self.kv = nn.Linear(hidden, 2 * hidden)
        self.kv_rel = nn.Linear(hidden, 2 * hidden, bias=False)
        self.gate = nn.Linear(2 * hidden, hidden)
        self.self_proj = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, hidden)
        self.ff = nn.Sequential(
            nn.LayerNorm(hidden), nn.Linear(hidden, ff_mult * hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(ff_mult * hidden, hidden),
        )
        self.drop = nn.Dropout(dropout)

    def project(self, src: torch.Tensor) -> torch.Tensor:
        """Key/value projections [..., 2H] of source features [..., H] (cacheable: independent of the query)."""
        return self.kv(self.norm_src(src))

    def forward(self, x: torch.Tensor, kv: torch.Tensor, rel: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x [N, H] queries; kv [N, K, 2H] gathered projected sources; rel [N, K, H]; mask [N, K] -> [N, H]."""
        n, k = mask.shape
        h = x.shape[-1]
        dh = h // self.heads
        xn = self.norm_q(x)
        q = self.q(xn).view(n, self.heads, dh)
        kv = (kv + self.kv_rel(rel)).view(n, k, 2, self.heads, dh)
        # broadcast multiply-sum: faster than einsum/bmm for these many tiny matrices (K keys, head dim ~16)
        scores = (q[:, None] * kv[:, :, 0]).sum(-1) / math.sqrt(dh)  # [N, K, heads]
        weights = _masked_softmax(scores, mask[:, :, None])
        attended = (weights[..., None] * kv[:, :, 1]).sum(1).reshape(n, h)
        gate = torch.sigmoid(self.gate(torch.cat([attended, xn], dim=-1)))
        x = x + self.drop(self.out(attended + gate * (self.self_proj(xn) - attended)))
        return x + self.drop(self.ff(x))


def mlp(inp: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inp, hidden), nn.LayerNorm(hidden), nn.ReLU(), nn.Linear(hidden, out))
