"""`drivetune train rft --config YAML [KEY=VALUE ...]`: RL post-training (MPO / GRPO / GRBO) with Ray rollout workers
and a learner. The stage itself (config, Ray session, loop) is `cluster.rft.run_stage`."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of an RL-loop stage (`train rft` and `train sft`)."""
    parser.add_argument("--config", required=True, help="YAML config (e.g. configs/rft_grbo_micro.yaml)")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. init=runs/bc max_iters=20")


def run(args: argparse.Namespace) -> int:
    from cluster.rft import run_stage  # torch and Ray load here, not for --help

    return run_stage(args, sft=False)
