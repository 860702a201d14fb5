"""The chain stage -> checkpoint -> parent -> reference of a pipeline run (or of one training run directory), with
policy versions and weight hashes, from the checkpoints' own metadata (`drivetune lineage`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cluster.pipeline import read_stage_record
from drivetune.checkpoint import CheckpointError, read_meta, resolve_checkpoint


def _row(stage: str, checkpoint: Path, status: str) -> dict[str, Any]:
    meta = read_meta(checkpoint)
    ref = meta.get("reference") or {}
    return {"stage": stage, "kind": meta.get("stage", "?"), "status": status, "checkpoint": str(checkpoint),
            "policy_version": int(meta.get("policy_version", 0)), "parent": meta.get("parent"),
            "init": meta.get("init"), "reference": ref.get("path"),
            "reference_version": ref.get("policy_version"), "weights_sha256": meta.get("weights_sha256")}


def lineage(run_dir: str | Path) -> list[dict[str, Any]]:
    """One row per stage directory (`NN-name`, in order) or, for a single run directory, one row for it."""
    root = Path(run_dir)
    stages = sorted(p for p in root.iterdir() if p.is_dir() and p.name[:2].isdigit() and p.name[2:3] == "-") \
        if root.is_dir() else []
    rows = []
    for directory in stages or [root]:
        record = read_stage_record(directory)
        try:
            ckpt = Path(record["checkpoint"]) if record else resolve_checkpoint(directory)
        except CheckpointError:
            rows.append({"stage": directory.name, "status": "not started", "checkpoint": None})
            continue
        rows.append(_row(directory.name, ckpt, "finished" if record else "running"))
    return rows
