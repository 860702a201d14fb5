"""Closed-loop group rollouts: S scenes × G rollouts, every sim agent rolled forward jointly for 16 tokens (8 s).

A loop over the session engine (`drivetune.engine`): one session per scene with G rows, stepped together. The map of each scene is encoded once and shared by its G rollouts; every step feeds one new token per agent to the
model's incremental decoder (`BehaviorModel.start` / `.step`), so each agent conditions on the others' *simulated*
states. Agents not valid at the current step are not simulated (they never appear in the future context). The SDC is
driven by the policy (`sdc="policy"`), replayed from the log (`"log"`) or driven by the caller (`"external"`, with
10 Hz poses). The random numbers of rollout r of scene s come from `rollout_seed(scenario id, r, base seed, policy
version)`, so a rollout does not depend on the rest of its batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from drivetune.engine import NUM_FUTURE_TOKENS, Engine, Session, SessionSpec, StepRecord
from drivetune.model import BehaviorModel
from drivetune.model.batch import select_agents
from drivetune.realism.batch import Rollouts
from drivetune.rollout_config import SDC_MODES
from drivetune.samplers import SamplerConfig, rollout_seed
from drivetune.scene import HEADING, NUM_FUTURE_STEPS, X, Y, Scene
from drivetune.tokenizer import TOKEN_STEPS, TorchVocab

__all__ = ["NUM_FUTURE_TOKENS", "SDC_MODES", "SceneRollouts", "simulate"]


@dataclass
class SceneRollouts:
    """G rollouts of one scene over its A sim agents (tracks valid at the current step, in track order)."""

    scenario_id: str
    object_ids: np.ndarray  # int64 [A]
    track_index: np.ndarray  # int64 [A] indices into the scene's tracks
    rollout_indices: np.ndarray  # int64 [G]
    seeds: np.ndarray  # int64 [G]
    tokens: np.ndarray  # int64 [G, A, 16]
    logp: np.ndarray  # float32 [G, A, 16]
    sampler_logp: np.ndarray  # float32 [G, A, 16]
    token_mask: np.ndarray  # bool [G, A, 16]: chosen by the policy
    boundary_poses: np.ndarray  # float32 [G, A, 17, 3]
    x: np.ndarray  # float32 [G, A, 80]
    y: np.ndarray
    z: np.ndarray
    heading: np.ndarray
    topk: np.ndarray | None = None  # int64 [G, A, 16, K]
    sft_target: np.ndarray | None = None  # int64 [G, A, 16]

    def realism_rollouts(self) -> Rollouts:
        """The trajectories as the realism metric's (and the submission's) rollout set."""
        return Rollouts(self.object_ids, self.x, self.y, self.z, self.heading)


def _external_track(scene: Scene, sdc: str, sdc_track: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The SDC's given 10 Hz future (x, y, heading) [80, 3] and validity [80]: the log (held over gaps) or the
    caller's track."""
    if sdc == "external":
        return np.asarray(sdc_track, dtype=np.float64), np.ones(NUM_FUTURE_STEPS, bool)
    cur, sdc_i = scene.current_time_index, scene.sdc_index
    fut = slice(cur + 1, cur + 1 + NUM_FUTURE_STEPS)
    st = scene.states[sdc_i]
    track, ok = np.stack([st[fut, X], st[fut, Y], st[fut, HEADING]], -1), scene.valid[sdc_i, fut]
    out, last = np.zeros((NUM_FUTURE_STEPS, 3)), np.array([st[cur, X], st[cur, Y], st[cur, HEADING]])
    for t in range(NUM_FUTURE_STEPS):  # hold the last logged pose over gaps
        last = track[t] if ok[t] else last
        out[t] = last
    return out, ok


def simulate(
    model: BehaviorModel,
    vocab: TorchVocab,
    scenes: Sequence[Scene],
    group_size: int,
    sampler: SamplerConfig,
    *,
    base_seed: int = 0,
    policy_version: int = 0,
    rollout_offset: int = 0,
    sdc: str = "policy",
    sdc_poses: Sequence[np.ndarray] | None = None,
    return_topk: bool = False,
) -> list[SceneRollouts]:
    """Roll `group_size` closed-loop rollouts of every scene; one `SceneRollouts` per scene.

    Rollout indices are `rollout_offset + r`; `sdc_poses` (with sdc="external") holds one [80, 3] (x, y, heading)
    10 Hz SDC trajectory per scene.
    """
    sampler.validate()
    if sdc not in SDC_MODES:
        raise ValueError(f"sdc mode {sdc!r} unknown (choose from {', '.join(SDC_MODES)})")
    if sdc == "external":
        if sdc_poses is None or len(sdc_poses) != len(scenes):
            raise ValueError("sdc='external' needs sdc_poses: one [80, 3] array per scene")
        for s, p in zip(scenes, sdc_poses):
            if np.shape(p) != (NUM_FUTURE_STEPS, 3) or not np.isfinite(p).all():
                raise ValueError(f"scenario {s.scenario_id}: sdc_poses must be finite [80, 3], got {np.shape(p)}")
    if group_size < 1 or not scenes:
        raise ValueError(f"need at least one scene and group_size >= 1 (got {len(scenes)}, {group_size})")
    G = group_size
    picks = [select_agents(s) for s in scenes]
    if any(len(p) == 0 for p in picks):
        raise ValueError(f"scenes without sim agents: {[s.scenario_id for s, p in zip(scenes, picks) if not len(p)]}")
    ridx = np.arange(rollout_offset, rollout_offset + G)
    seeds = np.array([[rollout_seed(s.scenario_id, r, base_seed, policy_version) for r in ridx] for s in scenes])
    specs, given = [], []
    for i, s in enumerate(scenes):
        ext = sdc != "policy" and bool(s.valid[s.sdc_index, s.current_time_index])
        specs.append(SessionSpec(s, seeds[i], sampler, [s.sdc_id] if ext else [], keep_topk=return_topk))
        given.append(_external_track(s, sdc, None if sdc_poses is None else sdc_poses[i]) if ext else None)
    was_training = model.training
    model.eval()
    try:
        engine = Engine(model, vocab, policy_version)
        sessions = engine.start(specs)
        records: list[list[StepRecord]] = [[] for _ in sessions]
        for t in range(NUM_FUTURE_TOKENS):
            engine.act(sessions)
            ext = [None if g is None else _external_step(sess, *g, t) for sess, g in zip(sessions, given)]
            for rec, r in zip(records, engine.observe(sessions, ext, forward=t + 1 < NUM_FUTURE_TOKENS)):
                rec.append(r)
    finally:
        model.train(was_training)
    return [_scene_output(sess, rec, ridx, seeds[i]) for i, (sess, rec) in enumerate(zip(sessions, records))]


def _external_step(session: Session, track: np.ndarray, ok: np.ndarray, t: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Interval t of the SDC's given track as the engine's external input (poses [R, A, 5, 3], valid [R, A])."""
    R, A = session.num_rows, session.num_agents
    i = int(np.flatnonzero(session.external)[0])
    poses = np.zeros((R, A, TOKEN_STEPS, 3))
    poses[:, i] = track[t * TOKEN_STEPS:(t + 1) * TOKEN_STEPS]
    valid = np.zeros((R, A), bool)
    valid[:, i] = ok[(t + 1) * TOKEN_STEPS - 1]
    return torch.as_tensor(poses), torch.as_tensor(valid)


def _scene_output(session: Session, records: list[StepRecord], ridx: np.ndarray, seeds: np.ndarray) -> SceneRollouts:
    def stack(name: str, dtype) -> np.ndarray | None:
        if getattr(records[0], name) is None:
            return None
        return torch.stack([getattr(r, name) for r in records], dim=2).cpu().numpy().astype(dtype)

    R, A = session.num_rows, session.num_agents
    steps = torch.cat([r.poses for r in records], dim=2).cpu().numpy().astype(np.float32)  # [R, A, 80, 3]
    start = session.start_pose[None].expand(R, A, 3)
    bposes = torch.stack([start] + [r.end_pose for r in records], dim=2).cpu().numpy().astype(np.float32)
    z = np.broadcast_to(session.z[None, :, None], steps.shape[:3]).copy()
    return SceneRollouts(
        scenario_id=session.scene.scenario_id, object_ids=session.object_ids, track_index=session.agents,
        rollout_indices=ridx.astype(np.int64), seeds=seeds.astype(np.int64),
        tokens=stack("tokens", np.int64), logp=stack("logp", np.float32), sampler_logp=stack("sampler_logp", np.float32),
        token_mask=np.broadcast_to(~session.external[None, :, None], (R, A, NUM_FUTURE_TOKENS)).copy(),
        boundary_poses=bposes, x=steps[..., 0].copy(), y=steps[..., 1].copy(), z=z,
        heading=steps[..., 2].copy(), topk=stack("topk", np.int64), sft_target=stack("sft_target", np.int64),
    )
