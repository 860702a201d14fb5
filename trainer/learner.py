"""`Learner`: the policy, its optimizer and a frozen reference; one RL update per call (wrapped as a Ray actor).

`update(batches, scenes)` turns rollout groups into rewards and per-token advantages (`trainer.rewards`,
`trainer.algorithms`), re-scores every group under the reference (no grad) and checks the behaviour log-probs
(`logp_diff_max`, before the first update), then runs `epochs` passes of minibatches of groups through the policy
loss (plus GRBO's human regularization), and publishes the new weights under the next policy version. Versions only
grow, across stages too: a stage starts at its init checkpoint's `policy_version`. The model stays in eval mode
(no dropout), so re-scoring reproduces the rollouts' behaviour log-probs.
"""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from drivetune.checkpoint import (load_checkpoint, load_numpy_state_dict, load_weights, resolve_checkpoint,
                                  state_dict_to_numpy)
from drivetune.model import BehaviorModel, agent_batch, map_batch
from drivetune.scene import Scene
from drivetune.tokenizer import tokenize_map, tokenize_scene
from trainer.algorithms import AlgoConfig, calibrate_alpha, policy_loss, token_advantages
from trainer.checkpoints import RunDirectory
from trainer.losses import human_nll, sft_loss
from trainer.objectives import TokenTargets
from trainer.rescoring import RescoreInputs, RolloutGroup, score_group, score_rows
from trainer.rewards import RewardConfig, agent_rewards, rollout_rewards


@dataclass
class LearnerOptim:
    """AdamW and its per-iteration learning-rate schedule: linear warm-up over `warmup_iters`, then constant or a
    cosine decay to `min_lr_ratio` × lr at `horizon_iters` (0: the run's max_iters, set by the driver)."""

    lr: float = 1e-4
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    schedule: str = "constant"  # constant | cosine
    warmup_iters: int = 0
    min_lr_ratio: float = 0.1
    horizon_iters: int = 0

    def lr_at(self, progress: float) -> float:
        """The learning rate of the optimizer step that ends at `progress` iterations (fractional: the learner
        steps it through each iteration's minibatches)."""
        if progress < self.warmup_iters:
            return self.lr * progress / self.warmup_iters
        if self.schedule == "constant" or self.horizon_iters <= self.warmup_iters:
            return self.lr
        done = min(1.0, (progress - self.warmup_iters) / (self.horizon_iters - self.warmup_iters))
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * done)))


TRAINABLE = {"all": None, "decoder": ("time_blocks", "map_agent_blocks", "agent_blocks", "head")}


@dataclass
class LearnerConfig:
    """Update schedule and resources of the learner actor."""

    epochs: int = 1
    minibatch_groups: int = 4  # rollout groups per optimizer step
    rescore_chunk: int = 8  # rollouts per forward (memory bound)
    trainable: str = "all"  # all | decoder (CAT-K's fine-tune: map encoder and embeddings frozen)
    carry_optimizer: bool = False  # start from the init checkpoint's AdamW moments (a pipeline stage's `optimizer: carry`)
    device: str = "cpu"
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    optim: LearnerOptim = field(default_factory=LearnerOptim)

    def validate(self) -> "LearnerConfig":
        bad = [n for n, ok in (("epochs", self.epochs >= 1), ("minibatch_groups", self.minibatch_groups >= 1),
                               ("rescore_chunk", self.rescore_chunk >= 1), ("optim.lr", self.optim.lr > 0),
                               ("optim.weight_decay", self.optim.weight_decay >= 0),
                               ("optim.grad_clip", self.optim.grad_clip > 0),
                               ("optim.schedule", self.optim.schedule in ("constant", "cosine")),
                               ("optim.warmup_iters", self.optim.warmup_iters >= 0),
                               ("optim.min_lr_ratio", 0 <= self.optim.min_lr_ratio <= 1),
                               ("optim.horizon_iters", self.optim.horizon_iters >= 0),
                               ("trainable", self.trainable in TRAINABLE),
                               ("num_cpus", self.num_cpus >= 0), ("num_gpus", self.num_gpus >= 0)) if not ok]
        if bad:
            raise ValueError(f"learner config: bad values for {', '.join(bad)} ({self})")
        return self


class Learner:
    """Policy + frozen reference + optimizer. Construct from a checkpoint; `restore` continues a saved run."""

    def __init__(self, init: str | os.PathLike, algo: AlgoConfig, reward: RewardConfig, cfg: LearnerConfig,
                 seed: int = 0) -> None:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        self.cfg, self.algo = cfg.validate(), algo.validate()
        self.reward = reward if self.sft else reward.validate()  # SFT has no reward
        self.seed = seed
        self.init_path = str(resolve_checkpoint(init))
        self.policy, meta = load_checkpoint(self.init_path, device=cfg.device)
        self.policy.eval()  # RL runs without dropout: re-scoring must reproduce the behaviour log-probs
        self.reference = copy.deepcopy(self.policy).requires_grad_(False)
        self.vocab = self.policy.vocab.to_torch(cfg.device)
        self.version = int(meta.get("policy_version", 0))
        self.reference_info = {"path": self.init_path, "policy_version": self.version,
                               "weights_sha256": meta.get("weights_sha256")}
        self.alpha: float | None = None if algo.alpha == "auto" else float(algo.alpha)
        self.iteration = 0
        if TRAINABLE[cfg.trainable] is not None:
            for name, p in self.policy.named_parameters():
                p.requires_grad_(name.split(".")[0] in TRAINABLE[cfg.trainable])
        self.optimizer = torch.optim.AdamW([p for p in self.policy.parameters() if p.requires_grad], lr=cfg.optim.lr,
                                           weight_decay=cfg.optim.weight_decay)
        if cfg.carry_optimizer:  # the previous stage's moments; the learning rate and schedule are this stage's
            try:
                self.optimizer.load_state_dict(RunDirectory.load_trainer_state(self.init_path)["optimizer"])
            except (ValueError, KeyError) as exc:
                raise ValueError(f"{self.init_path}: its optimizer state does not fit this stage's trainable "
                                 f"parameters ({exc})") from None
            for group in self.optimizer.param_groups:
                group.update(lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
        self._behaviour: dict[int, dict[str, np.ndarray]] = {}  # published versions still in flight
        self._publish()

    # ------------------------------------------------------------------------------------------ weights & state
    def _publish(self) -> None:
        self._weights = state_dict_to_numpy(self.policy)
        self._behaviour = {v: w for v, w in self._behaviour.items() if v >= self.version - 1}
        self._behaviour[self.version] = self._weights

    def weights(self) -> tuple[dict[str, np.ndarray], int]:
        """The current numpy state dict (packed once per version) and its policy version."""
        return self._weights, self.version

    def save(self, run_dir: str, stage: str, metrics: dict[str, Any] | None = None, keep_last: int = 3) -> str:
        """Checkpoint `RUN/checkpoints/step_<iteration>` with the lineage meta and the optimizer state."""
        state = {"optimizer": self.optimizer.state_dict(), "iteration": self.iteration, "version": self.version,
                 "alpha": self.alpha}
        meta = {"stage": stage, "iteration": self.iteration, "policy_version": self.version,
                "reference": self.reference_info, "init": self.init_path, "alpha": self.alpha}
        return str(RunDirectory(run_dir).save(self.policy, self.iteration, state, metrics=metrics, extra_meta=meta,
                                              keep_last=keep_last))

    def restore(self, checkpoint: str) -> int:
        """Continue from a checkpoint written by `save`: weights, optimizer, iteration, version, alpha."""
        load_weights(checkpoint, self.policy)
        state = RunDirectory.load_trainer_state(checkpoint)
        self.optimizer.load_state_dict(state["optimizer"])
        self.iteration, self.version, self.alpha = int(state["iteration"]), int(state["version"]), state["alpha"]
        self._publish()
        return self.iteration

    # ------------------------------------------------------------------------------------------------- update
    def update(self, batches: Sequence[RolloutGroup], scenes: Sequence[Any]) -> dict[str, float]:
        """One RL iteration on rollout groups (`scenes[i]` is the scene of `batches[i]`, or its ObjectRef)."""
        t0 = time.perf_counter()
        scenes = [_resolve(s) for s in scenes]
        groups = [self._prepare(s, b) for s, b in zip(scenes, batches)]
        stats = _mean_dicts([g["stats"] for g in groups])
        if self.sft:
            for g in groups:  # CAT-K: train on the sampler's target where the log gives one, in the rollout's context
                g["target"] = torch.tensor(g["batch"].sft_target)
                g["mask"] &= g["target"] >= 0
        else:
            if self.alpha is None:  # alpha: auto = mean reward of the starting policy on its first batch
                self.alpha = calibrate_alpha(np.concatenate([g["reward"] for g in groups]))
            for g in groups:
                g["adv"] = torch.as_tensor(token_advantages(self.algo, g["reward"], g["agent_reward"], g["scored"],
                                                            g["batch"].token_mask, alpha=self.alpha))
        stats.update(self._reference_pass(groups))
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.iteration)  # resumable minibatch order
        n_tokens, steps = 0, []
        n_steps = self.cfg.epochs * math.ceil(len(groups) / self.cfg.minibatch_groups)
        for _ in range(self.cfg.epochs):
            order = torch.randperm(len(groups), generator=gen).tolist()
            for lo in range(0, len(order), self.cfg.minibatch_groups):
                mb = [groups[i] for i in order[lo : lo + self.cfg.minibatch_groups]]
                lr = self.cfg.optim.lr_at(self.iteration + (len(steps) + 1) / n_steps)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                steps.append(self._step(mb))
                n_tokens += int(sum(g["mask"].sum() for g in mb))
        stats.update(_mean_dicts(steps))
        if not self.sft:
            adv = torch.cat([g["adv"][g["mask"]] for g in groups])
            stats.update(adv_mean=float(adv.mean()), adv_std=float(adv.std()) if len(adv) > 1 else 0.0,
                         adv_abs_mean=float(adv.abs().mean()))
        lag = [self.version - b.policy_version for b in batches]
        self.iteration += 1
        self.version += 1
        self._publish()
        seconds = time.perf_counter() - t0
        if self.algo.name == "mpo":
            stats["alpha"] = float(self.alpha)
        stats.update(policy_version=self.version, policy_version_lag=float(np.mean(lag)), learner_tokens_per_s=n_tokens / seconds,
                     seconds_update=seconds, groups=len(groups), lr=lr)
        return stats

    @property
    def sft(self) -> bool:
        return self.algo.name == "sft"

    def _prepare(self, scene: Scene, batch: RolloutGroup) -> dict[str, Any]:
        reward = agent_reward = scored = None
        stats: dict[str, float] = {}
        if not self.sft:
            reward, terms = rollout_rewards(batch, self.reward)
            if self.algo.advantage == "agent":
                agent_reward, scored = agent_rewards(batch, self.reward)
            stats = {f"reward_{k}": float(np.mean(v)) for k, v in terms.items()}
            stats["reward"] = float(reward.mean())
        gr = batch.group_rewards
        stats.update(group_meta=gr.get("metametric", float("nan")),
                     collision_rate=gr.get("simulated_collision_rate", float("nan")),
                     offroad_rate=gr.get("simulated_offroad_rate", float("nan")),
                     red_light_rate=gr.get("simulated_traffic_light_violation_rate", float("nan")))
        return {"scene": scene, "batch": batch, "inputs": RescoreInputs.build(scene, batch, self.vocab),
                "mask": torch.tensor(batch.token_mask), "reward": reward, "agent_reward": agent_reward,
                "scored": scored, "stats": stats}

    def _reference_pass(self, groups: list[dict[str, Any]]) -> dict[str, float]:
        """Reference log-probs of every group, and the behaviour check: the policy version that generated each
        group re-scores it; the largest |difference| to the rollout's own log-probs is `logp_diff_max`."""
        diff = 0.0
        scratch = None
        for g in groups:
            inputs, batch, mask = g["inputs"], g["batch"], g["mask"]
            if not self.sft:
                g["ref_logp"] = score_group(self.reference, inputs, self.cfg.rescore_chunk).logp
            if batch.policy_version == self.version:
                behaviour = self.policy
            else:
                if batch.policy_version not in self._behaviour:
                    raise RuntimeError(f"group {batch.scenario_id} comes from policy version {batch.policy_version}, "
                                       f"older than the learner keeps (now {self.version})")
                scratch = scratch or copy.deepcopy(self.reference)
                load_numpy_state_dict(scratch, self._behaviour[batch.policy_version])
                behaviour = scratch
            logp = score_group(behaviour, inputs, self.cfg.rescore_chunk).logp
            if mask.any():
                diff = max(diff, float((logp[mask] - torch.tensor(batch.logp)[mask]).abs().max()))
        return {"logp_diff_max": diff}

    def _step(self, groups: list[dict[str, Any]]) -> dict[str, float]:
        """One optimizer step on a minibatch of groups: token-mean policy loss (chunked backward) + human NLL."""
        self.optimizer.zero_grad(set_to_none=True)
        total = max(1, int(sum(g["mask"].sum() for g in groups)))
        parts, entropy = [], []
        for g in groups:
            inputs, batch, mask = g["inputs"], g["batch"], g["mask"]
            behaviour = torch.tensor(batch.logp)
            for rows in inputs.chunks(self.cfg.rescore_chunk):
                m = mask[rows]
                if not m.any():
                    continue
                if self.sft:  # cross-entropy on the CAT-K targets (+ BC's smoothing, + KL to the reference)
                    full = self.algo.label_smoothing > 0 or self.algo.beta > 0
                    self.policy.train(self.algo.dropout)
                    scores = score_rows(self.policy, inputs, rows, targets=g["target"][rows], full=full)
                    self.policy.eval()
                    ref = None
                    if self.algo.beta > 0:
                        with torch.no_grad():
                            ref = score_rows(self.reference, inputs, rows, full=True).log_probs[m]
                    out = sft_loss(scores.logp[m], scores.log_probs[m] if full else None, ref,
                                   self.algo.label_smoothing, self.algo.beta)
                    loss, part = out.loss, out.stats
                else:
                    scores = score_rows(self.policy, inputs, rows)
                    out = policy_loss(self.algo, scores.logp[m], behaviour[rows][m], g["ref_logp"][rows][m],
                                      g["adv"][rows][m])
                    loss, part = out.loss, out.stats
                (loss * (int(m.sum()) / total)).backward()
                parts.append((int(m.sum()), part))
                entropy.append(scores.entropy[m].detach())
        stats = {k: sum(n * s[k] for n, s in parts) / total for k in (parts[0][1] if parts else {})}
        if self.algo.human_coef > 0:
            nll = self._human_nll([g["scene"] for g in groups], [g["batch"] for g in groups])
            (self.algo.human_coef * nll).backward()
            stats["human_nll"] = nll.item()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.cfg.optim.grad_clip)
        self.optimizer.step()
        stats.update(grad_norm=float(grad_norm), entropy=float(torch.cat(entropy).mean()) if entropy else 0.0)
        return stats

    def _human_nll(self, scenes: list[Scene], batches: list[RolloutGroup]) -> torch.Tensor:
        """Mean NLL of the logged (human) next tokens of the groups' sim agents under the policy (teacher forced)."""
        picks = [np.asarray(b.track_index) for b in batches]
        agents = agent_batch([tokenize_scene(s, self.vocab) for s in scenes], picks).to(self.cfg.device)
        maps = map_batch([tokenize_map(s) for s in scenes]).to(self.cfg.device)
        # one scene per row: forward needs rows as a multiple of scenes, which they are (1:1)
        logits = self.policy(maps, agents)
        targets = TokenTargets.from_tokens(agents.tokens, agents.valid)
        logp = torch.log_softmax(logits[:, :, :-1][targets.mask], dim=-1)
        return human_nll(logp.gather(1, targets.targets[targets.mask][:, None])[:, 0])


def _mean_dicts(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = {k for r in rows for k in r}
    return {k: float(np.nanmean([r[k] for r in rows if k in r])) for k in sorted(keys)}


def _resolve(obj: Any) -> Any:
    import ray

    return ray.get(obj) if isinstance(obj, ray.ObjectRef) else obj

