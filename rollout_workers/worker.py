"""`RolloutWorker`: a policy copy that turns scenes into `RolloutBatch`es (wrapped as a Ray actor by `RolloutPool`).

Weights arrive as data (a `PackedState` or a dict of numpy arrays, usually resolved zero-copy from the object store)
tagged with a policy version; `generate` refuses to run with a version other than the one the caller expects, so a
worker restarted behind the pool's back never produces rollouts from stale weights.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from drivetune.checkpoint import check_state_dict, read_model_spec, resolve_checkpoint
from drivetune.closed_loop import SceneRollouts, simulate
from drivetune.config import from_dict, to_dict
from drivetune.model import BehaviorModel, ModelConfig
from drivetune.ray_runtime import current_node_id
from drivetune.samplers import SamplerConfig
from drivetune.scene import Scene
from drivetune.tokenizer import MotionVocab
from drivetune.tokenizer.layout import type_index
from rollout_workers.batch import RolloutBatch
from rollout_workers.rewards import group_rewards
from rollout_workers.weights import PackedState


class StaleWeightsError(RuntimeError):
    """The worker does not hold the policy version the caller asked for (e.g. it was restarted)."""


@dataclass
class PolicySpec:
    """Everything a worker needs to build its policy copy (the weights come separately, by `set_weights`)."""

    model_config: dict
    vocab: MotionVocab
    device: str = "cpu"
    rewards: bool = True  # compute drivetune.realism reward components per rollout and per group
    reward_agents: str = "evaluated"  # "evaluated" (official scored agents) or "all" (every sim agent)
    metric_config: str = "2025"

    @classmethod
    def from_model(cls, model: BehaviorModel, **kwargs: Any) -> "PolicySpec":
        return cls(model_config=to_dict(model.cfg), vocab=model.vocab, **kwargs)

    @classmethod
    def from_checkpoint(cls, directory: str | os.PathLike, **kwargs: Any) -> "PolicySpec":
        _, vocab, meta = read_model_spec(resolve_checkpoint(directory))  # a run directory: its latest checkpoint
        return cls(model_config=meta["model_config"], vocab=vocab, **kwargs)

    def build(self) -> BehaviorModel:
        cfg = from_dict(ModelConfig, dict(self.model_config), where="PolicySpec.model_config")
        return BehaviorModel(cfg, self.vocab).to(self.device).eval()


class RolloutWorker:
    """Holds one policy copy on its device; `generate` rolls groups of closed-loop rollouts."""

    def __init__(self, spec: PolicySpec) -> None:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        self.spec = spec
        self.model = spec.build()
        self.vocab = spec.vocab.to_torch(spec.device)
        self.version = -1  # no weights yet
        self._metrics = _WorkerMetrics.create()

    def set_weights(self, state: dict[str, np.ndarray] | PackedState, version: int) -> int:
        """Load a numpy state dict or a `PackedState` (read-only object-store views are fine) as policy `version`.
        On CPU the worker keeps views of the arrays (zero-copy): do not modify them afterwards. Weights that do not
        fit raise CheckpointError and leave the previous version in place; a load that fails half-way (e.g. out of
        device memory) leaves the worker without a version, so it refuses to generate."""
        arrays = state.arrays() if isinstance(state, PackedState) else state
        check_state_dict(self.model.state_dict(), arrays)
        self.version = -1
        _load_views(self.model, arrays)
        self.version = int(version)
        return self.version

    def get_version(self) -> int:
        return self.version

    def node_id(self) -> str:
        """The Ray node this worker actor runs on."""
        return current_node_id()

    def generate(
        self,
        scenes: Sequence[Any],
        group_size: int,
        sampler: SamplerConfig,
        seed: int,
        expected_version: int | None = None,
        **options: Any,
    ) -> list[RolloutBatch]:
        """One `RolloutBatch` per scene (scenes may be ObjectRefs). `options` go to `closed_loop.simulate`."""
        if expected_version is not None and expected_version != self.version:
            raise StaleWeightsError(f"worker {os.getpid()} holds policy version {self.version}, asked for "
                                    f"{expected_version}")
        if self.version < 0:
            raise StaleWeightsError(f"worker {os.getpid()} has no weights yet (call set_weights first)")
        t0 = time.perf_counter()
        resolved = [_resolve(s) for s in scenes]
        t_sim = time.perf_counter()
        outs = simulate(self.model, self.vocab, resolved, group_size, sampler, base_seed=seed,
                        policy_version=self.version, **options)
        share = (time.perf_counter() - t_sim) / len(resolved)
        sdc = options.get("sdc", "policy")
        batches = [self._batch(scene, out, sampler, seed, sdc, share) for scene, out in zip(resolved, outs)]
        if self._metrics is not None:
            self._metrics.task_done(len(batches), time.perf_counter() - t0)
        return batches

    def _batch(self, scene: Scene, out: SceneRollouts, sampler: SamplerConfig, seed: int, sdc: str,
               rollout_seconds: float) -> RolloutBatch:
        per_rollout, per_group = ({}, {})
        t0 = time.perf_counter()
        if self.spec.rewards:
            per_rollout, per_group = group_rewards(scene, out, self.spec.reward_agents, self.spec.metric_config,
                                                   self.spec.device)
        seconds = {"rollout": rollout_seconds, "reward": time.perf_counter() - t0}
        return RolloutBatch(
            scenario_id=out.scenario_id, object_ids=out.object_ids, track_index=out.track_index,
            agent_type=type_index(scene.track_types[out.track_index]).astype(np.int64), sdc=sdc,
            policy_version=self.version, base_seed=int(seed),
            rollout_indices=out.rollout_indices, seeds=out.seeds, sampler=sampler.to_dict(), tokens=out.tokens,
            logp=out.logp, sampler_logp=out.sampler_logp, token_mask=out.token_mask,
            boundary_poses=out.boundary_poses, x=out.x, y=out.y, z=out.z, heading=out.heading,
            rewards=per_rollout, group_rewards=per_group, topk=out.topk, sft_target=out.sft_target,
            seconds=seconds,
        )


class _WorkerMetrics:
    """The worker's own Prometheus series (`ray_drivetune_rollout_*`), tagged with its actor name: groups
    generated, busy seconds (rate = utilisation) and the duration of the last task."""

    def __init__(self, worker: str) -> None:
        from ray.util.metrics import Counter, Gauge

        keys = ("worker",)
        self.tags = {"worker": worker}
        self.groups = Counter("drivetune_rollout_groups", description="rollout groups generated", tag_keys=keys)
        self.busy = Counter("drivetune_rollout_seconds", description="seconds spent generating", tag_keys=keys)
        self.task = Gauge("drivetune_rollout_task_seconds", description="duration of the last rollout task",
                          tag_keys=keys)

    @classmethod
    def create(cls) -> "_WorkerMetrics | None":
        """Metrics when running as a Ray actor, None in a plain process (tests, in-process use)."""
        import ray

        if not ray.is_initialized():
            return None
        ctx = ray.get_runtime_context()
        if ctx.get_actor_id() is None:  # a driver, not an actor
            return None
        return cls(ctx.get_actor_name() or ctx.get_actor_id()[:12])

    def task_done(self, groups: int, seconds: float) -> None:
        self.groups.inc(groups, tags=self.tags)
        self.busy.inc(seconds, tags=self.tags)
        self.task.set(seconds, tags=self.tags)


def _load_views(model: torch.nn.Module, arrays: dict[str, np.ndarray]) -> None:
    """Point the model's parameters and buffers at the given arrays. On CPU this is zero-copy: the read-only
    object-store views become the tensors' storage (a rollout worker only reads its weights; every worker of the
    node shares one copy). On other devices each array is copied once. The caller checks the fit first."""
    state = model.state_dict(keep_vars=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        for k, v in state.items():
            src = torch.as_tensor(arrays[k])
            if v.device.type == "cpu" and src.dtype == v.dtype:
                v.data = src
            else:
                v.data.copy_(src)


def _resolve(obj: Any) -> Scene:
    import ray

    return ray.get(obj) if isinstance(obj, ray.ObjectRef) else obj
