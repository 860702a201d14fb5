"""Rollout sets and their validation, and the padded tensor batch the metric works on.

Conventions follow the official metric: every value is first rounded to float32 (the proto/TF precision); then a
per-scene origin (a float32-representable point near the agents) is subtracted exactly, so that the remaining
arithmetic keeps millimetre precision far from the map origin. Rollout index 0 of the batch is the logged future,
indices 1..R the simulated rollouts; the 11 logged history steps are prepended to each.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from drivetune.atomic import atomic_path
from drivetune.errors import RolloutError
from drivetune.scene import HEADING, HEIGHT, LENGTH, NUM_FUTURE_STEPS, WIDTH, X, Y, Z, AgentType, Scene

ROLLOUT_FIELDS = ("x", "y", "z", "heading")


@dataclass
class Rollouts:
    """R joint rollouts of A sim agents over the 80 future steps. Arrays: [R, A, 80] float32."""

    object_id: np.ndarray  # int64 [A]
    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    heading: np.ndarray

    @property
    def num_rollouts(self) -> int:
        return int(self.x.shape[0])

    @classmethod
    def load(cls, path: str | Path) -> "Rollouts":
        """Read an npz holding `object_id` [A] and `x`, `y`, `z`, `heading` [R, A, 80]."""
        try:
            f = np.load(path, allow_pickle=False)
        except (ValueError, zipfile.BadZipFile, EOFError) as e:
            raise RolloutError(f"{path}: not a readable npz ({e})") from None
        if not isinstance(f, np.lib.npyio.NpzFile):
            raise RolloutError(f"{path}: expected an npz archive, found a single array")
        with f:
            missing = [k for k in ("object_id", *ROLLOUT_FIELDS) if k not in f.files]
            if missing:
                raise RolloutError(f"{path}: missing arrays {missing} (have {sorted(f.files)})")
            return cls(np.asarray(f["object_id"]), *(np.asarray(f[k]) for k in ROLLOUT_FIELDS))

    def save(self, path: str | Path) -> None:
        """Atomic npz write."""
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, object_id=self.object_id, **{k: getattr(self, k) for k in ROLLOUT_FIELDS})

    def validate(self, scene: Scene, where: str = "rollouts") -> np.ndarray:
        """Check against the scene's sim agents; return the track index of each rollout agent."""
        sid = scene.scenario_id
        ids = np.asarray(self.object_id)
        if ids.ndim != 1 or ids.dtype.kind not in "iu":
            raise RolloutError(f"{where}: object_id must be a 1-D integer array, got {ids.dtype} {ids.shape}")
        A = ids.shape[0]
        uniq, counts = np.unique(ids, return_counts=True)
        if len(uniq) != A:
            raise RolloutError(f"{where}: duplicate object ids {uniq[counts > 1][:10].tolist()}")
        for k in ROLLOUT_FIELDS:
            v = np.asarray(getattr(self, k))
            if v.ndim != 3 or v.shape[1:] != (A, NUM_FUTURE_STEPS) or v.shape[0] < 1:
                raise RolloutError(f"{where}: {k} has shape {v.shape}, expected [R, {A}, {NUM_FUTURE_STEPS}]")
            if v.shape[0] != self.x.shape[0]:
                raise RolloutError(f"{where}: {k} has {v.shape[0]} rollouts, x has {self.x.shape[0]}")
            bad = ~np.isfinite(v)
            if bad.any():
                r, a, t = np.argwhere(bad)[0]
                raise RolloutError(f"{where}: non-finite {k} ({int(bad.sum())} values), first at rollout {r}, "
                                   f"object {int(ids[a])}, step {t}")
        sim = set(int(i) for i in scene.sim_agent_ids())
        got = set(int(i) for i in ids)
        if got - sim:
            raise RolloutError(f"{where}: object ids {sorted(got - sim)[:10]} are not sim agents of scenario {sid}")
        if sim - got:
            raise RolloutError(f"{where}: sim agents {sorted(sim - got)[:10]} of scenario {sid} are missing")
        return scene.track_index(ids)


@dataclass
class Batch:
    """S scenes padded to A agents and E scored agents; rollout 0 is the log. Float tensors use `dtype`."""

    scenario_ids: list[str]
    traj: Tensor  # [S, R1, A, 91, 4]: x, y, z, heading (local frame)
    valid: Tensor  # bool [S, R1, A, 91]
    length: Tensor  # [S, A] step-10 box size
    width: Tensor
    height: Tensor
    scored: Tensor  # long [S, E] agent indices
    scored_mask: Tensor  # bool [S, E]
    is_vehicle: Tensor  # bool [S, E]
    scored_ids: list[np.ndarray]
    origin: np.ndarray  # float64 [S, 3]
    origin_t: Tensor  # [S, 3] the same, as a tensor of the working dtype (exact: whole metres)

    @property
    def num_rollouts(self) -> int:
        return int(self.traj.shape[1]) - 1

    @cached_property
    def scored_traj(self) -> Tensor:
        """[S, R1, E, 91, 4], gathered once per batch (every feature family reads it)."""
        idx = self.scored[:, None, :, None, None].expand(-1, self.traj.shape[1], -1, *self.traj.shape[3:])
        return torch.gather(self.traj, 2, idx)

    @cached_property
    def scored_valid(self) -> Tensor:
        """bool [S, R1, E, 91], gathered once per batch."""
        idx = self.scored[:, None, :, None].expand(-1, self.valid.shape[1], -1, self.valid.shape[3])
        return torch.gather(self.valid, 2, idx) & self.scored_mask[:, None, :, None]


def scene_origin(scene: Scene) -> np.ndarray:
    """A float32-representable point near the sim agents at the current step (whole metres)."""
    cur = scene.states[scene.sim_agent_mask(), scene.current_time_index, :3].astype(np.float32).astype(np.float64)
    return np.round(cur.mean(axis=0)) if cur.size else np.zeros(3)


def local32(values: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """Round to float32 like the official code, then shift exactly to the local frame (float64 result)."""
    return values.astype(np.float32).astype(np.float64) - origin


def build_batch(
    scenes: list[Scene], rollouts: list[Rollouts], scored: str = "evaluated", dtype=torch.float32, device="cpu",
) -> Batch:
    """Validate and pad scenes + rollouts into one Batch. `scored`: "evaluated" (official) or "all" sim agents."""
    if scored not in ("evaluated", "all"):
        raise ValueError(f"scored must be 'evaluated' or 'all', got {scored!r}")
    if len(scenes) != len(rollouts) or not scenes:
        raise ValueError(f"need one rollout set per scene (got {len(scenes)} scenes, {len(rollouts)} rollout sets)")
    R = rollouts[0].num_rollouts
    if any(r.num_rollouts != R for r in rollouts):
        raise RolloutError(f"all scenes of a batch need the same rollout count, got {[r.num_rollouts for r in rollouts]}")
    S, A = len(scenes), max(len(r.object_id) for r in rollouts)
    tix = [r.validate(s, f"rollouts of scenario {s.scenario_id}") for s, r in zip(scenes, rollouts)]
    sc_ids = [s.evaluated_agent_ids() if scored == "evaluated" else np.asarray(r.object_id) for s, r in zip(scenes, rollouts)]
    E = max(len(i) for i in sc_ids)
    T = scenes[0].num_steps
    cur = scenes[0].current_time_index
    traj = np.zeros((S, R + 1, A, T, 4))
    valid = np.zeros((S, R + 1, A, T), bool)
    size = np.zeros((S, A, 3))
    sc_idx = np.zeros((S, E), np.int64)
    sc_mask = np.zeros((S, E), bool)
    is_veh = np.zeros((S, E), bool)
    origin = np.zeros((S, 3))
    cols = [X, Y, Z, HEADING]
    for s, (scene, ro, ti) in enumerate(zip(scenes, rollouts, tix)):
        if scene.num_steps != T or scene.current_time_index != cur:
            raise RolloutError(f"scenario {scene.scenario_id}: {scene.num_steps} steps / current index "
                               f"{scene.current_time_index}, batch expects {T} / {cur}")
        o = origin[s] = scene_origin(scene)
        n = len(ti)
        traj[s, :, :n] = local32(scene.states[ti][:, :, cols], np.r_[o, 0.0])[None]  # heading is not shifted
        for j, k in enumerate(ROLLOUT_FIELDS):
            traj[s, 1:, :n, cur + 1 :, j] = local32(np.asarray(getattr(ro, k)), o[j] if j < 3 else 0.0)
        valid[s, 0, :n] = scene.valid[ti]
        valid[s, 1:, :n, : cur + 1] = scene.valid[ti, : cur + 1]
        valid[s, 1:, :n, cur + 1 :] = True
        size[s, :n] = scene.states[ti, cur][:, [LENGTH, WIDTH, HEIGHT]].astype(np.float32)
        pos = {int(i): a for a, i in enumerate(ro.object_id)}
        e = len(sc_ids[s])
        sc_idx[s, :e] = [pos[int(i)] for i in sc_ids[s]]
        sc_mask[s, :e] = True
        is_veh[s, :e] = scene.track_types[ti[sc_idx[s, :e]]] == int(AgentType.VEHICLE)
    t = lambda a: torch.as_tensor(a, dtype=dtype, device=device)  # noqa: E731
    b = lambda a: torch.as_tensor(a, device=device)  # noqa: E731
    return Batch(
        scenario_ids=[s.scenario_id for s in scenes], traj=t(traj), valid=b(valid), length=t(size[..., 0]),
        width=t(size[..., 1]), height=t(size[..., 2]), scored=b(sc_idx),
        scored_mask=b(sc_mask), is_vehicle=b(is_veh), scored_ids=[np.asarray(i, np.int64) for i in sc_ids],
        origin=origin, origin_t=t(origin),
    )
