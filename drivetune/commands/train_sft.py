"""`drivetune train sft --config YAML [KEY=VALUE ...]`: CAT-K closed-loop SFT. Rollout workers roll the policy with the
`catk` sampler, which gives every rollout state the SFT target (the top-K token closest to the log); the learner trains
cross-entropy on those targets in the rollout's own context (the re-scoring path). The loop, run directory, resume,
metrics and lineage are those of `drivetune train rft` (cluster/rft.py) with `algo.name: sft`."""

from __future__ import annotations

import argparse

from drivetune.commands.train_rft import add_arguments, run_stage

__all__ = ["add_arguments", "run"]


def run(args: argparse.Namespace) -> int:
    return run_stage(args, sft=True)
