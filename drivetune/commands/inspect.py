"""`drivetune inspect SCENES... [--json]`: one summary per scenario in TFRecords, shard directories or shard files."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from drivetune.commands.common import add_scenes_argument
from drivetune.errors import ShardError, SourceError, TFRecordError, WomdError
from drivetune.scene import AgentType, Scene


def summarize(scene: Scene) -> dict[str, Any]:
    """The inspect fields of one scene (JSON-ready)."""
    sim = scene.sim_agent_mask()
    sim_types = scene.track_types[sim]
    return {
        "scenario_id": scene.scenario_id,
        "num_tracks": scene.num_tracks,
        "num_steps": scene.num_steps,
        "sdc_id": scene.sdc_id,
        "num_sim_agents": int(sim.sum()),
        "sim_agents_by_type": {t.name.lower(): int((sim_types == t).sum()) for t in AgentType if (sim_types == t).any()},
        "sim_agent_ids": scene.sim_agent_ids().tolist(),
        "evaluated_agent_ids": scene.evaluated_agent_ids().tolist(),
        "map_feature_counts": scene.map_feature_counts(),
        "num_signalled_lanes": scene.num_signalled_lanes(),
    }


def _line(s: dict[str, Any]) -> str:
    maps = ", ".join(f"{k} {v}" for k, v in s["map_feature_counts"].items() if v)
    return (
        f"{s['scenario_id']}: {s['num_tracks']} tracks, {s['num_sim_agents']} sim agents {s['sim_agents_by_type']}, "
        f"evaluated {s['evaluated_agent_ids']}, map: {maps}, {s['num_signalled_lanes']} signalled lanes"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_scenes_argument(parser)
    parser.add_argument("--json", action="store_true", help="print a JSON list, one object per scenario")


def run(args: argparse.Namespace) -> int:
    from drivetune.sources import expand_sources, iter_scenes  # pyarrow loads here, not for --help

    summaries: list[dict[str, Any]] = []
    failed = False
    try:
        paths = expand_sources(args.scenes)
    except SourceError as exc:
        print(f"drivetune inspect: error: {exc}", file=sys.stderr)
        return 2
    for path in paths:
        try:
            for scene in iter_scenes(path):
                summary = {"source": str(path), **summarize(scene)}
                summaries.append(summary)
                if not args.json:
                    print(_line(summary))
        except (TFRecordError, WomdError, ShardError) as exc:
            print(f"drivetune inspect: error: {exc}", file=sys.stderr)
            failed = True
    if args.json:
        print(json.dumps(summaries, indent=1))
    return 1 if failed else 0
