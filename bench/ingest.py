"""Ingest throughput: scenes/s for WOMD-sized scenes, sequential (no Ray) vs `drivetune ingest` with 1 and 2 workers.

The two real WOMD samples (~1 MB records, 83 and 257 tracks) are replicated into TFRecord files in a temp dir.
Ray is started and its workers warmed once per worker count before timing (start-up is printed separately), so the
figures are the steady-state conversion rate: read + CRC + proto parse + Scene + Arrow + zstd Parquet + manifest.
Best of --repeats runs each.

    .venv/bin/python bench/ingest.py [--scenes 64] [--shard-size 8] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from drivetune.ingest import ingest
from drivetune.ray_runtime import ray_session
from drivetune.shards import write_shards
from drivetune.sources import iter_scenes
from drivetune.tfrecord import read_records, write_records

WOMD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "womd"


def make_inputs(directory: Path, scenes: int, per_file: int = 16) -> None:
    payloads = [next(read_records(WOMD / n))[1] for n in ("motion_data_one_scenario.tfrecord", "womd_scenario_input.tfrecord")]
    seq = [payloads[i % 2] for i in range(scenes)]
    for f in range(0, scenes, per_file):
        write_records(directory / f"bench.tfrecord-{f // per_file:05d}", seq[f : f + per_file])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=64)
    ap.add_argument("--shard-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per configuration (best is reported)")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="dt_bench_ingest_"))
    try:
        src = work / "src"
        src.mkdir()
        make_inputs(src, args.scenes)
        mb = sum(p.stat().st_size for p in src.iterdir()) / 1e6
        print(f"{args.scenes} scenes, {mb:.0f} MB of TFRecords, shard size {args.shard_size}, "
              f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")  # fmt: skip

        seq, cpu_ms = 0.0, float("inf")
        for rep in range(args.repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            write_shards(work / f"seq{rep}", iter_scenes(str(src)), shard_size=args.shard_size)
            seq = max(seq, args.scenes / (time.perf_counter() - t0))
            cpu_ms = min(cpu_ms, (time.process_time() - c0) / args.scenes * 1e3)
        rows = [("sequential, no Ray (baseline)", seq, None)]

        for workers in (1, 2):
            t0 = time.perf_counter()
            with ray_session(num_cpus=workers, log_to_driver=False, object_store_bytes=256 << 20):
                start = time.perf_counter() - t0
                # warm the worker processes (imports) on one file, then time the best of --repeats full runs
                ingest([str(next(src.iterdir()))], work / f"warm{workers}", 2, workers, progress=False)
                rate = 0.0
                for rep in range(args.repeats):
                    t0 = time.perf_counter()
                    result = ingest([str(src)], work / f"ray{workers}_{rep}", args.shard_size, workers, progress=False)
                    rate = max(rate, result.scenes / (time.perf_counter() - t0))
            rows.append((f"drivetune ingest, {workers} worker(s)", rate, start))
        print(f"{'run':<34} {'scenes/s':>9} {'vs baseline':>12} {'ray start s':>12}")
        for name, rate, start in rows:
            print(f"{name:<34} {rate:9.1f} {rate / seq:11.2f}x {'' if start is None else f'{start:.1f}':>12}")
        print(f"sequential CPU time {cpu_ms:.0f} ms/scene (= {1e3 / cpu_ms:.1f} scenes/s per uncontended core); "
              f"load average now {os.getloadavg()[0]:.2f}")  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
