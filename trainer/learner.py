"""`Learner`: the policy, its optimizer and a frozen reference; one RL update per call (wrapped as a Ray actor).

`update(batches, scenes)` turns rollout groups into rewards and per-token advantages (`trainer.rewards`,
`trainer.algorithms`), scores every group under the reference (no grad, only when the KL term is on: beta > 0), then
runs `epochs` passes of minibatches of groups through the policy loss (plus GRBO's human regularization), and
publishes the new weights under the next policy version. Versions only grow, across stages too: a stage starts at its
init checkpoint's `policy_version`. The model stays in eval mode (no dropout), so re-scoring reproduces the rollouts'
behaviour log-probs.

Work per update: each scene is tokenized once; each forward encodes the maps of its minibatch once and packs the
rollouts of its groups into chunks sized by `forward_mb` (`trainer.rescoring.pack`); the human NLL reuses the same
map encoding. The behaviour check (`logp_diff_max`) reads the first optimizer step's forward: before that step the
policy is the behaviour policy of every group of its own version. When no group is of the current version
(one-step-off), the first group is re-scored under its behaviour weights instead.
"""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np
import torch

from drivetune.checkpoint import load_checkpoint, load_numpy_state_dict, load_weights, resolve_checkpoint
from drivetune.checkpoint import state_dict_to_numpy
from drivetune.model import AgentBatch, agent_batch
from drivetune.model.behavior import MapContext
from drivetune.ray_runtime import current_node_id
from drivetune.scene import Scene
from drivetune.tokenizer import tokenize_scene
from trainer.algorithms import AlgoConfig, calibrate_alpha, policy_loss, token_advantages
from trainer.run_directory import RunDirectory
from trainer.losses import human_nll, sft_loss
from trainer.objectives import TokenTargets
from trainer.groups import RolloutGroup
from trainer.rescoring import (Candidates, PackedChunk, RescoreInputs, TokenScores, chunk_tokens, encode_maps, pack,
                               score_chunk, score_group)
from trainer.rewards import RewardConfig, agent_rewards, weighted_rewards


@dataclass
class LearnerOptim:
    """AdamW and its learning-rate schedule: linear warm-up over `warmup_iters`, then constant or a cosine decay to
    `min_lr_ratio` × lr at `horizon_iters` (0: the run's max_iters, set by the driver); set per optimizer step."""

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
    forward_mb: float = 512.0  # activation memory (MiB) of one training forward: sizes the packed chunks (CPU: 512
    # ran faster than 2048, cache-sized; a GPU learner wants more)
    device: str = "cpu"
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    threads: int = 0  # intra-op threads of the update; 0: auto (cluster.rft: its CPUs, in synchronous mode plus the
    # CPUs of the rollout workers on its node, which wait while it updates)
    trainable: str = "all"  # all | decoder (CAT-K's fine-tune: map encoder and embeddings frozen)
    carry_optimizer: bool = False  # start from the init checkpoint's AdamW moments (a pipeline stage's `optimizer: carry`)
    optim: LearnerOptim = field(default_factory=LearnerOptim)

    def validate(self) -> "LearnerConfig":
        bad = [n for n, ok in (("epochs", self.epochs >= 1), ("minibatch_groups", self.minibatch_groups >= 1),
                               ("forward_mb", self.forward_mb > 0), ("optim.lr", self.optim.lr > 0),
                               ("optim.weight_decay", self.optim.weight_decay >= 0),
                               ("optim.grad_clip", self.optim.grad_clip > 0),
                               ("optim.schedule", self.optim.schedule in ("constant", "cosine")),
                               ("optim.warmup_iters", self.optim.warmup_iters >= 0),
                               ("optim.min_lr_ratio", 0 <= self.optim.min_lr_ratio <= 1),
                               ("optim.horizon_iters", self.optim.horizon_iters >= 0),
                               ("trainable", self.trainable in TRAINABLE),
                               ("num_cpus", self.num_cpus >= 0), ("num_gpus", self.num_gpus >= 0),
                               ("threads", self.threads >= 0)) if not ok]
        if bad:
            raise ValueError(f"learner config: bad values for {', '.join(bad)} ({self})")
        return self


@dataclass
class GroupState:
    """The learner's view of one rollout group during an update."""

    batch: RolloutGroup
    inputs: RescoreInputs
    logged: AgentBatch  # [1, A, T] the sim agents' logged tokens (GRBO's human NLL)
    mask: torch.Tensor  # bool [G, A, 16] the tokens trained on
    behaviour: torch.Tensor  # float [G, A, 16] the rollouts' behaviour log-probs
    stats: dict[str, float]
    reward: np.ndarray | None = None  # [G] (RL)
    adv: torch.Tensor | None = None  # [G, A, 16] (RL)
    target: torch.Tensor | None = None  # long [G, A, 16] CAT-K targets (SFT)
    candidates: Candidates | None = None  # top-K's candidate sets (algo.distribution: sampler)
    ref_logp: torch.Tensor | None = None  # [G, A, 16] under the reference (beta > 0)


class Learner:
    """Policy + frozen reference + optimizer. Construct from a checkpoint; `restore` continues a saved run."""

    def __init__(self, init: str | os.PathLike, algo: AlgoConfig, reward: RewardConfig, cfg: LearnerConfig,
                 seed: int = 0) -> None:
        torch.set_num_threads(cfg.threads or int(os.environ.get("OMP_NUM_THREADS", "1")))
        self.cfg, self.algo = cfg.validate(), algo.validate()
        self.reward = reward if self.sft else reward.validate()  # SFT has no reward
        self.seed = seed
        self.init_path = str(resolve_checkpoint(init))
        self.policy, meta = load_checkpoint(self.init_path, device=cfg.device)
        self.policy.eval()  # RL runs without dropout: re-scoring must reproduce the behaviour log-probs
        self.reference = copy.deepcopy(self.policy).requires_grad_(False)
        self.vocab = self.policy.vocab.to_torch(cfg.device)
        self.chunk_tokens = chunk_tokens(self.policy.cfg, cfg.forward_mb)
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

    def node_id(self) -> str:
        """The Ray node this learner actor runs on."""
        return current_node_id()

    def set_threads(self, threads: int) -> int:
        """Intra-op threads of the update from now on (the driver's `learner.threads: 0` choice); returns them."""
        torch.set_num_threads(max(1, int(threads)))
        return torch.get_num_threads()

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
    @property
    def sft(self) -> bool:
        return self.algo.name == "sft"

    def update(self, batches: Sequence[RolloutGroup], scenes: Sequence[Any]) -> dict[str, float]:
        """One RL iteration on rollout groups (`scenes[i]` is the scene of `batches[i]`, or its ObjectRef)."""
        t0 = time.perf_counter()
        groups = [self._prepare(_resolve(s), b) for s, b in zip(scenes, batches)]
        stats = _mean_dicts([g.stats for g in groups])
        self._targets(groups)
        t_ref = time.perf_counter()
        self._reference_pass(groups)
        stats.update(seconds_advantage=t_ref - t0, seconds_reference=time.perf_counter() - t_ref)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.iteration)  # resumable minibatch order
        n_tokens, steps, check = 0, [], _Check()
        n_steps = self.cfg.epochs * math.ceil(len(groups) / self.cfg.minibatch_groups)
        noisy = self.sft and self.algo.dropout  # a dropout forward is not the behaviour policy: check separately
        for _ in range(self.cfg.epochs):
            order = torch.randperm(len(groups), generator=gen).tolist()
            for lo in range(0, len(order), self.cfg.minibatch_groups):
                mb = [groups[i] for i in order[lo : lo + self.cfg.minibatch_groups]]
                lr = self.cfg.optim.lr_at(self.iteration + (len(steps) + 1) / n_steps)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                steps.append(self._step(mb, check if not steps and not noisy else None))
                n_tokens += int(sum(g.mask.sum() for g in mb))
        if not check.checked:  # no group of the current version read (one-step-off, or SFT with dropout): re-score one
            self._check_stale(groups[0], check)
        stats.update(_mean_dicts(steps), logp_diff_max=check.diff, logp_checked_groups=float(len(check.checked)))
        if not self.sft:
            adv = torch.cat([g.adv[g.mask] for g in groups])
            stats.update(adv_mean=float(adv.mean()), adv_std=float(adv.std()) if len(adv) > 1 else 0.0,
                         adv_abs_mean=float(adv.abs().mean()))
        lag = [self.version - b.policy_version for b in batches]
        self.iteration += 1
        self.version += 1
        self._publish()
        seconds = time.perf_counter() - t0
        if self.algo.name == "mpo":
            stats["alpha"] = float(self.alpha)
        stats.update(policy_version=self.version, policy_version_lag=float(np.mean(lag)),
                     learner_tokens_per_s=n_tokens / seconds, seconds_update=seconds, groups=len(groups), lr=lr,
                     learner_threads=torch.get_num_threads())
        return stats

    def _prepare(self, scene: Scene, batch: RolloutGroup) -> GroupState:
        stats: dict[str, float] = {}
        reward = None
        if not self.sft:
            reward, terms = weighted_rewards(batch, self.reward)
            stats = {f"reward_{k}": float(np.mean(v)) for k, v in terms.items()}
            stats["reward"] = float(reward.mean())
        gr = batch.group_rewards
        stats.update(group_meta=gr.get("metametric", float("nan")),
                     collision_rate=gr.get("simulated_collision_rate", float("nan")),
                     offroad_rate=gr.get("simulated_offroad_rate", float("nan")),
                     red_light_rate=gr.get("simulated_traffic_light_violation_rate", float("nan")))
        logged = agent_batch([tokenize_scene(scene, self.vocab)], [np.asarray(batch.track_index)])
        behaviour, candidates = torch.tensor(batch.logp), None
        if self.algo.distribution == "sampler":  # RL on top-K's own distribution: its candidates and log-probs
            if batch.topk is None or batch.sampler.get("kind") != "topk":
                raise ValueError(f"algo.distribution 'sampler' needs top-K rollouts that kept their candidate sets; "
                                 f"group {batch.scenario_id} has sampler {batch.sampler.get('kind')!r}, topk "
                                 f"{'missing' if batch.topk is None else 'kept'}")
            behaviour = torch.tensor(batch.sampler_logp)
            candidates = Candidates(torch.tensor(batch.topk, device=self.cfg.device),
                                    float(batch.sampler.get("temperature", 1.0)))
        return GroupState(batch=batch, inputs=RescoreInputs.from_logged(scene, batch, logged, self.cfg.device),
                          logged=logged.to(self.cfg.device), mask=torch.tensor(batch.token_mask),
                          behaviour=behaviour, stats=stats, reward=reward, candidates=candidates)

    def _targets(self, groups: list[GroupState]) -> None:
        """SFT: the sampler's targets where the log gives one. RL: per-token advantages (alpha: auto = the mean
        reward of the starting policy on its first batch)."""
        if self.sft:
            for g in groups:
                g.target = torch.tensor(g.batch.sft_target)
                g.mask &= g.target >= 0
            return
        if self.alpha is None:
            self.alpha = calibrate_alpha(np.concatenate([g.reward for g in groups]))
        for g in groups:
            agent_reward, scored = agent_rewards(g.batch, self.reward) if self.algo.advantage == "agent" else (None,
                                                                                                                None)
            g.adv = torch.as_tensor(token_advantages(self.algo, g.reward, agent_reward, scored, g.batch.token_mask,
                                                     alpha=self.alpha))

    @torch.no_grad()
    def _reference_pass(self, groups: list[GroupState]) -> None:
        """Reference log-probs of every group, packed, one map encoding per scene; skipped when the KL is off."""
        if self.sft or self.algo.beta == 0:
            return
        inputs = [g.inputs for g in groups]
        ctx = encode_maps(self.reference, inputs)
        parts: list[list[torch.Tensor]] = [[] for _ in groups]
        for chunk in pack(inputs, self.chunk_tokens):
            logp = score_chunk(self.reference, ctx, chunk, candidates=_candidates(groups, chunk)).logp
            for (gi, _), logp in zip(chunk.parts, chunk.split(logp, inputs)):
                parts[gi].append(logp)
        for g, p in zip(groups, parts):  # a group's rows come in order, possibly over several chunks
            g.ref_logp = torch.cat(p)

    def _step(self, groups: list[GroupState], check: "_Check | None") -> dict[str, float]:
        """One optimizer step on a minibatch of groups: token-mean policy loss (packed chunks, one backward each) +
        human NLL; `check` collects the behaviour check from this forward (the first step of an update)."""
        self.optimizer.zero_grad(set_to_none=True)
        total = max(1, int(sum(g.mask.sum() for g in groups)))
        inputs = [g.inputs for g in groups]
        self.policy.train(self.sft and self.algo.dropout)  # BC's dropout in SFT when asked; RL never
        maps = encode_maps(self.policy, inputs)  # once per step: every chunk reads it, its gradient comes back once
        ctx = replace(maps, kv=[kv.detach().requires_grad_() for kv in maps.kv])
        sft_kl = self.sft and self.algo.beta > 0
        full = self.sft and (self.algo.label_smoothing > 0 or sft_kl)
        ref_ctx = encode_maps(self.reference, inputs) if sft_kl else None
        parts, entropy = [], []
        for chunk in pack(inputs, self.chunk_tokens):
            m = chunk.gather([g.mask for g in groups], fill=False)
            if not m.any():
                continue
            target = chunk.gather([g.target for g in groups], fill=-1) if self.sft else None
            scores = score_chunk(self.policy, ctx, chunk, target, full=full, candidates=_candidates(groups, chunk))
            behaviour = chunk.gather([g.behaviour for g in groups])
            if check is not None:
                check.read(self.version, [groups[gi].batch for gi, _ in chunk.parts], chunk.split(scores.own, inputs),
                           chunk.split(behaviour, inputs), chunk.split(m, inputs))
            if self.sft:  # cross-entropy on the CAT-K targets (+ BC's smoothing, + KL to the reference)
                ref = None
                if sft_kl:
                    with torch.no_grad():
                        ref = score_chunk(self.reference, ref_ctx, chunk, full=True).log_probs[m]
                out = sft_loss(scores.logp[m], scores.log_probs[m] if full else None, ref, self.algo.label_smoothing,
                               self.algo.beta)
                loss, part = out.loss, out.stats
            else:
                out = policy_loss(self.algo, scores.logp[m], behaviour[m], self._ref_logp(groups, chunk, scores)[m],
                                  chunk.gather([g.adv for g in groups])[m])
                loss, part = out.loss, out.stats
            (loss * (int(m.sum()) / total)).backward()
            parts.append((int(m.sum()), part))
            entropy.append(scores.entropy[m])
        stats = {k: sum(n * s[k] for n, s in parts) / total for k in (parts[0][1] if parts else {})}
        if self.algo.human_coef > 0:
            nll = self._human_nll(ctx, groups)
            (self.algo.human_coef * nll).backward()
            stats["human_nll"] = nll.item()
        used = [(kv, leaf.grad) for kv, leaf in zip(maps.kv, ctx.kv) if leaf.grad is not None]
        if used:
            torch.autograd.backward(*zip(*used))
        if self.algo.beta == 0:  # no reference pass: no KL figures (they would read 0)
            stats = {k: v for k, v in stats.items() if k not in ("kl_k1", "kl_k3")}
        self.policy.eval()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.cfg.optim.grad_clip)
        self.optimizer.step()
        stats.update(grad_norm=float(grad_norm), entropy=float(torch.cat(entropy).mean()) if entropy else 0.0)
        return stats

    def _ref_logp(self, groups: list[GroupState], chunk: PackedChunk, scores: TokenScores) -> torch.Tensor:
        """The chunk's reference log-probs; with beta = 0 (no reference pass) the policy's own, detached: the KL
        term is then 0 with gradient 0, as beta * k3 is with any reference."""
        if self.algo.beta == 0:
            return scores.logp.detach()
        return chunk.gather([g.ref_logp for g in groups])

    def _human_nll(self, ctx: MapContext, groups: list[GroupState]) -> torch.Tensor:
        """Mean NLL of the logged (human) next tokens of the groups' sim agents under the policy (teacher forced),
        on the minibatch's map encoding (row i = group i's scene)."""
        a = max(g.logged.tokens.shape[1] for g in groups)
        agents = AgentBatch(*(torch.cat([_pad_agents(getattr(g.logged, f), a) for g in groups]) for f in
                              ("tokens", "poses", "valid", "type_idx", "size")))
        logits = self.policy.decode(ctx, agents, torch.arange(len(groups), device=agents.tokens.device))
        targets = TokenTargets.from_tokens(agents.tokens, agents.valid)
        logp = torch.log_softmax(logits[:, :, :-1][targets.mask], dim=-1)
        return human_nll(logp.gather(1, targets.targets[targets.mask][:, None])[:, 0])

    def _check_stale(self, group: GroupState, check: "_Check") -> None:
        """Re-score one group under the (older) policy version that generated it."""
        version = group.batch.policy_version
        if version not in self._behaviour:
            raise RuntimeError(f"group {group.batch.scenario_id} comes from policy version {version}, older than "
                               f"the learner keeps (now {self.version})")
        scratch = copy.deepcopy(self.reference)
        load_numpy_state_dict(scratch, self._behaviour[version])
        logp = score_group(scratch, group.inputs, group.inputs.num_rollouts, group.candidates).logp
        check.read(version, [group.batch], [logp], [group.behaviour], [group.mask])


@dataclass
class _Check:
    """The behaviour check: the largest |re-scored - behaviour| log-prob over the valid tokens of the groups scored
    with the weights that generated them."""

    diff: float = 0.0
    checked: set[int] = field(default_factory=set)  # id() of the groups read (a group may span chunks)

    def read(self, version: int, batches: list[RolloutGroup], logp: list[torch.Tensor],
             behaviour: list[torch.Tensor], mask: list[torch.Tensor]) -> None:
        for b, lp, bh, m in zip(batches, logp, behaviour, mask):
            if b.policy_version != version:
                continue
            self.checked.add(id(b))
            if m.any():
                self.diff = max(self.diff, float((lp[m] - bh[m]).abs().max()))


def _candidates(groups: list[GroupState], chunk: PackedChunk) -> Candidates | None:
    """The chunk's top-K candidate sets [R, A', 16, K] when RL runs on the sampler's distribution, else None."""
    if groups[0].candidates is None:
        return None
    return Candidates(chunk.gather([g.candidates.ids for g in groups]), groups[0].candidates.temperature)


def _pad_agents(x: torch.Tensor, a: int) -> torch.Tensor:
    """[1, A, ...] -> [1, a, ...] with zeros (invalid agents)."""
    return torch.nn.functional.pad(x, [0, 0] * (x.dim() - 2) + [0, a - x.shape[1]])


def _mean_dicts(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = {k for r in rows for k in r}
    return {k: float(np.nanmean([r[k] for r in rows if k in r])) for k in sorted(keys)}


def _resolve(obj: Any) -> Any:
    import ray

    return ray.get(obj) if isinstance(obj, ray.ObjectRef) else obj
