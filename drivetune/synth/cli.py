"""`drivetune synth`: write synthetic WOMD `Scenario` TFRecords, deterministically per seed.

Scene i of a run is generated from `SeedSequence([seed, i])`, and file k holds scenes [k*per_file, (k+1)*per_file),
so the bytes written do not depend on --workers. A rerun into the same directory first removes what an earlier run
with the same seed left there and will not overwrite (temp files of a killed run, files of another `-of-N` plan).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from drivetune.atomic import remove_stale_temps
from drivetune.cli import CommandError
from drivetune.progress import progress


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
    parser.add_argument("--out", required=True,
                        help="output directory (created if missing); a rerun replaces this seed's earlier files")
    parser.add_argument("--seed", type=int, default=0, help="base seed; scene i uses SeedSequence([seed, i])")
    parser.add_argument("--workers", type=int, default=1, help="parallel processes")
    parser.add_argument("--scenes-per-file", type=int, default=50, help="scenes per TFRecord file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar / progress lines on stderr")


def clear_previous(out: Path, seed: int, plan: list[tuple[str, int, int, int]]) -> list[Path]:
    """Remove what an earlier run with this seed left in `out` that this run will not overwrite: temp files of a
    killed run, and files of another plan (another --num-scenes or --scenes-per-file, `-of-N` differs), whose
    scenes would duplicate this run's. Returns the removed data files."""
    remove_stale_temps(out, f"synth-s{seed}-*")
    keep = {Path(p).name for p, *_ in plan}
    stale = sorted(p for p in out.glob(f"synth-s{seed}-*-of-*.tfrecord") if p.name not in keep)
    for path in stale:
        path.unlink()
    return stale


def run(args: argparse.Namespace) -> int:
    if args.num_scenes <= 0:
        raise CommandError(f"--num-scenes must be positive, got {args.num_scenes}")
    if args.workers <= 0 or args.scenes_per_file <= 0:
        raise CommandError(f"--workers and --scenes-per-file must be positive, got {args.workers}, "
                           f"{args.scenes_per_file}")
    if args.seed < 0:
        raise CommandError(f"--seed must be non-negative, got {args.seed}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CommandError(f"--out {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    plan = file_plan(args.num_scenes, args.scenes_per_file, args.seed, out)
    stale = clear_previous(out, args.seed, plan)
    if stale:
        print(f"removed {len(stale)} files of an earlier seed-{args.seed} run with another plan "
              f"(e.g. {stale[0].name})", file=sys.stderr)
    t0 = time.perf_counter()
    done, agents = 0, 0
    bar = progress(args.num_scenes, "synth", "scene", enabled=not args.no_progress)
    try:
        if args.workers == 1:
            for p in plan:
                _, n, a = _write_file(*p)
                done, agents = done + n, agents + a
                bar.update(n)
        else:
            with ProcessPoolExecutor(max_workers=args.workers) as pool:
                for fut in as_completed([pool.submit(_write_file, *p) for p in plan]):
                    _, n, a = fut.result()
                    done, agents = done + n, agents + a
                    bar.update(n)
    finally:
        bar.close()
    dt = time.perf_counter() - t0
    print(f"wrote {done} scenes in {len(plan)} files to {out} ({dt:.1f} s, {done / dt:.1f} scenes/s, "
          f"{agents / done:.1f} sim agents per scene)")
    return 0
