"""`BehaviorModel`: map encoder + SMART-style agent decoder with full-context and incremental (cached) decoding."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import nn

from drivetune.model.batch import MAP_FEAT_DIM, AgentBatch, MapBatch
from drivetune.model.model_config import MODEL_VERSION, ModelConfig
from drivetune.model.map_grid import MapGrid, build_map_grid
from drivetune.model.prefix import SharedPrefix
from drivetune.model.layers import FourierEmbedding, RelAttention, mlp, nearest, normalize_pairs, pose_features
from drivetune.model.layers import direction, smart_init
from drivetune.tokenizer import NUM_AGENT_TYPES, MotionVocab
from drivetune.tokenizer.map_tokens import NUM_MAP_CATEGORIES, NUM_SIGNAL_CLASSES

CPU_CHUNK_FLOATS = 2**21  # an incremental step on CPU runs in row chunks whose pair tensors hold about this many floats
CPU_SPARSE_PAIRS = True  # on CPU, embed only the neighbour pairs inside the radius ...
SPARSE_MAX_SHARE = 0.8  # ... when at most this share of them is inside
CPU_COMPACT_PAIRS = True  # on CPU, full-context decoding cuts neighbour lists to the in-radius ones (and as above)

@dataclass
class MapContext:
    """Encoded map of S scenes: poses [S, M, 3], valid [S, M], per-agent-layer projected keys/values [S*M, 2H],
    and the grid index for the map -> agent neighbour search."""

    poses: torch.Tensor
    valid: torch.Tensor
    kv: list[torch.Tensor]
    grid: MapGrid

    @property
    def num_scenes(self) -> int:
        return int(self.valid.shape[0])


@dataclass
class DecodeState:
    """Per-row decoding caches (rows b = scene * R + rollout). Ring buffers over the last W tokens: token i lives in
    slot i % W of `kv` [L, B, A, W, 2H] (each layer's projected temporal keys/values), `poses` [B, A, W, 3] and
    `valid` [B, A, W]; slots not yet written are invalid. `step` writes one slot in place (no copy of the caches)."""

    map_ctx: MapContext
    scene_index: torch.Tensor  # [B] long
    type_idx: torch.Tensor  # [B, A] long
    size: torch.Tensor  # [B, A, 3] length, width, height
    kv: torch.Tensor
    poses: torch.Tensor
    valid: torch.Tensor
    num_steps: int = 0

    @property
    def num_rows(self) -> int:
        return int(self.scene_index.shape[0])

    @property
    def last_pose(self) -> torch.Tensor:
        return self.poses[:, :, (self.num_steps - 1) % self.poses.shape[2]]

    @property
    def last_valid(self) -> torch.Tensor:
        return self.valid[:, :, (self.num_steps - 1) % self.valid.shape[2]]

    def lags(self) -> torch.Tensor:
        """[W] age in tokens of each slot's entry as seen by the next token (1 = the previous token)."""
        w = self.valid.shape[2]
        return (self.num_steps - 1 - torch.arange(w, device=self.valid.device)) % w + 1

    def select(self, rows: torch.Tensor) -> "DecodeState":
        """A new state holding the given rows (any order, repeats allowed); the map context is shared."""
        return replace(self, scene_index=self.scene_index[rows], type_idx=self.type_idx[rows], size=self.size[rows],
                       kv=self.kv[:, rows], poses=self.poses[rows], valid=self.valid[rows])


class BehaviorModel(nn.Module):
    """Next-token model over per-type motion vocabularies (see package docstring for the API)."""

    VERSION = MODEL_VERSION  # recorded in every checkpoint; loading another version is refused

    def __init__(self, cfg: ModelConfig, vocab: MotionVocab) -> None:
        super().__init__()
        cfg = cfg.resolved()
        self.cfg = cfg
        self.vocab = vocab
        self.vocab_hash = vocab.hash
        h = cfg.hidden
        poses = torch.as_tensor(vocab.poses, dtype=torch.float32)  # [3, V, 6, 3], checked by MotionVocab
        steps = poses[:, :, 1:]
        geometry = torch.cat([steps[..., :2], torch.cos(steps[..., 2:]), torch.sin(steps[..., 2:])], -1)
        self.register_buffer("token_geometry", geometry.flatten(2), persistent=False)  # [3, V, 20]
        self.register_buffer("token_mask", torch.as_tensor(vocab.token_mask, dtype=torch.bool), persistent=False)
        self.num_tokens = int(poses.shape[1])
        self._full_vocab = bool(vocab.token_mask.all())  # from numpy: also right when built on the meta device
        # agent embedding, as SMART's: the token's shape, fused with a Fourier embedding of the motion since the
        # previous token (length, direction against the heading) plus the type and size (length, width, height)
        self.token_emb = mlp(self.token_geometry.shape[-1], h, h)
        self.type_emb = nn.Embedding(NUM_AGENT_TYPES, h)
        self.size_emb = mlp(3, h, h)
        self.motion_emb = FourierEmbedding(2, h, cfg.fourier_bands)
        self.fusion = mlp(2 * h, h, h)
        self.map_cat_emb = nn.Embedding(NUM_MAP_CATEGORIES, h)
        self.map_sig_emb = nn.Embedding(NUM_SIGNAL_CLASSES, h)
        self.map_feat_emb = mlp(MAP_FEAT_DIM, h, h)
        # relative-pose encoders (shared by all layers of one attention kind): distance, direction, heading (+ Δt)
        self.rel_map_map = FourierEmbedding(3, h, cfg.fourier_bands)
        self.rel_time = FourierEmbedding(4, h, cfg.fourier_bands)
        self.rel_map = FourierEmbedding(3, h, cfg.fourier_bands)
        self.rel_agent = FourierEmbedding(3, h, cfg.fourier_bands)

        def blocks(n: int, bipartite: bool = False) -> nn.ModuleList:
            return nn.ModuleList(RelAttention(h, cfg.heads, cfg.ff_mult, cfg.dropout, bipartite) for _ in range(n))

        self.map_blocks = blocks(cfg.map_layers)
        self.time_blocks = blocks(cfg.agent_layers)
        self.map_agent_blocks = blocks(cfg.agent_layers, bipartite=True)
        self.agent_blocks = blocks(cfg.agent_layers)
        self.head = mlp(h, h, self.num_tokens)
        smart_init(self)

    # ------------------------------------------------------------------ helpers
    def _embed(self, tokens: torch.Tensor, type_idx: torch.Tensor, size: torch.Tensor, poses: torch.Tensor,
               prev: torch.Tensor, prev_valid: torch.Tensor) -> torch.Tensor:
        """Agent features [B, A, *T, H] of token ids [B, A, *T] ending at `poses` [B, A, *T, 3], after the previous
        end poses `prev` (where `prev_valid`, else no motion); type_idx [B, A] and size [B, A, 3] broadcast over T."""
        extra = [1] * (tokens.ndim - 2)
        t = type_idx.reshape(*type_idx.shape, *extra).expand_as(tokens)
        ids = tokens.clamp(0, self.num_tokens - 1)
        agent = (self.type_emb(type_idx) + self.size_emb(size)).reshape(*type_idx.shape, *extra, -1)
        step = (poses[..., :2] - prev[..., :2]) * prev_valid[..., None]
        cos, sin = torch.cos(poses[..., 2]), torch.sin(poses[..., 2])
        along, across = cos * step[..., 0] + sin * step[..., 1], cos * step[..., 1] - sin * step[..., 0]
        length = torch.linalg.vector_norm(step, dim=-1)
        motion = torch.stack([length, direction(along, across, length)], -1)
        fused = torch.cat([self.token_emb(self.token_geometry[t, ids]), self.motion_emb(motion, agent)], -1)
        return self.fusion(fused)

    def _logits(self, x: torch.Tensor, type_idx: torch.Tensor) -> torch.Tensor:
        logits = self.head(x)
        if self._full_vocab:  # every type uses every id: nothing to mask
            return logits
        mask = self.token_mask[type_idx]  # [B, A, V]
        if logits.ndim == 4:
            mask = mask[:, :, None]
        if torch.is_grad_enabled():
            return logits.masked_fill(~mask, float("-inf"))
        return logits.masked_fill_(~mask, float("-inf"))  # inference: the head's fresh output, no copy

    def _map_neighbours(self, ctx: MapContext, scene_index: torch.Tensor, poses: torch.Tensor, sparse: bool = False,
                        trim: bool = False):
        """Nearest map tokens of query poses [B, Q, 3]: flat indices into S*M, relative embeddings, mask. Only the
        grid cell's candidates are measured (exactly the tokens within the radius are among them, see map_grid).
        `trim` (host read: CPU) cuts the lists to the widest in-radius count."""
        cand, dist = ctx.grid.candidates(scene_index, poses[..., :2])  # [B, Q, C]
        # [B, Q, K] (squared distances); ties by the token's index in its scene (candidate lists differ by grid)
        pick, mask = nearest(dist, self.cfg.map_neighbors, self.cfg.map_radius ** 2, cand % ctx.poses.shape[1])
        if trim:
            pick, mask = _trim(pick, mask)
        idx = torch.gather(cand, 2, pick)  # padding (masked) points at token 0
        rel = _embed_pairs(self.rel_map, pose_features(poses[:, :, None], _rows(ctx.poses.flatten(0, 1), idx)),
                           mask if sparse else None)
        return idx, rel, mask

    def _agent_neighbours(self, poses: torch.Tensor, valid: torch.Tensor, sparse: bool = False, trim: bool = False):
        """Nearest other valid agents at one time: poses [G, A, 3], valid [G, A] -> idx [G, A, K], rel, mask; `trim`
        (host read: CPU) cuts the lists to the widest in-radius count."""
        a = poses.shape[1]
        dist = torch.cdist(poses[..., :2], poses[..., :2], compute_mode="donot_use_mm_for_euclid_dist")
        eye = torch.eye(a, dtype=torch.bool, device=poses.device)
        dist = dist.masked_fill(eye | ~valid[:, None, :], float("inf"))
        idx, mask = nearest(dist, self.cfg.agent_neighbors, self.cfg.agent_radius)
        if trim:
            idx, mask = _trim(idx, mask)
        key = torch.gather(poses[:, None].expand(-1, a, -1, -1), 2, idx[..., None].expand(-1, -1, -1, 3))
        return idx, _embed_pairs(self.rel_agent, pose_features(poses[:, :, None], key), mask if sparse else None), mask

    # --------------------------------------------------------------------- map
    def encode_map(self, mb: MapBatch) -> MapContext:
        """Encode S scenes' map tokens once; the result is shared by every rollout of those scenes."""
        s, m = mb.valid.shape
        if m == 0:
            raise ValueError("map batch has no map tokens (pad with one invalid token)")
        dtype = self.token_geometry.dtype  # inputs follow the weights (float32, or float64 in exactness tests)
        poses = torch.cat([mb.pos, mb.heading[..., None]], -1).to(dtype).masked_fill(~mb.valid[..., None], 0.0)
        x = self.map_cat_emb(mb.category) + self.map_sig_emb(mb.signal) + self.map_feat_emb(mb.feat.to(dtype))
        dist = torch.cdist(poses[..., :2], poses[..., :2], compute_mode="donot_use_mm_for_euclid_dist")
        eye = torch.eye(m, dtype=torch.bool, device=dist.device)
        dist = dist.masked_fill(eye | ~mb.valid[:, None, :], float("inf"))
        idx, mask = nearest(dist, self.cfg.map_map_neighbors, self.cfg.map_map_radius)  # [S, M, K]
        key = torch.gather(poses[:, None].expand(-1, m, -1, -1), 2, idx[..., None].expand(-1, -1, -1, 3))
        rel = normalize_pairs(self.rel_map_map(pose_features(poses[:, :, None], key))).flatten(0, 1)
        flat = (torch.arange(s, device=idx.device)[:, None, None] * m + idx).flatten(0, 1)
        mask = mask.flatten(0, 1)
        x = x.flatten(0, 1)
        for block in self.map_blocks:
            x = block(x, _rows(block.project(x), flat), rel, mask)
        return MapContext(poses=poses, valid=mb.valid, kv=[blk.project(x) for blk in self.map_agent_blocks],
                          grid=build_map_grid(poses[..., :2], mb.valid, self.cfg.map_radius))

    # ---------------------------------------------------------- full context
    def forward(self, mb: MapBatch, agents: AgentBatch) -> torch.Tensor:
        """Teacher-forced logits [B, A, T, V]; logits[:, :, i] predict token i + 1. B must be a multiple of S."""
        return self.decode(self.encode_map(mb), agents)

    def decode(self, ctx: MapContext, agents: AgentBatch, scene_index: torch.Tensor | None = None,
               prefix_rows: torch.Tensor | None = None, prefix_len: int = 0) -> torch.Tensor:
        """`forward` on an encoded map: row b of `agents` lies in scene `scene_index[b]` of `ctx` (default: B / S
        consecutive rows per scene), so one encoding serves any number of rows. On CPU the neighbour lists are cut
        to their widest in-radius count and only in-radius pairs are embedded (masked pairs weigh exactly 0).

        `prefix_rows` [B] (used in eval mode on CPU): row b's first `prefix_len` tokens are those of row
        `prefix_rows[b]` (the logged history of rollouts of one scene). Those tokens are decoded once, on that row,
        and shared: causal attention never lets a later token change them, so the logits are the same."""
        b, a, t = agents.tokens.shape
        if scene_index is None:
            scene_index = _scene_index(b, ctx.num_scenes, agents.tokens.device)
        compact = CPU_COMPACT_PAIRS and agents.tokens.device.type == "cpu"  # (host reads of the masks: CPU only)
        valid = agents.valid
        poses = agents.poses.to(self.token_geometry.dtype).masked_fill(~valid[..., None], 0.0)
        prev = torch.cat([torch.zeros_like(poses[:, :, :1]), poses[:, :, :-1]], 2)
        prev_valid = torch.cat([torch.zeros_like(valid[:, :, :1]), valid[:, :, :-1]], 2)
        size = agents.size.to(poses.dtype)
        dev = poses.device  # token rows n = (b * A + a) * T + t; `keep` the decoded ones, `remap` n -> decoded row
        share = not self.training and dev.type == "cpu"  # (the decoded row counts are host reads: CPU only)
        shared = SharedPrefix.build(b, a, t, prefix_rows if share else None, prefix_len, dev)
        x = shared.rows(self._embed(agents.tokens, agents.type_idx, size, poses, prev, prev_valid).flatten(0, 2))
        # temporal: the previous W tokens of the same agent, oldest first (lags W..1)
        w = self.cfg.time_span
        lag = torch.arange(w, 0, -1, device=dev)
        src_t = torch.arange(t, device=dev)[:, None] - lag  # [T, W]
        t_ok = (src_t >= 0)
        src_t = src_t.clamp_min(0)
        keys = valid
        if self.training and self.cfg.hist_drop > 0:  # SMART's history dropout: past tokens hidden as temporal keys
            keys = valid & (torch.rand(valid.shape, device=dev) >= self.cfg.hist_drop)
        t_mask = shared.rows((t_ok & keys[:, :, src_t]).flatten(0, 2))  # [N', W] (N' decoded token rows)
        t_rel = normalize_pairs(self.rel_time(shared.rows(
            pose_features(poses[:, :, :, None], poses[:, :, src_t], -lag.float()).flatten(0, 2))))
        row = torch.arange(b * a, device=dev).view(b, a, 1, 1) * t
        t_idx = shared.index(shared.rows((row + src_t).flatten(0, 2)))
        # map: nearest map tokens of each (agent, time) pose
        m_scene, m_query = shared.rows(scene_index.repeat_interleave(a * t)), shared.rows(poses.flatten(0, 2))
        m_idx, m_rel, m_mask = self._map_neighbours(ctx, m_scene, m_query[:, None], compact, compact)
        m_idx, m_rel, m_mask = m_idx.flatten(0, 1), m_rel.flatten(0, 1), m_mask.flatten(0, 1)
        # agents: nearest other agents at the same time, for the (row, time) slices with a decoded token
        slices = shared.slice_ids  # [Q] the (row, time) slices b * T + t holding decoded tokens
        a_idx, a_rel, a_mask = self._agent_neighbours(poses.transpose(1, 2).flatten(0, 1)[slices],
                                                      valid.transpose(1, 2).flatten(0, 1)[slices], compact, compact)
        k = a_idx.shape[-1]
        bt = slices.repeat_interleave(a)[:, None]  # [Q * A, 1] the (row, time) slice of each query
        a_idx = shared.index(((bt // t) * a + a_idx.view(-1, k)) * t + bt % t)[shared.query]
        a_rel = torch.index_select(a_rel.reshape(-1, k, a_rel.shape[-1]), 0, shared.query)
        a_mask = a_mask.reshape(-1, k)[shared.query]
        for layer in range(self.cfg.agent_layers):
            tb, mblk, ab = self.time_blocks[layer], self.map_agent_blocks[layer], self.agent_blocks[layer]
            x = tb(x, _rows(tb.project(x), t_idx), t_rel, t_mask)
            x = mblk(x, _rows(ctx.kv[layer], m_idx), m_rel, m_mask)
            x = ab(x, _rows(ab.project(x), a_idx), a_rel, a_mask)
        return self._logits(shared.expand(x).view(b, a, t, -1), agents.type_idx)

    # ------------------------------------------------------------ incremental
    def start(self, ctx: MapContext, history: AgentBatch, num_rollouts: int = 1) -> tuple[DecodeState, torch.Tensor]:
        """Consume the history [S, A, Th] of each scene for R rollouts; returns the state and next-token logits.
        The history is decoded once per scene, then its caches are fanned out to the R rollout rows (scene-major)."""
        s, a, th = history.tokens.shape
        if s != ctx.num_scenes:
            raise ValueError(f"history has {s} scenes but the map context has {ctx.num_scenes}")
        if th < 1 or num_rollouts < 1:
            raise ValueError(f"need >= 1 history token and >= 1 rollout (got {th}, {num_rollouts})")
        w, dev = self.cfg.time_span, history.tokens.device
        scenes = torch.arange(s, device=dev)
        state = DecodeState(
            map_ctx=ctx,
            scene_index=scenes,
            type_idx=history.type_idx.clone(),
            size=history.size.clone(),
            kv=torch.zeros(self.cfg.agent_layers, s, a, w, 2 * self.cfg.hidden, device=dev),
            poses=torch.zeros(s, a, w, 3, device=dev),
            valid=torch.zeros(s, a, w, dtype=torch.bool, device=dev),
        )
        for i in range(th):
            logits = self.step(state, history.tokens[:, :, i], history.poses[:, :, i], history.valid[:, :, i])
        if num_rollouts == 1:
            return state, logits
        fan = scenes.repeat_interleave(num_rollouts)
        return state.select(fan), logits[fan]

    def step(self, state: DecodeState, tokens: torch.Tensor, poses: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Append one token per agent (tokens [B, A], end poses [B, A, 3], valid [B, A]); returns logits [B, A, V]
        for the next token. Updates `state` in place (its ring buffers: not for autograd; `forward` is the
        differentiable path). Device-agnostic and free of host synchronisation."""
        b, a = tokens.shape
        if state.type_idx.shape != (b, a) or poses.shape != (b, a, 3) or valid.shape != (b, a):
            raise ValueError(f"step inputs tokens {tuple(tokens.shape)}, poses {tuple(poses.shape)}, valid "
                             f"{tuple(valid.shape)} do not match the state's [B, A] = {tuple(state.type_idx.shape)}")
        poses = poses.masked_fill(~valid[..., None], 0.0)
        slot, lags = state.num_steps % self.cfg.time_span, state.lags().float()
        width = max(2 * self.cfg.hidden, 5 * self.cfg.fourier_bands)  # widest per-pair tensor (keys/values, angles)
        pairs = a * max(self.cfg.map_neighbors, min(a, self.cfg.agent_neighbors), 1)
        rows = b if poses.device.type != "cpu" else max(1, CPU_CHUNK_FLOATS // (pairs * width))
        chunks = math.ceil(b / rows)
        rows = math.ceil(b / chunks)  # the same number of chunks, evenly sized (32 rows: 11/11/10, not 13/13/6)
        logits = poses.new_empty(b, a, self.num_tokens)
        for i in range(0, b, rows):  # rollout rows are independent: chunks keep the pair tensors cache-sized on CPU
            r = slice(i, i + rows)
            self._step_rows(state, r, tokens[r], poses[r], valid[r], slot, lags, logits[r])
        state.poses[:, :, slot] = poses
        state.valid[:, :, slot] = valid
        state.num_steps += 1
        return logits

    def _step_rows(self, state: DecodeState, r: slice, tokens: torch.Tensor, poses: torch.Tensor, valid: torch.Tensor,
                   slot: int, lags: torch.Tensor, out: torch.Tensor) -> None:
        """`step` for the state rows `r` (tokens / masked poses / valid of those rows): writes their cache slot and
        their next-token logits into `out` [b, A, V]."""
        b, a = tokens.shape
        type_idx, past_valid = state.type_idx[r], state.valid[r]
        if state.num_steps:
            prev, prev_valid = state.last_pose[r], state.last_valid[r]
        else:
            prev, prev_valid = torch.zeros_like(poses), torch.zeros_like(valid)
        x = self._embed(tokens, type_idx, state.size[r], poses, prev, prev_valid).flatten(0, 1)  # [b*A, H]
        t_rel = _embed_pairs(self.rel_time, pose_features(poses[:, :, None], state.poses[r], -lags), None)
        t_rel = t_rel.flatten(0, 1)
        t_mask = past_valid.flatten(0, 1)
        sparse = CPU_SPARSE_PAIRS and poses.device.type == "cpu"  # (reads the mask on the host: CPU only)
        m_idx, m_rel, m_mask = self._map_neighbours(state.map_ctx, state.scene_index[r], poses, sparse)
        m_idx, m_rel, m_mask = m_idx.flatten(0, 1), m_rel.flatten(0, 1), m_mask.flatten(0, 1)
        a_idx, a_rel, a_mask = self._agent_neighbours(poses, valid, sparse)
        a_rel = a_rel.flatten(0, 1)
        for layer in range(self.cfg.agent_layers):
            tb, mblk, ab = self.time_blocks[layer], self.map_agent_blocks[layer], self.agent_blocks[layer]
            kv_now = tb.project(x)
            cache = state.kv[layer, r]
            x = tb(x, cache.flatten(0, 1), t_rel, t_mask)
            cache[:, :, slot] = kv_now.view(b, a, -1)  # after its use: the new token is not its own key
            x = mblk(x, _rows(state.map_ctx.kv[layer], m_idx), m_rel, m_mask)
            x = ab.forward_groups(x.view(b, a, -1), ab.project(x).view(b, a, -1), a_idx, a_rel, a_mask)
        final = self.head[-1]
        torch.addmm(final.bias, self.head[:-1](x), final.weight.t(), out=out.view(b * a, -1))  # the head, in place
        if not self._full_vocab:
            out.masked_fill_(~self.token_mask[type_idx], float("-inf"))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _scene_index(rows: int, scenes: int, device: torch.device) -> torch.Tensor:
    if rows % scenes:
        raise ValueError(f"{rows} agent rows is not a multiple of {scenes} map scenes")
    return torch.arange(scenes, device=device).repeat_interleave(rows // scenes)


def _trim(idx: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Neighbour lists [..., K] (nearest first: in-radius entries lead) cut to the widest in-radius count."""
    k = max(1, int(mask.sum(-1).max())) if mask.numel() else mask.shape[-1]
    return idx[..., :k], mask[..., :k]


def _embed_pairs(emb: FourierEmbedding, feats: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """normalize_pairs(emb(feats)) [..., H] for pair features [..., D]; with a pair mask [...] only the masked-in
    pairs are embedded and the others are 0 (attention gives masked pairs weight 0, so their embedding never counts)."""
    if mask is None:
        return normalize_pairs(emb(feats))
    on = mask.reshape(-1).nonzero().squeeze(-1)
    if on.numel() > SPARSE_MAX_SHARE * mask.numel():  # gathering and scattering would cost more than they save
        return normalize_pairs(emb(feats))
    flat = feats.reshape(-1, feats.shape[-1])
    out = flat.new_zeros(flat.shape[0], emb.b_out.shape[-1])
    return out.index_copy_(0, on, normalize_pairs(emb(flat[on]))).view(*feats.shape[:-1], -1)


def _rows(table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """table[idx] for a 2-D table and any index shape (index_select: about twice as fast as advanced indexing)."""
    return torch.index_select(table, 0, idx.reshape(-1)).view(*idx.shape, table.shape[-1])
