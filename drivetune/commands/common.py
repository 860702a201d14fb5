"""Arguments shared by several commands: the scene input, a Ray job's config arguments and the torch device."""

from __future__ import annotations

import argparse

from drivetune.errors import InputError
from drivetune.rollout_config import SAMPLERS

# The one name and help text of a scene input, shared by every command that reads scenes.
SCENES_METAVAR = "SCENES"
SCENES_HELP = ("scene sources, several at once: Scenario TFRecord files, directories of them, globs, Parquet shard "
               "directories or shard files")


def add_scenes_argument(parser: argparse.ArgumentParser, help_: str = SCENES_HELP) -> None:
    """The positional scene input (one or more) under its common name."""
    parser.add_argument("scenes", nargs="+", metavar=SCENES_METAVAR, help=help_)


def add_sampler_arguments(parser: argparse.ArgumentParser, default: str) -> None:
    """The token sampler of offline rollouts (`simulate`, `eval`): kind, K, temperature, Warm-K's lambda."""
    parser.add_argument("--sampler", default=default, choices=SAMPLERS,
                        help="token sampler (docs/samplers.md): top-K, CAT-K, Warm-K or greedy")
    parser.add_argument("--k", type=int, default=32, help="top-K size")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (top-K and Warm-K)")
    parser.add_argument("--warm-lambda", type=float, default=1.0, help="Warm-K lambda (logits per metre)")


def add_job_arguments(parser: argparse.ArgumentParser, example: str, overrides: str) -> None:
    """A Ray training job's arguments: its YAML (`example` names one), the cluster, progress, dotted overrides."""
    parser.add_argument("--config", required=True, help=f"YAML config (e.g. {example})")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("overrides", nargs="*", help=f"dotted key=value overrides, e.g. {overrides}")


def check_device(device: str) -> str:
    """A torch device string that exists here (`cpu`, `cuda`, `cuda:N`); InputError naming it otherwise."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise InputError(f"--device {device!r} is not a torch device (cpu, cuda, cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"--device {device}: no CUDA device is available here")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise InputError(f"--device {device!r}: only cpu and cuda are supported")
    return device
