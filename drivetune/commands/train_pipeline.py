"""`drivetune train pipeline --config YAML [KEY=VALUE ...]`: stages (pretrain, sft, rft, ...) in one run directory
and Ray session. Arguments and run are still `cluster.pipeline`'s (to move here)."""

from __future__ import annotations

from cluster.pipeline import add_arguments, run

__all__ = ["add_arguments", "run"]
