"""Per-token RL losses: k1 / k3 KL estimators, the MPO loss, the PPO-clip loss and the human (logged-token) NLL.

Every per-token tensor is 1-D [N] over the valid tokens of a minibatch (the learner flattens with its token mask).
Aggregation is token-mean: the mean over the N tokens, so a scene weighs in proportion to its valid tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

KL_INPUT_CLAMP = 20.0  # |δ| limit before exp in k3 (prior-art §4.6)
KL_OUTPUT_CLAMP = 10.0  # k3 values above this are cut (their gradient is then zero)
LOG_RATIO_CLAMP = 20.0  # |log ρ| limit before exp in PPO-clip, so a broken behaviour log-prob cannot overflow


@dataclass
class LossOutput:
    """`loss`: differentiable scalar; `stats`: plain floats for the metrics log."""

    loss: Tensor
    stats: dict[str, float] = field(default_factory=dict)


def kl_k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k1 estimator per token: δ = logp − ref_logp (unbiased for KL(π_θ‖π_ref) under π_θ samples, may be < 0)."""
    return logp - ref_logp


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k3 estimator per token: exp(−δ) + δ − 1 ≥ 0 with δ = logp − ref_logp clamped to ±20, output capped at 10."""
    d = (logp - ref_logp).clamp(-KL_INPUT_CLAMP, KL_INPUT_CLAMP)
    return (torch.exp(-d) + d - 1.0).clamp(max=KL_OUTPUT_CLAMP)


def _check(**tensors: Tensor) -> int:
    """All 1-D and of one length; returns N. Advantages must be finite."""
    n = None
    for name, t in tensors.items():
        if t.dim() != 1:
            raise ValueError(f"{name} must be 1-D [N] over valid tokens, got shape {tuple(t.shape)}")
        if n is not None and t.shape[0] != n:
            shapes = {k: tuple(v.shape) for k, v in tensors.items()}
            raise ValueError(f"per-token tensors differ in length: {shapes}")
        n = t.shape[0]
    if "adv" in tensors and not bool(torch.isfinite(tensors["adv"]).all()):
        raise ValueError("adv has non-finite values")
    return int(n or 0)


def _check_coef(name: str, value: float) -> None:
    if not 0.0 <= value < float("inf"):  # also rejects NaN
        raise ValueError(f"{name} must be finite and >= 0, got {value}")


def _kl_stats(logp: Tensor, ref_logp: Tensor) -> tuple[Tensor, dict[str, float]]:
    k3 = kl_k3(logp, ref_logp)
    with torch.no_grad():
        stats = {"kl_k1": float(kl_k1(logp, ref_logp).mean()), "kl_k3": float(k3.mean())}
    return k3, stats


def _empty(logp: Tensor, **extra: float) -> LossOutput:
    """No valid token: a zero loss that still belongs to the graph, zero stats."""
    stats = {"policy_loss": 0.0, "kl_k1": 0.0, "kl_k3": 0.0, "clip_frac": 0.0, "ratio_mean": 1.0, "num_tokens": 0.0}
    stats.update(extra)
    return LossOutput(logp.sum() * 0.0, stats)


def mpo_loss(logp: Tensor, ref_logp: Tensor, adv: Tensor, beta: float) -> LossOutput:
    """MPO (SMART-R1): token-mean of −(ρ·A − β·k3(π_θ‖π_ref)), ρ = exp(logp − stopgrad(logp)).

    ρ has value 1 and gradient ∇logp, so d loss / d logp_i = (−A_i + β·(1 − exp(−δ_i))) / N.
    """
    n = _check(logp=logp, ref_logp=ref_logp, adv=adv)
    _check_coef("beta", beta)
    if n == 0:
        return _empty(logp)
    ratio = torch.exp(logp - logp.detach())
    pg = -ratio * adv
    k3, stats = _kl_stats(logp, ref_logp)
    loss = (pg + beta * k3).mean()
    stats.update(policy_loss=float(pg.detach().mean()), clip_frac=0.0, ratio_mean=float(ratio.detach().mean()),
                 num_tokens=float(n))
    return LossOutput(loss, stats)


def ppo_clip_loss(
    logp: Tensor, behaviour_logp: Tensor, ref_logp: Tensor, adv: Tensor, clip_eps: float, beta: float
) -> LossOutput:
    """PPO-clip: token-mean of −min(ρA, clip(ρ, 1−ε, 1+ε)A) + β·k3, ρ = exp(logp − behaviour_logp).

    `clip_frac` is the share of tokens whose gradient the clip removes (ρ > 1+ε with A > 0, or ρ < 1−ε with A < 0).
    log ρ is clamped to ±20 before exp.
    """
    n = _check(logp=logp, behaviour_logp=behaviour_logp, ref_logp=ref_logp, adv=adv)
    _check_coef("beta", beta)
    if not 0.0 < clip_eps < 1.0:
        raise ValueError(f"clip_eps must be in (0, 1), got {clip_eps}")
    if n == 0:
        return _empty(logp)
    ratio = torch.exp((logp - behaviour_logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    surr = torch.minimum(ratio * adv, ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps) * adv)
    k3, stats = _kl_stats(logp, ref_logp)
    loss = (-surr + beta * k3).mean()
    with torch.no_grad():
        clipped = ((ratio > 1.0 + clip_eps) & (adv > 0)) | ((ratio < 1.0 - clip_eps) & (adv < 0))
        stats.update(policy_loss=float(-surr.mean()), clip_frac=float(clipped.float().mean()),
                     ratio_mean=float(ratio.mean()), num_tokens=float(n))
    return LossOutput(loss, stats)


def sft_loss(target_logp: Tensor, log_probs: Tensor | None, ref_log_probs: Tensor | None, label_smoothing: float,
             beta: float) -> LossOutput:
    """CAT-K SFT: token-mean of (1−s)·(−log π_θ(target)) + s·(−mean over the type's ids of log π_θ) + β·KL(π_θ‖π_ref).

    target_logp [N]; log_probs / ref_log_probs [N, V] full log-probabilities (−inf outside the type's vocabulary),
    needed when s > 0 / β > 0. The KL is exact over the vocabulary (CAT-K's tokens are not samples of π_θ, so the
    sampled k3 estimator of RL does not apply); the reference is the stage's initial policy, e.g. RL's final one."""
    n = _check(target_logp=target_logp)
    _check_coef("beta", beta)
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if n == 0:
        return LossOutput(target_logp.sum() * 0.0, {"sft_nll": 0.0, "sft_kl": 0.0})
    nll = -target_logp
    loss = nll.mean()
    stats = {"sft_nll": float(nll.detach().mean())}
    real = None if log_probs is None else torch.isfinite(log_probs)
    if label_smoothing > 0:
        uniform = -log_probs.masked_fill(~real, 0.0).sum(-1) / real.sum(-1)
        loss = (1 - label_smoothing) * loss + label_smoothing * uniform.mean()
    kl = torch.zeros(())
    if beta > 0:
        if ref_log_probs is None:
            raise ValueError("an SFT KL (beta > 0) needs the reference's log-probabilities")
        kl = (log_probs.exp() * (log_probs - ref_log_probs).masked_fill(~real, 0.0)).sum(-1).mean()
        loss = loss + beta * kl
    stats["sft_kl"] = float(kl.detach())
    return LossOutput(loss, stats)


def human_nll(logged_logp: Tensor) -> Tensor:
    """Mean negative log-likelihood of the logged (human) tokens: [M] log-probs under π_θ -> scalar (0 if M = 0)."""
    if logged_logp.dim() != 1:
        raise ValueError(f"logged_logp must be 1-D [M], got shape {tuple(logged_logp.shape)}")
    if logged_logp.shape[0] == 0:
        return logged_logp.sum() * 0.0
    return -logged_logp.mean()
