"""`drivetune realism SCENES... ROLLOUTS [--scenario-id ID] [--config 2025|2024] [--json]`.

ROLLOUTS is an npz (`object_id` [A], `x`/`y`/`z`/`heading` [R, A, 80]) or a WOSAC submission (`*.binproto*` file or
directory); the scenario's rollouts are then read from it and checked against the official rules first.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import zipfile
from typing import Any

from drivetune.commands.common import add_scenes_argument, check_device
from drivetune.errors import RolloutError
from drivetune.rollout_config import WOSAC_ROLLOUTS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_scenes_argument(parser)
    parser.add_argument("rollouts", metavar="ROLLOUTS",
                        help="npz with object_id [A], x/y/z/heading [R, A, 80]; or a WOSAC submission binproto "
                             "file or directory")
    parser.add_argument("--scenario-id", default=None, help="scenario to score (default: the first in SCENES)")
    parser.add_argument("--config", default="2025", choices=("2025", "2024"), help="challenge config")
    parser.add_argument("--json", action="store_true",
                        help="print the official metric fields + seconds as JSON (non-finite values as null)")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    parser.add_argument("--scored", default="evaluated", choices=("evaluated", "all"),
                        help="scored agents: the official evaluated set or every sim agent")


def _load_rollouts(path: str, scene: Any) -> Any:
    from drivetune.realism.batch import Rollouts

    if ".binproto" in path or not path.endswith(".npz"):
        from drivetune.realism.submission import read_submission, validate_scenario_rollouts

        subs = read_submission(path)
        if scene.scenario_id not in subs:
            raise RolloutError(f"{path}: no rollouts for scenario {scene.scenario_id} (has {sorted(subs)[:5]})")
        return validate_scenario_rollouts(subs[scene.scenario_id], scene)
    if not zipfile.is_zipfile(path):
        raise RolloutError(f"{path}: not an npz file (an npz is a zip archive of .npy arrays)")
    return Rollouts.load(path)


def finite_or_none(row: dict[str, float]) -> dict[str, float | None]:
    """JSON-safe metrics: NaN / ±inf become None (JSON null)."""
    return {k: (float(v) if math.isfinite(v) else None) for k, v in row.items()}


def run(args: argparse.Namespace) -> int:
    from drivetune.realism.metrics import METRIC_FIELDS, realism_metrics
    from drivetune.sources import load_scene

    check_device(args.device)
    scene = load_scene(args.scenes, args.scenario_id)
    rollouts = _load_rollouts(args.rollouts, scene)
    if rollouts.num_rollouts != WOSAC_ROLLOUTS:
        print(f"drivetune realism: warning: {rollouts.num_rollouts} rollouts per scenario; the WOSAC metric is "
              f"defined on {WOSAC_ROLLOUTS}, so these scores are not comparable to the leaderboard", file=sys.stderr)
    row = realism_metrics(scene, rollouts, config=args.config, device=args.device, scored=args.scored)[0]
    out = {k: row[k] for k in METRIC_FIELDS}
    out["seconds"] = row["seconds"]
    bad = [k for k, v in out.items() if not math.isfinite(v)]
    if bad:
        print(f"drivetune realism: warning: non-finite metric values {bad} (reported as null in --json)",
              file=sys.stderr)
    if args.json:
        print(json.dumps(finite_or_none(out), indent=2, allow_nan=False))
        return 0
    print(f"scenario {scene.scenario_id}  config {args.config}  {rollouts.num_rollouts} rollouts  "
          f"{len(rollouts.object_id)} sim agents")
    for k, v in out.items():
        print(f"  {k:<42} {v:.6f}")
    for k in ("kinematic_metrics", "interactive_metrics", "map_based_metrics"):
        print(f"  {k:<42} {row[k]:.6f}")
    return 0
