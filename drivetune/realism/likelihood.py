"""Histogram / Bernoulli likelihood estimators from per-rollout bin counts.

Counts are kept per rollout ([S, R, E, (T,) bins]) so that the group likelihood, each single rollout's likelihood and
every leave-one-out likelihood come from the same tensors. Binning follows the official estimator: values clipped to
[min, max], float32 edges from a linspace, right-closed last bin, NaN (padding) in the last bin.
"""

from __future__ import annotations

import torch
from torch import Tensor

from drivetune.realism.challenge import FeatureConfig


def bin_index(values: Tensor, cfg: FeatureConfig) -> Tensor:
    """long bin of every value (float32 semantics)."""
    v = values.to(torch.float32)
    lo = torch.tensor(cfg.min_val, dtype=torch.float32, device=v.device)
    hi = torch.tensor(cfg.max_val, dtype=torch.float32, device=v.device)
    n = cfg.num_bins
    delta = (hi - lo) / n
    edges = lo + torch.arange(n + 1, device=v.device, dtype=torch.float32) * delta
    edges[0], edges[-1] = lo, hi
    v = torch.minimum(torch.maximum(v, lo), hi)
    b = torch.searchsorted(edges, v.contiguous(), right=True) - 1
    b = b.clamp(0, n - 1)
    return torch.where(torch.isnan(v), torch.full_like(b, n - 1), b)


def rollout_counts(sim_bins: Tensor, cfg: FeatureConfig) -> Tensor:
    """[S, R, E, T] bins -> [S, R, E, bins] counts (independent steps) or [S, R, E, T, bins] (per step)."""
    oh = torch.nn.functional.one_hot(sim_bins, cfg.num_bins).to(torch.float64)
    return oh.sum(3) if cfg.independent_timesteps else oh


def log_prob(counts: Tensor, log_bins: Tensor, cfg: FeatureConfig) -> Tensor:
    """Log-probability of each logged value's bin under smoothed counts.

    counts: [..., S, E, bins] (independent steps) or [..., S, E, T, bins]; log_bins [S, E, T]. Returns [..., S, E, T].
    """
    c = counts + cfg.pseudocount
    p = torch.log(c) - torch.log(c.sum(-1, keepdim=True))
    if cfg.independent_timesteps:
        idx = log_bins.expand(*p.shape[:-3], *log_bins.shape)
        return torch.gather(p, -1, idx)
    return torch.gather(p, -1, log_bins[..., None].expand(*p.shape[:-4], *log_bins.shape, 1))[..., 0]


def masked_mean_exp(logp: Tensor, mask: Tensor) -> Tensor:
    """exp(mean of logp over mask) per scene: logp [..., S, E, T], mask [S, E, T] -> [..., S]."""
    m = mask.to(logp.dtype)
    return torch.exp((torch.where(mask, logp, torch.zeros_like(logp))).sum((-1, -2)) / m.sum((-1, -2)))
