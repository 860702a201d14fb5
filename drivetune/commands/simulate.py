"""`drivetune simulate SCENES... --checkpoint CKPT --rollouts 32 --sampler warmk --out DIR`.

Rolls closed-loop rollouts of a checkpoint on scenes and writes, under DIR:
  - `rollouts/<scenario_id>.npz` in the realism CLI format (`object_id` [A], `x`/`y`/`z`/`heading` [R, A, 80]);
  - `realism.json` (per-scene WOSAC metric fields + the mean) and the same table on stdout;
  - with `--submission`, the official `SimAgentsChallengeSubmission` shards under `submission/`;
  - with `--render`, one PNG per scene (all rollouts drawn) under `render/`.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from drivetune.atomic import atomic_write_bytes
from drivetune.checkpoint import load_checkpoint, resolve_checkpoint
from drivetune.commands.common import add_sampler_arguments, add_scenes_argument, check_device
from drivetune.errors import InputError
from drivetune.progress import progress
from drivetune.render import render_scene
from drivetune.rollout_config import SDC_MODES_OFFLINE, WOSAC_ROLLOUTS, SamplerConfig

def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_scenes_argument(parser)
    parser.add_argument("--checkpoint", required=True,
                        help="checkpoint directory, or a training run directory (its latest checkpoints/step_*)")
    parser.add_argument("--out", required=True, help="output directory (created if missing)")
    parser.add_argument("--rollouts", type=int, default=32, help="rollouts per scene (WOSAC: 32)")
    add_sampler_arguments(parser, "topk")
    parser.add_argument("--seed", type=int, default=0, help="base seed (rollouts depend on scene id, index, seed)")
    parser.add_argument("--sdc", default="policy", choices=SDC_MODES_OFFLINE,
                        help="SDC driven by the policy or replayed from the log")
    parser.add_argument("--scenario-id", action="append", default=None, help="only these scenarios (repeatable)")
    parser.add_argument("--max-scenes", type=int, default=None, help="stop after this many scenes (default: all)")
    parser.add_argument("--batch-scenes", type=int, default=1, help="scenes simulated together in one batch")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    parser.add_argument("--config", default="2025", choices=("2025", "2024"), help="realism metric config")
    parser.add_argument("--submission", action="store_true", help="also write the official submission proto")
    parser.add_argument("--submission-shards", type=int, default=1,
                        help="number of submission.binproto-*-of-N files written with --submission")
    parser.add_argument("--render", action="store_true", help="draw each scene with its rollouts to PNG")


def _scenes(args: argparse.Namespace):
    from drivetune.sources import iter_scenes  # pyarrow loads here, not for --help

    wanted = set(args.scenario_id or [])
    count = 0
    for scene in iter_scenes(args.scenes):
        if wanted and scene.scenario_id not in wanted:
            continue
        yield scene
        count += 1
        if args.max_scenes is not None and count >= args.max_scenes:
            return


def _batches(it, size: int):
    batch = []
    for item in it:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _write_json(path: Path, payload: dict) -> None:
    atomic_write_bytes(path, [json.dumps(payload, indent=2).encode()])


def _check(args: argparse.Namespace) -> None:
    """Bad arguments as InputError, before anything is loaded."""
    if args.rollouts < 1 or args.batch_scenes < 1:
        raise InputError(f"--rollouts and --batch-scenes must be >= 1 (got {args.rollouts}, {args.batch_scenes})")
    if args.max_scenes is not None and args.max_scenes < 1:
        raise InputError(f"--max-scenes must be >= 1, got {args.max_scenes}")
    if args.submission and args.rollouts != WOSAC_ROLLOUTS:
        raise InputError(f"an official submission needs {WOSAC_ROLLOUTS} rollouts per scene, got --rollouts {args.rollouts}")
    if args.submission_shards < 1:
        raise InputError(f"--submission-shards must be >= 1, got {args.submission_shards}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a directory")
    check_device(args.device)


def run(args: argparse.Namespace) -> int:
    import torch

    from drivetune.closed_loop import simulate
    from drivetune.eval_report import format_table
    from drivetune.realism import mean_metrics, realism_metrics

    _check(args)
    sampler = SamplerConfig(kind=args.sampler, k=args.k, temperature=args.temperature, warm_lambda=args.warm_lambda)
    sampler.validate()
    model, meta = load_checkpoint(resolve_checkpoint(args.checkpoint), device=args.device)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    vocab = model.vocab.to_torch(args.device)
    out = Path(args.out)
    (out / "rollouts").mkdir(parents=True, exist_ok=True)
    rows, items, sim_seconds = [], [], 0.0
    bar = progress(args.max_scenes, "simulate", "scene")
    try:
        for scenes in _batches(_scenes(args), args.batch_scenes):
            t0 = time.perf_counter()
            results = simulate(model, vocab, scenes, args.rollouts, sampler, base_seed=args.seed,
                               policy_version=int(meta.get("step", 0)), sdc=args.sdc)
            sim_seconds += time.perf_counter() - t0
            sets = [res.realism_rollouts() for res in results]
            rows.extend(realism_metrics(scenes, sets, config=args.config, device=args.device))
            for scene, res, ro in zip(scenes, results, sets):
                ro.save(out / "rollouts" / f"{scene.scenario_id}.npz")
                if args.submission:
                    items.append((scene.scenario_id, ro))
                if args.render:
                    _render(scene, res, out / "render" / f"{scene.scenario_id}.png")
            bar.update(len(scenes))
    finally:
        bar.close()
    if not rows:
        raise InputError(f"no scenes matched in {' '.join(args.scenes)}")
    if args.submission:
        from drivetune.realism.submission import write_submission

        paths = write_submission(out / "submission", items, num_shards=args.submission_shards,
                                 metadata={"description": f"drivetune {args.sampler} rollouts of {args.checkpoint}"})
        print(f"submission: {', '.join(str(p) for p in paths)}")
    summary = mean_metrics(rows)
    _write_json(out / "realism.json", {"checkpoint": str(args.checkpoint), "sampler": sampler.to_dict(),
                                       "rollouts": args.rollouts, "seed": args.seed, "config": args.config,
                                       "simulate_seconds": sim_seconds, "mean": summary, "scenes": rows})
    print(f"{len(rows)} scenes x {args.rollouts} rollouts, sampler {sampler.to_dict()}, "
          f"{sim_seconds:.1f} s simulating; realism ({args.config}):")
    print(format_table(rows))
    return 0


def _render(scene, res, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    render_scene(scene, path, rollouts=np.stack([res.x, res.y], -1))
