"""Building blocks: relative-pose features, Fourier embeddings, neighbour selection, relative attention."""

from __future__ import annotations

import math

import torch
from torch import nn

from drivetune.tokenizer.layout import relative

DIST_SCALE = 10.0  # metres per unit of the distance feature
TIME_SCALE = 5.0  # tokens per unit of the Δt feature
CPU_BLOCK_FLOATS = 2**19  # Fourier features of pairs on CPU (inference): row blocks of ~2 MB angles (L2-sized)
SORT_MAX_ROW = 64  # rows up to this length: a stable full sort is cheaper than topk (CPU, 50 per row: 2x)


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
        lead, flat = x.shape[:-1], x.reshape(-1, x.shape[-1])
        rows = max(1, CPU_BLOCK_FLOATS // self.freqs.numel())
        if torch.is_grad_enabled() or flat.device.type != "cpu" or flat.shape[0] <= rows:
            return self.out(self._mix(flat)).view(*lead, -1)
        # CPU inference: row blocks whose [rows, D*B] angles stay in a core's L2 cache, each written straight into
        # the output (same arithmetic per row, bit-identical; micro 17.6 -> 12.9 ms, tiny 32 -> 14 ms per call)
        out = flat.new_empty(flat.shape[0], self.bias.shape[0])
        norm, act, final = self.out
        for i in range(0, flat.shape[0], rows):
            torch.addmm(final.bias, act(norm(self._mix(flat[i:i + rows]))), final.weight.t(), out=out[i:i + rows])
        return out.view(*lead, -1)

    def _mix(self, flat: torch.Tensor) -> torch.Tensor:
        """[P, D] scalars -> [P, H] sum of their Fourier features' linear maps (before the LayerNorm). cos, sin and
        identity features each meet their own slice of the weight (three chained addmm): the same sum as one matmul
        over the concatenated features, without materialising the concatenation."""
        bands = self.freqs.shape[1]
        angle = (2 * math.pi * flat.unsqueeze(-1) * self.freqs).flatten(1)  # [P, D*B]
        w = self.weight
        y = torch.addmm(self.bias, flat, w[:, 2 * bands])
        y = y.addmm_(torch.cos(angle), w[:, :bands].flatten(0, 1))
        return y.addmm_(torch.sin(angle), w[:, bands:2 * bands].flatten(0, 1))


def nearest(dist: torch.Tensor, k: int, radius: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices [..., k'] of the k smallest entries of `dist` [..., N] (inf = excluded), nearest first, and their mask
    (< radius); k' = min(k, N). Equal distances: short rows (sorted) keep index order, long ones (topk) any order."""
    k = min(k, dist.shape[-1])
    if k == 0:
        shape = (*dist.shape[:-1], 0)
        return torch.zeros(shape, dtype=torch.long, device=dist.device), torch.zeros(shape, dtype=torch.bool,
                                                                                     device=dist.device)
    if dist.shape[-1] <= SORT_MAX_ROW:
        d, idx = torch.sort(dist, dim=-1, stable=True)
        return idx[..., :k], d[..., :k] < radius
    d, idx = torch.topk(dist, k, dim=-1, largest=False, sorted=True)
    return idx, d < radius


def _key_weights(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Attention weights [N, K, heads] from scores [N, K, heads] and the key mask [N, K].

    As the model has always been defined (and trained), each key's scores are normalised over the *heads* (softmax
    along the last dim), and masked keys get weight 0. The mask is constant along that dim, so zeroing after the
    softmax equals the former fill-then-softmax; the softmax is spelled out because aten's is slow for a last dim of
    4-8."""
    e = torch.exp(scores - scores.amax(-1, keepdim=True))
    return e / e.sum(-1, keepdim=True) * mask[..., None]


class RelAttention(nn.Module):
    """Pre-norm multi-head attention of queries over source keys/values, each key/value shifted by a relative-pose
    embedding (keys = W_k src + W_kr rel, values = W_v src + W_vr rel); a sigmoid gate mixes the attended vector with
    a projection of the query; then a feed-forward block.

    The relative part is never materialised per pair: per head h, q·(k + Wk_h rel) = q·k + (Wk_hᵀ q)·rel and
    Σ w (v + Wv_h rel) = Σ w v + Wv_h (Σ w rel), so the [N, K, 2H] projection of `rel` becomes batched matrix products
    with [N, heads, H] operands."""

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

    def _query(self, x: torch.Tensor):
        """Normalised queries, per-head queries [N, heads, dh] and the relative-key query [N, heads, H]."""
        n, h = x.shape
        xn = self.norm_q(x)
        q = self.q(xn).view(n, self.heads, h // self.heads)
        w_k = self.kv_rel.weight[:h].view(self.heads, h // self.heads, h)
        return xn, q, torch.einsum("nhd,hdc->nhc", q, w_k)

    def _rel_values(self, weights: torch.Tensor, rel: torch.Tensor) -> torch.Tensor:
        """Σ_k w_k,h Wv_h rel_k: [N, heads, dh] from weights [N, K, heads] and rel [N, K, H]."""
        h = rel.shape[-1]
        w_v = self.kv_rel.weight[h:].view(self.heads, h // self.heads, h)
        return torch.einsum("nhc,hdc->nhd", torch.bmm(weights.transpose(1, 2), rel), w_v)

    def _finish(self, x: torch.Tensor, xn: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.gate(torch.cat([attended, xn], dim=-1)))
        x = x + self.drop(self.out(attended + gate * (self.self_proj(xn) - attended)))
        return x + self.drop(self.ff(x))

    def forward(self, x: torch.Tensor, kv: torch.Tensor, rel: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x [N, H] queries; kv [N, K, 2H] projected sources of each query; rel [N, K, H]; mask [N, K] -> [N, H]."""
        n, k = mask.shape
        h = x.shape[-1]
        heads, dh = self.heads, h // self.heads
        xn, q, q_rel = self._query(x)
        # every head's q·k at once: keys [N, K, H] times the block-diagonal per-head query [N, H, heads]
        q_diag = (q[..., None] * torch.eye(heads, dtype=q.dtype, device=q.device)[:, None]).view(n, h, heads)
        scores = torch.baddbmm(torch.bmm(rel, q_rel.transpose(1, 2)), kv[..., :h], q_diag)
        weights = _key_weights(scores / math.sqrt(dh), mask)  # [N, K, heads]
        # every head's weights times all values, keep each head's own block (the diagonal)
        mixed = torch.bmm(weights.transpose(1, 2), kv[..., h:]).view(n, heads, heads, dh)
        attended = mixed.diagonal(dim1=1, dim2=2).transpose(1, 2) + self._rel_values(weights, rel)
        return self._finish(x, xn, attended.reshape(n, h))

    def forward_groups(self, x: torch.Tensor, kv: torch.Tensor, idx: torch.Tensor, rel: torch.Tensor,
                       mask: torch.Tensor) -> torch.Tensor:
        """Attention within groups whose sources are the group's own members (agents of one rollout): x [G, A, H]
        queries, kv [G, A, 2H] their projections, idx [G, A, K] member indices, rel [G*A, K, H], mask [G, A, K] ->
        [G*A, H]. The same result as `forward` on gathered keys, but dense per group: all member scores by one
        batched product, picked at idx, and weights scattered back to [G, heads, A, A] (no [G*A, K, 2H] gather)."""
        g, a, h = x.shape
        k = idx.shape[-1]
        heads, dh = self.heads, h // self.heads
        xn, q, q_rel = self._query(x.reshape(g * a, h))
        keys = kv[..., :h].reshape(g, a, heads, dh).permute(0, 2, 3, 1)  # [G, heads, dh, A]
        dense = torch.matmul(q.view(g, a, heads, dh).transpose(1, 2), keys)  # [G, heads, A, A]
        pick = idx[:, None].expand(g, heads, a, k)
        src = torch.gather(dense, 3, pick).permute(0, 2, 3, 1).reshape(g * a, k, heads)
        scores = src + torch.bmm(rel, q_rel.transpose(1, 2))
        weights = _key_weights(scores / math.sqrt(dh), mask.reshape(g * a, k))
        spread = torch.zeros_like(dense).scatter_(3, pick, weights.view(g, a, k, heads).permute(0, 3, 1, 2))
        values = kv[..., h:].reshape(g, a, heads, dh).transpose(1, 2)  # [G, heads, A, dh]
        attended = torch.matmul(spread, values).transpose(1, 2).reshape(g * a, heads, dh)
        attended = attended + self._rel_values(weights, rel)
        return self._finish(x.reshape(g * a, h), xn, attended.reshape(g * a, h))


def mlp(inp: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inp, hidden), nn.LayerNorm(hidden), nn.ReLU(), nn.Linear(hidden, out))
