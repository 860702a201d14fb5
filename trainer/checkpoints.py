"""Run directories: numbered checkpoints (core format + optimizer/scheduler state), latest/resume, retention, and an
append-only `metrics.jsonl`.

Layout: `RUN/checkpoints/step_00000100/` (a `drivetune.checkpoint` directory plus `trainer_state.pt`),
`RUN/metrics.jsonl` (one JSON object per line), `RUN/config.json` (the resolved run config).
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from drivetune.checkpoint import CheckpointError, checkpoint_dir, run_checkpoints, save_checkpoint
from drivetune.model import BehaviorModel
from drivetune.atomic import atomic_write_bytes

TRAINER_STATE = "trainer_state.pt"


class RunDirectory:
    """One training run's directory (created on first use)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.metrics_path = self.root / "metrics.jsonl"

    def checkpoint_path(self, step: int) -> Path:
        return checkpoint_dir(self.root, step)

    def checkpoints(self) -> list[tuple[int, Path]]:
        """(step, path) of complete checkpoints (readable metadata and trainer state), ascending by step."""
        return [(step, path) for step, path in run_checkpoints(self.root) if (path / TRAINER_STATE).is_file()]

    def latest(self) -> Path | None:
        found = self.checkpoints()
        return found[-1][1] if found else None

    def save(
        self,
        model: BehaviorModel,
        step: int,
        trainer_state: dict[str, Any],
        metrics: dict[str, Any] | None = None,
        extra_meta: dict[str, Any] | None = None,
        keep_last: int = 3,
    ) -> Path:
        """Write checkpoint `step` (weights, vocab, meta, trainer state) atomically, then prune old ones."""
        buf = io.BytesIO()
        torch.save(trainer_state, buf)
        previous = self.latest()
        meta = {"step": step, "metrics": metrics or {}, "parent": str(previous) if previous else None,
                **(extra_meta or {})}
        path = save_checkpoint(self.checkpoint_path(step), model, meta, extra_files={TRAINER_STATE: buf.getvalue()})
        self.prune(keep_last)
        return path

    def prune(self, keep_last: int) -> list[Path]:
        """Delete all but the newest `keep_last` (>= 1) checkpoints; returns the deleted paths."""
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        doomed = [p for _, p in self.checkpoints()[:-keep_last]]
        for p in doomed:
            shutil.rmtree(p, ignore_errors=True)
        return doomed

    @staticmethod
    def load_trainer_state(path: str | os.PathLike) -> dict[str, Any]:
        """Optimizer / scheduler / step state saved beside a checkpoint's weights."""
        f = Path(path) / TRAINER_STATE
        if not f.is_file():
            raise CheckpointError(f"{path}: no {TRAINER_STATE} (not a resumable training checkpoint)")
        return torch.load(f, map_location="cpu", weights_only=True)

    def append_metrics(self, record: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with self.metrics_path.open("a") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.is_file():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]

    def write_config(self, config: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.root / "config.json", [json.dumps(config, indent=2, sort_keys=True).encode()])
