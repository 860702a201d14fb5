"""`drivetune serve-demo`: an example closed loop against the simulation service.

The caller plays the AV simulator: it drives the SDC by replaying its log and asks the service every 0.5 s where all
other agents go, for 8 s (16 steps), once per rollout (each its own session, stepped in lockstep). The trajectories
are written in the realism CLI's npz format (`OUT/<scenario_id>.npz`) and scored (`OUT/realism.json`, table on
stdout). Runs against `--url`, or starts a private local service from `--checkpoint`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from drivetune.atomic import atomic_write_bytes
from drivetune.rollout_config import SAMPLERS
from services.launch import local_service, serve_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running service, e.g. http://127.0.0.1:8000")
    where.add_argument("--checkpoint", help="start a private local service from this checkpoint")
    parser.add_argument("--scenario", required=True, help="TFRecord file holding the scenario")
    parser.add_argument("--scenario-id", default=None, help="which scenario of the file (default: the first)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--rollouts", type=int, default=4, help="sessions (rollouts) to run")
    parser.add_argument("--sampler", default="warmk", choices=SAMPLERS,
                        help="sampler the service uses for the other agents")
    parser.add_argument("--k", type=int, default=32, help="top-K candidates of the sampler")
    parser.add_argument("--seed", type=int, default=0, help="rollout r uses seed + r")
    parser.add_argument("--api-key-env", default="", help="environment variable holding the API key")


def run(args: argparse.Namespace) -> int:
    from drivetune.client import ServiceCallError, SimAgentsClient  # httpx, protos, torch: not for --help
    from drivetune.eval_report import format_table
    from drivetune.realism import realism_metrics
    from drivetune.tfrecord import read_records
    from drivetune.womd import scene_from_bytes
    from services.demo import closed_loop

    if args.rollouts < 1:
        print("drivetune serve-demo: error: --rollouts must be >= 1", file=sys.stderr)
        return 2
    try:
        for _, payload in read_records(args.scenario):
            scene = scene_from_bytes(payload, args.scenario)
            if args.scenario_id in (None, scene.scenario_id):
                break
        else:
            raise ValueError(f"scenario {args.scenario_id} not in {args.scenario}")
        key = os.environ.get(args.api_key_env, "") if args.api_key_env else None
        sampler = {"kind": args.sampler, "k": args.k}
        if args.url:
            with SimAgentsClient(args.url, api_key=key) as client:
                ro = closed_loop(client, scene, payload, args.rollouts, sampler, args.seed)
        else:
            cfg = serve_config([], api_key_env=args.api_key_env, replica_cpus=0.5)
            with local_service(args.checkpoint, cfg) as url, SimAgentsClient(url, api_key=key) as client:
                ro = closed_loop(client, scene, payload, args.rollouts, sampler, args.seed)
    except (ValueError, OSError, ServiceCallError) as e:
        print(f"drivetune serve-demo: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ro.save(out / f"{scene.scenario_id}.npz")
    (row,) = realism_metrics([scene], [ro])
    atomic_write_bytes(out / "realism.json", [json.dumps(row, indent=2).encode()])
    print(f"{args.rollouts} closed-loop sessions x 16 steps, SDC replayed by the caller; realism (2025):")
    print(format_table([{**row, "scenario_id": scene.scenario_id}]))
    print(f"metametric {row['metametric']:.4f}; rollouts in {out / (scene.scenario_id + '.npz')}")
    return 0
