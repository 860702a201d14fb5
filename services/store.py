"""A replica's sessions: models by policy version, session lifetime (TTL, max_sessions), input checks and the
batched step. Plain Python (no Ray): `services.app` wraps it in HTTP; errors are `ServiceError`s with a status."""

from __future__ import annotations

import ctypes
import ctypes.util
import itertools
import math
import re
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from drivetune.checkpoint import load_checkpoint, resolve_checkpoint
from drivetune.closed_loop import simulate
from drivetune.engine import Engine, Session, SessionSpec
from drivetune.realism.batch import Rollouts
from drivetune.samplers import SamplerConfig, rollout_seed
from drivetune.scene import Scene
from drivetune.tokenizer import TOKEN_STEPS
from services.serve_config import ServeConfig

SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
STEP_SECONDS = 0.5
TOMBSTONES = 4096  # ids of closed / expired sessions remembered for a clear 404
TRIM_EVERY_S = 5.0  # at most this often the heap freed by closed sessions goes back to the OS
_LIBC = ctypes.CDLL(ctypes.util.find_library("c"))


def release_free_heap() -> None:
    """Return the allocator's free pages to the OS (glibc `malloc_trim`; nothing elsewhere): without it a replica's
    RSS keeps the peak of its step threads' arenas, and a closed session's memory never shows as released."""
    trim = getattr(_LIBC, "malloc_trim", None)
    if trim is not None:
        trim(0)


class ServiceError(Exception):
    """A request the service refuses: HTTP `status` and a message naming the problem."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.retry_after = status, message, retry_after


def invalid(message: str) -> ServiceError:
    return ServiceError(422, message)


@dataclass
class Policy:
    """One loaded checkpoint: its engine (sessions of this version live there) and description."""

    engine: Engine
    checkpoint: str
    version: int
    info: dict


@dataclass
class LiveSession:
    id: str
    session: Session
    policy: Policy
    proposal: torch.Tensor  # [1, A, 5, 3] the sampled next interval, returned by the next step
    seed: int = 0
    seq: int = 0  # creation order: a batch lists its sessions in this order, so a steady set reuses its batch
    served: int = 0  # step responses given (the next one's token_index)
    created: float = field(default_factory=time.monotonic)
    last_used: float = field(default_factory=time.monotonic)

    def describe(self) -> dict:
        s = self.session
        return {"session_id": self.id, "scenario_id": s.scene.scenario_id, "object_ids": s.object_ids.tolist(),
                "external_ids": s.object_ids[s.external].tolist(), "steps": self.served,
                "policy_version": self.policy.version, "sampler": s.sampler.to_dict(), "seed": self.seed}


def load_policy(checkpoint: str, version: int | None, device: str) -> Policy:
    path = resolve_checkpoint(checkpoint)
    model, meta = load_checkpoint(path, device)
    version = int(meta.get("step", 0)) if version is None else int(version)
    info = {"checkpoint": str(path), "policy_version": version, "vocab_hash": model.vocab_hash,
            "num_parameters": model.num_parameters(), "model_size": model.cfg.size, "step": meta.get("step")}
    return Policy(Engine(model, model.vocab.to_torch(device), version), str(path), version, info)


class SessionStore:
    """Sessions of one replica. Every method holds one lock: steps, creations and swaps never interleave."""

    def __init__(self, cfg: ServeConfig) -> None:
        self.cfg = cfg.validate()
        self.lock = threading.Lock()
        self.policy: Policy | None = None
        self.sessions: dict[str, LiveSession] = {}
        self.closed: OrderedDict[str, str] = OrderedDict()  # id -> why (closed / expired)
        self._scenes: OrderedDict[str, Scene] = OrderedDict()
        self._seq = itertools.count()
        self._freed, self._trimmed_at = False, 0.0  # a session closed since the last heap release; when that was

    # ------------------------------------------------------------------------------------------ policies
    def set_policy(self, checkpoint: str, version: int | None) -> Policy:
        """Load a checkpoint for new sessions (open sessions keep theirs)."""
        policy = load_policy(checkpoint, version, self.cfg.device)
        with self.lock:
            self.policy = policy
        return policy

    def current(self) -> Policy:
        if self.policy is None:
            raise ServiceError(503, "no model loaded yet")
        return self.policy

    def model_info(self) -> dict:
        with self.lock:
            versions: dict[int, int] = {}
            for live in self.sessions.values():
                versions[live.policy.version] = versions.get(live.policy.version, 0) + 1
            engines = {id(p.engine): p.engine for p in [self.current(), *(s.policy for s in self.sessions.values())]}
            return {**self.current().info, "open_sessions_by_version": versions,
                    "engine_maps_held": sum(e.maps_held() for e in engines.values())}

    # ------------------------------------------------------------------------------------------ lifetime
    def expire(self, now: float | None = None) -> int:
        """Close sessions idle longer than the TTL (and, at most every TRIM_EVERY_S, give the heap closed sessions
        freed back to the OS); returns how many."""
        now = time.monotonic() if now is None else now
        old = [k for k, v in self.sessions.items() if now - v.last_used > self.cfg.session_ttl_s]
        for k in old:
            self._close(k, "expired (idle longer than the TTL)")
        if self._freed and now - self._trimmed_at >= TRIM_EVERY_S:
            release_free_heap()
            self._freed, self._trimmed_at = False, now
        return len(old)

    def _close(self, session_id: str, why: str) -> None:
        live = self.sessions.pop(session_id)
        live.policy.engine.close(live.session)
        self._freed = True
        self.closed[session_id] = why
        while len(self.closed) > TOMBSTONES:
            self.closed.popitem(last=False)

    def _live(self, session_id: str) -> LiveSession:
        live = self.sessions.get(session_id)
        if live is not None:
            return live
        if session_id in self.closed:
            raise ServiceError(404, f"session {session_id} was {self.closed[session_id]}")
        if self.cfg.replicas > 1:
            raise ServiceError(409, f"session {session_id} is not held by this replica: send its id in the "
                                    "x-session-id header on every call (also on create), or start a new session "
                                    "(a replica restart or scale event loses its sessions)")
        raise ServiceError(404, f"unknown session {session_id}")

    def touch(self, session_id: str) -> None:
        """A call for the session arrived: it is not idle while the call waits for its batch (lock-free: it runs on
        the event loop; a session already past its TTL is left to expire)."""
        live = self.sessions.get(session_id)
        now = time.monotonic()
        if live is not None and now - live.last_used <= self.cfg.session_ttl_s:
            live.last_used = now

    def count(self) -> int:
        return len(self.sessions)

    def active(self, window_s: float) -> int:
        """Sessions that answered a call within the last `window_s` seconds (the ones a batch should wait for)."""
        now = time.monotonic()
        return sum(now - v.last_used < window_s for v in list(self.sessions.values()))

    # ------------------------------------------------------------------------------------------ sessions
    def scene_by_id(self, scenario_id: str) -> Scene:
        if not self.cfg.scenario_store:
            raise invalid("scenario_id needs a scenario store (none is configured): send `scenario` instead")
        if scenario_id not in self._scenes:
            from drivetune.sources import load_scene

            try:
                scene = load_scene(Path(self.cfg.scenario_store), scenario_id)
            except (KeyError, ValueError, LookupError) as e:
                raise invalid(f"scenario_id {scenario_id!r} not found in the scenario store ({e})") from None
            self._scenes[scenario_id] = scene
            while len(self._scenes) > 16:
                self._scenes.popitem(last=False)
        return self._scenes[scenario_id]

    def create(self, scene: Scene, external_ids: list[int] | None, sampler: SamplerConfig, seed: int,
               session_id: str | None) -> dict:
        """Start a session (201 body). `external_ids` None = the SDC."""
        if session_id is not None and not SESSION_ID.match(session_id):
            raise invalid("session id (x-session-id header) must be 8-64 characters of A-Z a-z 0-9 _ -")
        try:
            sampler.validate()
        except ValueError as e:
            raise invalid(str(e)) from None
        ext = [int(scene.sdc_id)] if external_ids is None else [int(i) for i in external_ids]
        if len(set(ext)) != len(ext):
            raise invalid(f"external_ids has duplicates: {ext}")
        with self.lock:
            self.expire()
            policy = self.current()
            sid = session_id or uuid.uuid4().hex
            if sid in self.sessions:
                raise ServiceError(409, f"session id {sid} is already in use")
            if len(self.sessions) >= self.cfg.max_sessions:
                oldest = min(v.last_used for v in self.sessions.values())
                wait = max(1, math.ceil(oldest + self.cfg.session_ttl_s - time.monotonic()))
                raise ServiceError(429, f"this replica holds {len(self.sessions)} sessions (max_sessions); close one "
                                        f"or retry later", retry_after=wait)
            spec = SessionSpec(scene, [rollout_seed(scene.scenario_id, 0, seed, policy.version)], sampler, ext)
            try:
                (session,) = policy.engine.start([spec])
            except ValueError as e:
                raise invalid(str(e)) from None
            proposal = policy.engine.act([session])[0]
            self.sessions[sid] = live = LiveSession(sid, session, policy, proposal, seed=seed, seq=next(self._seq))
            self.closed.pop(sid, None)
            cur = scene.current_time_index
            return {**live.describe(), "step_seconds": STEP_SECONDS, "steps_per_token": TOKEN_STEPS,
                    "current_time_index": cur}

    def get(self, session_id: str) -> dict:
        with self.lock:
            self.expire()
            return self._live(session_id).describe()

    def delete(self, session_id: str) -> None:
        with self.lock:
            self._live(session_id)
            self._close(session_id, "closed")

    # ------------------------------------------------------------------------------------------- steps
    def _external_input(self, live: LiveSession, states: dict[str, dict[str, list[float]]]):
        """Check one step's external states against the session; returns (poses [1, A, 5, 3], valid [1, A])."""
        s = live.session
        first = live.served == 0
        ext_ids = set(s.object_ids[s.external].tolist())
        try:
            given = {int(k): v for k, v in states.items()}
        except ValueError:
            raise invalid(f"external_states keys must be integer object ids, got {sorted(states)[:5]}") from None
        unknown = sorted(set(given) - ext_ids)
        if unknown:
            driven = [i for i in unknown if i in set(s.object_ids.tolist())]
            raise invalid(f"external_states: object ids {unknown} are not external agents of this session"
                          + (f" ({driven} are driven by the service)" if driven else ""))
        missing = sorted(ext_ids - set(given))
        if missing and not first:
            raise invalid(f"external_states: missing the poses of external agents {missing}")
        poses = np.zeros((1, s.num_agents, TOKEN_STEPS, 3))
        for oid, st in given.items():
            lens = {k: len(st[k]) for k in ("x", "y", "heading")}
            want = (1, TOKEN_STEPS) if first else (TOKEN_STEPS,)
            if any(n not in want for n in lens.values()) or len(set(lens.values())) != 1:
                raise invalid(f"external_states[{oid}]: x, y, heading need {' or '.join(map(str, want))} poses "
                              f"each (the last 0.5 s at 10 Hz), got {lens}")
            arr = np.stack([st["x"], st["y"], st["heading"]], -1).astype(np.float64)
            if not np.isfinite(arr).all():
                raise invalid(f"external_states[{oid}]: non-finite values")
            if not first:
                poses[0, int(np.flatnonzero(s.object_ids == oid)[0])] = arr
        return None if first else (torch.as_tensor(poses), torch.as_tensor(s.external[None].copy()))

    def step_many(self, items: list[tuple[str, dict]]) -> list[dict | ServiceError]:
        """One batched step of several sessions: per item (session id, external states) the response body, or the
        error of that item alone. Sessions of one policy version share one forward."""
        out: list[dict | ServiceError | None] = [None] * len(items)
        with self.lock:
            self.expire()
            groups: dict[int, list[tuple[int, LiveSession, tuple | None]]] = {}
            seen: set[str] = set()
            for i, (sid, states) in enumerate(items):
                try:
                    if sid in seen:
                        raise ServiceError(409, f"session {sid}: another step of it is in the same batch")
                    live = self._live(sid)
                    if live.served >= self.cfg.max_steps:
                        raise ServiceError(409, f"session {sid} reached its step limit ({self.cfg.max_steps})")
                    ext = self._external_input(live, states)
                    seen.add(sid)
                    groups.setdefault(id(live.policy), []).append((i, live, ext))
                except ServiceError as e:
                    out[i] = e
            for group in groups.values():
                advance = sorted((g for g in group if g[2] is not None), key=lambda g: g[1].seq)  # first steps
                # return the creation's sample; a steady set of sessions in a steady order reuses its batch
                if advance:
                    engine = advance[0][1].policy.engine
                    new = engine.advance([g[1].session for g in advance], [g[2] for g in advance])
                    for (_, live, _), proposal in zip(advance, new):
                        live.proposal = proposal
                for i, live, ext in group:
                    out[i] = {**self._step_body(live), "batch_size": len(advance) if ext is not None else 0}
        return out  # type: ignore[return-value]

    def _step_body(self, live: LiveSession) -> dict:
        s = live.session
        live.last_used, live.served = time.monotonic(), live.served + 1
        ctrl = ~s.external
        p = live.proposal[0, torch.as_tensor(ctrl)].cpu().numpy().astype(np.float32)  # [P, 5, 3]
        z = np.repeat(s.z[ctrl][:, None], TOKEN_STEPS, 1)
        return {"session_id": live.id, "token_index": live.served - 1, "policy_version": live.policy.version,
                "object_ids": s.object_ids[ctrl].tolist(), "x": p[..., 0].tolist(), "y": p[..., 1].tolist(),
                "z": z.tolist(), "heading": p[..., 2].tolist()}

    # ----------------------------------------------------------------------------------------- rollouts
    def rollouts(self, scene: Scene, num_rollouts: int, sampler: SamplerConfig, seed: int, sdc: str
                 ) -> tuple[Rollouts, int]:
        """R whole 8 s rollouts of a scene with the current policy: (Rollouts, policy version)."""
        if not 1 <= num_rollouts <= self.cfg.max_rollouts:
            raise invalid(f"num_rollouts must be in [1, {self.cfg.max_rollouts}], got {num_rollouts}")
        with self.lock:
            policy = self.current()
            engine = policy.engine
            try:
                (out,) = simulate(engine.model, engine.vocab, [scene], num_rollouts, sampler, base_seed=seed,
                                  policy_version=policy.version, sdc=sdc)
            except ValueError as e:
                raise invalid(str(e)) from None
        return out.realism_rollouts(), policy.version

