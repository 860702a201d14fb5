"""`drivetune ingest SCENES... --out DIR [--shard-size N] [--workers N]`: WOMD Scenario TFRecords -> Parquet shards
(`drivetune.ingest`: parallel Ray tasks, resumable)."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sources", nargs="+", metavar="SCENES",
                        help="scene sources, several at once: Scenario TFRecord files, directories of them or globs")
    parser.add_argument("--out", required=True, help="shard directory (created; re-runs resume)")
    parser.add_argument("--shard-size", type=int, default=64, help="scenes per Parquet shard (default 64)")
    parser.add_argument("--workers", type=int, default=2, help="parallel Ray tasks = local Ray CPUs (default 2)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from drivetune.ingest import ingest  # pyarrow and Ray load here, not for --help

    try:
        result = ingest(args.sources, args.out, args.shard_size, args.workers, progress=not args.no_progress)
    except (ValueError, OSError) as exc:
        print(f"drivetune ingest: error: {exc}", file=sys.stderr)
        return 2
    print(
        f"ingest: {result.scenes} scenes in {len(result.written) + len(result.skipped)} shards under {args.out} "
        f"({len(result.written)} written, {len(result.skipped)} already done and skipped)"
    )
    if result.errors:
        print(f"ingest: {len(result.errors)} bad record(s) left out:", file=sys.stderr)
        for err in result.errors:
            print(f"  {err['error']}", file=sys.stderr)
        return 1
    return 0
