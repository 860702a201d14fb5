"""Benchmark: BC training scenes/s of one worker, and inference agent-steps/s of incremental (cached) decoding vs
recomputing the full context every step (SMART's original loop), side by side in one run.

    .venv/bin/python bench/train.py --scenes ../shared/data/womd/motion_data_one_scenario.tfrecord --size micro
    .venv/bin/python bench/train.py --scenes data/shards --vocab data/vocab.safetensors --size tiny --device cuda

Without `--vocab` a small built-in vocabulary (constant-speed/yaw-rate arcs, 65 tokens) is used; the head size then
differs from a 2048-token vocabulary, the attention stack does not.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import torch  # noqa: E402

from cluster.pretrain_data import make_batch, make_sample  # noqa: E402
from drivetune.model import BehaviorModel, ModelConfig  # noqa: E402
from drivetune.sources import iter_scenes  # noqa: E402
from drivetune.tokenizer import CURRENT_BOUNDARY, MotionVocab, token_end_poses  # noqa: E402
from trainer.objectives import TokenTargets, next_token_loss  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def sample_top_k(logits: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """One id per row of logits [..., V], sampled from the renormalised top-k."""
    top, idx = torch.topk(logits, min(k, logits.shape[-1]), dim=-1)
    choice = torch.multinomial(torch.softmax(top, -1).reshape(-1, top.shape[-1]), 1, generator=gen)
    return idx.gather(-1, choice.view(*top.shape[:-1], 1))[..., 0]


def bench_training(model, samples, batch_size: int, steps: int, device) -> float:
    """Scenes/s of full training steps (forward, backward, AdamW) in this one process."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    batches = [tuple(x.to(device) for x in make_batch(samples[i:i + batch_size]))
               for i in range(0, len(samples) - batch_size + 1, batch_size)]
    run = itertools.cycle(batches)
    for _ in range(2):  # warm-up
        mb, ab = next(run)
        next_token_loss(model(mb, ab), TokenTargets.from_tokens(ab.tokens, ab.valid)).backward()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        mb, ab = next(run)
        loss = next_token_loss(model(mb, ab), TokenTargets.from_tokens(ab.tokens, ab.valid))
        opt.zero_grad()
        loss.backward()
        opt.step()
    _sync(device)
    return steps * batch_size / (time.perf_counter() - t0)


@torch.no_grad()
def bench_decoding(model, mb, ab, rollouts: int, incremental: bool, device) -> float:
    """Agent-steps/s of a 16-step closed-loop rollout of every agent (top-5 sampling), R rollouts per scene."""
    model.eval()
    tv = model.vocab.to_torch(device)
    gen = torch.Generator(device=device).manual_seed(0)
    rep = lambda x: x.repeat_interleave(rollouts, 0)  # noqa: E731
    steps = ab.tokens.shape[2] - CURRENT_BOUNDARY
    _sync(device)
    t0 = time.perf_counter()
    if incremental:
        state, logits = model.start(model.encode_map(mb), ab.slice_time(0, CURRENT_BOUNDARY), rollouts)
        alive, pose = state.last_valid.clone(), state.last_pose
        for i in range(steps):
            tok = sample_top_k(logits, 5, gen)
            pose = token_end_poses(tv, state.type_idx, pose, tok)
            if i + 1 < steps:
                logits = model.step(state, tok, pose, alive)
    else:  # recompute: the whole context (and the map) through the whole stack at every step
        hist = ab.slice_time(0, CURRENT_BOUNDARY)
        tokens, poses, valid = rep(hist.tokens), rep(hist.poses), rep(hist.valid)
        types, size, alive = rep(ab.type_idx), rep(ab.size), rep(hist.valid[:, :, -1])
        mb_r = type(mb)(**{k: rep(v) for k, v in vars(mb).items()})
        for i in range(steps):
            ctx = type(ab)(tokens, poses, valid, types, size)
            tok = sample_top_k(model(mb_r, ctx)[:, :, -1], 5, gen)
            pose = token_end_poses(tv, types, poses[:, :, -1], tok)
            tokens = torch.cat([tokens, tok[:, :, None]], 2)
            poses = torch.cat([poses, pose[:, :, None]], 2)
            valid = torch.cat([valid, alive[:, :, None]], 2)
    _sync(device)
    agents = int(ab.valid[:, :, CURRENT_BOUNDARY - 1].sum()) * rollouts
    return agents * steps / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenes", nargs="+", default=[str(REPO.parent / "shared/data/womd/motion_data_one_scenario.tfrecord")],
                   help="TFRecord(s) or shard directory")
    p.add_argument("--num-scenes", type=int, default=8)
    p.add_argument("--vocab", default=None, help="motion vocabulary (default: built-in 65-token test vocabulary)")
    p.add_argument("--size", default="micro", choices=["micro", "nano", "tiny"])
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--train-steps", type=int, default=10)
    p.add_argument("--rollouts", type=int, default=4)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    torch.manual_seed(0)
    device = torch.device(args.device)
    if args.vocab:
        vocab = MotionVocab.load(args.vocab)
    else:
        from model_helpers import grid_vocab

        vocab = grid_vocab()
    scenes = list(itertools.islice(iter_scenes(args.scenes), args.num_scenes))
    samples = [make_sample(s, vocab) for s in scenes]
    while len(samples) < args.batch_size:
        samples += samples
    model = BehaviorModel(ModelConfig.named(args.size), vocab).to(device)
    print(f"model {args.size}: {model.num_parameters() / 1e6:.2f}M params, V={vocab.num_tokens}; {len(scenes)} scenes, "
          f"every sim agent, device {device}, torch threads {torch.get_num_threads()}")
    sps = bench_training(model, samples, args.batch_size, args.train_steps, device)
    print(f"training: {sps:.2f} scenes/s per worker (batch {args.batch_size} scenes, fwd+bwd+AdamW)")
    mb, ab = (x.to(device) for x in make_batch(samples[: args.batch_size]))
    inc = bench_decoding(model, mb, ab, args.rollouts, True, device)
    full = bench_decoding(model, mb, ab, args.rollouts, False, device)
    print(f"decoding {args.batch_size} scenes x {args.rollouts} rollouts x 16 steps: incremental {inc:,.0f} "
          f"agent-steps/s | full recompute {full:,.0f} agent-steps/s | ratio {inc / full:.1f}x")


if __name__ == "__main__":
    main()
