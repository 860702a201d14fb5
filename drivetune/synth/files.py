"""Synthetic WOMD `Scenario` TFRecords (`drivetune synth`), deterministically per seed.

Scene i of a run is generated from `SeedSequence([seed, i])`, and file k holds scenes [k*per_file, (k+1)*per_file),
so the bytes written do not depend on --workers. A rerun into the same directory first removes what an earlier run
with the same seed left there and will not overwrite (temp files of a killed run, files of another `-of-N` plan).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from drivetune.atomic import remove_stale_temps


def scene_seed(seed: int, index: int) -> np.random.SeedSequence:
    """The seed of scene `index` of a run with base `seed`."""
    return np.random.SeedSequence([int(seed), int(index)])


def generate(seed: int, index: int):
    """Scene `index` of a run with base `seed` (in memory)."""
    from drivetune.synth.world import generate_scene

    return generate_scene(scene_seed(seed, index))


def write_file(path: str, seed: int, first: int, count: int) -> tuple[str, int, int]:
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
