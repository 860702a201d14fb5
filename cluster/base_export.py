"""Ship a pretraining run's best checkpoint as the repository's base (`make base`, scripts/base.sh).

`python -m cluster.base_export RUN_DIR --out base/micro [--curve PNG]`: the checkpoint of RUN_DIR with the lowest
held-out NLL (`eval_loss` in metrics.jsonl) is copied to OUT (atomically), and OUT.json records its lineage: run,
step, held-out figures, the weights' sha256 (loading checks the file against it) and the command that remakes it; the
learning curve is drawn to PNG.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from drivetune.atomic import atomic_write_bytes
from drivetune.checkpoint import META, VOCAB, WEIGHTS, checkpoint_dir, read_meta, run_checkpoints
from trainer.run_directory import RunDirectory

REMAKE = "make base"


def best_step(run_dir: str | os.PathLike) -> tuple[int, dict[str, Any]]:
    """(step, metrics record) of the kept checkpoint with the lowest held-out NLL."""
    kept = {step for step, _ in run_checkpoints(run_dir)}
    evals = [r for r in RunDirectory(run_dir).read_metrics() if "eval_loss" in r and r["step"] in kept]
    if not evals:
        raise FileNotFoundError(f"{run_dir}: no evaluated checkpoint (eval_loss in metrics.jsonl) to ship")
    best = min(evals, key=lambda r: r["eval_loss"])
    return int(best["step"]), best


def export_base(run_dir: str | os.PathLike, out: str | os.PathLike) -> dict[str, Any]:
    """Copy the best checkpoint of `run_dir` to `out` and write `out`.json; returns the lineage record."""
    run_dir, out = Path(run_dir), Path(out)
    step, record = best_step(run_dir)
    source = checkpoint_dir(run_dir, step)
    meta = read_meta(source)
    rows = RunDirectory(run_dir).read_metrics()
    lineage = {
        "checkpoint": str(out), "source": str(source), "step": step, "model_version": meta["model_version"],
        "model_config": meta["model_config"], "weights_sha256": meta["weights_sha256"],
        "vocab_hash": meta["vocab_hash"], "remake": REMAKE,
        "heldout": {k: record[k] for k in ("eval_loss", "eval_token_acc", "eval_repeat_last_acc", "eval_min_ade")
                    if k in record},
        "steps_run": max(r["step"] for r in rows), "created": meta["created"],
        "curve": [{k: r[k] for k in ("step", "loss", "eval_loss", "eval_token_acc") if k in r} for r in rows],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        for name in (WEIGHTS, VOCAB, META):  # the model only: no trainer state
            shutil.copyfile(source / name, tmp / name)
            os.chmod(tmp / name, 0o644)
        os.chmod(tmp, 0o755)
        old = out.parent / f".{out.name}.old.{os.getpid()}"
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_bytes(out.parent / f"{out.name}.json", [json.dumps(lineage, indent=1).encode()])
    return lineage


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.base_export", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--out", required=True)
    parser.add_argument("--curve", default=None, help="PNG of the run's learning curve")
    args = parser.parse_args(argv)
    lineage = export_base(args.run_dir, args.out)
    if args.curve:
        from cluster.plot import plot_run

        plot_run(args.run_dir, args.curve)
    print(json.dumps({k: lineage[k] for k in ("checkpoint", "step", "weights_sha256", "heldout")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
