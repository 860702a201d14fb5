"""The per-worker loop of `drivetune train pretrain` (runs inside Ray Train workers) and its evaluation.

Each worker streams tokenized mini-batches from its split of the Ray Dataset (`cluster.pretrain_data`; tokenization
runs in Ray Data tasks, nothing is held per worker beyond a small shuffle buffer) for `max_steps` steps, epoch after
epoch. A resumed run continues the step counter, weights, optimizer and LR schedule; its data stream starts a new
epoch. Rank 0 evaluates on held-out scenes, writes checkpoints and metrics; every worker reports the same metrics to
Ray Train (`worker_peak_rss_mb` is the maximum over the workers).
"""

from __future__ import annotations

import logging
import math
import resource
import time
from dataclasses import replace
from typing import Any, Sequence

import numpy as np
import torch

from cluster.pretrain_config import PretrainConfig
from cluster.pretrain_data import make_batch, make_sample, training_batches
from drivetune.closed_loop import SceneRollouts, simulate
from drivetune.config import from_dict, to_dict
from drivetune.model import AgentBatch, BehaviorModel
from drivetune.samplers import SamplerConfig
from drivetune.scene import NUM_FUTURE_STEPS, X, Y, Scene
from drivetune.shards import scene_from_row
from drivetune.tokenizer import MotionVocab, TorchVocab, nearest_tokens
from trainer.run_directory import RunDirectory
from trainer.objectives import TokenTargets, next_token_loss, repeat_last_accuracy, token_accuracy

log = logging.getLogger("drivetune.pretrain")


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
    return replace(agents, tokens=tokens)


def min_ade(rollouts: SceneRollouts, scene: Scene) -> tuple[float, int]:
    """(sum over simulated agents of the minimum over rollouts of the 10 Hz average displacement error against the
    log, #agents with a logged future). Only logged-valid steps count."""
    cur = scene.current_time_index
    fut = slice(cur + 1, cur + 1 + NUM_FUTURE_STEPS)
    logged = scene.states[rollouts.track_index, fut][..., [X, Y]]  # [A, 80, 2]
    ok = scene.valid[rollouts.track_index, fut]  # [A, 80]
    pred = np.stack([rollouts.x, rollouts.y], -1)  # [G, A, 80, 2]
    err = np.linalg.norm(pred - logged[None], axis=-1)
    ade = (err * ok).sum(-1) / np.maximum(ok.sum(-1), 1)  # [G, A]
    counted = ok.any(-1)
    return float(ade.min(0)[counted].sum()), int(counted.sum())


@torch.no_grad()
def evaluate(model: BehaviorModel, scenes: Sequence[Scene], batch_size: int, rollouts: int, top_k: int,
             device: torch.device, seed: int = 0) -> dict[str, float]:
    """Teacher-forced loss / token accuracy / repeat-last baseline accuracy, and closed-loop minADE (m) over
    `rollouts` top-k rollouts of every sim agent (`drivetune.closed_loop.simulate`, the rollout workers' code)."""
    was_training = model.training
    model.eval()
    tv = model.vocab.to_torch(device)
    sampler = SamplerConfig(kind="topk", k=top_k)
    loss_sum = hits = base = total = 0.0
    ade_sum, ade_n = 0.0, 0
    for lo in range(0, len(scenes), batch_size):
        chunk = scenes[lo:lo + batch_size]
        mb, ab = (x.to(device) for x in make_batch([make_sample(s, model.vocab) for s in chunk]))
        targets = TokenTargets.from_tokens(ab.tokens, ab.valid)
        logits = model(mb, ab)
        n = int(targets.mask.sum())
        loss_sum += float(next_token_loss(logits, targets)) * n
        c, _ = token_accuracy(logits, targets)
        r, _ = repeat_last_accuracy(ab.tokens, targets)
        hits, base, total = hits + c, base + r, total + n
        for scene, out in zip(chunk, simulate(model, tv, chunk, rollouts, sampler, base_seed=seed)):
            s_, n_ = min_ade(out, scene)
            ade_sum, ade_n = ade_sum + s_, ade_n + n_
    model.train(was_training)
    return {"eval_loss": loss_sum / max(total, 1), "eval_token_acc": hits / max(total, 1),
            "eval_repeat_last_acc": base / max(total, 1), "eval_min_ade": ade_sum / max(ade_n, 1),
            "eval_tokens": total, "eval_agents": ade_n}


def peak_rss_mb() -> float:
    """Peak resident memory of this process (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _max_over_workers(value: float) -> float:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def _collective_device() -> torch.device:
    import torch.distributed as dist

    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


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
        from drivetune.checkpoint import check_model_version, load_weights, read_meta

        meta = read_meta(latest)
        check_model_version(latest, meta)
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
    batches = training_batches(ray.train.get_dataset_shard("train"), cfg.batch_size, cfg.data.shuffle_buffer,
                               cfg.seed * 1000 + rank)
    evals: list[Scene] = []
    if rank == 0:  # a few scenes (eval_scenes): held out, or training scenes when none are
        evals = [scene_from_row(row) for row in ray.train.get_dataset_shard("eval").iter_rows()]
    gen = torch.Generator(device=device).manual_seed(cfg.seed * 1000 + rank)
    window: dict[str, float] = {"loss": 0.0, "hits": 0, "base": 0, "total": 0, "scenes": 0, "steps": 0}
    t_window = time.perf_counter()
    while step < cfg.max_steps:
        samples = next(batches)
        mb, ab = (x.to(device) for x in make_batch(samples))
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
        for key, val in (("loss", float(loss) * n), ("hits", c), ("base", r), ("total", n), ("scenes", len(samples)),
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
            "worker_peak_rss_mb": _max_over_workers(peak_rss_mb()),
        }
        window = {k: 0 for k in window}
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
        t_window = time.perf_counter()  # evaluation and checkpointing stay out of the throughput figure
