"""`RolloutPool`: N `RolloutWorker` actors that stream finished rollout groups, survive worker deaths, hung workers
and lost nodes, and never lose or duplicate a group.

Weights go out once per version: the state dict is checked against the policy's parameter shapes, packed into one
flat buffer per dtype, `ray.put` once, and the same ObjectRef goes to every worker (zero-copy views on the node).
Every `set_weights` call a worker gets is an acknowledgement the pool checks before it trusts that worker's next
result. One `generate` rolls out a single policy version (the one current when it started, even if `set_weights`
is called while it streams). A worker that dies mid-task is restarted by Ray (`max_restarts`), gets the weights
again, and its task goes back to the queue; a task that runs past `task_timeout_s` (a hung worker, or one whose
node is gone and whose restart cannot be placed) goes back to the queue and its worker is killed for a restart.
Rollouts are pure functions of (scene, rollout index, seed, policy version), so re-running a lost task gives the
very same group. Actors are named `drivetune-rollout-<pool>-<i>` (the dashboard's Actors view shows them by role).
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import ray
import torch
from ray.exceptions import ActorDiedError, RayActorError

from drivetune.checkpoint import check_state_dict
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
    """Worker count and resources (fractional GPUs allowed), restart budget per worker, scenes per task, how long
    a worker may stay down before it is given up, and how long one task may run before it is sent elsewhere."""

    num_workers: int = 2
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    max_restarts: int = 3
    scenes_per_task: int = 1
    restart_timeout_s: float = 120.0
    task_timeout_s: float | None = None  # None: wait for a task as long as its worker is alive

    def validate(self) -> "PoolConfig":
        if self.num_workers < 1 or self.scenes_per_task < 1 or self.max_restarts < 0:
            raise ValueError(f"bad pool config {self}: need num_workers >= 1, scenes_per_task >= 1, max_restarts >= 0")
        if self.num_cpus < 0 or self.num_gpus < 0:
            raise ValueError(f"bad pool config {self}: negative resources")
        if self.task_timeout_s is not None and self.task_timeout_s <= 0:
            raise ValueError(f"bad pool config {self}: task_timeout_s must be > 0 or None")
        return self


class RolloutPool:
    """A fixed set of rollout actors plus the driver-side bookkeeping that keeps every group exactly once.
    `worker_cls` is the actor class (a `RolloutWorker` subclass; tests use one that hangs)."""

    def __init__(self, spec: PolicySpec, cfg: PoolConfig | None = None,
                 worker_cls: type[RolloutWorker] = RolloutWorker) -> None:
        self.cfg = (cfg or PoolConfig()).validate()
        device = "cuda" if self.cfg.num_gpus > 0 else spec.device
        self._spec = dataclasses.replace(spec, device=device)
        with torch.device("meta"):  # parameter names and shapes only, no memory
            self._shapes = dataclasses.replace(self._spec, device="meta").build().state_dict()
        actor_cls = ray.remote(worker_cls)
        opts = dict(num_cpus=self.cfg.num_cpus, num_gpus=self.cfg.num_gpus, max_restarts=self.cfg.max_restarts,
                    max_task_retries=0)
        # Held for the pool's lifetime: a restarted actor re-reads its constructor argument from the object store.
        self._spec_ref = ray.put(self._spec)
        pool_id = uuid.uuid4().hex[:8]
        self.names = [f"drivetune-rollout-{pool_id}-{i}" for i in range(self.cfg.num_workers)]
        self.workers = [actor_cls.options(name=name, **opts).remote(self._spec_ref) for name in self.names]
        n = self.cfg.num_workers
        self.failures, self.alive = [0] * n, [True] * n
        self._held = [-1] * n  # the policy version last sent to each worker (-1: must be sent again)
        self._retry_at = [0.0] * n
        self._down_since: list[float | None] = [None] * n
        self._stale = [0] * n
        self._weights_ref: ray.ObjectRef | None = None
        self._acks: dict[int, ray.ObjectRef] = {}  # worker -> its latest set_weights call, not yet confirmed
        self.version = -1
        self.restarts_seen = 0
        self.timeouts = 0
        self._metrics = _PoolMetrics()

    def node_ids(self) -> list[str]:
        """The Ray node of every live worker."""
        return ray.get([w.node_id.remote() for w, ok in zip(self.workers, self.alive) if ok])

    # ------------------------------------------------------------------------------------------------ weights
    def set_weights(self, state: dict[str, np.ndarray], version: int, wait: bool = True) -> float:
        """Broadcast a numpy state dict as policy `version` to every live worker; returns the seconds it blocked.
        Weights that do not fit the policy raise CheckpointError (and TypeError for non-numpy entries) before
        anything is sent or the version changes.

        With `wait=False` it returns once the weights are in the object store and the calls are sent; workers apply
        them in order before any later task, and the acknowledgements are checked before their next result.
        """
        t0 = time.perf_counter()
        check_state_dict(self._shapes, state)
        packed = pack_state(state)
        self._weights_ref, self.version = ray.put(packed), int(version)
        for i, ok in enumerate(self.alive):
            if ok:
                self._send_weights(i, self._weights_ref, self.version)
        if wait:
            self._collect_acks()
        return time.perf_counter() - t0

    def _send_weights(self, i: int, ref: ray.ObjectRef, version: int) -> None:
        """Actor calls run in submission order: the weights land before any task sent after this."""
        self._acks[i] = self.workers[i].set_weights.remote(ref, version)
        self._held[i] = version

    def _confirm(self, i: int) -> None:
        """Check worker i's latest set_weights (already done: a later task of it has finished). RayActorError means
        the worker died; any other error (weights that do not load there) propagates."""
        ref = self._acks.pop(i, None)
        if ref is not None:
            ray.get(ref)

    def _collect_acks(self) -> None:
        """Wait for every outstanding broadcast; a worker that died meanwhile gets the weights again before its next
        task. Other errors propagate."""
        for i in list(self._acks):
            try:
                self._confirm(i)
            except RayActorError as err:
                self._on_worker_failure(i, err, died=isinstance(err, ActorDiedError))

    # ------------------------------------------------------------------------------------------------ rollouts
    def generate(
        self, scenes: Sequence[Scene], group_size: int, sampler: SamplerConfig, seed: int, **options: Any
    ) -> Iterator[RolloutBatch]:
        """Yield one `RolloutBatch` per scene as soon as its group is done (completion order, each exactly once),
        all from the policy version current when the call started."""
        sampler.validate()
        if self._weights_ref is None:
            raise RuntimeError("RolloutPool.generate before set_weights: no policy version to roll out")
        self._collect_acks()
        weights, version = self._weights_ref, self.version
        n = self.cfg.scenes_per_task
        tasks = {i: [ray.put(s) for s in scenes[lo : lo + n]] for i, lo in enumerate(range(0, len(scenes), n))}
        queue: deque[int] = deque(tasks)
        pending: dict[ray.ObjectRef, tuple[int, int, float]] = {}  # ref -> (task, worker, submitted at)
        while queue or pending:
            busy = {i for _, i, _ in pending.values()}
            now = time.monotonic()
            for i in range(len(self.workers)):
                if queue and self.alive[i] and i not in busy and now >= self._retry_at[i]:
                    if self._held[i] != version:
                        self._send_weights(i, weights, version)
                    task = queue.popleft()
                    ref = self.workers[i].generate.remote(tasks[task], group_size, sampler, seed, version, **options)
                    pending[ref] = (task, i, now)
            if not pending:
                if not any(self.alive):
                    raise RuntimeError(f"every rollout worker is dead; {len(queue)} of {len(tasks)} tasks not run")
                time.sleep(max(0.0, min(t for t, ok in zip(self._retry_at, self.alive) if ok) - time.monotonic()))
                continue
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=RETRY_SECONDS)
            if not ready:
                self._expire(pending, queue)
                continue
            task, i, _ = pending.pop(ready[0])
            try:
                self._confirm(i)
                batches = ray.get(ready[0])
            except StaleWeightsError as err:
                self._stale[i] += 1
                if self._stale[i] > MAX_STALE:  # the re-sent weights keep failing to load: not a restart
                    raise RuntimeError(f"rollout worker {i} cannot load policy version {version}") from err
                log.warning("worker %d came back without policy version %d; re-sending weights", i, version)
                self._held[i] = -1
                queue.appendleft(task)
                continue
            except RayActorError as err:
                self._on_worker_failure(i, err, died=isinstance(err, ActorDiedError))
                queue.appendleft(task)
                continue
            self._down_since[i], self._stale[i] = None, 0
            yield from batches  # each task is pending at most once at a time and leaves `pending` on success

    def _expire(self, pending: dict[ray.ObjectRef, tuple[int, int, float]], queue: deque[int]) -> None:
        """Tasks running past `task_timeout_s` go back to the front of the queue (their late results are never
        read), and their workers are killed so that Ray restarts them."""
        limit = self.cfg.task_timeout_s
        if limit is None:
            return
        now = time.monotonic()
        for ref, (task, i, started) in list(pending.items()):
            if now - started > limit:
                del pending[ref]
                queue.appendleft(task)
                self.timeouts += 1
                self._metrics.timeouts.inc()
                self._acks.pop(i, None)
                log.warning("rollout worker %d: task %d ran %.0f s > task_timeout_s; re-queued, worker restarted",
                            i, task, now - started)
                ray.kill(self.workers[i], no_restart=False)
                self._on_worker_failure(i, TimeoutError(f"task {task} ran past {limit} s"), died=True)

    def _on_worker_failure(self, i: int, err: BaseException, died: bool) -> None:
        """A task failed because its actor died, is restarting or hung: retry it later there with the weights
        re-sent, and give the worker up once it used its restarts or stays down past `restart_timeout_s`."""
        now = time.monotonic()
        if self._down_since[i] is None:
            self._down_since[i] = now
            self.restarts_seen += 1
            self._metrics.restarts.inc()
            log.warning("rollout worker %d failed (%s); waiting for Ray to restart it", i, type(err).__name__)
        if died:
            self.failures[i] += 1
        if self.failures[i] > self.cfg.max_restarts or now - self._down_since[i] > self.cfg.restart_timeout_s:
            log.error("giving up on rollout worker %d: %s", i, err)
            self.alive[i] = False
            ray.kill(self.workers[i], no_restart=True)
            return
        self._held[i] = -1
        self._retry_at[i] = now + RETRY_SECONDS

    def shutdown(self) -> None:
        for w in self.workers:
            ray.kill(w, no_restart=True)
        self.workers, self.alive = [], []


class _PoolMetrics:
    """Driver-side series: worker failures seen (restarts) and tasks re-queued after `task_timeout_s`."""

    def __init__(self) -> None:
        from ray.util.metrics import Counter

        self.restarts = Counter("drivetune_rollout_worker_restarts", description="rollout worker failures seen")
        self.timeouts = Counter("drivetune_rollout_task_timeouts", description="rollout tasks re-queued on timeout")
        # Published at 0 from the start (Prometheus' advice for counters): a counter first set by its first event
        # leaves the dashboard's restarts panel empty on a healthy run. `inc` refuses 0; the base class records it.
        for counter in (self.restarts, self.timeouts):
            counter._record(0.0)
