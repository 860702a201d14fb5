"""Benchmark: drivetune.realism vs the official WOSAC 2025 metric, seconds per scenario.

    OMP_NUM_THREADS=1 .venv/bin/python bench/realism.py [--repeats 7] [--batch 8] [--device cpu] [--parity]

Scenario 637f20cafde22ff8 (50 sim agents, 4 evaluated) with the shared oracle rollout sets (32 rollouts x 80 steps).
The official implementation cannot run here (no TensorFlow); its figure, measured on this 2-core machine, is quoted
from ../shared/notes/official-metric-semantics.md: about 52 s per scenario (median, TF 2.13 CPU). `--parity` also
prints the max |delta| of every field against the official values in ../shared/oracle.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
from tqdm import tqdm

from drivetune.realism import Rollouts, realism_metrics
from drivetune.realism.metrics import METRIC_FIELDS
from drivetune.womd import load_scene

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
ORACLE = SHARED / "oracle"
CASES = ("logged_replay", "logged_noise_small", "const_velocity", "test_submission")
OFFICIAL_SECONDS = 52.0  # median per scenario, 50 sim agents, 32 rollouts, 2 cores (official-metric-semantics.md)


def timed(fn, repeats: int, label: str) -> tuple[float, float]:
    """Median wall seconds and median CPU seconds (this process) of `repeats` calls after a warm-up."""
    fn()
    wall, cpu = [], []
    for _ in tqdm(range(repeats), desc=label, leave=False):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def parity_table(scene, rollouts: dict[str, Rollouts]) -> str:
    lines = ["| field | " + " | ".join(CASES) + " |", "|---|" + "---|" * len(CASES)]
    deltas = {}
    for case in CASES:
        official = json.loads((ORACLE / f"case_{case}.official.json").read_text())["metrics"]
        ours = realism_metrics(scene, rollouts[case])[0]
        deltas[case] = {k: abs(ours[k] - official[k]) for k in METRIC_FIELDS}
    for k in METRIC_FIELDS:
        lines.append(f"| {k} | " + " | ".join(f"{deltas[c][k]:.1e}" for c in CASES) + " |")
    worst = max(max(d.values()) for d in deltas.values())
    return "\n".join(lines) + f"\n\nmax |delta| over all fields and cases: {worst:.1e}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--batch", type=int, default=8, help="scenes per batched call")
    ap.add_argument("--threads", default="1,2", help="comma-separated torch thread counts (CPU)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--parity", action="store_true", help="also print the parity table vs the official values")
    args = ap.parse_args()

    scene = load_scene(SHARED / "data" / "womd" / "motion_data_one_scenario.tfrecord")
    rollouts = {c: Rollouts.load(ORACLE / f"case_{c}.npz") for c in CASES}
    ro = rollouts["test_submission"]
    batch = [rollouts[CASES[i % len(CASES)]] for i in range(args.batch)]
    load0 = os.getloadavg()[0]
    rows = []
    threads = [int(t) for t in args.threads.split(",")] if args.device == "cpu" else [torch.get_num_threads()]
    for n in threads:
        torch.set_num_threads(n)
        tag = f"{args.device}, {n} thread{'s' if n > 1 else ''}"
        one = timed(lambda: realism_metrics(scene, ro, device=args.device), args.repeats, f"single {tag}")
        rows.append((f"1 scenario ({tag})", *one))
        many = timed(lambda: realism_metrics([scene] * args.batch, batch, device=args.device), max(2, args.repeats // 2),
                     f"batch {tag}")
        rows.append((f"batch of {args.batch} scenarios ({tag}), per scenario", *(v / args.batch for v in many)))
        dense = timed(lambda: realism_metrics(scene, ro, device=args.device, scored="all"), max(2, args.repeats // 2),
                      f"all-agents {tag}")
        rows.append((f"1 scenario, every sim agent scored ({tag})", *dense))
    load1 = os.getloadavg()[0]

    print(f"\nWOSAC 2025 realism metric, scenario {scene.scenario_id}: 50 sim agents, 32 rollouts x 80 steps")
    print(f"{'setting':<58} {'wall s':>7} {'CPU s':>7} {'official s':>10} {'speed-up (wall)':>16}")
    for label, sec, cpu in rows:
        print(f"{label:<58} {sec:>7.3f} {cpu:>7.3f} {OFFICIAL_SECONDS:>10.1f} {OFFICIAL_SECONDS / sec:>15.0f}x")
    print(f"(official: ~{OFFICIAL_SECONDS:.0f} s median on this 2-core machine, TF 2.13 CPU, from "
          "../shared/notes/official-metric-semantics.md; load average {:.1f} -> {:.1f} during the run)".format(load0, load1))
    if args.parity:
        torch.set_num_threads(1)
        print("\nparity vs the official values (max |delta| per field and case)\n")
        print(parity_table(scene, rollouts))


if __name__ == "__main__":
    main()
