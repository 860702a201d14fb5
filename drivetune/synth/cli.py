"""`drivetune synth`: write synthetic WOMD `Scenario` TFRecords, deterministically per seed.

Scene i of a run is generated from `SeedSequence([seed, i])`, and file k holds scenes [k*per_file, (k+1)*per_file),
so the bytes written do not depend on --workers.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np


def scene_seed(seed: int, index: int) -> np.random.SeedSequence:
    """The seed of scene `index` of a run with base `seed`."""
    return np.random.SeedSequence([int(seed), int(index)])


def generate(seed: int, index: int):
    """Scene `index` of a run with base `seed` (in memory)."""
    from drivetune.synth.world import generate_scene

    return generate_scene(scene_seed(seed, index))


def _write_file(path: str, seed: int, first: int, count: int) -> tuple[str, int, int]:
    """Generate scenes [first, first+count) into one TFRecord; returns (path, scenes, sim agents)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from drivetune.womd import write_scenes

    scenes = [generate(seed, i) for i in range(first, first + count)]
    write_scenes(path, scenes)
    return path, len(scenes), int(sum(int(s.sim_agent_mask().sum()) for s in scenes))


def file_plan(num_scenes: int, per_file: int, seed: int, out: Path) -> list[tuple[str, int, int, int]]:
    """(path, seed, first scene, count) for every output file."""
    n_files = (num_scenes + per_file - 1) // per_file
    return [(str(out / f"synth-s{seed}-{k:05d}-of-{n_files:05d}.tfrecord"), seed, k * per_file,
             min(per_file, num_scenes - k * per_file)) for k in range(n_files)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num-scenes", type=int, required=True, help="number of scenes to generate")
    parser.add_argument("--out", required=True, help="output directory (created if missing)")
    parser.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    parser.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")
    parser.add_argument("--scenes-per-file", type=int, default=50, help="scenes per TFRecord file (default 50)")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    if args.num_scenes <= 0:
        print(f"error: --num-scenes must be positive, got {args.num_scenes}", file=sys.stderr)
        return 2
    if args.workers <= 0 or args.scenes_per_file <= 0:
        print("error: --workers and --scenes-per-file must be positive", file=sys.stderr)
        return 2
    if args.seed < 0:
        print(f"error: --seed must be non-negative, got {args.seed}", file=sys.stderr)
        return 2
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        print(f"error: --out {out} exists and is not a directory", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    plan = file_plan(args.num_scenes, args.scenes_per_file, args.seed, out)
    t0 = time.perf_counter()
    done, agents = 0, 0
    bar = tqdm(total=args.num_scenes, unit="scene", desc="synth", disable=None)
    if args.workers == 1:
        results = (_write_file(*p) for p in plan)
        for _, n, a in results:
            done, agents = done + n, agents + a
            bar.update(n)
    else:
        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            for _, n, a in pool.map(_write_file, *zip(*plan)):
                done, agents = done + n, agents + a
                bar.update(n)
    bar.close()
    dt = time.perf_counter() - t0
    print(f"wrote {done} scenes in {len(plan)} files to {out} ({dt:.1f} s, {done / dt:.1f} scenes/s, "
          f"{agents / done:.1f} sim agents per scene)")
    return 0
