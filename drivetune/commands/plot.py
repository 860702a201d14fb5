"""`drivetune plot RUN_DIR [--out PNG]`: a run's metrics.jsonl curves (`cluster.plot`)."""

from __future__ import annotations

import argparse
import sys

from cluster.plot import plot_run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a training run directory (with metrics.jsonl)")
    parser.add_argument("--out", default=None, help="PNG path (default RUN_DIR/metrics.png)")


def run(args: argparse.Namespace) -> int:
    try:
        path = plot_run(args.run_dir, args.out)
    except FileNotFoundError as exc:
        print(f"drivetune plot: error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0
