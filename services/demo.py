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

import numpy as np

from drivetune.atomic import atomic_write_bytes
from drivetune.client import ServiceCallError, SimAgentsClient
from drivetune.scene import HEADING, NUM_FUTURE_STEPS, X, Y, Z, Scene


def add_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running service, e.g. http://127.0.0.1:8000")
    where.add_argument("--checkpoint", help="start a private local service from this checkpoint")
    parser.add_argument("--scenario", required=True, help="TFRecord file holding the scenario")
    parser.add_argument("--scenario-id", default=None, help="which scenario of the file (default: the first)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--rollouts", type=int, default=4, help="sessions (rollouts) to run")
    parser.add_argument("--sampler", default="warmk", choices=("topk", "catk", "warmk", "greedy"),
                        help="sampler the service uses for the other agents")
    parser.add_argument("--k", type=int, default=32, help="top-K candidates of the sampler")
    parser.add_argument("--seed", type=int, default=0, help="rollout r uses seed + r")
    parser.add_argument("--api-key-env", default="", help="environment variable holding the API key")


def logged_sdc_track(scene: Scene) -> np.ndarray:
    """The SDC's logged future [80, 3] (x, y, heading), holding the last valid pose over gaps."""
    cur, i = scene.current_time_index, scene.sdc_index
    st, ok = scene.states[i], scene.valid[i]
    last, out = st[cur, [X, Y, HEADING]], np.zeros((NUM_FUTURE_STEPS, 3))
    for t in range(NUM_FUTURE_STEPS):
        last = st[cur + 1 + t, [X, Y, HEADING]] if ok[cur + 1 + t] else last
        out[t] = last
    return out


def closed_loop(client: SimAgentsClient, scene: Scene, payload: bytes, rollouts: int, sampler: dict,
                seed: int) -> "Rollouts":
    """Run `rollouts` sessions for 8 s with the SDC replayed from the log; the realism rollout set."""
    from drivetune.engine import NUM_LOG_TOKENS
    from drivetune.realism import Rollouts
    from drivetune.tokenizer import TOKEN_STEPS

    track, sdc = logged_sdc_track(scene), int(scene.sdc_id)
    sessions = [client.create_session(scenario_bytes=payload, sampler=sampler, seed=seed + r) for r in range(rollouts)]
    ids = np.asarray(sessions[0].info["object_ids"], np.int64)
    out = np.zeros((4, rollouts, len(ids), NUM_FUTURE_STEPS), np.float32)
    z_now = scene.states[scene.track_index(ids), scene.current_time_index, Z].astype(np.float32)
    out[2] = z_now[None, :, None]
    col = {int(o): a for a, o in enumerate(ids)}
    try:
        for k in range(NUM_LOG_TOKENS):
            seg = track[(k - 1) * TOKEN_STEPS: k * TOKEN_STEPS] if k else None
            states = None if seg is None else {sdc: {"x": seg[:, 0], "y": seg[:, 1], "heading": seg[:, 2]}}
            for r, session in enumerate(sessions):
                body = session.step(states)
                rows = [col[o] for o in body["object_ids"]]
                steps = slice(k * TOKEN_STEPS, (k + 1) * TOKEN_STEPS)
                for f, name in ((0, "x"), (1, "y"), (3, "heading")):
                    out[f, r, rows, steps] = np.asarray(body[name], np.float32)
    finally:
        for session in sessions:
            session.close()
    a = col[sdc]
    out[0, :, a], out[1, :, a], out[3, :, a] = track[:, 0], track[:, 1], track[:, 2]
    return Rollouts(ids, out[0], out[1], out[2], out[3])


def run(args: argparse.Namespace) -> int:
    from drivetune.realism import realism_metrics
    from drivetune.simulate_cmd import format_table
    from drivetune.tfrecord import read_records
    from drivetune.womd import scene_from_bytes

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
            from services.cli import local_service, serve_config

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
