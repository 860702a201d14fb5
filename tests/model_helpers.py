"""Small deterministic motion vocabulary for model / pretraining tests (no k-disks build needed)."""

from __future__ import annotations

import numpy as np

from drivetune.tokenizer import MotionVocab


def grid_vocab(num_speeds: int = 8, num_yaw_rates: int = 8, vocab_size: int | None = None) -> MotionVocab:
    """Token 0 = no motion, then constant-speed / constant-yaw-rate arcs (0.5 s); pedestrians and cyclists use
    shorter prefixes of the same list. `vocab_size` pads V (with zero motions beyond every type's size)."""
    tokens = [np.zeros((6, 3))]
    t = np.arange(6) * 0.1
    for speed in np.linspace(0.3, 15.0, num_speeds):
        for yaw_rate in np.linspace(-0.8, 0.8, num_yaw_rates):
            heading = yaw_rate * t
            step_x = np.r_[0.0, speed * 0.1 * np.cos(heading[:-1])]
            step_y = np.r_[0.0, speed * 0.1 * np.sin(heading[:-1])]
            tokens.append(np.stack([np.cumsum(step_x), np.cumsum(step_y), heading], axis=-1))
    n = len(tokens)
    poses = np.zeros((3, vocab_size or n, 6, 3), np.float32)
    poses[:, :n] = np.stack(tokens)[None]
    return MotionVocab(poses, np.array([n, n - num_yaw_rates, n - 2 * num_yaw_rates]))
