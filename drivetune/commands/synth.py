"""`drivetune synth --num-scenes N --out DIR [--seed S] [--workers W]`: synthetic WOMD-format scenarios, written by
`drivetune.synth.files` (the same bytes for any --workers)."""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from drivetune.errors import InputError
from drivetune.progress import progress


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num-scenes", type=int, required=True, help="number of scenes to generate")
    parser.add_argument("--out", required=True,
                        help="output directory (created if missing); a rerun replaces this seed's earlier files")
    parser.add_argument("--seed", type=int, default=0, help="base seed; scene i uses SeedSequence([seed, i])")
    parser.add_argument("--workers", type=int, default=1, help="parallel processes")
    parser.add_argument("--scenes-per-file", type=int, default=50, help="scenes per TFRecord file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar / progress lines on stderr")


def run(args: argparse.Namespace) -> int:
    from drivetune.synth.files import clear_previous, file_plan, write_file  # the world generator loads here

    if args.num_scenes <= 0:
        raise InputError(f"--num-scenes must be positive, got {args.num_scenes}")
    if args.workers <= 0 or args.scenes_per_file <= 0:
        raise InputError(f"--workers and --scenes-per-file must be positive, got {args.workers}, "
                           f"{args.scenes_per_file}")
    if args.seed < 0:
        raise InputError(f"--seed must be non-negative, got {args.seed}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a directory")
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
                _, n, a = write_file(*p)
                done, agents = done + n, agents + a
                bar.update(n)
        else:
            with ProcessPoolExecutor(max_workers=args.workers) as pool:
                for fut in as_completed([pool.submit(write_file, *p) for p in plan]):
                    _, n, a = fut.result()
                    done, agents = done + n, agents + a
                    bar.update(n)
    finally:
        bar.close()
    dt = time.perf_counter() - t0
    print(f"wrote {done} scenes in {len(plan)} files to {out} ({dt:.1f} s, {done / dt:.1f} scenes/s, "
          f"{agents / done:.1f} sim agents per scene)")
    return 0
