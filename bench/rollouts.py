"""Closed-loop rollout throughput (ours vs naive) and weight broadcast time, in one run.

Rollouts: 32 rollouts of a 50-agent scene (the first real WOMD scenario, 50 sim agents), `micro` and `tiny`, with
top-K sampling. Ours: `drivetune.closed_loop.simulate` (map encoded once per scene, all rollouts batched, one new
token per agent per step with per-layer caches). Naive baseline: every rollout on its own, and every step re-encodes
the map and recomputes the whole context (`model(map, agents_so_far)`), with the same sampler and random numbers,
so its tokens must equal ours (checked). The baseline runs a few rollouts and its rate is per rollout (it is
sequential over rollouts, so it scales linearly).

Broadcast: a `tiny` state dict (~7M parameters) to 4 rollout workers: ours (`RolloutPool.set_weights`: numpy arrays
packed into one buffer per dtype, one `ray.put`, the same ObjectRef to every worker, zero-copy views there) vs torch
tensors passed by value to each worker.

    OMP_NUM_THREADS=1 .venv/bin/python bench/rollouts.py [--sizes micro tiny] [--naive-rollouts 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from drivetune.checkpoint import state_dict_to_numpy  # noqa: E402
from drivetune.closed_loop import NUM_FUTURE_TOKENS, simulate, sim_agents  # noqa: E402
from drivetune.model import BehaviorModel, ModelConfig, agent_batch, map_batch  # noqa: E402
from drivetune.samplers import SamplerConfig, StepInputs, rollout_seed, rollout_uniforms, sample  # noqa: E402
from drivetune.scene import HEADING, X, Y  # noqa: E402
from drivetune.tokenizer import MotionVocab, token_end_poses, tokenize_map, tokenize_scene  # noqa: E402
from drivetune.tokenizer.layout import CURRENT_BOUNDARY  # noqa: E402
from drivetune.womd import load_scene  # noqa: E402

SCENE = Path(__file__).resolve().parents[2] / "shared" / "data" / "womd" / "motion_data_one_scenario.tfrecord"


def grid_vocab(size: int = 2048) -> MotionVocab:
    """A 2048-token vocabulary per type (constant speed / yaw-rate arcs): the SMART-tiny head width, for timing."""
    speeds = np.linspace(0.0, 25.0, 32)
    rates = np.linspace(-0.8, 0.8, size // 32)
    t = np.arange(6) * 0.1
    toks = []
    for v in speeds:
        for w in rates:
            h = w * t
            x = v * np.sinc(h / np.pi) * t
            y = v * t * (1 - np.cos(h)) / np.where(np.abs(h) > 1e-9, h, 1.0)
            toks.append(np.stack([x, y, h], -1))
    toks[0] = np.zeros((6, 3))
    poses = np.broadcast_to(np.stack(toks)[None], (3, size, 6, 3)).copy()
    return MotionVocab(poses=poses, sizes=np.array([size] * 3))


def naive_rollouts(model, tv, scene, rollouts: int, cfg: SamplerConfig, seed: int) -> np.ndarray:
    """Baseline: one rollout at a time, full map + context recomputation every step. Returns tokens [R, A, 16]."""
    picks = sim_agents(scene)
    cur = scene.current_time_index
    maps = map_batch([tokenize_map(scene)])
    hist = agent_batch([tokenize_scene(scene, tv)], [picks]).slice_time(0, CURRENT_BOUNDARY)
    st = scene.states[picks, cur]
    out = np.zeros((rollouts, len(picks), NUM_FUTURE_TOKENS), np.int64)
    for r in range(rollouts):
        u = rollout_uniforms(rollout_seed(scene.scenario_id, r, seed, 0), NUM_FUTURE_TOKENS, len(picks))
        tokens, poses, valid = hist.tokens, hist.poses, hist.valid
        pose = torch.as_tensor(np.stack([st[:, X], st[:, Y], st[:, HEADING]], -1), dtype=torch.float32)
        for t in range(NUM_FUTURE_TOKENS):
            ctx = type(hist)(tokens=tokens, poses=poses, valid=valid, type_idx=hist.type_idx)
            logits = model(maps, ctx)[0, :, -1]
            res = sample(cfg, StepInputs(logits=logits, uniforms=u[t], pose=pose, type_idx=hist.type_idx[0], vocab=tv))
            pose = token_end_poses(tv, hist.type_idx[0], pose, res.token)
            tokens = torch.cat([tokens, res.token.view(1, -1, 1)], 2)
            poses = torch.cat([poses, pose.view(1, -1, 1, 3)], 2)
            valid = torch.cat([valid, torch.ones_like(valid[:, :, :1])], 2)
            out[r, :, t] = res.token.numpy()
    return out


def bench_rollouts(size: str, scene, rollouts: int, naive_n: int, device: str) -> dict:
    vocab = grid_vocab()
    torch.manual_seed(0)
    model = BehaviorModel(ModelConfig.named(size), vocab).to(device).eval()
    tv = vocab.to_torch(device)
    cfg = SamplerConfig(kind="topk", k=32)
    A = len(sim_agents(scene))
    simulate(model, tv, [scene], 2, cfg)  # warm-up
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        ours = simulate(model, tv, [scene], rollouts, cfg, base_seed=1)[0]
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    t_ours = statistics.median(times)
    with torch.no_grad():
        t0 = time.perf_counter()
        naive = naive_rollouts(model, tv, scene, naive_n, cfg, seed=1)
        t_naive = (time.perf_counter() - t0) / naive_n * rollouts  # sequential: linear in rollouts
    same = bool(np.array_equal(naive, ours.tokens[:naive_n]))
    steps = rollouts * A * NUM_FUTURE_TOKENS
    return dict(size=size, params=model.num_parameters(), agents=A, ours_s=t_ours, naive_s=t_naive,
                ours_rps=rollouts / t_ours, naive_rps=rollouts / t_naive, ours_asps=steps / t_ours,
                naive_asps=steps / t_naive, same_tokens=same)


def bench_broadcast(workers: int, repeats: int) -> dict:
    import ray

    from rollout_workers import PolicySpec, PoolConfig, RolloutPool
    from rollout_workers.weights import pack_state

    tmp = tempfile.mkdtemp(prefix="dtb_", dir="/tmp")
    ray.init(address="local", _temp_dir=tmp, num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=512 * 1024 * 1024,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}})
    try:
        model = BehaviorModel(ModelConfig.named("tiny"), grid_vocab())
        pool = RolloutPool(PolicySpec.from_model(model, rewards=False),
                           PoolConfig(num_workers=workers, num_cpus=2 / workers))
        state = state_dict_to_numpy(model)
        pool.set_weights(state, 0)  # warm-up (actor start)
        ours = [pool.set_weights(state, v + 1) for v in range(repeats)]
        no_wait = []
        for v in range(repeats):
            no_wait.append(pool.set_weights(state, 50 + v, wait=False))
            pool._collect_acks()  # outside the timed part: what the next generate() does first
        puts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            ref = ray.put(pack_state(state))
            puts.append(time.perf_counter() - t0)
            del ref
        tensors = {k: torch.from_numpy(v.copy()) for k, v in state.items()}
        by_value = []
        for v in range(repeats):
            t0 = time.perf_counter()
            ray.get([w.set_weights.remote(tensors, 100 + v) for w in pool.workers])  # pickled + copied per worker
            by_value.append(time.perf_counter() - t0)
        pool.shutdown()
        return dict(params=model.num_parameters(), workers=workers, ours_ms=1e3 * statistics.median(ours),
                    naive_ms=1e3 * statistics.median(by_value), put_ms=1e3 * statistics.median(puts),
                    no_wait_ms=1e3 * statistics.median(no_wait),
                    mb=sum(v.nbytes for v in state.values()) / 2**20)
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="*", default=["micro", "tiny"])
    ap.add_argument("--rollouts", type=int, default=32)
    ap.add_argument("--naive-rollouts", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--broadcast-workers", type=int, default=4)
    ap.add_argument("--broadcast-repeats", type=int, default=15)
    ap.add_argument("--skip-broadcast", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    scene = load_scene(SCENE)
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, scene {scene.scenario_id}")
    print(f"{'size':<6} {'params':>9} {'A':>3} | {'ours s':>7} {'rollouts/s':>10} {'agent-steps/s':>13} | "
          f"{'naive s':>8} {'rollouts/s':>10} {'agent-steps/s':>13} | {'speed-up':>8} same-tokens")
    for size in args.sizes:
        r = bench_rollouts(size, scene, args.rollouts, args.naive_rollouts, args.device)
        print(f"{r['size']:<6} {r['params']:>9,} {r['agents']:>3} | {r['ours_s']:>7.2f} {r['ours_rps']:>10.2f} "
              f"{r['ours_asps']:>13,.0f} | {r['naive_s']:>8.1f} {r['naive_rps']:>10.3f} {r['naive_asps']:>13,.0f} | "
              f"{r['naive_s'] / r['ours_s']:>7.1f}x {r['same_tokens']}", flush=True)
    if not args.skip_broadcast:
        b = bench_broadcast(args.broadcast_workers, repeats=args.broadcast_repeats)
        print(f"weight broadcast, {b['params']:,} params ({b['mb']:.1f} MiB) -> {b['workers']} workers: ours (packed "
              f"numpy, one ray.put) {b['ours_ms']:.1f} ms (pack + ray.put alone {b['put_ms']:.1f} ms; wait=False "
              f"{b['no_wait_ms']:.1f} ms) | torch tensors by value {b['naive_ms']:.1f} ms | "
              f"{b['naive_ms'] / b['ours_ms']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
