"""Ingest throughput: scenes/s for WOMD-sized scenes, sequential (no Ray) vs `drivetune ingest` with 1 and 2 workers.

The two real WOMD samples (~1 MB records, 83 and 257 tracks) are replicated into TFRecord files in a temp dir.
Ray is started and its workers warmed once per worker count before timing (start-up is printed separately), so the
figures are the steady-state conversion rate: read + CRC + proto parse + Scene + Arrow + zstd Parquet + manifest.
Best of --repeats runs each.

    .venv/bin/python bench/ingest.py [--scenes 64] [--shard-size 8] [--repeats 2]
    .venv/bin/python bench/ingest.py --src SYNTH_DIR --shard-size 8 --repeats 1 --workers 2   # e.g. 2,000 synthetic

The manifest cost at this scale is measured too: writing the manifest once per finished shard (the replaced design,
O(shards^2) bytes) against ours (one journal line per shard, the manifest twice), on the run's own entries.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from drivetune.ingest import ingest
from drivetune.ray_runtime import ray_session
from drivetune.shards import ShardStore, file_sha256, read_shard, write_manifest, write_shards
from drivetune.sources import iter_scenes
from drivetune.tfrecord import read_records, write_records

WOMD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "womd"


def make_inputs(directory: Path, scenes: int, per_file: int = 16) -> None:
    payloads = [next(read_records(WOMD / n))[1] for n in ("motion_data_one_scenario.tfrecord", "womd_scenario_input.tfrecord")]
    seq = [payloads[i % 2] for i in range(scenes)]
    for f in range(0, scenes, per_file):
        write_records(directory / f"bench.tfrecord-{f // per_file:05d}", seq[f : f + per_file])


def manifest_costs(store: ShardStore, scratch: Path) -> None:
    """Time the manifest writes of an ingest with these entries: once per shard (replaced) vs journal lines + 2."""
    scratch.mkdir()
    entries = list(store.shards.items())
    t0 = time.perf_counter()
    for i in range(1, len(entries) + 1):
        write_manifest(scratch, dict(entries[:i]))
    per_shard = time.perf_counter() - t0
    t0 = time.perf_counter()
    write_manifest(scratch, {})
    with open(scratch / "journal.jsonl", "a") as fh:
        for name, entry in entries:
            fh.write(json.dumps([name, entry]) + "\n")
            fh.flush()
    write_manifest(scratch, dict(entries))
    ours = time.perf_counter() - t0
    size = (scratch / "manifest.json").stat().st_size
    print(f"manifest, {len(entries)} shards ({size / 1e3:.0f} kB at the end): rewritten per shard {per_shard:.2f} s | "
          f"journal + 2 writes {ours:.3f} s | ratio {per_shard / ours:.1f}x")


def verify_costs(store: ShardStore) -> None:
    """What checking a shard's sha256 on open costs next to reading it (all scenes, or one scene by id)."""
    paths = store.paths()
    sha = read = one = 0.0
    c0 = time.process_time()
    for path in paths:
        t0 = time.perf_counter()
        file_sha256(path)
        t1 = time.perf_counter()
        scenes = read_shard(path)
        t2 = time.perf_counter()
        read_shard(path, [scenes[-1].scenario_id])
        sha, read, one = sha + t1 - t0, read + t2 - t1, one + time.perf_counter() - t2
    n = len(paths)
    mb = sum(p.stat().st_size for p in paths) / n / 1e6
    print(f"verify on open, per shard ({mb:.1f} MB, {len(store) / n:.0f} scenes): sha256 {sha / n * 1e3:.1f} ms | "
          f"read all scenes {read / n * 1e3:.1f} ms (+{sha / read * 100:.0f} %) | read one scene by id "
          f"{one / n * 1e3:.1f} ms (+{sha / one * 100:.0f} % on a shard's first read in a process); "
          f"CPU {time.process_time() - c0:.1f} s for all")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=64)
    ap.add_argument("--shard-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per configuration (best is reported)")
    ap.add_argument("--src", default=None, help="a directory of TFRecords to ingest instead of replicated WOMD samples")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--keep", default=None, help="keep the last ingested shard directory here (e.g. for bench/train)")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="dt_bench_ingest_"))
    try:
        if args.src:
            src = Path(args.src)
            args.scenes = sum(1 for _ in iter_scenes(str(src)))
        else:
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

        for workers in args.workers:
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
        manifest_costs(ShardStore(work / f"ray{args.workers[-1]}_0"), work / "manifests")
        verify_costs(ShardStore(work / f"ray{args.workers[-1]}_0"))
        if args.keep:
            shutil.move(work / f"ray{args.workers[-1]}_0", args.keep)
        print(f"sequential CPU time {cpu_ms:.0f} ms/scene (= {1e3 / cpu_ms:.1f} scenes/s per uncontended core); "
              f"load average now {os.getloadavg()[0]:.2f}")  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
