"""`drivetune train pretrain --config YAML [KEY=VALUE ...]`: behaviour-cloning pretraining on Ray Train
(`cluster.pretrain`). Attaches to --address or RAY_ADDRESS (set under `ray job submit`), else starts a private local
Ray."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from drivetune.config import load_config
from drivetune.ray_runtime import ray_session, set_process_env, verbose_ray

log = logging.getLogger("drivetune.pretrain")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML config (e.g. configs/pretrain_micro.yaml)")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. max_steps=50 model.size=nano")


def run(args: argparse.Namespace) -> int:
    set_process_env()
    from ray.train import TrainingFailedError  # torch and Ray Train load here, not for --help

    from cluster.pretrain import check_resumable, fit
    from cluster.pretrain_config import PretrainConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # a ConfigError (bad YAML, key, value or resource request) reaches drivetune.cli: `... error: ...`, exit 2
    cfg = load_config(PretrainConfig, args.config, args.overrides).validate()
    check_resumable(cfg)
    # Attach to --address or RAY_ADDRESS (set under `ray job submit`), else a private local Ray. Its dashboard
    # (loopback only) serves the State API that Ray Train's placement-group cleaner polls; without it that cleaner
    # logs a warning every few seconds and cannot clean up.
    try:
        with ray_session(args.address or os.environ.get("RAY_ADDRESS"), dashboard=True, log_to_driver=verbose_ray()):
            result = fit(cfg)
    except TrainingFailedError as exc:
        log.error("pretraining failed: %s", exc)
        return 1
    log.info("done: metrics %s; checkpoints in %s", result.metrics, Path(cfg.run_dir) / "checkpoints")
    return 0
