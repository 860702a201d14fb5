"""`drivetune train rft --config YAML [KEY=VALUE ...]`: RL post-training (MPO / GRPO / GRBO) with Ray rollout workers
and a learner; `run_stage` is also `train sft`'s (the same loop with `algo.name: sft`, cluster/rft.py)."""

from __future__ import annotations

import argparse
import logging
import os

from drivetune.commands.common import add_job_arguments
from drivetune.config import ConfigError, load_config
from drivetune.errors import InputError

log = logging.getLogger("drivetune.rft")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of an RL-loop stage (`train rft` and `train sft`)."""
    add_job_arguments(parser, "configs/rft_grbo_micro.yaml", "init=runs/bc max_iters=20")


def run(args: argparse.Namespace) -> int:
    return run_stage(args, sft=False)


def run_stage(args: argparse.Namespace, sft: bool) -> int:
    """`train rft` (sft=False) or `train sft` (sft=True: the config must be a CAT-K SFT one)."""
    from cluster.rft import RFTConfig, train  # torch and Ray load here, not for --help
    from drivetune.checkpoint import CheckpointError, read_model_spec, resolve_checkpoint
    from drivetune.ray_runtime import ray_session, set_process_env, verbose_ray

    set_process_env()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(RFTConfig, args.config, args.overrides).validate()
        if (cfg.algo.name == "sft") != sft:
            raise ConfigError(f"{args.config}: algo.name {cfg.algo.name!r} does not fit `drivetune train "
                              f"{'sft' if sft else 'rft'}` (use `train sft` for algo.name: sft, `train rft` otherwise)")
        read_model_spec(resolve_checkpoint(cfg.init))  # missing, damaged or of another model version: before Ray
    except (ConfigError, CheckpointError) as exc:  # `drivetune train ...: error: ...`, exit 2 (drivetune.cli)
        raise InputError(str(exc)) from None
    try:
        with ray_session(args.address or os.environ.get("RAY_ADDRESS"), log_to_driver=verbose_ray()):
            records = train(cfg, progress=not args.no_progress)
    except ConfigError as exc:  # `drivetune train ...: error: ...`, exit 2 (drivetune.cli)
        raise InputError(str(exc)) from None
    last = records[-1] if records else {}
    log.info("done: %d iterations this run; last reward %.4f; run dir %s", len(records), last.get("reward", 0.0),
             cfg.run_dir)
    return 0
