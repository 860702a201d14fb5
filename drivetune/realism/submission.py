"""WOSAC submission I/O: `SimAgentsChallengeSubmission` binprotos, sharded as the challenge expects.

A submission is a set of files `submission.binproto-00000-of-0000N`, each one serialized
`SimAgentsChallengeSubmission` holding some scenarios' `ScenarioRollouts` (32 joint scenes of every sim agent, 80
steps of center x/y/z and heading), optionally packed into one `submission.tar.gz` for upload.
"""

from __future__ import annotations

import glob
import io
import os
import tarfile
from pathlib import Path
from typing import Iterable

import numpy as np
from waymo_open_dataset.protos import sim_agents_submission_pb2 as sub_pb2

from drivetune.errors import SubmissionError
from drivetune.realism.batch import ROLLOUT_FIELDS, RolloutError, Rollouts
from drivetune.rollout_config import WOSAC_ROLLOUTS
from drivetune.scene import NUM_FUTURE_STEPS, Scene
from drivetune.atomic import atomic_write_bytes

_PROTO_FIELDS = ("center_x", "center_y", "center_z", "heading")


def to_scenario_rollouts(scenario_id: str, rollouts: Rollouts) -> sub_pb2.ScenarioRollouts:
    scenes = []
    for r in range(rollouts.num_rollouts):
        trajs = [
            sub_pb2.SimulatedTrajectory(
                object_id=int(oid), **{pf: getattr(rollouts, f)[r, a].tolist() for pf, f in zip(_PROTO_FIELDS, ROLLOUT_FIELDS)}
            )
            for a, oid in enumerate(rollouts.object_id)
        ]
        scenes.append(sub_pb2.JointScene(simulated_trajectories=trajs))
    return sub_pb2.ScenarioRollouts(scenario_id=scenario_id, joint_scenes=scenes)


def from_scenario_rollouts(proto: sub_pb2.ScenarioRollouts) -> Rollouts:
    """Rollouts of one scenario (object order of the first joint scene); raises SubmissionError if ragged."""
    sid = proto.scenario_id
    if not proto.joint_scenes:
        raise SubmissionError(f"scenario {sid}: no joint scenes")
    ids = np.array([t.object_id for t in proto.joint_scenes[0].simulated_trajectories], np.int64)
    pos = {int(i): a for a, i in enumerate(ids)}
    R, A = len(proto.joint_scenes), len(ids)
    arrays = {f: np.zeros((R, A, NUM_FUTURE_STEPS), np.float32) for f in ROLLOUT_FIELDS}
    for r, js in enumerate(proto.joint_scenes):
        got = sorted(t.object_id for t in js.simulated_trajectories)
        if got != sorted(pos):
            raise SubmissionError(f"scenario {sid}: joint scene {r} has objects {got[:10]}..., scene 0 has others")
        for t in js.simulated_trajectories:
            for pf, f in zip(_PROTO_FIELDS, ROLLOUT_FIELDS):
                v = getattr(t, pf)
                if len(v) != NUM_FUTURE_STEPS:
                    raise SubmissionError(f"scenario {sid}: joint scene {r}, object {t.object_id}: {pf} has "
                                          f"{len(v)} steps, expected {NUM_FUTURE_STEPS}")
                arrays[f][r, pos[t.object_id]] = v
    return Rollouts(ids, *(arrays[f] for f in ROLLOUT_FIELDS))


def validate_scenario_rollouts(proto: sub_pb2.ScenarioRollouts, scene: Scene) -> Rollouts:
    """The official rules: scenario id set and matching, 32 joint scenes, every sim agent and no other, 80 steps."""
    if not proto.HasField("scenario_id"):
        raise SubmissionError("ScenarioRollouts without scenario_id")
    if proto.scenario_id != scene.scenario_id:
        raise SubmissionError(f"rollouts are for scenario {proto.scenario_id}, scene is {scene.scenario_id}")
    if len(proto.joint_scenes) != WOSAC_ROLLOUTS:
        raise SubmissionError(f"scenario {proto.scenario_id}: {len(proto.joint_scenes)} joint scenes, "
                              f"expected {WOSAC_ROLLOUTS}")
    rollouts = from_scenario_rollouts(proto)
    try:
        rollouts.validate(scene, f"submission of scenario {scene.scenario_id}")
    except RolloutError as e:
        raise SubmissionError(str(e)) from None
    return rollouts


def write_submission(
    out_dir: str | os.PathLike, items: Iterable[tuple[str, Rollouts]], num_shards: int = 1,
    metadata: dict | None = None, pack: bool = False,
) -> list[Path]:
    """Write `submission.binproto-XXXXX-of-NNNNN` shards (scenarios dealt round-robin); atomic per file.

    `metadata` sets header fields (account_name, unique_method_name, authors, affiliation, description, ...).
    With `pack`, also writes `submission.tar.gz` holding the shards. Returns the written paths.
    """
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    header = {"account_name": "", "unique_method_name": "drivetune", "affiliation": "", "description": "",
              **(metadata or {})}
    shards = [sub_pb2.SimAgentsChallengeSubmission(submission_type=sub_pb2.SimAgentsChallengeSubmission.SIM_AGENTS_SUBMISSION,
                                                   **header) for _ in range(num_shards)]
    for i, (sid, ro) in enumerate(items):
        shards[i % num_shards].scenario_rollouts.append(to_scenario_rollouts(sid, ro))
    paths = []
    for i, msg in enumerate(shards):
        path = out / f"submission.binproto-{i:05d}-of-{num_shards:05d}"
        atomic_write_bytes(path, [msg.SerializeToString()])
        paths.append(path)
    if pack:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for p in paths:
                tar.add(p, arcname=p.name)
        tar_path = out / "submission.tar.gz"
        atomic_write_bytes(tar_path, [buf.getvalue()])
        paths.append(tar_path)
    return paths


def read_submission(spec: str | os.PathLike) -> dict[str, sub_pb2.ScenarioRollouts]:
    """ScenarioRollouts by scenario id from a binproto file, a glob, or a directory of `submission.binproto-*`."""
    p = Path(spec)
    files = sorted(p.glob("*.binproto*")) if p.is_dir() else [Path(f) for f in sorted(glob.glob(str(spec)))]
    if not files:
        raise SubmissionError(f"no submission files at {spec}")
    out: dict[str, sub_pb2.ScenarioRollouts] = {}
    for f in files:
        msg = sub_pb2.SimAgentsChallengeSubmission()
        try:
            msg.ParseFromString(f.read_bytes())
        except Exception as e:  # protobuf raises DecodeError or RuntimeWarning-like errors
            raise SubmissionError(f"{f}: not a SimAgentsChallengeSubmission ({e})") from None
        for sr in msg.scenario_rollouts:
            if sr.scenario_id in out:
                raise SubmissionError(f"{f}: scenario {sr.scenario_id} appears twice in the submission")
            out[sr.scenario_id] = sr
    return out
