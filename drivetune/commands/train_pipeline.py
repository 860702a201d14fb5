"""`drivetune train pipeline --config YAML [KEY=VALUE ...]`: stages (pretrain, sft, rft, ...) in one run directory
and Ray session (cluster/pipeline.py)."""

from __future__ import annotations

import argparse
import logging
import os

from drivetune.commands.common import add_job_arguments
from drivetune.config import ConfigError, load_config
from drivetune.errors import InputError

log = logging.getLogger("drivetune.pipeline")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_job_arguments(parser, "configs/pipeline_micro.yaml", "run_dir=runs/p shards=DIR")


def run(args: argparse.Namespace) -> int:
    from cluster.pipeline import PipelineConfig, run_pipeline  # torch and Ray load in the stages, not for --help
    from drivetune.ray_runtime import ray_session, set_process_env, verbose_ray

    set_process_env()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(PipelineConfig, args.config, args.overrides).validate()
        with ray_session(args.address or os.environ.get("RAY_ADDRESS"), dashboard=True, log_to_driver=verbose_ray()):
            records = run_pipeline(cfg, progress=not args.no_progress)
    except ConfigError as exc:  # `drivetune train ...: error: ...`, exit 2 (drivetune.cli)
        raise InputError(str(exc)) from None
    for r in records:
        log.info("%-10s %-8s v%-4d %s", r["name"], r["kind"], r["policy_version"], r["checkpoint"])
    return 0
