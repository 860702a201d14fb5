"""The per-worker loop of `drivetune train pretrain` (runs inside Ray Train workers) and its evaluation.

Each worker tokenizes its shard of the training scenes once (kept in memory), then takes `max_steps` steps over a
deterministic per-(seed, rank) stream of mini-batches, so a resumed run continues the same stream. Rank 0 writes
checkpoints and metrics to the run directory; every worker reports the same metrics to Ray Train.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from drivetune.config import from_dict, to_dict
from drivetune.model import AgentBatch, BehaviorModel, MapBatch, agent_batch, map_batch
from drivetune.model.batch import select_agents
from drivetune.shards import scene_from_row
from drivetune.tokenizer import (
    CURRENT_BOUNDARY,
    AgentTokens,
    MapTokens,
    MotionVocab,
    TorchVocab,
    nearest_tokens,
    token_end_poses,
    tokenize_map,
    tokenize_scene,
)
from trainer.checkpoints import RunDirectory
from trainer.objectives import TokenTargets, next_token_loss, repeat_last_accuracy, token_accuracy

log = logging.getLogger("drivetune.pretrain")


@dataclass
class Sample:
    """One tokenized scene, restricted to the modelled agents."""

    scenario_id: str
    map_tokens: MapTokens
    agent_tokens: AgentTokens
    agents: np.ndarray  # track indices


def tokenize_rows(rows: Iterable[dict], vocab: MotionVocab | TorchVocab, max_agents: int) -> list[Sample]:
    out = []
    for row in rows:
        scene = scene_from_row(row)
        out.append(Sample(scene.scenario_id, tokenize_map(scene), tokenize_scene(scene, vocab),
                          select_agents(scene, max_agents)))
    return out


def make_batch(samples: Sequence[Sample]) -> tuple[MapBatch, AgentBatch]:
    return map_batch([s.map_tokens for s in samples]), agent_batch([s.agent_tokens for s in samples],
                                                                   [s.agents for s in samples])


def batch_indices(num_samples: int, batch_size: int, step: int, seed: int, rank: int) -> np.ndarray:
    """Sample indices of mini-batch `step` (0-based): consecutive slices of per-epoch permutations."""
    per_epoch = max(1, num_samples // batch_size)
    epoch, pos = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, rank, epoch]).permutation(num_samples)
    return np.resize(perm[pos * batch_size:], batch_size)  # wraps when fewer samples than batch_size


def token_noise(agents: AgentBatch, tv: TorchVocab, k: int, prob: float, gen: torch.Generator) -> AgentBatch:
    """Input tokens replaced, with probability `prob`, by one of the k tokens nearest to the matched motion (from the
    previous end pose); the first token (no start pose in the batch) and targets are left alone."""
    start, end = agents.poses[:, :, :-1], agents.poses[:, :, 1:]
    types = agents.type_idx[:, :, None].expand(start.shape[:-1])
    ids, _ = nearest_tokens(tv, types, start, end, k=k)  # [B, A, T-1, k]
    pick = torch.randint(0, k, ids.shape[:-1], generator=gen, device=ids.device)
    noisy = ids.gather(-1, pick[..., None])[..., 0]
    swap = (torch.rand(noisy.shape, generator=gen, device=ids.device) < prob) & agents.valid[:, :, 1:]
    swap &= agents.valid[:, :, :-1]
    tokens = agents.tokens.clone()
    tokens[:, :, 1:] = torch.where(swap, noisy, tokens[:, :, 1:])
    return AgentBatch(tokens, agents.poses, agents.valid, agents.type_idx)


def sample_top_k(logits: torch.Tensor, k: int, gen: torch.Generator | None = None) -> torch.Tensor:
    """One id per row of logits [..., V], sampled from the renormalised top-k."""
    top, idx = torch.topk(logits, min(k, logits.shape[-1]), dim=-1)
    probs = torch.softmax(top, dim=-1).reshape(-1, top.shape[-1])
    choice = torch.multinomial(probs, 1, generator=gen).view(*top.shape[:-1], 1)
    return idx.gather(-1, choice)[..., 0]


@torch.no_grad()
def rollout_min_ade(model: BehaviorModel, mb: MapBatch, ab: AgentBatch, logged: torch.Tensor, logged_valid: torch.Tensor,
                    rollouts: int, top_k: int, gen: torch.Generator) -> tuple[float, int]:
    """(sum of per-agent minADE over `rollouts` sampled rollouts, #agents). Every agent valid at the current step is
    driven by the model from its logged history (incremental decoding); the error is measured at the 16 future
    token boundaries (0.5 s) against the logged poses `logged` [B, A, 19, 3] where `logged_valid`."""
    tv = model.vocab.to_torch(mb.pos.device)
    state, logits = model.start(model.encode_map(mb), ab.slice_time(0, CURRENT_BOUNDARY), rollouts)
    alive = state.last_valid.clone()
    pose, preds = state.last_pose, []
    for i in range(CURRENT_BOUNDARY, ab.tokens.shape[2]):
        tok = sample_top_k(logits, top_k, gen)
        pose = token_end_poses(tv, state.type_idx, pose, tok)
        preds.append(pose[..., :2])
        if i + 1 < ab.tokens.shape[2]:
            logits = model.step(state, tok, pose, alive)
    pred = torch.stack(preds, dim=2)  # [B*R, A, 16, 2]
    gt = logged[:, :, CURRENT_BOUNDARY + 1:, :2].repeat_interleave(rollouts, 0)
    ok = logged_valid[:, :, CURRENT_BOUNDARY + 1:].repeat_interleave(rollouts, 0) & alive[..., None]
    err = torch.linalg.vector_norm(pred - gt, dim=-1)
    ade = (err * ok).sum(-1) / ok.sum(-1).clamp_min(1)  # [B*R, A]
    b, a = ab.tokens.shape[:2]
    min_ade = ade.view(b, rollouts, a).min(dim=1).values
    counted = ok.view(b, rollouts, a, -1)[:, 0].any(-1)
    return float(min_ade[counted].sum()), int(counted.sum())


@torch.no_grad()
def evaluate(model: BehaviorModel, samples: Sequence[Sample], batch_size: int, rollouts: int, top_k: int,
             device: torch.device, seed: int = 0) -> dict[str, float]:
    """Teacher-forced loss / token accuracy / repeat-last baseline accuracy, and rollout minADE (m)."""
    was_training = model.training
    model.eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    loss_sum = hits = base = total = 0.0
    ade_sum, ade_n = 0.0, 0
    for lo in range(0, len(samples), batch_size):
        chunk = samples[lo:lo + batch_size]
        mb, ab = (x.to(device) for x in make_batch(chunk))
        targets = TokenTargets.from_tokens(ab.tokens, ab.valid)
        logits = model(mb, ab)
        n = int(targets.mask.sum())
        loss_sum += float(next_token_loss(logits, targets)) * n
        c, _ = token_accuracy(logits, targets)
        r, _ = repeat_last_accuracy(ab.tokens, targets)
        hits, base, total = hits + c, base + r, total + n
        logged = torch.stack([torch.as_tensor(np.pad(s.agent_tokens.logged_poses[s.agents],
                                                     ((0, ab.tokens.shape[1] - len(s.agents)), (0, 0), (0, 0))),
                                              dtype=torch.float32) for s in chunk]).to(device)
        lvalid = torch.stack([torch.as_tensor(np.pad(s.agent_tokens.pose_valid[s.agents],
                                                     ((0, ab.tokens.shape[1] - len(s.agents)), (0, 0))))
                              for s in chunk]).to(device)
        s_, n_ = rollout_min_ade(model, mb, ab, logged, lvalid, rollouts, top_k, gen)
        ade_sum, ade_n = ade_sum + s_, ade_n + n_
    model.train(was_training)
    return {"eval_loss": loss_sum / max(total, 1), "eval_token_acc": hits / max(total, 1),
            "eval_repeat_last_acc": base / max(total, 1), "eval_min_ade": ade_sum / max(ade_n, 1),
            "eval_tokens": total, "eval_agents": ade_n}


def lr_lambda(warmup: int, max_steps: int, min_ratio: float):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def train_loop(config: dict[str, Any]) -> None:
    """Ray Train worker entry point (`train_loop_per_worker`)."""
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    from cluster.pretrain import PretrainConfig

    torch.set_num_threads(1)
    cfg = from_dict(PretrainConfig, config)
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.seed)
    vocab = MotionVocab.load(cfg.data.vocab)
    model = BehaviorModel(cfg.model, vocab).to(device)  # before the optimizer: its state follows the params' device
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.optim.warmup_steps, cfg.max_steps,
                                                             cfg.optim.min_lr_ratio))
    run = RunDirectory(cfg.run_dir)
    step, latest = 0, run.latest() if cfg.resume else None
    if latest is not None:
        from drivetune.checkpoint import load_weights, read_meta

        meta = read_meta(latest)
        if meta["vocab_hash"] != vocab.hash or meta["model_config"] != to_dict(model.cfg):
            raise ValueError(f"{latest}: vocabulary or model config differs from this run's; use a new run_dir "
                             "(or resume=false)")
        load_weights(latest, model)
        state = RunDirectory.load_trainer_state(latest)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step = int(state["step"])
        if rank == 0:
            log.info("resumed from %s at step %d", latest, step)
        if step >= cfg.max_steps:  # nothing left to do: hand the finished checkpoint back to Ray Train
            done = Checkpoint.from_directory(str(latest)) if rank == 0 else None
            ray.train.report({"step": step, **meta.get("metrics", {})}, checkpoint=done)
            return
    ddp = ray.train.torch.prepare_model(model)
    tv = vocab.to_torch(device)
    t0 = time.perf_counter()
    train = tokenize_rows(ray.train.get_dataset_shard("train").iter_rows(), vocab, cfg.data.max_agents)
    if not train:
        raise ValueError(f"worker {rank} received no training scenes: use fewer workers or more scenes")
    evals: list[Sample] = []
    if rank == 0:
        try:
            evals = tokenize_rows(ray.train.get_dataset_shard("eval").iter_rows(), vocab, cfg.data.max_agents)
        except KeyError:  # no held-out scenes: evaluate on this worker's training scenes
            evals = train
        evals = evals[: cfg.eval_scenes]
        log.info("tokenized %d train scenes (rank 0) and %d eval scenes in %.1fs", len(train), len(evals),
                 time.perf_counter() - t0)
    gen = torch.Generator(device=device).manual_seed(cfg.seed * 1000 + rank)
    window: dict[str, float] = {"loss": 0.0, "hits": 0, "base": 0, "total": 0, "scenes": 0, "steps": 0}
    t_window = time.perf_counter()
    while step < cfg.max_steps:
        idx = batch_indices(len(train), cfg.batch_size, step, cfg.seed, rank)
        mb, ab = (x.to(device) for x in make_batch([train[i] for i in idx]))
        inputs = ab
        if cfg.token_noise_k > 1 and cfg.token_noise_prob > 0:
            inputs = token_noise(ab, tv, cfg.token_noise_k, cfg.token_noise_prob, gen)
        targets = TokenTargets.from_tokens(ab.tokens, ab.valid)
        logits = ddp(mb, inputs)
        loss = next_token_loss(logits, targets, cfg.optim.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        opt.step()
        sched.step()
        step += 1
        c, n = token_accuracy(logits.detach(), targets)
        r, _ = repeat_last_accuracy(ab.tokens, targets)
        for key, val in (("loss", float(loss) * n), ("hits", c), ("base", r), ("total", n), ("scenes", len(idx)),
                         ("steps", 1)):
            window[key] += val
        last = step == cfg.max_steps
        if step % cfg.log_every and step % cfg.checkpoint_every and not last:
            continue
        elapsed = time.perf_counter() - t_window
        metrics: dict[str, Any] = {
            "step": step, "lr": sched.get_last_lr()[0], "grad_norm": float(grad_norm),
            "loss": window["loss"] / max(window["total"], 1), "token_acc": window["hits"] / max(window["total"], 1),
            "repeat_last_acc": window["base"] / max(window["total"], 1),
            "scenes_per_s_per_worker": window["scenes"] / max(elapsed, 1e-9),
        }
        window = {k: 0 for k in window}
        t_window = time.perf_counter()
        do_eval = last or (cfg.eval_every and step % cfg.eval_every == 0)
        if rank == 0 and do_eval and evals:
            metrics.update(evaluate(model, evals, cfg.batch_size, cfg.eval_rollouts, cfg.eval_top_k, device, cfg.seed))
        checkpoint = None
        if rank == 0:
            log.info("step %d/%d %s", step, cfg.max_steps,
                     " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float)))
            run.append_metrics(metrics)
            if last or step % cfg.checkpoint_every == 0:
                path = run.save(model, step, {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                                              "step": step}, metrics=metrics,
                                extra_meta={"stage": "pretrain", "config": config}, keep_last=cfg.keep_checkpoints)
                checkpoint = Checkpoint.from_directory(str(path))
        ray.train.report(metrics, checkpoint=checkpoint)
