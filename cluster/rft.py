"""`drivetune train rft`: RL post-training (MPO / GRPO / GRBO) of a pretrained behaviour model on Ray.

A single controller (this driver) runs the loop; rollout workers (`rollout_workers.RolloutPool`) generate groups of
closed-loop rollouts with their realism rewards, a learner actor (`trainer.learner.Learner`) holds the policy, the
frozen reference and the optimizer. One iteration:

    scenes  = sample(train split, scenes_per_iter, seed, iteration)
    weights = learner.weights()              -> pool.set_weights(weights, version)       (one ray.put)
    batches = pool.generate(scenes, G, ...)  (streamed, each group exactly once)
    metrics = learner.update(batches, scenes) (rewards, advantages, re-scoring, E epochs of minibatches)

With `max_staleness: 1` the rollouts of iteration i+1 are generated (with version v_i) while the learner updates on
iteration i (one-step-off); the learner's ratio uses the behaviour log-probs the groups carry. The run directory holds
`checkpoints/step_<iteration>` (weights, lineage meta, optimizer state), `metrics.jsonl` and `config.json`; a rerun
with the same `run_dir` resumes at the next iteration with the next policy versions.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from drivetune.config import ConfigError, to_dict
from drivetune.rollout_config import SDC_MODES_OFFLINE as SDC_MODES
from drivetune.samplers import SamplerConfig
from rollout_workers import PolicySpec, PoolConfig, RolloutPool, RolloutWorker
from trainer.algorithms import AlgoConfig
from trainer.learner import Learner, LearnerConfig
from trainer.rewards import RewardConfig

log = logging.getLogger("drivetune.rft")


@dataclass
class RFTData:
    shards: str = ""  # shard directory (drivetune ingest / synth output)
    fraction: float = 1.0  # share of the training split to sample from (0.1 = "10 % of the data")
    eval_fraction: float = 0.1  # held-out share by scenario-id hash (the same split as pretraining)


@dataclass
class RFTConfig:
    init: str = ""  # checkpoint or run directory to start from (its latest checkpoint); the frozen reference
    run_dir: str = "runs/rft"
    stage: str = "rft"  # recorded in checkpoint meta (lineage)
    max_iters: int = 10
    max_minutes: float = 0.0  # wall-clock budget of this call (0: none); stops after the iteration that crosses it
    scenes_per_iter: int = 4
    group_size: int = 8  # G rollouts per scene
    sdc: str = "policy"  # policy | log
    scored: str = "evaluated"  # agents the rewards score: evaluated (official SDC + tracks_to_predict) | all sim agents
    seed: int = 0
    max_staleness: int = 0  # 0 synchronous on-policy; 1 overlaps the next rollouts with the current update
    checkpoint_every: int = 5
    keep_checkpoints: int = 3
    eval_every: int = 0  # 0: no periodic evaluation
    eval_scenes: int = 8
    eval_rollouts: int = 8
    resume: bool = True
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    sampler: SamplerConfig = field(default_factory=lambda: SamplerConfig(kind="topk", k=32))
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)
    data: RFTData = field(default_factory=RFTData)

    def validate(self) -> "RFTConfig":
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(f"rft config: {msg}")

        need(bool(self.init), "init (a checkpoint or run directory to start from) is required")
        need(bool(self.data.shards) and Path(self.data.shards).is_dir(), f"data.shards {self.data.shards!r} is not a "
             "directory")
        need(self.max_iters >= 1 and self.scenes_per_iter >= 1, "max_iters and scenes_per_iter must be >= 1")
        need(self.max_minutes >= 0, f"max_minutes must be >= 0, got {self.max_minutes}")
        if self.algo.name == "sft":
            need(self.group_size == 1, f"closed-loop SFT rolls each scene once: CAT-K is deterministic, so more "
                 f"rollouts of a scene would repeat the first (group_size must be 1, got {self.group_size})")
        else:
            need(self.group_size >= 2, f"group_size must be >= 2 (group advantages need >= 2 rollouts), got "
                 f"{self.group_size}")
        need(self.sdc in SDC_MODES, f"sdc must be one of {SDC_MODES}, got {self.sdc!r}")
        need(self.scored in ("evaluated", "all"), f"scored must be 'evaluated' or 'all', got {self.scored!r}")
        need(self.max_staleness in (0, 1), f"max_staleness must be 0 or 1, got {self.max_staleness}")
        need(self.checkpoint_every >= 1 and self.keep_checkpoints >= 1, "checkpoint_every, keep_checkpoints >= 1")
        need(self.eval_every >= 0 and self.eval_scenes >= 1 and self.eval_rollouts >= 2, "bad eval settings")
        need(0.0 < self.data.fraction <= 1.0, f"data.fraction must be in (0, 1], got {self.data.fraction}")
        need(0.0 <= self.data.eval_fraction < 1.0, f"data.eval_fraction must be in [0, 1), got {self.data.eval_fraction}")
        need(self.algo.distribution == "full" or self.sampler.kind == "topk", "algo.distribution 'sampler' trains "
             f"on top-K's own candidate distribution: it needs sampler.kind topk, got {self.sampler.kind!r}")
        need(self.algo.name != "sft" or self.sampler.kind == "catk", "closed-loop SFT (algo.name: sft) needs the "
             f"catk sampler (its targets), got sampler.kind {self.sampler.kind!r}")
        try:
            self.algo.validate(), self.learner.validate(), self.pool.validate(), self.sampler.validate()
            if self.algo.name != "sft":
                self.reward.validate()
        except ValueError as exc:
            raise ConfigError(f"rft config: {exc}") from exc
        return self


class SceneSampler:
    """Training and held-out scenes of a shard store (`drivetune.scene_sampling`: the held-out split by scenario-id
    hash is pretraining's; `fraction` keeps a stable subset of the training split); iteration i draws its scenes
    with seed (seed, i)."""

    def __init__(self, shards: str, fraction: float, eval_fraction: float) -> None:
        from drivetune.scene_sampling import split_ids, split_predicate
        from drivetune.shards import ShardStore

        self.store, self.fraction, self.eval_fraction = ShardStore(shards), fraction, eval_fraction
        ids = sorted(self.store.scenario_ids())
        keep = split_predicate("train", eval_fraction, fraction)
        self.num_train = sum(1 for i in ids if keep(i))
        if not self.num_train:
            raise ConfigError(f"{shards}: no training scenes (of {len(ids)}) at eval_fraction {eval_fraction}, "
                              f"fraction {fraction}")
        self.held_out = split_ids(ids, eval_fraction)[1]
        if not self.held_out:
            log.warning("%s: no held-out scenes at eval_fraction %g: periodic evaluation is skipped", shards,
                        eval_fraction)

    def draw(self, n: int, seed: int, iteration: int) -> list:
        from drivetune.scene_sampling import sample_scenes

        return sample_scenes(self.store, min(n, self.num_train), seed=seed * 1_000_003 + iteration,
                             fraction=self.fraction, eval_fraction=self.eval_fraction)

    def evaluation(self, n: int) -> list:
        return [self.store.get(i) for i in self.held_out[:n]]


def check_resources(cfg: RFTConfig, resources: dict[str, float]) -> None:
    """Refuse requests the cluster cannot hold (Ray would wait forever for them)."""
    cpus = cfg.pool.num_workers * cfg.pool.num_cpus + cfg.learner.num_cpus
    gpus = cfg.pool.num_workers * cfg.pool.num_gpus + cfg.learner.num_gpus
    have_cpu, have_gpu = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
    if cpus > have_cpu or gpus > have_gpu:
        raise ConfigError(f"rft asks for {cpus:g} CPUs / {gpus:g} GPUs ({cfg.pool.num_workers} rollout workers x "
                          f"{cfg.pool.num_cpus:g} CPU + learner {cfg.learner.num_cpus:g}), the cluster has "
                          f"{have_cpu:g} / {have_gpu:g}; lower pool.num_workers, pool.num_cpus or learner.num_cpus")


def learner_threads(cfg: RFTConfig, learner_node: str, worker_nodes: list[str]) -> int:
    """The learner's intra-op threads: `learner.threads` if set; else its own CPUs and, in synchronous mode, the CPUs
    of the rollout workers on its node, which sit idle while it updates (one-step-off overlaps the two phases)."""
    if cfg.learner.threads:
        return cfg.learner.threads
    cpus = cfg.learner.num_cpus
    if cfg.max_staleness == 0:
        cpus += cfg.pool.num_cpus * sum(node == learner_node for node in worker_nodes)
    return max(1, int(cpus + 1e-9))


def train(cfg: RFTConfig, progress: bool = True, worker_cls: type[RolloutWorker] = RolloutWorker,
          learner_cls: type[Learner] = Learner) -> list[dict[str, Any]]:
    """Run (or resume) RL post-training on the connected Ray cluster; returns this call's metric records.
    `worker_cls` / `learner_cls` are the rollout and learner actor classes (fault-injection tests pass subclasses)."""
    import ray
    from drivetune.progress import progress as progress_bar

    from cluster.metrics import RayMetrics
    from trainer.run_directory import RunDirectory

    cfg.validate()
    check_resources(cfg, ray.cluster_resources())
    run = RunDirectory(Path(cfg.run_dir).resolve())
    run.write_config(to_dict(cfg))
    sampler = SceneSampler(cfg.data.shards, cfg.data.fraction, cfg.data.eval_fraction)
    actor = ray.remote(learner_cls).options(name=f"drivetune-learner-{uuid.uuid4().hex[:8]}",
                                            num_cpus=cfg.learner.num_cpus, num_gpus=cfg.learner.num_gpus)
    optim = replace(cfg.learner.optim, horizon_iters=cfg.learner.optim.horizon_iters or cfg.max_iters)
    learner = actor.remote(cfg.init, cfg.algo, cfg.reward, replace(cfg.learner, optim=optim), cfg.seed)
    start = 0
    latest = run.latest() if cfg.resume else None
    if latest is not None:
        start = ray.get(learner.restore.remote(str(latest)))
        log.info("resuming %s at iteration %d", run.root, start)
    drop_metrics_after(run, start)  # iterations logged after the checkpoint we resume from are run again
    spec = PolicySpec.from_checkpoint(cfg.init, reward_agents=cfg.scored, device=cfg.learner.device)
    pool = RolloutPool(spec, cfg.pool, worker_cls=worker_cls)
    threads = learner_threads(cfg, ray.get(learner.node_id.remote()), pool.node_ids())
    log.info("learner: %d intra-op threads", ray.get(learner.set_threads.remote(threads)))
    metrics = RayMetrics(tags={"run": run.root.name, "stage": cfg.stage})
    records: list[dict[str, Any]] = []
    queue: deque[Pending] = deque()  # rolled out, not yet trained on: at most max_staleness ahead

    def rollouts(iteration: int, published: tuple[dict, int]) -> Pending:
        """Broadcast the published weights, then roll this iteration's scenes (every group exactly once)."""
        t_broadcast = pool.set_weights(*published)
        scenes = sampler.draw(cfg.scenes_per_iter, cfg.seed, iteration)
        t0 = time.perf_counter()
        got = {b.scenario_id: b for b in pool.generate(scenes, cfg.group_size, cfg.sampler, seed=cfg.seed * 7919
                                                        + iteration, sdc=cfg.sdc,
                                                        return_topk=cfg.algo.distribution == "sampler")}
        return Pending(iteration, scenes, [got[s.scenario_id] for s in scenes], t_broadcast,
                       time.perf_counter() - t0, pool.restarts_seen)

    bar = progress_bar(cfg.max_iters, f"{cfg.stage} ({cfg.algo.name})", unit="iter", enabled=progress)
    bar.update(start)
    try:
        t_start, t_checkpoint = time.perf_counter(), 0.0
        for it in range(start, cfg.max_iters):
            t_iter = time.perf_counter()
            # One loop for both schedules: the weights are fetched while the learner is idle (a call queued
            # behind `update` would wait for it); this iteration's rollouts are generated now unless an earlier
            # iteration generated them; while the update runs, the next max_staleness iterations roll out with
            # these (pre-update) weights.
            published = ray.get(learner.weights.remote())
            if not queue:
                queue.append(rollouts(it, published))
            todo = queue.popleft()
            update = learner.update.remote(todo.batches, [ray.put(s) for s in todo.scenes])
            while len(queue) < cfg.max_staleness and it + 1 + len(queue) < cfg.max_iters:
                queue.append(rollouts(it + 1 + len(queue), published))
            stats = ray.get(update)
            record = _timed({"iteration": it + 1, **stats, **todo.phases(), "seconds_checkpoint": t_checkpoint},
                            t_iter)
            if cfg.eval_every and (it + 1) % cfg.eval_every == 0:
                t0 = time.perf_counter()
                record.update(evaluate(ray.get(learner.weights.remote())[0], spec, sampler, cfg),
                              seconds_eval=time.perf_counter() - t0)
            over_budget = cfg.max_minutes > 0 and time.perf_counter() - t_start > 60 * cfg.max_minutes
            run.append_metrics(record)  # before the checkpoint: a resume drops lines newer than its checkpoint
            t0, t_checkpoint = time.perf_counter(), 0.0
            if (it + 1) % cfg.checkpoint_every == 0 or it + 1 == cfg.max_iters or over_budget:
                ray.get(learner.save.remote(str(run.root), cfg.stage, stats, cfg.keep_checkpoints))
                t_checkpoint = time.perf_counter() - t0  # logged with the next iteration (its line is written)
            metrics.record(record)
            records.append(record)
            _show(bar, stats, it)
            if over_budget:
                log.info("max_minutes=%g reached after iteration %d", cfg.max_minutes, it + 1)
                break
    finally:
        bar.close()
        pool.shutdown()
        ray.kill(learner)
    return records


@dataclass
class Pending:
    """One iteration's rollouts, generated before its update, with the driver's timings of that generation.

    Phases in metrics.jsonl: seconds_broadcast, seconds_rollout (driver wall), seconds_rollout_worker and
    seconds_reward_worker (worker time, summed), the learner's seconds_advantage (rewards and advantages),
    seconds_reference and seconds_update (the whole update), seconds_eval, and seconds_checkpoint (the checkpoint
    written after the previous iteration's line)."""

    iteration: int
    scenes: list
    batches: list
    seconds_broadcast: float
    seconds_rollout: float
    rollout_worker_restarts: int  # seen by the pool so far

    def phases(self) -> dict[str, float]:
        return {"seconds_rollout": self.seconds_rollout, "seconds_broadcast": self.seconds_broadcast,
                "seconds_reward_worker": float(sum(b.seconds.get("reward", 0.0) for b in self.batches)),
                "seconds_rollout_worker": float(sum(b.seconds.get("rollout", 0.0) for b in self.batches)),
                "rollout_worker_restarts": self.rollout_worker_restarts}


def _timed(record: dict[str, Any], t_iter: float) -> dict[str, Any]:
    """The iteration's wall time (its rollouts unless generated during the previous update, and its update) and
    group rate, into `record`."""
    record["seconds_iteration"] = time.perf_counter() - t_iter
    record["groups_per_s"] = record["groups"] / record["seconds_iteration"]
    return record


def _show(bar: Any, stats: dict[str, float], it: int) -> None:
    shown = {"reward": "reward", "nll": "sft_nll", "coll": "collision_rate", "off": "offroad_rate", "kl": "kl_k3"}
    summary = {k: f"{stats[v]:.3f}" for k, v in shown.items() if v in stats}
    log.debug("iteration %d: %s", it + 1, summary)
    bar.update(1)
    if hasattr(bar, "set_postfix"):  # tqdm on a terminal; plain timestamped lines in logs
        bar.set_postfix(summary)


def drop_metrics_after(run: Any, iteration: int) -> None:
    """Rewrite `metrics.jsonl` without the records of iterations after `iteration` (atomically)."""
    import json

    from drivetune.atomic import atomic_write_bytes

    rows = run.read_metrics()
    keep = [r for r in rows if r.get("iteration", 0) <= iteration]
    if len(keep) != len(rows):
        atomic_write_bytes(run.metrics_path, [(json.dumps(r, sort_keys=True) + "\n").encode() for r in keep])


def evaluate(weights: dict[str, np.ndarray], spec: PolicySpec, sampler: SceneSampler, cfg: RFTConfig) -> dict:
    """Held-out realism of the current policy (`drivetune.evaluation.evaluate_policy`): the same scenes, seeds and
    sampler at every evaluation."""
    from drivetune.checkpoint import load_numpy_state_dict
    from drivetune.evaluation import evaluate_policy

    scenes = sampler.evaluation(cfg.eval_scenes)
    if not scenes:
        return {}
    model = spec.build()
    load_numpy_state_dict(model, weights)
    result = evaluate_policy(model, None, scenes, cfg.eval_rollouts, cfg.sampler, seed=10_000 + cfg.seed,
                             device=spec.device, sdc=cfg.sdc)
    keep = ("metametric", "simulated_collision_rate", "simulated_offroad_rate",
            "simulated_traffic_light_violation_rate", "min_average_displacement_error")
    return {f"eval_{k}": float(result["mean"][k]) for k in keep}
