"""Advantages from rewards: MPO's fixed baseline, the leave-one-out baseline, and GRPO's group normalisation (per
rollout or per agent)."""

from __future__ import annotations

import torch
from torch import Tensor


def fixed_baseline(rewards: Tensor, alpha: float) -> Tensor:
    """MPO: A = r − α (no group statistic, no critic)."""
    if not torch.isfinite(torch.as_tensor(alpha)):
        raise ValueError(f"alpha must be finite, got {alpha}")
    return rewards - alpha


def leave_one_out(rewards: Tensor) -> Tensor:
    """A_i = r_i − mean_{j≠i} r_j over the G rollouts of one scene ([G]); a group of one gets A = 0."""
    r = torch.as_tensor(rewards, dtype=torch.float64)
    if r.dim() != 1 or not bool(torch.isfinite(r).all()):
        raise ValueError(f"leave-one-out needs finite rewards [G], got shape {tuple(r.shape)}")
    g = r.shape[0]
    if g < 2:
        return torch.zeros_like(r)
    return (r - (r.sum() - r) / (g - 1)).to(rewards.dtype if rewards.is_floating_point() else torch.float64)


def group_normalized(
    rewards: Tensor, eps: float = 1e-6, scale: bool = True, dim: int = 0, mask: Tensor | None = None,
    std_floor: float = 0.0,
) -> Tensor:
    """GRPO: A = (r − mean_g) / (max(std_g, std_floor) + eps) along `dim` (the G rollouts of one scene).

    std is the population std (divide by the group's count). `scale=False` skips the division (Dr.GRPO).
    `std_floor` keeps a group whose rewards differ only by noise from being blown up to full-size advantages.
    A group with zero spread (max = min, exactly) or with fewer than 2 members gets A = 0: it carries no
    preference between its rollouts (unlike verl, where a size-1 group keeps its raw score).
    For rewards [G, A] with dim=0 each agent is normalised over G separately. `mask` (bool, [G, A] or [A] for
    [G, A] rewards, [G] for [G] rewards) marks the scored entries: the others get A = 0 and stay out of the
    statistics.
    """
    if not (eps >= 0 and std_floor >= 0):
        raise ValueError(f"eps and std_floor must be >= 0, got {eps}, {std_floor}")
    out_dtype = rewards.dtype if rewards.is_floating_point() else torch.float64
    r = rewards.to(torch.float64)
    if not bool(torch.isfinite(r).all()):
        raise ValueError("rewards have non-finite values")
    dim = dim % r.dim() if r.dim() else 0
    if mask is None:
        m = torch.ones_like(r, dtype=torch.bool)
    else:
        m = torch.as_tensor(mask, dtype=torch.bool, device=r.device)
        if m.dim() == r.dim() - 1:  # e.g. [A] for [G, A]: the same agents in every rollout
            m = m.unsqueeze(dim)
        try:
            m = torch.broadcast_to(m, r.shape)
        except RuntimeError:
            raise ValueError(f"mask shape {tuple(mask.shape)} does not fit rewards {tuple(r.shape)}") from None
    mf = m.to(r.dtype)
    count = mf.sum(dim, keepdim=True)
    mean = (r * mf).sum(dim, keepdim=True) / count.clamp(min=1)
    centred = (r - mean) * mf
    hi = r.masked_fill(~m, -torch.inf).amax(dim, keepdim=True)
    lo = r.masked_fill(~m, torch.inf).amin(dim, keepdim=True)
    informative = (count >= 2) & (hi > lo)
    if scale:
        std = ((centred**2).sum(dim, keepdim=True) / count.clamp(min=1)).sqrt()
        centred = centred / (std.clamp(min=std_floor) + eps)
    return torch.where(informative & m, centred, torch.zeros_like(centred)).to(out_dtype)
