"""Next-token objectives: masked cross-entropy (optional label smoothing over each type's real tokens), token
accuracy, and the "repeat last motion" baseline accuracy."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TokenTargets:
    """Teacher-forcing targets: logits[:, :, i] predict tokens[:, :, i + 1] where both tokens are valid."""

    targets: torch.Tensor  # long [B, A, T-1]
    mask: torch.Tensor  # bool [B, A, T-1]

    @classmethod
    def from_tokens(cls, tokens: torch.Tensor, valid: torch.Tensor) -> "TokenTargets":
        """Targets tokens[:, :, i+1] for every i where tokens i and i+1 are both valid."""
        return cls(tokens[:, :, 1:], valid[:, :, :-1] & valid[:, :, 1:])


def next_token_loss(logits: torch.Tensor, targets: TokenTargets, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy over masked positions. logits [B, A, T, V] (-inf for padding ids; the last step is unused);
    smoothing spreads `label_smoothing` uniformly over the finite (real) ids of each position's type."""
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    lg = logits[:, :, :-1][targets.mask]  # [N, V]
    if lg.shape[0] == 0:
        return logits.sum() * 0.0
    tgt = targets.targets[targets.mask]
    logp = torch.log_softmax(lg, dim=-1)
    nll = -logp.gather(1, tgt[:, None])[:, 0]
    if label_smoothing > 0:
        real = torch.isfinite(lg)
        uniform = -(logp.masked_fill(~real, 0.0).sum(-1) / real.sum(-1))
        nll = (1 - label_smoothing) * nll + label_smoothing * uniform
    return nll.mean()


def token_accuracy(logits: torch.Tensor, targets: TokenTargets) -> tuple[int, int]:
    """(correct, total) of argmax predictions over masked positions."""
    pred = logits[:, :, :-1].argmax(-1)
    hit = (pred == targets.targets) & targets.mask
    return int(hit.sum()), int(targets.mask.sum())


def repeat_last_accuracy(tokens: torch.Tensor, targets: TokenTargets) -> tuple[int, int]:
    """(correct, total) of the baseline that predicts token i+1 = token i (repeat the last motion)."""
    hit = (tokens[:, :, :-1] == targets.targets) & targets.mask
    return int(hit.sum()), int(targets.mask.sum())
