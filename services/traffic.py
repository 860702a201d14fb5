"""AlpaSim traffic-service sessions inside a replica: the time bookkeeping between AlpaSim's microsecond queries and
the engine's 0.5 s intervals. Plain Python (no gRPC): `services.grpc_front` decodes the protos and calls these methods
through the deployment handle, routed by the session's uuid (the replica holding the session answers).

Timeline: the handover time T0 is the scene's current time (WOMD step 10); interval k covers (T0 + 0.5 k, T0 +
0.5 (k + 1)] and holds 5 model poses at 10 Hz. `simulate(t)` commits every interval that ends at or before t with the
ego's poses at its five 10 Hz times (the same `step` the HTTP service runs, in the same batches), then answers from
the knots T0 + 0.5 p (the committed pose) and the pending interval's 5 poses: the pose at t (exact on a knot, else
linear in x, y and in the wrapped heading between the two knots around t) plus every later knot as the forecast.
Ego poses at the 10 Hz times come from the caller's ego trajectory the same way (exact on its samples, else linear).
Errors are returned as (gRPC status name, message), never raised across the handle.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import numpy as np

from drivetune.scene import HEADING, X, Y, Scene
from services.schemas import Sampler
from services.store import SESSION_ID, ServiceError

EGO = "EGO"
STEP_US = 100_000  # 10 Hz
INTERVAL_US = 500_000  # one motion token
HISTORY_US = 1_000_000  # the model's history: 11 steps at 10 Hz up to the current one
STATUS = {422: "INVALID_ARGUMENT", 404: "NOT_FOUND", 409: "FAILED_PRECONDITION", 429: "RESOURCE_EXHAUSTED",
          503: "UNAVAILABLE"}


class TrafficError(Exception):
    """A refused traffic call: gRPC status name and message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def _from_service(e: ServiceError) -> TrafficError:
    if e.status == 409 and "already in use" in e.message:
        return TrafficError("ALREADY_EXISTS", e.message)
    return TrafficError(STATUS.get(e.status, "INTERNAL"), e.message)


def wrap(a: np.ndarray) -> np.ndarray:
    return (a + np.pi) % (2 * np.pi) - np.pi


def interpolate(times: np.ndarray, poses: np.ndarray, t: int) -> np.ndarray:
    """Pose [..., 4] (x, y, z, yaw) at time t from knots `times` [K] (increasing) and `poses` [..., K, 4]: the knot
    itself when t is one, else linear between the two knots around it (yaw along the shorter arc)."""
    hit = np.flatnonzero(times == t)
    if len(hit):
        return poses[..., hit[0], :]
    j = int(np.searchsorted(times, t))
    if j == 0 or j == len(times):
        raise ValueError(f"time {t} us outside the knots [{times[0]}, {times[-1]}]")
    w = (t - times[j - 1]) / (times[j] - times[j - 1])
    a, b = poses[..., j - 1, :], poses[..., j, :]
    out = a + w * (b - a)
    out[..., 3] = wrap(a[..., 3] + w * wrap(b[..., 3] - a[..., 3]))
    return out


@dataclass
class TrafficSession:
    """One AlpaSim session: which engine agents answer for which requested object, the ego's known trajectory, the
    pending interval (index, its start pose, its 5 proposed poses)."""

    sid: str
    scene: Scene
    t0: int  # handover time, us
    order: list[str]  # requested object ids, request order (EGO excluded from answers)
    rows: np.ndarray  # [O] row of each answered object in the controlled-agents arrays
    sdc_id: int
    ego: dict[int, np.ndarray] = field(default_factory=dict)  # time us -> (x, y, z, yaw)
    pending: int = 0
    start_pose: np.ndarray | None = None  # [P, 4] pose at T0 + 0.5 pending
    proposal: np.ndarray | None = None  # [P, 5, 4]
    last_query: int = 0

    def ego_at(self, t: int, track: dict[int, np.ndarray] | None = None) -> np.ndarray | None:
        """The ego's pose at t from `track` (default: the known one), None outside it."""
        track = self.ego if track is None else track
        times = np.fromiter(sorted(track), dtype=np.int64)
        if len(times) == 0 or t < times[0] or t > times[-1]:
            return None
        return interpolate(times, np.stack([track[int(k)] for k in times]), t)

    def knots(self) -> tuple[np.ndarray, np.ndarray]:
        """Answerable times [6] and poses [P, 6, 4]: the pending interval's start and its 5 poses."""
        start = self.t0 + self.pending * INTERVAL_US
        times = start + STEP_US * np.arange(6, dtype=np.int64)
        return times, np.concatenate([self.start_pose[:, None], self.proposal], 1)


def body_poses(body: dict, z: np.ndarray) -> np.ndarray:
    """A step body's controlled agents' poses [P, 5, 4] float64 (x, y, z, yaw) from float32 values."""
    x, y, h = (np.asarray(body[k], np.float32).astype(np.float64) for k in ("x", "y", "heading"))
    return np.stack([x, y, np.repeat(z[:, None], x.shape[1], 1), h], -1)


class TrafficMixin:
    """Methods of the SimAgents deployment that serve AlpaSim sessions (`self.store`, `self.step_batch` and
    `self.cfg` come from the deployment)."""

    def _traffic(self) -> dict[str, TrafficSession]:
        if not hasattr(self, "_traffic_sessions"):
            self._traffic_sessions: dict[str, TrafficSession] = {}
        return self._traffic_sessions

    def replica_id(self) -> str:
        from ray import serve

        return serve.get_replica_context().replica_id.to_full_id_str()

    async def traffic_scenes(self) -> list[str]:
        """Scenario ids of the configured scenario store ([] without one)."""
        if not self.cfg.scenario_store:
            return []
        from drivetune.sources import iter_scenes

        def ids() -> list[str]:
            return [s.scenario_id for s in iter_scenes(self.cfg.scenario_store)]
        return await asyncio.to_thread(ids)

    async def traffic_metadata(self) -> dict:
        info = self.store.current().info
        return {"version_id": f"drivetune-policy-{info['policy_version']}", "vocab_hash": str(info["vocab_hash"]),
                "minimum_history_length_us": HISTORY_US, "replica": self.replica_id()}

    async def traffic_start(self, req: dict) -> dict:
        """req: session_uuid, scene_id, seed, handover_us, objects [(object_id, poses [n, 5] t_us x y z yaw)]."""
        try:
            return await self._start(req)
        except TrafficError as e:
            return {"error": (e.code, e.message), "replica": self.replica_id()}
        except ServiceError as e:
            return {"error": (_from_service(e).code, e.message), "replica": self.replica_id()}

    async def _start(self, req: dict) -> dict:
        sid = req["session_uuid"]
        if not SESSION_ID.match(sid):
            raise TrafficError("INVALID_ARGUMENT", "session_uuid must be 8-64 characters of A-Z a-z 0-9 _ -")
        if sid in self._traffic():
            raise TrafficError("ALREADY_EXISTS", f"session {sid} is already open")
        if req["scene_id"] not in await self.traffic_scenes():
            raise TrafficError("NOT_FOUND", f"scene_id {req['scene_id']!r} is not one of get_available_scenes")
        scene = await asyncio.to_thread(self.store.scene_by_id, req["scene_id"])
        current = int(round(float(scene.timestamps[scene.current_time_index]) * 1e6))
        t0 = int(req["handover_us"])  # the session's time origin (within half a 10 Hz step of the scene's current time)
        if abs(t0 - current) > STEP_US // 2:
            raise TrafficError("INVALID_ARGUMENT", f"handover_time_us {t0} is not the scene's handover time {current} "
                                                   "(its current step, where the model's history ends; +-50 ms)")
        ids = [o for o, _ in req["objects"]]
        if len(set(ids)) != len(ids):
            raise TrafficError("INVALID_ARGUMENT", "logged_object_trajectories has duplicate object_ids")
        for oid, poses in req["objects"]:
            if not np.isfinite(poses).all():
                raise TrafficError("INVALID_ARGUMENT", f"object {oid}: non-finite pose values")
        ego = dict(req["objects"]).get(EGO)
        if ego is None or not len(ego) or ego[:, 0].min() > t0 or ego[:, 0].max() < t0:
            raise TrafficError("FAILED_PRECONDITION", f"the {EGO} object needs a logged trajectory that covers the "
                                                      f"handover time {t0} us")
        agents = scene.track_ids[np.flatnonzero(scene.sim_agent_mask())].tolist()
        sdc = int(scene.sdc_id)
        ctrl = [a for a in agents if a != sdc]
        known, unknown, absent = set(int(a) for a in scene.track_ids), [], []
        for oid in ids:
            if oid == EGO:
                continue
            if not oid.isdigit() or int(oid) not in known:
                unknown.append(oid)
            elif int(oid) not in ctrl:
                absent.append(oid)
        if unknown:
            raise TrafficError("INVALID_ARGUMENT", f"objects {unknown[:8]} are not in scene {scene.scenario_id}")
        if absent:
            raise TrafficError("INVALID_ARGUMENT", f"objects {absent[:8]} are not present at the handover time "
                                                   "(this service drives the objects present at handover)")
        order = [o for o in ids if o != EGO]
        info = await asyncio.to_thread(self.store.create, scene, [sdc], Sampler().config(), int(req["seed"]), sid)
        ts = TrafficSession(sid, scene, t0, order, np.zeros(0, np.int64), sdc)
        ts.ego = {int(p[0]): p[1:].astype(np.float64) for p in ego}
        self._traffic()[sid] = ts
        body = await self.step_batch((sid, {}))  # interval 0: sampled at creation
        if isinstance(body, ServiceError):
            self._traffic().pop(sid, None)
            raise body
        z = np.asarray(body["z"], np.float32)[:, 0].astype(np.float64)
        ts.proposal = body_poses(body, z)
        served = [int(i) for i in body["object_ids"]]  # the engine's controlled agents, in its order
        ts.rows = np.asarray([served.index(int(o)) for o in order], np.int64)
        track = {int(t): i for i, t in enumerate(scene.track_ids)}
        st = scene.states[[track[i] for i in served], scene.current_time_index]
        ts.start_pose = np.stack([st[:, X], st[:, Y], z, st[:, HEADING]], -1)
        return {"replica": self.replica_id(), "objects": len(order), "policy_version": info["policy_version"]}

    async def traffic_simulate(self, sid: str, t_query: int, ego: np.ndarray | None) -> dict:
        """Advance to `t_query` (us) with the ego's poses [n, 5] (t_us x y z yaw); answer poses at t_query and later."""
        try:
            return await self._simulate(sid, t_query, ego)
        except TrafficError as e:
            return {"error": (e.code, e.message), "replica": self.replica_id()}

    def _session(self, sid: str) -> TrafficSession:
        ts = self._traffic().get(sid)
        if ts is None:
            closed = sid in self.store.closed
            raise TrafficError("NOT_FOUND", f"session {sid} was {self.store.closed[sid]}" if closed else
                               f"unknown session {sid} on replica {self.replica_id()} (a replica restart or scale "
                               "event loses its sessions: start a new one)")
        if sid not in self.store.sessions:  # expired in the store
            self._traffic().pop(sid, None)
            raise TrafficError("NOT_FOUND", f"session {sid} was {self.store.closed.get(sid, 'closed')}")
        return ts

    async def _simulate(self, sid: str, t_query: int, ego: np.ndarray | None) -> dict:
        ts = self._session(sid)
        if t_query <= ts.t0 or t_query < ts.last_query:
            raise TrafficError("INVALID_ARGUMENT", f"time_query_us {t_query} must be after the handover ({ts.t0}) "
                                                   f"and not before the last query ({ts.last_query})")
        track = dict(ts.ego)  # kept only if the call succeeds
        if ego is not None:
            if not np.isfinite(ego).all():
                raise TrafficError("INVALID_ARGUMENT", f"{EGO}: non-finite pose values")
            track.update({int(p[0]): p[1:].astype(np.float64) for p in ego})
        while ts.t0 + (ts.pending + 1) * INTERVAL_US <= t_query:
            start = ts.t0 + ts.pending * INTERVAL_US
            need = [ts.ego_at(start + STEP_US * j, track) for j in range(1, 6)]
            if any(p is None for p in need):
                last = max(track) if track else None
                raise TrafficError("FAILED_PRECONDITION", f"the {EGO} trajectory ends at {last} us; answering "
                                                          f"{t_query} us needs it up to {start + INTERVAL_US} us")
            arr = np.stack(need)
            states = {str(ts.sdc_id): {"x": arr[:, 0].tolist(), "y": arr[:, 1].tolist(), "heading": arr[:, 3].tolist()}}
            body = await self.step_batch((sid, states))
            if isinstance(body, ServiceError):
                raise _from_service(body)
            ts.start_pose = ts.proposal[:, -1]
            ts.proposal = body_poses(body, ts.start_pose[:, 2])
            ts.pending += 1
            ts.ego = track  # committed: the poses it used are the session's now
        ts.last_query, ts.ego = t_query, track
        times, poses = ts.knots()
        poses = poses[ts.rows]
        at = interpolate(times, poses, t_query)
        later = times > t_query
        return {"replica": self.replica_id(), "objects": ts.order,
                "times": [t_query] + times[later].tolist(),
                "poses": np.concatenate([at[:, None], poses[:, later]], 1)}

    async def traffic_close(self, sid: str) -> dict:
        try:
            self._session(sid)
            self._traffic().pop(sid)
            await asyncio.to_thread(self.store.delete, sid)
            self._tune_batch()
            return {"replica": self.replica_id()}
        except TrafficError as e:
            return {"error": (e.code, e.message), "replica": self.replica_id()}
        except ServiceError as e:
            return {"error": (_from_service(e).code, e.message), "replica": self.replica_id()}
