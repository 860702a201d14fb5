"""`drivetune lineage RUN_DIR [--json]`: the stage -> checkpoint -> parent -> reference chain of a run
(`cluster.lineage`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cluster.lineage import lineage


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a pipeline run directory (or one stage's run directory)")
    parser.add_argument("--json", action="store_true", help="one JSON object per stage")


def run(args: argparse.Namespace) -> int:
    if not Path(args.run_dir).is_dir():
        print(f"drivetune lineage: error: {args.run_dir} is not a directory", file=sys.stderr)
        return 2
    rows = lineage(args.run_dir)
    for r in rows:
        if args.json:
            print(json.dumps(r))
        elif r["checkpoint"] is None:
            print(f"{r['stage']:<14} {r['status']}")
        else:
            sha = (r["weights_sha256"] or "-")[:12]
            print(f"{r['stage']:<14} {r['kind']:<9} v{r['policy_version']:<5} {r['status']:<9} weights {sha}  "
                  f"{r['checkpoint']}\n{'':<14} init {r['init'] or r['parent'] or '-'}\n{'':<14} reference "
                  f"{r['reference'] or '-'} (v{r['reference_version'] if r['reference_version'] is not None else '-'})")
    return 0
