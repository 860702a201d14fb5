"""`drivetune realism SCENARIO.tfrecord ROLLOUTS.npz [--scenario-id ID] [--config 2025|2024] [--json]`.

ROLLOUTS may also be a WOSAC submission (`*.binproto*` file or directory); the scenario's rollouts are then read
from it and checked against the official rules first.
"""

from __future__ import annotations

import argparse
import json
import sys

from drivetune.realism.batch import RolloutError, Rollouts
from drivetune.realism.config import CONFIGS
from drivetune.realism.metrics import METRIC_FIELDS, realism_metrics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scenario", help="WOMD Scenario TFRecord")
    parser.add_argument("rollouts", help="npz with object_id [A], x/y/z/heading [R, A, 80]; or a submission binproto")
    parser.add_argument("--scenario-id", default=None, help="scenario to score when the file holds several")
    parser.add_argument("--config", default="2025", choices=sorted(CONFIGS), help="challenge config (default 2025)")
    parser.add_argument("--json", action="store_true", help="print the official metric fields + seconds as JSON")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    parser.add_argument("--scored", default="evaluated", choices=("evaluated", "all"),
                        help="scored agents: the official evaluated set (default) or every sim agent")


def _load_rollouts(path: str, scene) -> Rollouts:
    if ".binproto" in path or not path.endswith(".npz"):
        from drivetune.realism.submission import read_submission, validate_scenario_rollouts

        subs = read_submission(path)
        if scene.scenario_id not in subs:
            raise RolloutError(f"{path}: no rollouts for scenario {scene.scenario_id} (has {sorted(subs)[:5]})")
        return validate_scenario_rollouts(subs[scene.scenario_id], scene)
    return Rollouts.load(path)


def run(args: argparse.Namespace) -> int:
    import torch

    from drivetune.womd import load_scene

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"drivetune realism: error: --device {args.device} but no CUDA device is available", file=sys.stderr)
        return 2
    try:
        scene = load_scene(args.scenario, args.scenario_id)
        rollouts = _load_rollouts(args.rollouts, scene)
        row = realism_metrics(scene, rollouts, config=args.config, device=args.device, scored=args.scored)[0]
    except (ValueError, OSError) as e:
        print(f"drivetune realism: error: {e}", file=sys.stderr)
        return 2
    out = {k: row[k] for k in METRIC_FIELDS}
    out["seconds"] = row["seconds"]
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"scenario {scene.scenario_id}  config {args.config}  {rollouts.num_rollouts} rollouts  "
          f"{len(rollouts.object_id)} sim agents")
    for k, v in out.items():
        print(f"  {k:<42} {v:.6f}")
    for k in ("kinematic_metrics", "interactive_metrics", "map_based_metrics"):
        print(f"  {k:<42} {row[k]:.6f}")
    return 0
