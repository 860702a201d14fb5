"""Atomic writes (drivetune.atomic) and resolving a training run directory to its latest checkpoint."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
from model_helpers import grid_vocab  # noqa: E402

from drivetune.atomic import atomic_path, atomic_write_bytes, remove_stale_temps
from drivetune.checkpoint import CheckpointError, resolve_checkpoint, run_checkpoints, save_checkpoint
from drivetune.model import BehaviorModel, ModelConfig


def test_atomic_write_replaces_whole_file_with_usual_permissions(tmp_path):
    target = tmp_path / "out" / "data.bin"
    assert atomic_write_bytes(target, [b"abc", b"def"]) == 6
    assert target.read_bytes() == b"abcdef"
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()
    assert [p.name for p in target.parent.iterdir()] == ["data.bin"]


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "data.bin"
    target.write_bytes(b"old")

    def chunks():
        yield b"new-partial"
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_write_bytes(target, chunks())
    with pytest.raises(ValueError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise ValueError("writer failed")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.bin"]


def test_stale_temps_of_an_interrupted_write_are_found_and_removed(tmp_path):
    (tmp_path / "shard-00000.parquet").write_bytes(b"done")
    (tmp_path / "notes.tmp").write_bytes(b"not ours")
    interrupted = atomic_path(tmp_path / "shard-00001.parquet")  # a writer killed before it could finish
    interrupted.__enter__().write_bytes(b"half")
    assert remove_stale_temps(tmp_path, "shard-*") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.tmp", "shard-00000.parquet"]


def test_run_directory_resolves_to_its_latest_complete_checkpoint(tmp_path):
    model = BehaviorModel(ModelConfig.named("micro"), grid_vocab())
    run = tmp_path / "run"
    for step in (5, 20, 100):
        save_checkpoint(run / "checkpoints" / f"step_{step:08d}", model, {"step": step})
    (run / "checkpoints" / "step_00000200").mkdir()  # interrupted: no meta.json
    assert [s for s, _ in run_checkpoints(run)] == [5, 20, 100]
    assert resolve_checkpoint(run) == run / "checkpoints" / "step_00000100"
    direct = run / "checkpoints" / "step_00000020"
    assert resolve_checkpoint(direct) == direct
    with pytest.raises(CheckpointError, match="neither a checkpoint"):
        resolve_checkpoint(tmp_path / "empty")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
