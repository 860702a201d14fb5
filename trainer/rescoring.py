"""Teacher-forced re-scoring: per-token log-probs of closed-loop rollouts under any policy, with gradients.

A rollout's model input is rebuilt exactly as `drivetune.closed_loop` fed it to the incremental decoder: the scene's
map, the logged history tokens of its sim agents (tracks valid at the current step, `RolloutBatch.track_index`), then
the rollout's own tokens 0..14 ending at its boundary poses 1..15, every sim agent valid at every future step except a
log-replayed SDC, which is valid where the log is. One full-context forward (`BehaviorModel.decode`) over these 17
tokens gives the logits that chose future tokens 0..15; with dropout off (`model.eval()`) re-scoring a rollout with
the policy that generated it returns its behaviour log-probs (tests: max |delta| <= 1e-4).

Two ways to feed the forward, with the same results:
- `score_rows` / `score_group`: the rollouts of one group, its map encoded per call (the plain path; tests).
- `pack` + `score_chunk`: the learner's path. A scene's map is encoded once (`encode_maps`) and serves every rollout
  of its group, and so are its decoded history tokens (the logged history: decoded once per chunk); rollouts of
  several groups share one forward, their agents padded to the chunk's widest group (groups sorted by agent count),
  chunks sized by a memory budget (`chunk_tokens`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from drivetune.closed_loop import NUM_FUTURE_TOKENS
from drivetune.model import AgentBatch, BehaviorModel, MapBatch, agent_batch, map_batch
from drivetune.model.behavior import MapContext
from drivetune.model.model_config import ModelConfig
from drivetune.model.map_grid import build_map_grid
from drivetune.samplers import candidate_log_probs
from drivetune.scene import Scene
from drivetune.tokenizer import TOKEN_STEPS, MapTokens, TorchVocab, tokenize_map, tokenize_scene
from drivetune.tokenizer.layout import CURRENT_BOUNDARY
from trainer.groups import RolloutGroup


@dataclass
class Candidates:
    """A top-K sampler's candidate sets [g, A, 16, K] (ids, what `RolloutBatch.topk` records) and its temperature."""

    ids: torch.Tensor
    temperature: float = 1.0


@dataclass
class TokenScores:
    """Per-token outputs of some rollouts [g, A, 16]: log-prob of the scored token (with gradients if enabled), and
    without gradients the policy's entropy and the log-prob of the rollout's own token (the behaviour check)."""

    logp: torch.Tensor
    entropy: torch.Tensor
    own: torch.Tensor
    log_probs: torch.Tensor | None = None  # [g, A, 16, V] every id's log-prob, on request (SFT's smoothing and KL)


@dataclass
class RescoreInputs:
    """The model input of every rollout of one group, built once per update."""

    map_tokens: MapTokens
    history: AgentBatch  # [1, A, 2] logged history tokens of the sim agents
    future_valid: torch.Tensor  # bool [A, 15]: validity of the fed future tokens 0..14 (False: SDC off the log)
    tokens: torch.Tensor  # long [G, A, 16] the rollouts' tokens
    poses: torch.Tensor  # float32 [G, A, 17, 3] boundary poses (current step + 16 future)

    @classmethod
    def build(cls, scene: Scene, batch: RolloutGroup, vocab: TorchVocab) -> "RescoreInputs":
        return cls.from_logged(scene, batch, agent_batch([tokenize_scene(scene, vocab)], [batch.track_index]),
                               vocab.device)

    @classmethod
    def from_logged(cls, scene: Scene, batch: RolloutGroup, logged: AgentBatch,
                    device: torch.device | str) -> "RescoreInputs":
        """From the group's logged tokens `logged` [1, A, T] (its sim agents, tokenized once by the caller)."""
        if scene.scenario_id != batch.scenario_id:
            raise ValueError(f"scene {scene.scenario_id} does not match rollout batch {batch.scenario_id}")
        agents = np.asarray(batch.track_index)
        if not np.array_equal(scene.track_ids[agents], batch.object_ids):
            raise ValueError(f"scenario {scene.scenario_id}: batch track_index does not point at its object ids")
        valid = np.ones((len(agents), NUM_FUTURE_TOKENS - 1), bool)
        if batch.sdc == "log":  # a log-replayed SDC is valid where its log is, at each fed token's end step
            sdc = np.flatnonzero(agents == scene.sdc_index)
            ends = scene.current_time_index + TOKEN_STEPS * np.arange(1, NUM_FUTURE_TOKENS)
            valid[sdc] = scene.valid[scene.sdc_index, ends]
        return cls(
            map_tokens=tokenize_map(scene), history=logged.slice_time(0, CURRENT_BOUNDARY).to(device),
            future_valid=torch.as_tensor(valid, device=device),
            tokens=torch.tensor(np.asarray(batch.tokens), device=device),  # copies: object-store arrays are read-only
            poses=torch.tensor(np.asarray(batch.boundary_poses), dtype=torch.float32, device=device),
        )

    @property
    def num_rollouts(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def num_agents(self) -> int:
        return int(self.tokens.shape[1])

    def maps(self) -> MapBatch:
        return map_batch([self.map_tokens]).to(self.tokens.device)

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


def token_scores(logits: torch.Tensor, chosen: torch.Tensor, targets: torch.Tensor | None = None,
                 full: bool = False, candidates: Candidates | None = None) -> TokenScores:
    """Scores of `chosen` token ids [g, A, 16] under logits [g, A, 16, V]; with `targets` (CAT-K's SFT targets,
    negative = none) those are scored instead and negative ids score 0; `full` keeps every id's log-prob. With
    `candidates` the distribution is top-K's own: the softmax of logits / τ over each state's candidate ids."""
    if candidates is not None:
        logp_all = candidate_log_probs(logits, candidates.ids, candidates.temperature)
        chosen = (candidates.ids == chosen[..., None]).to(torch.long).argmax(-1)  # the column of the sampled id
    else:
        logp_all = torch.log_softmax(logits, dim=-1)
    picked = chosen if targets is None else targets.clamp_min(0)
    logp = logp_all.gather(-1, picked[..., None])[..., 0]
    if targets is not None:
        logp = logp.masked_fill(targets < 0, 0.0)
    with torch.no_grad():
        probs = logp_all.exp()
        entropy = -(probs * torch.where(probs > 0, logp_all, torch.zeros_like(logp_all))).sum(-1)
        own = logp.detach() if targets is None else logp_all.gather(-1, chosen[..., None])[..., 0]
    return TokenScores(logp=logp, entropy=entropy, own=own, log_probs=logp_all if full else None)


def score_rows(model: BehaviorModel, inputs: RescoreInputs, rows: torch.Tensor,
               targets: torch.Tensor | None = None, candidates: Candidates | None = None) -> TokenScores:
    """Log-probs and entropies [g, A, 16] of the given rollouts' tokens (or of other `targets` [g, A, 16] in the same
    context, e.g. CAT-K's SFT targets; negative ids score 0) under `model`; gradients flow if enabled. The caller sets
    the model's mode; RL keeps it in eval mode (no dropout)."""
    rows = rows.to(inputs.tokens.device)
    logits = model(inputs.maps(), inputs.agent_inputs(rows))[:, :, CURRENT_BOUNDARY - 1 :]  # predict tokens 0..15
    if candidates is not None:  # the group's candidate sets [G, A, 16, K] -> these rows'
        candidates = Candidates(candidates.ids[rows], candidates.temperature)
    return token_scores(logits, inputs.tokens[rows], targets, candidates=candidates)


@torch.no_grad()
def score_group(model: BehaviorModel, inputs: RescoreInputs, chunk: int = 8,
                candidates: Candidates | None = None) -> TokenScores:
    """No-grad scores of every rollout of a group, chunk by chunk (reference and behaviour checks)."""
    parts = [score_rows(model, inputs, rows, candidates=candidates) for rows in inputs.chunks(chunk)]
    return TokenScores(*(torch.cat([getattr(p, f) for p in parts]) for f in ("logp", "entropy", "own")))


# ---------------------------------------------------------------------------------------------- the packed path
def token_bytes(cfg: ModelConfig) -> int:
    """Rough activation memory a training forward keeps per agent-token: its neighbour pairs' relative embeddings
    and attention operands dominate (micro: measured 230-270 KB with saved-tensor hooks, this gives 269 KB)."""
    cfg = cfg.resolved()
    return 80 * cfg.hidden * (cfg.map_neighbors + cfg.agent_neighbors + cfg.time_span)


def chunk_tokens(cfg: ModelConfig, budget_mb: float) -> int:
    """Agent-tokens (rows x agents x 17) one forward may hold within `budget_mb` MiB of activations."""
    return max(1, int(budget_mb * 2**20) // token_bytes(cfg))


@dataclass
class PackedChunk:
    """Rollouts of several groups in one forward: `parts` lists (group position, its rollout rows) in row order;
    `agents` [R, A', 17] pads each group's agents to A'; `scene_index` [R] is each row's group position."""

    parts: list[tuple[int, torch.Tensor]]
    agents: AgentBatch
    scene_index: torch.Tensor
    tokens: torch.Tensor  # long [R, A', 16] the rollouts' own tokens (0 on padding)
    prefix_rows: torch.Tensor  # long [R] the first row of each row's group here: their history tokens are the same

    def split(self, t: torch.Tensor, inputs: Sequence[RescoreInputs]) -> list[torch.Tensor]:
        """Per part, `t` [R, A', ...] cut back to that group's rows and agents [r, A_g, ...]."""
        out, lo = [], 0
        for gi, rows in self.parts:
            out.append(t[lo : lo + len(rows), : inputs[gi].num_agents])
            lo += len(rows)
        return out

    def gather(self, per_group: Sequence[torch.Tensor], fill: float | int | bool = 0) -> torch.Tensor:
        """The inverse of `split` for per-group tensors [G_g, A_g, ...]: this chunk's rows, padded [R, A', ...]."""
        a = self.tokens.shape[1]
        rows = []
        for gi, r in self.parts:
            x = per_group[gi][r.to(per_group[gi].device)]
            pad = [0, 0] * (x.dim() - 2) + [0, a - x.shape[1]]
            rows.append(torch.nn.functional.pad(x, pad, value=fill))
        return torch.cat(rows)


def pack(inputs: Sequence[RescoreInputs], max_tokens: int) -> list[PackedChunk]:
    """Every rollout of the groups in chunks of at most `max_tokens` agent-tokens (at least one rollout each).
    Groups go in order of agent count, so a chunk pads little; a group may span chunks."""
    t = CURRENT_BOUNDARY + NUM_FUTURE_TOKENS - 1
    order = sorted(range(len(inputs)), key=lambda i: inputs[i].num_agents)
    chunks: list[list[tuple[int, torch.Tensor]]] = [[]]
    rows_in, width = 0, 0
    for gi in order:
        a = inputs[gi].num_agents
        for r in range(inputs[gi].num_rollouts):
            if rows_in and (rows_in + 1) * max(width, a) * t > max_tokens:
                chunks.append([])
                rows_in, width = 0, 0
            cur = chunks[-1]
            if cur and cur[-1][0] == gi:
                cur[-1] = (gi, cur[-1][1] + [r])
            else:
                cur.append((gi, [r]))
            rows_in, width = rows_in + 1, max(width, a)
    return [_packed(inputs, [(gi, torch.tensor(rows)) for gi, rows in parts]) for parts in chunks if parts]


def _packed(inputs: Sequence[RescoreInputs], parts: list[tuple[int, torch.Tensor]]) -> PackedChunk:
    a = max(inputs[gi].num_agents for gi, _ in parts)

    def pad(x: torch.Tensor) -> torch.Tensor:  # [r, A_g, ...] -> [r, a, ...] with zeros (invalid agents)
        return torch.nn.functional.pad(x, [0, 0] * (x.dim() - 2) + [0, a - x.shape[1]])

    pieces = [inputs[gi].agent_inputs(rows) for gi, rows in parts]
    agents = AgentBatch(*(torch.cat([pad(getattr(p, f)) for p in pieces]) for f in
                          ("tokens", "poses", "valid", "type_idx", "size")))
    device = agents.tokens.device
    scene_index = torch.cat([torch.full((len(rows),), gi, dtype=torch.long) for gi, rows in parts]).to(device)
    tokens = torch.cat([pad(inputs[gi].tokens[rows.to(device)]) for gi, rows in parts])
    starts = np.cumsum([0] + [len(rows) for _, rows in parts[:-1]])
    prefix_rows = torch.cat([torch.full((len(rows),), int(lo), dtype=torch.long) for lo, (_, rows) in
                             zip(starts, parts)]).to(device)
    return PackedChunk(parts, agents, scene_index, tokens, prefix_rows)


def encode_maps(model: BehaviorModel, inputs: Sequence[RescoreInputs]) -> MapContext:
    """The maps of the groups' scenes, encoded once (scene i = group i) for every forward of their rollouts.

    Scene by scene, as the rollout workers encode them (one scene per task). The grid index is rebuilt over all
    scenes; its candidate lists may differ, the tokens they admit do not (`drivetune.model.map_grid`), and `nearest`
    breaks distance ties by token index, so the neighbours are those the rollouts used."""
    device = inputs[0].tokens.device
    parts = [model.encode_map(x.maps()) for x in inputs]
    if len(parts) == 1:
        return parts[0]
    m = max(p.valid.shape[1] for p in parts)

    def cat(ts: list[torch.Tensor], per_scene: bool) -> torch.Tensor:  # pad each scene's tokens to m, then join
        rows = [t if per_scene else t[None] for t in ts]
        out = torch.cat([torch.nn.functional.pad(t, [0, 0] * (t.dim() - 2) + [0, m - t.shape[1]]) for t in rows])
        return out if per_scene else out.flatten(0, 1)

    poses, valid = cat([p.poses for p in parts], True), cat([p.valid for p in parts], True)
    kv = [cat([p.kv[layer] for p in parts], False) for layer in range(len(parts[0].kv))]
    return MapContext(poses=poses, valid=valid, kv=kv, grid=build_map_grid(poses[..., :2], valid,
                                                                          model.cfg.map_radius))


def score_chunk(model: BehaviorModel, ctx: MapContext, chunk: PackedChunk, targets: torch.Tensor | None = None,
                full: bool = False, candidates: Candidates | None = None) -> TokenScores:
    """`score_rows` for a packed chunk on encoded maps: scores [R, A', 16] (padding agents score garbage). The
    history tokens of a group's rollouts are decoded once (`BehaviorModel.decode`'s shared prefix)."""
    logits = model.decode(ctx, chunk.agents, chunk.scene_index, chunk.prefix_rows,
                          CURRENT_BOUNDARY)[:, :, CURRENT_BOUNDARY - 1 :]
    return token_scores(logits, chunk.tokens, targets, full, candidates)
