"""Synthetic world generation speed on one core, side by side with decoding the same scenes from TFRecord.

    OMP_NUM_THREADS=1 .venv/bin/python bench/synth.py --num-scenes 60

Prints scenes/s (wall and CPU time of this process) for: generation only, generation + proto serialisation, and, as
the baseline, reading the written scenes back (TFRecord + proto decode -> Scene), plus the 20 scenes/s target.
Each stage runs --repeats times and the best run counts (as `timeit` does), which filters out the time stolen by
other processes on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from drivetune.synth.files import generate  # noqa: E402
from drivetune.womd import read_scenes, scene_to_bytes, write_scenes  # noqa: E402

TARGET = 20.0


REPEATS = 3


def _timed(fn) -> tuple[object, float, float]:
    """Result of fn and its best wall / CPU seconds over REPEATS runs."""
    best_w = best_c = float("inf")
    for _ in range(REPEATS):
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        best_w, best_c = min(best_w, time.perf_counter() - w), min(best_c, time.process_time() - c)
    return out, best_w, best_c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-scenes", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    global REPEATS
    REPEATS = args.repeats
    n = args.num_scenes
    generate(args.seed, 10_000)  # warm imports
    scenes, gw, gc = _timed(lambda: [generate(args.seed, i) for i in range(n)])
    _, sw, sc = _timed(lambda: [scene_to_bytes(s) for s in scenes])
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "bench.tfrecord"
        write_scenes(path, scenes)
        back, rw, rc = _timed(lambda: list(read_scenes(path)))
        size = path.stat().st_size
    assert len(back) == n
    sim = np.array([s.sim_agent_mask().sum() for s in scenes])
    rows = [("generate (in memory)", gw, gc), ("generate + serialise", gw + sw, gc + sc),
            ("baseline: read back (decode)", rw, rc)]
    print(f"{n} scenes, seed {args.seed}; {sim.mean():.1f} sim agents/scene (min {sim.min()}); "
          f"{size / n / 1024:.0f} KiB/scene; best of {REPEATS}; load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores")
    print(f"{'stage':32s} {'scenes/s (wall)':>16s} {'scenes/s (cpu)':>15s} {'cpu vs target':>14s}")
    for name, w, c in rows:
        print(f"{name:32s} {n / w:16.1f} {n / c:15.1f} {n / c / TARGET:13.2f}x")
    print(f"{'target':32s} {TARGET:16.1f}")
    print(f"generation cpu ms/scene: {1000 * gc / n:.1f}; decode cpu ms/scene: {1000 * rc / n:.1f} "
          f"(generation / decode = {gc / rc:.2f}x)")


if __name__ == "__main__":
    main()
