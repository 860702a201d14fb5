"""SMART's building blocks: relative-pose features, the Fourier embedding, neighbour selection, relative attention.

Each layer is defined like its counterpart in SMART (NVlabs' SMART/CAT-K code, Apache-2.0) and reproduces that code's
outputs within 1e-5 on the reference cases in `../shared/oracle-smart/` (tests/test_smart_parity.py); `smart_names`
(drivetune/model/smart_names.py) maps SMART's parameter names onto these modules. Attention weights are a softmax
over each query's *keys*; the relative embedding of a pair is LayerNorm-ed by each layer before it shifts that pair's
key and value.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from drivetune.tokenizer.layout import relative

CPU_BLOCK_FLOATS = 2**20  # Fourier features of pairs on CPU (inference): row blocks of ~10k pairs (micro)
TIE_IDS = 1 << 24  # ids below this break ties in `nearest`
SORT_MAX_ROW = 64  # rows up to this length: a full sort is cheaper than topk (CPU, 50 per row: 2x)
LN_EPS = 1e-5
MIN_DIRECTION_M = 0.01  # a vector shorter than this has direction 0: float32 noise of world coordinates would pick it


def smart_init(module: nn.Module) -> None:
    """SMART's initialisation: Xavier-uniform linear weights and zero biases, LayerNorm 1/0, embeddings N(0, 0.02)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, FourierEmbedding):
            nn.init.normal_(m.freqs, 0.0, 0.02)
            for w in (m.w_in, m.w_out):
                for d in range(w.shape[0]):  # each input's Linear, as SMART's per-input nn.Linear
                    nn.init.xavier_uniform_(w.data[d].T)
            for p in (m.b_in, m.ln_bias, m.b_out):
                nn.init.zeros_(p)
            nn.init.ones_(m.ln_weight)


def pose_features(query: torch.Tensor, key: torch.Tensor, dt: torch.Tensor | None = None) -> torch.Tensor:
    """SMART's relative-pose inputs of `key` poses [..., 3] seen from `query` poses [..., 3] (broadcast): distance
    (m), direction of the key in the query's frame (rad), relative heading (rad, wrapped) and optionally Δt [...]
    (tokens, negative for the past, as SMART's source-minus-destination step)."""
    rel = relative(query, key)
    dist = torch.linalg.vector_norm(rel[..., :2], dim=-1)
    feats = [dist, direction(rel[..., 0], rel[..., 1], dist), rel[..., 2]]
    if dt is not None:
        feats.append(torch.broadcast_to(dt, feats[0].shape).to(feats[0].dtype))
    return torch.stack(feats, dim=-1)


def direction(along: torch.Tensor, across: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """Angle (rad) of vectors given in a local frame; 0 for vectors shorter than `MIN_DIRECTION_M`."""
    return torch.where(length < MIN_DIRECTION_M, torch.zeros_like(length), torch.atan2(across, along))


class FourierEmbedding(nn.Module):
    """Scalars [..., D] -> [..., H], as SMART's: each scalar x_d becomes [cos 2πf_d x_d, sin 2πf_d x_d, x_d] (f_d
    learned, B bands) and goes through its own Linear -> LayerNorm -> ReLU -> Linear; the D results are summed, the
    categorical embeddings (if any) added, then LayerNorm -> ReLU -> Linear. The D per-input MLPs are stacked
    ([D, ...] parameters) and run as batched products."""

    def __init__(self, in_dim: int, hidden: int, bands: int) -> None:
        super().__init__()
        feats = 2 * bands + 1
        self.freqs = nn.Parameter(torch.zeros(in_dim, bands))
        self.w_in = nn.Parameter(torch.zeros(in_dim, feats, hidden))
        self.b_in = nn.Parameter(torch.zeros(in_dim, 1, hidden))
        self.ln_weight = nn.Parameter(torch.ones(in_dim, 1, hidden))
        self.ln_bias = nn.Parameter(torch.zeros(in_dim, 1, hidden))
        self.w_out = nn.Parameter(torch.zeros(in_dim, hidden, hidden))
        self.b_out = nn.Parameter(torch.zeros(in_dim, hidden))
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.ReLU(), nn.Linear(hidden, hidden))
        smart_init(self)

    def forward(self, x: torch.Tensor, categorical: torch.Tensor | None = None) -> torch.Tensor:
        """x [..., D] scalars, categorical [..., H] (the sum of the categorical embeddings, broadcast) -> [..., H]."""
        lead, flat = x.shape[:-1], x.reshape(-1, x.shape[-1])
        cat = None if categorical is None else torch.broadcast_to(categorical, (*lead, categorical.shape[-1]))
        cat = None if cat is None else cat.reshape(-1, cat.shape[-1])
        rows = max(1, CPU_BLOCK_FLOATS // self.w_in.shape[:2].numel())
        if torch.is_grad_enabled() or flat.device.type != "cpu" or flat.shape[0] <= rows:
            return self.out(self._mix(flat, cat)).view(*lead, -1)
        # CPU inference: row blocks whose features stay in a core's L2 cache, each written straight into the output
        # (the same arithmetic per row: bit-identical)
        out = flat.new_empty(flat.shape[0], self.b_out.shape[-1])
        norm, act, final = self.out
        for i in range(0, flat.shape[0], rows):
            block = None if cat is None else cat[i:i + rows]
            torch.addmm(final.bias, act(norm(self._mix(flat[i:i + rows], block))), final.weight.t(),
                        out=out[i:i + rows])
        return out.view(*lead, -1)

    def _mix(self, flat: torch.Tensor, cat: torch.Tensor | None) -> torch.Tensor:
        """[P, D] scalars -> [P, H]: the sum over d of the per-input MLPs, plus the categorical sum (before to_out).
        Input by input: the identity feature and the [cos, sin] block meet their own slices of the first weight, the
        LayerNorm applies its affine in its own kernel, and each MLP's output adds straight into the sum (no
        [D, P, H] stack: on CPU this ran faster than one batched product over the stacked inputs)."""
        bands = self.freqs.shape[1]
        y = self.b_out.sum(0).expand(flat.shape[0], -1) if cat is None else cat + self.b_out.sum(0)
        for d in range(flat.shape[1]):
            x = flat[:, d:d + 1]
            angle = (2 * math.pi) * x * self.freqs[d]  # [P, B]
            w = self.w_in[d]
            hid = torch.addmm(self.b_in[d, 0], x, w[2 * bands:])
            hid = hid.addmm_(torch.cat([torch.cos(angle), torch.sin(angle)], 1), w[:2 * bands])
            hid = F.layer_norm(hid, hid.shape[-1:], self.ln_weight[d, 0], self.ln_bias[d, 0], LN_EPS).relu_()
            y = torch.addmm(y, hid, self.w_out[d])
        return y


def nearest(dist: torch.Tensor, k: int, radius: float, ids: torch.Tensor | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices [..., k'] of the k smallest entries of `dist` [..., N] (>= 0; inf = excluded), nearest first, and their
    mask (< radius); k' = min(k, N). Equal distances go by `ids` [..., N] (non-negative, < 2^24, unique in a row;
    default the column index): the choice among equidistant entries is a function of the entries alone, never of the
    row's length or order, so a padded batch, a longer candidate list or another path (the incremental engine, the
    learner's packed forward) picks the same neighbours."""
    k = min(k, dist.shape[-1])
    if k == 0:
        shape = (*dist.shape[:-1], 0)
        return torch.zeros(shape, dtype=torch.long, device=dist.device), torch.zeros(shape, dtype=torch.bool,
                                                                                     device=dist.device)
    if ids is None:
        ids = torch.arange(dist.shape[-1], device=dist.device)
    # the float32 bits of a non-negative float order like the float; below them the id: one exact integer key
    key = (dist.float() + 0.0).view(torch.int32).long() * TIE_IDS + ids
    if dist.shape[-1] <= SORT_MAX_ROW:
        idx = torch.sort(key, dim=-1).indices[..., :k]
    else:
        idx = torch.topk(key, k, dim=-1, largest=False, sorted=True).indices
    return idx, torch.gather(dist, -1, idx) < radius


def normalize_pairs(rel: torch.Tensor) -> torch.Tensor:
    """The affine-free LayerNorm of relative embeddings [..., H]: shared by every layer of one attention kind, each
    layer applies its own affine through its weights (see `RelAttention`)."""
    return F.layer_norm(rel, rel.shape[-1:], eps=LN_EPS)


def _key_weights(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Attention weights [N, K, heads]: scores [N, K, heads] normalised by a softmax over the keys (dim 1) a query's
    mask [N, K] admits; a query with no admitted key gets all-zero weights."""
    m = mask[..., None]
    top = scores.detach().masked_fill(~m, float("-inf")).amax(1, keepdim=True)  # a shift the softmax ignores
    e = torch.exp((scores - torch.where(torch.isfinite(top), top, torch.zeros_like(top))).masked_fill(~m, -math.inf))
    total = e.sum(1, keepdim=True)
    return e / torch.where(total > 0, total, torch.ones_like(total))


class RelAttention(nn.Module):
    """SMART's attention layer on neighbour lists: `x ← x + postnorm(to_out(gated(attn)))`, then
    `x ← x + ff_postnorm(ff(ff_prenorm(x)))`. Queries come from the pre-normed destination, keys/values from the
    pre-normed sources (one LayerNorm for both in the self form), each shifted by `k_rel` / `v_rel` of the pair's
    pre-normed relative embedding; a sigmoid gate mixes the attended vector with `self_proj` of the query.

    The relative part is never materialised per pair: with r̂ the affine-free normalised embedding, γ/β the layer's
    LayerNorm affine and per head h, q·Wk_h(γ⊙r̂+β) = (Wk_h diag γ)ᵀq·r̂ + const (the constant cancels in the softmax
    over keys) and Σ_k w_k (Wv_h(γ⊙r̂_k+β) + b) = Wv_h diag γ (Σ_k w_k r̂_k) + (Wv_h β + b) Σ_k w_k, so the [N, K, 2H]
    projection of the pairs becomes batched products with [N, heads, H] operands."""

    def __init__(self, hidden: int, heads: int, ff_mult: int, dropout: float, bipartite: bool = False,
                 has_rel: bool = True) -> None:
        super().__init__()
        self.heads, self.has_rel, self.bipartite = heads, has_rel, bipartite
        self.norm_src = nn.LayerNorm(hidden)
        if bipartite:  # the self form has one LayerNorm for queries and sources
            self.norm_q = nn.LayerNorm(hidden)
        self.q = nn.Linear(hidden, hidden)
        self.k = nn.Linear(hidden, hidden, bias=False)
        self.v = nn.Linear(hidden, hidden)
        if has_rel:
            self.norm_rel = nn.LayerNorm(hidden)
            self.k_rel = nn.Linear(hidden, hidden, bias=False)
            self.v_rel = nn.Linear(hidden, hidden)
        self.self_proj = nn.Linear(hidden, hidden)
        self.gate = nn.Linear(2 * hidden, hidden)
        self.out = nn.Linear(hidden, hidden)
        self.post_norm = nn.LayerNorm(hidden)
        self.ff_norm = nn.LayerNorm(hidden)
        self.ff = nn.Sequential(nn.Linear(hidden, ff_mult * hidden), nn.ReLU(), nn.Dropout(dropout),
                                nn.Linear(ff_mult * hidden, hidden))
        self.ff_post_norm = nn.LayerNorm(hidden)
        self.attn_drop = nn.Dropout(dropout)
        smart_init(self)

    def project(self, src: torch.Tensor) -> torch.Tensor:
        """Key/value projections [..., 2H] of source features [..., H] (cacheable: independent of the query)."""
        bias = torch.cat([torch.zeros_like(self.v.bias), self.v.bias])
        return F.linear(self.norm_src(src), torch.cat([self.k.weight, self.v.weight]), bias)

    def _query(self, x: torch.Tensor):
        """Normalised queries, per-head queries [N, heads, dh] and the relative-key query [N, heads, H]."""
        n, h = x.shape
        xn = (self.norm_q if self.bipartite else self.norm_src)(x)
        q = self.q(xn).view(n, self.heads, h // self.heads)
        if not self.has_rel:
            return xn, q, None
        w_k = (self.k_rel.weight * self.norm_rel.weight).view(self.heads, h // self.heads, h)
        return xn, q, torch.einsum("nhd,hdc->nhc", q, w_k)

    def _rel_values(self, weights: torch.Tensor, rel: torch.Tensor) -> torch.Tensor:
        """Σ_k w_k,h v_rel_h(γ⊙r̂_k+β): [N, heads, dh] from weights [N, K, heads] and normalised rel [N, K, H]."""
        h = rel.shape[-1]
        w_v = (self.v_rel.weight * self.norm_rel.weight).view(self.heads, h // self.heads, h)
        shift = (self.v_rel(self.norm_rel.bias)).view(self.heads, h // self.heads)  # Wv β + b per head
        mixed = torch.einsum("nhc,hdc->nhd", torch.bmm(weights.transpose(1, 2), rel), w_v)
        return mixed + weights.sum(1)[..., None] * shift

    def _finish(self, x: torch.Tensor, xn: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.gate(torch.cat([attended, xn], dim=-1)))
        x = x + self.post_norm(self.out(attended + gate * (self.self_proj(xn) - attended)))
        return x + self.ff_post_norm(self.ff(self.ff_norm(x)))

    def _scores(self, src_scores: torch.Tensor, rel: torch.Tensor | None, q_rel: torch.Tensor | None,
                mask: torch.Tensor, dh: int) -> torch.Tensor:
        scores = src_scores if q_rel is None else src_scores + torch.bmm(rel, q_rel.transpose(1, 2))
        return self.attn_drop(_key_weights(scores / math.sqrt(dh), mask))

    def forward(self, x: torch.Tensor, kv: torch.Tensor, rel: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
        """x [N, H] queries; kv [N, K, 2H] projected sources of each query; rel [N, K, H] normalised relative
        embeddings (`normalize_pairs`; None without); mask [N, K] -> [N, H]."""
        n, k = mask.shape
        h = x.shape[-1]
        heads, dh = self.heads, h // self.heads
        xn, q, q_rel = self._query(x)
        keys, values = kv.split(h, dim=-1)  # one split: its backward is one concatenation, not two padded copies
        # every head's q·k at once: keys [N, K, H] times the block-diagonal per-head query [N, H, heads]
        q_diag = (q[..., None] * torch.eye(heads, dtype=q.dtype, device=q.device)[:, None]).view(n, h, heads)
        weights = self._scores(torch.bmm(keys, q_diag), rel, q_rel, mask, dh)  # [N, K, heads]
        # every head's weights times all values, keep each head's own block (the diagonal)
        mixed = torch.bmm(weights.transpose(1, 2), values).view(n, heads, heads, dh)
        attended = mixed.diagonal(dim1=1, dim2=2).transpose(1, 2)
        if self.has_rel:
            attended = attended + self._rel_values(weights, rel)
        return self._finish(x, xn, attended.reshape(n, h))

    def forward_groups(self, x: torch.Tensor, kv: torch.Tensor, idx: torch.Tensor, rel: torch.Tensor | None,
                       mask: torch.Tensor) -> torch.Tensor:
        """Attention within groups whose sources are the group's own members (agents of one rollout): x [G, A, H]
        queries, kv [G, A, 2H] their projections, idx [G, A, K] member indices, rel [G*A, K, H] (normalised),
        mask [G, A, K] -> [G*A, H]. The same result as `forward` on gathered keys, but dense per group: all member
        scores by one batched product, picked at idx, and weights scattered back to [G, heads, A, A]."""
        g, a, h = x.shape
        k = idx.shape[-1]
        heads, dh = self.heads, h // self.heads
        xn, q, q_rel = self._query(x.reshape(g * a, h))
        keys = kv[..., :h].reshape(g, a, heads, dh).permute(0, 2, 3, 1)  # [G, heads, dh, A]
        dense = torch.matmul(q.view(g, a, heads, dh).transpose(1, 2), keys)  # [G, heads, A, A]
        pick = idx[:, None].expand(g, heads, a, k)
        src = torch.gather(dense, 3, pick).permute(0, 2, 3, 1).reshape(g * a, k, heads)
        weights = self._scores(src, rel, q_rel, mask.reshape(g * a, k), dh)
        spread = torch.zeros_like(dense).scatter_(3, pick, weights.view(g, a, k, heads).permute(0, 3, 1, 2))
        values = kv[..., h:].reshape(g, a, heads, dh).transpose(1, 2)  # [G, heads, A, dh]
        attended = torch.matmul(spread, values).transpose(1, 2).reshape(g * a, heads, dh)
        if self.has_rel:
            attended = attended + self._rel_values(weights, rel)
        return self._finish(x.reshape(g * a, h), xn, attended.reshape(g * a, h))


def mlp(inp: int, hidden: int, out: int) -> nn.Sequential:
    """SMART's MLPLayer: Linear -> LayerNorm -> ReLU -> Linear."""
    block = nn.Sequential(nn.Linear(inp, hidden), nn.LayerNorm(hidden), nn.ReLU(), nn.Linear(hidden, out))
    smart_init(block)
    return block
