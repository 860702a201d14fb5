"""Next-token samplers for closed-loop rollouts: top-K, CAT-K, Warm-K and greedy, batched on device.

Every sampler sees one token step of N agent-rollouts at once: the policy logits [N, V], one uniform number per row
(drawn from that rollout's own counter-based generator, so results do not depend on batch composition), the current
rollout poses and the motion vocabulary (`drivetune.tokenizer.TorchVocab`: token end boxes, per-type box shapes).
Poses are (x, y, heading). Definitions with the math: docs/samplers.md.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch

from drivetune.rollout_config import SAMPLERS, SamplerConfig
from drivetune.tokenizer import TorchVocab, nearest_tokens
from drivetune.tokenizer.layout import box_corners, mean_corner_distance, relative


@dataclass
class StepInputs:
    """One token step of N agent-rollouts (rows). `log_next*` feed CAT-K, `prev_pose` feeds Warm-K."""

    logits: torch.Tensor  # [N, V] policy logits (-inf outside the row's vocabulary)
    uniforms: torch.Tensor  # [N] float64 in [0, 1)
    pose: torch.Tensor  # [N, 3] current rollout pose (x, y, heading)
    type_idx: torch.Tensor  # [N] long: tokenizer type index (which vocabulary and box)
    vocab: TorchVocab
    prev_pose: torch.Tensor | None = None  # [N, 3] pose one token step (0.5 s) earlier
    log_next: torch.Tensor | None = None  # [N, 3] logged pose at the next token step
    log_next_valid: torch.Tensor | None = None  # [N] bool


@dataclass
class SampleResult:
    """Chosen tokens and their log-probabilities; `topk` the candidate set; `sft_target` only from CAT-K."""

    token: torch.Tensor  # [N] long
    logp: torch.Tensor  # [N] log π(token) under the full policy softmax (temperature 1): the behaviour log-prob
    sampler_logp: torch.Tensor  # [N] log-prob of the token under the distribution actually sampled from
    topk: torch.Tensor  # [N, K] long, candidate ids in descending logit order
    sft_target: torch.Tensor | None = None  # [N] long, -1 where the log is invalid


# ------------------------------------------------------------------------------------------------ seeding
def rollout_seed(scenario_id: str, rollout_index: int, base_seed: int, policy_version: int) -> int:
    """A 63-bit seed that is a pure function of (scenario id, rollout index, base seed, policy version)."""
    key = f"{scenario_id}\x1f{int(rollout_index)}\x1f{int(base_seed)}\x1f{int(policy_version)}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") & ((1 << 63) - 1)


def rollout_uniforms(seed: int, num_steps: int, num_agents: int) -> torch.Tensor:
    """[num_steps, num_agents] float64 uniforms of one rollout, from its own CPU generator."""
    gen = torch.Generator().manual_seed(int(seed))
    return torch.rand((num_steps, num_agents), generator=gen, dtype=torch.float64)


# ------------------------------------------------------------------------------------------------ samplers
def _pick(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw of one column per row of `probs` [N, K] with uniforms [N]; returns column indices."""
    cdf = probs.double().cumsum(dim=-1)
    target = uniforms.to(cdf.dtype).unsqueeze(-1) * cdf[..., -1:]
    return (cdf <= target).sum(dim=-1).clamp_(max=probs.shape[-1] - 1)


def _categorical(scores: torch.Tensor, uniforms: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    logq = torch.log_softmax(scores / temperature, dim=-1)
    col = _pick(logq.exp(), uniforms)
    return col, logq.gather(-1, col.unsqueeze(-1)).squeeze(-1)


def _candidate_distance(inp: StepInputs, ids: torch.Tensor, goal_local: torch.Tensor) -> torch.Tensor:
    """Mean corner distance [N, K] between the end boxes of candidate tokens `ids` [N, K] and the box at `goal_local`
    [N, 3], both in the frame of each row's current pose (type's fixed box shape)."""
    tv = inp.vocab
    goal = box_corners(goal_local.to(tv.poses.dtype), tv.boxes[inp.type_idx])  # [N, 4, 2]
    return mean_corner_distance(tv.end_corners[inp.type_idx.unsqueeze(-1), ids], goal.unsqueeze(1))


def sft_target(inp: StepInputs, guard: float = 0.0) -> torch.Tensor:
    """CAT-K's SFT label: the vocabulary token whose end box is closest to the log; -1 where the log is invalid and,
    with `guard` > 0, where the rollout has drifted so far that even that token ends more than `guard` box lengths
    of the agent's type from the log (its label would teach a snap-back move, not driving)."""
    if inp.log_next is None or inp.log_next_valid is None:
        raise ValueError("CAT-K needs the logged next pose (log_next, log_next_valid)")
    ids, dist = nearest_tokens(inp.vocab, inp.type_idx, inp.pose, inp.log_next, k=1)
    keep = inp.log_next_valid
    if guard > 0:
        keep = keep & (dist[:, 0] <= guard * inp.vocab.boxes[inp.type_idx, 0])
    return torch.where(keep, ids[:, 0], torch.full_like(ids[:, 0], -1))


def candidate_log_probs(logits: torch.Tensor, candidates: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log q over a top-K sampler's candidate set: q = softmax(ℓ/τ) restricted to `candidates` [..., K] (ids; the
    sampler's `topk`) for logits [..., V]; returns [..., K]. With the logits that sampled, this is the distribution
    top-K drew from (its `sampler_logp`); with another policy's logits, that policy's distribution on the same set
    (the ratio and gradient of RL on the sampler's own distribution)."""
    scores = logits.gather(-1, candidates) / temperature
    return torch.log_softmax(scores, dim=-1)


def sample(cfg: SamplerConfig, inp: StepInputs) -> SampleResult:
    """Choose one token per row with the configured sampler."""
    logits = inp.logits.float()
    k = min(cfg.k, logits.shape[-1])
    top_logits, top_ids = logits.topk(k, dim=-1)
    cand_ok = torch.isfinite(top_logits)
    zeros = torch.zeros(logits.shape[0], dtype=logits.dtype, device=logits.device)
    first = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    target = None
    if cfg.kind == "greedy":
        col, sampler_logp = first, zeros
    elif cfg.kind == "topk":
        col, sampler_logp = _categorical(top_logits, inp.uniforms, cfg.temperature)
    elif cfg.kind == "catk":
        target = sft_target(inp, cfg.target_guard)
        dist = _candidate_distance(inp, top_ids, relative(inp.pose, inp.log_next))
        closest = dist.masked_fill(~cand_ok, math.inf).argmin(dim=-1)
        col, sampler_logp = torch.where(inp.log_next_valid, closest, first), zeros
    elif cfg.kind == "warmk":
        if inp.prev_pose is None:
            raise ValueError("Warm-K needs prev_pose (the pose one token step earlier)")
        # In the current pose's frame the warm start is the last motion itself: p ⊖ p_prev.
        dist = _candidate_distance(inp, top_ids, relative(inp.prev_pose, inp.pose)).to(logits.dtype)
        scores = torch.where(cand_ok, top_logits - cfg.warm_lambda * dist, top_logits)
        col, sampler_logp = _categorical(scores, inp.uniforms, cfg.temperature)
    else:
        raise ValueError(f"sampler kind {cfg.kind!r} unknown (choose from {', '.join(SAMPLERS)})")
    token = top_ids.gather(-1, col.unsqueeze(-1)).squeeze(-1)
    logp = logits.gather(-1, token.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)  # no [N, V] output
    return SampleResult(token=token, logp=logp, sampler_logp=sampler_logp, topk=top_ids, sft_target=target)
