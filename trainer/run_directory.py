"""Run directories: numbered checkpoints (core format + optimizer/scheduler state), latest/resume, retention, and an
append-only `metrics.jsonl`.

Layout: `RUN/checkpoints/step_00000100/` (a `drivetune.checkpoint` directory plus `trainer_state.pt`),
`RUN/metrics.jsonl` (one JSON object per line), `RUN/config.json` (the resolved run config).

Crash safety: a checkpoint is built in a staging directory beside the others, every file and the directory are
fsynced, and only then is it renamed into place (re-saving an existing step swaps the two directories in one atomic
`renameat2(RENAME_EXCHANGE)` on Linux), the parent directory fsynced, and older checkpoints pruned. A crash at any
moment leaves the previous complete checkpoints readable; staging leftovers of a crashed writer are removed by the
next save.
"""

from __future__ import annotations

import ctypes
import io
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from drivetune.checkpoint import (RUN_CHECKPOINTS, CheckpointError, checkpoint_dir, run_checkpoints,
                                  save_checkpoint)
from drivetune.model import BehaviorModel
from drivetune.atomic import atomic_write_bytes

TRAINER_STATE = "trainer_state.pt"
# Leftovers of an interrupted save: our staging dirs, and drivetune.checkpoint's temp / replaced-old directories.
STALE = re.compile(r"^\.(stage-.*|step_\d{8}\..*\.tmp|step_\d{8}\.old\.\d+)$")


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
        """Write checkpoint `step` (weights, vocab, meta, trainer state) crash-safely (module docstring), then prune
        old ones. The run directory has one writer (rank 0)."""
        buf = io.BytesIO()
        torch.save(trainer_state, buf)
        previous = self.latest()
        meta = {"step": step, "metrics": metrics or {}, "parent": str(previous) if previous else None,
                **(extra_meta or {})}
        target = self.checkpoint_path(step)
        parent = target.parent
        parent.mkdir(parents=True, exist_ok=True)
        self.remove_stale()
        stage = Path(tempfile.mkdtemp(dir=parent, prefix=".stage-"))
        try:
            built = save_checkpoint(stage / target.name, model, meta, extra_files={TRAINER_STATE: buf.getvalue()})
            for f in built.iterdir():
                _fsync(f)
            _fsync(built)
            if not target.exists():
                os.rename(built, target)
            elif not _exchange(built, target):  # no atomic swap here: a moment without this step (older ones stay)
                os.replace(target, stage / "old")
                os.rename(built, target)
            _fsync(parent)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        self.prune(keep_last)
        return target

    def remove_stale(self) -> list[str]:
        """Delete what an interrupted save left in `checkpoints/` (staging and temp directories); returns names."""
        root = self.root / RUN_CHECKPOINTS
        found = [p for p in root.iterdir() if STALE.match(p.name)] if root.is_dir() else []
        for p in found:
            shutil.rmtree(p, ignore_errors=True)
        return [p.name for p in found]

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


def _fsync(path: Path) -> None:
    """Flush a file's or a directory's contents (a directory: its entries) to stable storage."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directories (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    rename = getattr(_libc(), "renameat2", None)
    if rename is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    return rename(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _libc() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
