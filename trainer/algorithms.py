"""MPO, GRPO and GRBO: algorithm configs, per-token advantages of one group, and the policy-loss dispatch.

Definitions, defaults and the choices drivetune made are in docs/algorithms.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from trainer.advantages import fixed_baseline, group_normalized, leave_one_out
from trainer.losses import LossOutput, mpo_loss, ppo_clip_loss

ALGORITHMS = ("mpo", "grpo", "grbo", "sft")  # sft: CAT-K closed-loop SFT (cross-entropy on the sampler's targets)
ADVANTAGES = ("rollout", "agent")
BASELINES = ("alpha", "loo")
DISTRIBUTIONS = ("full", "sampler")  # what RL's log-probs are taken under: the full softmax, or top-K's own candidates  # MPO: SMART-R1's constant α, or each rollout against the mean of its group's others


@dataclass
class AlgoConfig:
    """One RL objective. Field defaults are neutral; `preset(name)` gives each algorithm's documented defaults."""

    name: str = "grbo"  # mpo | grpo | grbo
    alpha: float | str = 0.77  # MPO baseline; "auto" = mean reward of the starting policy on a calibration batch
    baseline: str = "alpha"  # MPO: alpha (A = r − α) | loo (A = r − mean of the group's other rollouts)
    beta: float = 0.04  # k3 KL coefficient to the frozen reference
    clip_eps: float = 0.2  # PPO-clip ε (grpo, grbo)
    human_coef: float = 0.0  # GRBO λ_H: weight of the NLL of the logged (human) tokens (preset: 0.1)
    advantage: str = "rollout"  # rollout | agent (agent: GRBO only)
    std_eps: float = 1e-6  # ε of the group normalisation
    std_floor: float = 0.0  # the group std is taken as at least this (preset 0.05): noise stays small
    distribution: str = "full"  # RL log-probs: full softmax | sampler (top-K's renormalised candidate set)
    label_smoothing: float = 0.0  # sft: BC's label smoothing on the CAT-K targets
    dropout: bool = False  # sft: train with the model's dropout and history dropout, as BC (RL never does)

    def validate(self) -> "AlgoConfig":
        if self.name not in ALGORITHMS:
            raise ValueError(f"algo.name {self.name!r} unknown (choose from {', '.join(ALGORITHMS)})")
        if isinstance(self.alpha, str):
            if self.alpha != "auto":
                raise ValueError(f"algo.alpha must be a number or 'auto', got {self.alpha!r}")
        elif isinstance(self.alpha, bool) or not math.isfinite(self.alpha):
            raise ValueError(f"algo.alpha must be finite, got {self.alpha!r}")
        for name in ("beta", "human_coef"):
            v = getattr(self, name)
            if not 0.0 <= v < math.inf:
                raise ValueError(f"algo.{name} must be finite and >= 0, got {v}")
        if not 0.0 < self.clip_eps < 1.0:
            raise ValueError(f"algo.clip_eps must be in (0, 1), got {self.clip_eps}")
        if not 0.0 < self.std_eps < math.inf:
            raise ValueError(f"algo.std_eps must be finite and > 0, got {self.std_eps}")
        if not 0.0 <= self.std_floor < math.inf:
            raise ValueError(f"algo.std_floor must be finite and >= 0, got {self.std_floor}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"algo.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if (self.label_smoothing > 0 or self.dropout) and self.name != "sft":
            raise ValueError(f"algo.label_smoothing and algo.dropout regularise SFT; {self.name} needs 0 / false")
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(f"algo.distribution {self.distribution!r} unknown (choose from {', '.join(DISTRIBUTIONS)})")
        if self.baseline not in BASELINES:
            raise ValueError(f"algo.baseline {self.baseline!r} unknown (choose from {', '.join(BASELINES)})")
        if self.advantage not in ADVANTAGES:
            raise ValueError(f"algo.advantage {self.advantage!r} unknown (choose from {', '.join(ADVANTAGES)})")
        if self.advantage == "agent" and self.name != "grbo":
            raise ValueError(f"algo.advantage 'agent' is GRBO's; {self.name} uses 'rollout'")
        if self.human_coef > 0 and self.name != "grbo":
            raise ValueError(f"algo.human_coef is GRBO's human regularization; {self.name} needs 0")
        return self

    @classmethod
    def preset(cls, name: str) -> "AlgoConfig":
        """MPO: α 0.77, β 0.04 (SMART-R1). GRPO: β 1e-3, ε 0.2, std floor 0.05. GRBO: β 0.01, ε 0.2, λ_H 0.1, rollout
        advantages, std floor 0.05 (drivetune's choices: docs/algorithms.md)."""
        presets = {
            "mpo": cls(name="mpo", alpha=0.77, beta=0.04),
            "grpo": cls(name="grpo", beta=1e-3, clip_eps=0.2, std_floor=0.05),
            "grbo": cls(name="grbo", beta=0.01, clip_eps=0.2, human_coef=0.1, advantage="rollout", std_floor=0.05),
        }
        if name not in presets:
            raise ValueError(f"no algorithm preset {name!r} (choose from {', '.join(ALGORITHMS)})")
        return presets[name]


def calibrate_alpha(rollout_rewards: np.ndarray) -> float:
    """`alpha: auto`: the mean reward of the starting policy over a calibration batch (all its rollouts)."""
    r = np.asarray(rollout_rewards, np.float64).ravel()
    if r.size == 0 or not np.isfinite(r).all():
        raise ValueError(f"alpha calibration needs finite rewards, got {r.size} values")
    return float(r.mean())


def _resolve_alpha(cfg: AlgoConfig, alpha: float | None) -> float:
    if alpha is not None:
        return float(alpha)
    if cfg.alpha == "auto":
        raise ValueError("algo.alpha is 'auto': pass the calibrated alpha (trainer.algorithms.calibrate_alpha)")
    return float(cfg.alpha)


def token_advantages(
    cfg: AlgoConfig, rollout_reward: np.ndarray, agent_reward: np.ndarray | None, scored: np.ndarray | None,
    token_mask: np.ndarray, alpha: float | None = None,
) -> np.ndarray:
    """Advantages [G, A, T] float32 of one group, zero where token_mask [G, A, T] is False.

    mpo: r − α (or, with baseline loo, r − the mean of the group's other rollouts) on every token of the rollout. grpo / grbo-rollout: the group-normalised rollout reward on every token
    of the rollout. grbo-agent: each scored agent's own reward normalised over the G rollouts, on that agent's tokens
    (0 if that agent's reward has zero spread over the group); unscored agents take the rollout-level advantage, so
    every policy token still follows the joint outcome.
    """
    mask = np.asarray(token_mask, bool)
    if mask.ndim != 3:
        raise ValueError(f"token_mask must be [G, A, T], got shape {mask.shape}")
    G, A, _ = mask.shape
    r = torch.as_tensor(np.asarray(rollout_reward, np.float64))
    if r.shape != (G,):
        raise ValueError(f"rollout_reward shape {tuple(r.shape)} != (G,) = ({G},)")
    if cfg.name == "mpo" and cfg.baseline == "loo":
        per_agent = leave_one_out(r)[:, None].expand(G, A)
    elif cfg.name == "mpo":
        per_agent = fixed_baseline(r, _resolve_alpha(cfg, alpha))[:, None].expand(G, A)
    else:
        per_agent = group_normalized(r, eps=cfg.std_eps, std_floor=cfg.std_floor)[:, None].expand(G, A)
        if cfg.advantage == "agent":
            if agent_reward is None or scored is None:
                raise ValueError("advantage 'agent' needs agent_reward [G, A] and scored [A]")
            ar = torch.as_tensor(np.asarray(agent_reward, np.float64))
            sc = torch.as_tensor(np.asarray(scored, bool))
            if ar.shape != (G, A) or sc.shape != (A,):
                raise ValueError(f"agent_reward {tuple(ar.shape)} / scored {tuple(sc.shape)} do not fit "
                                 f"token_mask [G, A, T] = {mask.shape}")
            per_agent = torch.where(sc[None], group_normalized(ar, eps=cfg.std_eps, mask=sc, std_floor=cfg.std_floor), per_agent)
    return np.where(mask, per_agent.numpy()[:, :, None], 0.0).astype(np.float32)


def policy_loss(cfg: AlgoConfig, logp: Tensor, behaviour_logp: Tensor, ref_logp: Tensor, adv: Tensor) -> LossOutput:
    """mpo -> mpo_loss; grpo / grbo -> ppo_clip_loss. The learner adds human_coef · human_nll for GRBO."""
    if cfg.name == "mpo":
        return mpo_loss(logp, ref_logp, adv, cfg.beta)
    if cfg.name in ("grpo", "grbo"):
        return ppo_clip_loss(logp, behaviour_logp, ref_logp, adv, cfg.clip_eps, cfg.beta)
    raise ValueError(f"algo.name {cfg.name!r} unknown (choose from {', '.join(ALGORITHMS)})")
