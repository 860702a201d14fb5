"""Arguments shared by several commands: the scene input and the torch device."""

from __future__ import annotations

import argparse

from drivetune.errors import InputError

# The one name and help text of a scene input, shared by every command that reads scenes.
SCENES_METAVAR = "SCENES"
SCENES_HELP = ("scene sources, several at once: Scenario TFRecord files, directories of them, globs, Parquet shard "
               "directories or shard files")


def add_scenes_argument(parser: argparse.ArgumentParser, help_: str = SCENES_HELP) -> None:
    """The positional scene input (one or more) under its common name."""
    parser.add_argument("scenes", nargs="+", metavar=SCENES_METAVAR, help=help_)


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
