"""`RolloutPool`: N `RolloutWorker` actors that stream finished rollout groups, survive worker deaths and never lose
or duplicate a group.

Weights go out once per version: `ray.put` of the numpy state dict packed into one flat buffer per dtype, then the
same ObjectRef to every worker (zero-copy views on the node). A worker that dies mid-task is restarted by Ray
(`max_restarts`), gets the current weights again, and its task goes back to the queue; a worker that comes back
without them (restarted while idle) refuses to generate with stale weights, and is handled the same way. Rollouts
are pure functions of (scene, rollout index, seed, policy version), so re-running a lost task gives the very same
group.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import ray
from ray.exceptions import ActorDiedError, RayActorError

from drivetune.samplers import SamplerConfig
from drivetune.scene import Scene
from rollout_workers.batch import RolloutBatch
from rollout_workers.weights import pack_state
from rollout_workers.worker import PolicySpec, RolloutWorker, StaleWeightsError

log = logging.getLogger(__name__)
RETRY_SECONDS = 0.5
MAX_STALE = 3  # consecutive "no weights" answers from one worker before the pool gives up


@dataclass
class PoolConfig:
    """Worker count and resources (fractional GPUs allowed), restart budget per worker, scenes per task."""

    num_workers: int = 2
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    max_restarts: int = 3
    scenes_per_task: int = 1
    restart_timeout_s: float = 120.0

    def validate(self) -> "PoolConfig":
        if self.num_workers < 1 or self.scenes_per_task < 1 or self.max_restarts < 0:
            raise ValueError(f"bad pool config {self}: need num_workers >= 1, scenes_per_task >= 1, max_restarts >= 0")
        if self.num_cpus < 0 or self.num_gpus < 0:
            raise ValueError(f"bad pool config {self}: negative resources")
        return self


class RolloutPool:
    """A fixed set of rollout actors plus the driver-side bookkeeping that keeps every group exactly once."""

    def __init__(self, spec: PolicySpec, cfg: PoolConfig | None = None) -> None:
        self.cfg = (cfg or PoolConfig()).validate()
        device = "cuda" if self.cfg.num_gpus > 0 else spec.device
        self._spec = dataclasses.replace(spec, device=device)
        self._actor_cls = ray.remote(RolloutWorker).options(
            num_cpus=self.cfg.num_cpus, num_gpus=self.cfg.num_gpus, max_restarts=self.cfg.max_restarts,
            max_task_retries=0,
        )
        # Held for the pool's lifetime: a restarted actor re-reads its constructor argument from the object store.
        self._spec_ref = ray.put(self._spec)
        self.workers = [self._actor_cls.remote(self._spec_ref) for _ in range(self.cfg.num_workers)]
        n = self.cfg.num_workers
        self.failures, self.alive = [0] * n, [True] * n
        self._needs_weights, self._retry_at = [False] * n, [0.0] * n
        self._down_since: list[float | None] = [None] * n
        self._stale = [0] * n
        self._weights_ref: ray.ObjectRef | None = None
        self._acks: dict[int, ray.ObjectRef] = {}
        self.version = -1
        self.restarts_seen = 0

    # ------------------------------------------------------------------------------------------------ weights
    def set_weights(self, state: dict[str, np.ndarray], version: int, wait: bool = True) -> float:
        """Broadcast a numpy state dict as policy `version` to every live worker; returns the seconds it blocked.

        With `wait=False` it returns once the weights are in the object store and the calls are sent; workers apply
        them in order before any later task, and the acknowledgements are collected at the next `generate`.
        """
        t0 = time.perf_counter()
        self._weights_ref = ray.put(pack_state(state))
        self.version = int(version)
        self._acks = {i: w.set_weights.remote(self._weights_ref, self.version)
                      for i, (w, ok) in enumerate(zip(self.workers, self.alive)) if ok}
        if wait:
            self._collect_acks()
        return time.perf_counter() - t0

    def _collect_acks(self) -> None:
        """Wait for the last broadcast; a worker that died meanwhile gets the weights again before its next task.
        Other errors (weights that do not fit the policy) propagate."""
        acks, self._acks = self._acks, {}
        for i, ref in acks.items():
            try:
                ray.get(ref)
                self._needs_weights[i] = False
            except RayActorError as err:
                self._on_worker_failure(i, err)

    # ------------------------------------------------------------------------------------------------ rollouts
    def generate(
        self, scenes: Sequence[Scene], group_size: int, sampler: SamplerConfig, seed: int, **options: Any
    ) -> Iterator[RolloutBatch]:
        """Yield one `RolloutBatch` per scene as soon as its group is done (completion order, each exactly once)."""
        sampler.validate()
        if self._weights_ref is None:
            raise RuntimeError("RolloutPool.generate before set_weights: no policy version to roll out")
        self._collect_acks()
        n = self.cfg.scenes_per_task
        tasks = {i: [ray.put(s) for s in scenes[lo : lo + n]] for i, lo in enumerate(range(0, len(scenes), n))}
        queue: deque[int] = deque(tasks)
        pending: dict[ray.ObjectRef, tuple[int, int]] = {}
        while queue or pending:
            busy = {i for _, i in pending.values()}
            now = time.monotonic()
            for i in range(len(self.workers)):
                if queue and self.alive[i] and i not in busy and now >= self._retry_at[i]:
                    if self._needs_weights[i]:  # actor tasks run in submission order: weights land first
                        self.workers[i].set_weights.remote(self._weights_ref, self.version)
                        self._needs_weights[i] = False
                    task = queue.popleft()
                    ref = self.workers[i].generate.remote(tasks[task], group_size, sampler, seed, self.version,
                                                          **options)
                    pending[ref] = (task, i)
            if not pending:
                if not any(self.alive):
                    raise RuntimeError(f"every rollout worker is dead; {len(queue)} of {len(tasks)} tasks not run")
                time.sleep(max(0.0, min(t for t, ok in zip(self._retry_at, self.alive) if ok) - time.monotonic()))
                continue
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=RETRY_SECONDS)
            if not ready:
                continue
            task, i = pending.pop(ready[0])
            try:
                batches = ray.get(ready[0])
            except StaleWeightsError as err:
                self._stale[i] += 1
                if self._stale[i] > MAX_STALE:  # the re-sent weights keep failing to load: not a restart
                    raise RuntimeError(f"rollout worker {i} cannot load policy version {self.version}") from err
                log.warning("worker %d came back without policy version %d; re-sending weights", i, self.version)
                self._needs_weights[i] = True
                queue.appendleft(task)
                continue
            except RayActorError as err:
                self._on_worker_failure(i, err)
                queue.appendleft(task)
                continue
            self._down_since[i], self._stale[i] = None, 0
            yield from batches  # each task is pending at most once at a time and leaves `pending` on success

    def _on_worker_failure(self, i: int, err: RayActorError) -> None:
        """A task failed because its actor died or is restarting: retry it later there with the weights re-sent,
        and give the worker up once Ray reports it dead for good or it stays down past `restart_timeout_s`."""
        now = time.monotonic()
        if self._down_since[i] is None:
            self._down_since[i] = now
            self.restarts_seen += 1
            log.warning("rollout worker %d failed (%s); waiting for Ray to restart it", i, type(err).__name__)
        if isinstance(err, ActorDiedError):
            self.failures[i] += 1
        if self.failures[i] > self.cfg.max_restarts or now - self._down_since[i] > self.cfg.restart_timeout_s:
            log.error("giving up on rollout worker %d: %s", i, err)
            self.alive[i] = False
            ray.kill(self.workers[i], no_restart=True)
            return
        self._needs_weights[i] = True
        self._retry_at[i] = now + RETRY_SECONDS

    def shutdown(self) -> None:
        for w in self.workers:
            ray.kill(w, no_restart=True)
        self.workers, self.alive = [], []
