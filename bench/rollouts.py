"""Closed-loop rollout engine speed (model v2 vs the v1 engine vs batched recomputation) and weight broadcast, in one run.

Rollouts: R=32 top-K rollouts of a real WOMD scene (default: the 50-agent `637f20cafde22ff8`), random weights,
2048-token vocabularies, `micro` and `tiny`, 1 and 2 torch threads. Every measurement runs in its own subprocess
(so its peak RSS is its own) and reports wall and CPU (process) time, median of `--repeats` after a warm-up:
  - new: `drivetune.closed_loop.simulate` with the current (v2, SMART's layers) `BehaviorModel`;
  - v1: the whole engine of the commit before model v2 (`--before-rev`, default b606c69: its own model definition,
    decoder, engine loop, sampler and tokenizer), extracted with `git archive`; its model is another network (v1's
    layers, seeded alike), so its tokens differ; skipped where git or that commit is unavailable;
  - recompute (fair no-cache baseline): all R rollouts batched, every step runs the full model over the map and the
    whole context so far (`model(map, agents)`, no cache), same sampler and random numbers.
With `--cuda`, new also runs on the CUDA device (wall time, peak `torch.cuda.max_memory_allocated`). The ratio
column is the run's CPU seconds over v1's at the same thread count (the model-v2 target: at most 1.25x). The last
column counts the rollouts whose 16 x A tokens all equal the new CPU engine's (recompute must equal it). The share of
CPU time in matrix-multiply kernels (torch profiler, one new run) tells how far it is from compute-bound. `--scene`
takes a WOMD TFRecord or a Parquet shard (devdata/ on the device machine).

Broadcast: a `tiny` state dict to 4 rollout actors: ours (`RolloutPool.set_weights`: one packed buffer, one `ray.put`)
vs the standard baseline, one `ray.put` of the numpy dict and its ObjectRef passed to every worker.

    OMP_NUM_THREADS=1 .venv/bin/python bench/rollouts.py [--sizes micro tiny] [--threads 1 2] [--repeats 2]
        [--recompute-sizes micro] [--scene PATH] [--skip-broadcast] [--cuda] [--json PATH] [--no-profile]
        [--before-rev REV | --before-rev '']
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ROOT = Path(__file__).resolve().parents[1]
CODE = os.environ.get("DRIVETUNE_BENCH_CODE", str(ROOT))  # the drivetune tree to time (v1: an older commit's)
sys.path[:0] = [CODE, str(ROOT / "tests")]

import numpy as np  # noqa: E402
import torch  # noqa: E402

from drivetune.checkpoint import state_dict_to_numpy  # noqa: E402
from drivetune.closed_loop import NUM_FUTURE_TOKENS, simulate  # noqa: E402
from drivetune.model.batch import select_agents  # noqa: E402
from drivetune.model import AgentBatch, BehaviorModel, ModelConfig, agent_batch, map_batch  # noqa: E402
from drivetune.samplers import SamplerConfig, StepInputs, rollout_seed, rollout_uniforms, sample  # noqa: E402
from drivetune.scene import X, Y  # noqa: E402
from drivetune.tokenizer import MotionVocab, token_end_poses, tokenize_map, tokenize_scene  # noqa: E402
from drivetune.tokenizer.layout import CURRENT_BOUNDARY  # noqa: E402
from drivetune.tokenizer.matching import boundary_poses  # noqa: E402
from drivetune.scene import Scene  # noqa: E402

SCENE = ROOT.parent / "shared" / "data" / "womd" / "motion_data_one_scenario.tfrecord"
MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm", "aten::_cdist_forward")
SAMPLER = SamplerConfig(kind="topk", k=32)


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


@torch.no_grad()
def recompute_rollouts(model, tv, scene, rollouts: int, seed: int) -> np.ndarray:
    """Fair no-cache baseline: all rollouts in one batch, each step the full model over map + context so far."""
    picks = select_agents(scene)
    maps = map_batch([tokenize_map(scene)])
    hist = agent_batch([tokenize_scene(scene, tv)], [picks]).slice_time(0, CURRENT_BOUNDARY)
    st = scene.states[picks, scene.current_time_index]
    uni = torch.stack([rollout_uniforms(rollout_seed(scene.scenario_id, r, seed, 0), NUM_FUTURE_TOKENS, len(picks))
                       for r in range(rollouts)], 1)  # [T, R, A]
    rep = lambda x: x.repeat_interleave(rollouts, 0)  # noqa: E731
    tokens, poses, valid, types, size = (rep(hist.tokens), rep(hist.poses), rep(hist.valid), rep(hist.type_idx),
                                         rep(hist.size))
    heading = boundary_poses(scene)[0][picks, CURRENT_BOUNDARY, 2]  # cleaned, as the engine starts
    pose = rep(torch.as_tensor(np.stack([st[:, X], st[:, Y], heading], -1), dtype=torch.float32)[None])
    out = np.zeros((rollouts, len(picks), NUM_FUTURE_TOKENS), np.int64)
    for t in range(NUM_FUTURE_TOKENS):
        logits = model(maps, AgentBatch(tokens=tokens, poses=poses, valid=valid, type_idx=types, size=size))[:, :, -1]
        res = sample(SAMPLER, StepInputs(logits=logits.flatten(0, 1), uniforms=uni[t].flatten(), vocab=tv,
                                         pose=pose.flatten(0, 1), type_idx=types.flatten()))
        tok = res.token.view(rollouts, -1)
        pose = token_end_poses(tv, types, pose, tok)
        tokens = torch.cat([tokens, tok[:, :, None]], 2)
        poses = torch.cat([poses, pose[:, :, None]], 2)
        valid = torch.cat([valid, torch.ones_like(valid[:, :, :1])], 2)
        out[:, :, t] = tok.numpy()
    return out


def load_scene(path: Path) -> Scene:
    """The first scene of a WOMD TFRecord, or of a Parquet shard (`drivetune.shards`: readable without the WOMD
    protos, e.g. devdata/ on the device machine)."""
    if Path(path).suffix == ".parquet":
        from drivetune.shards import read_shard

        return read_shard(path)[0]
    from drivetune.womd import load_scene as load_womd

    return load_womd(path)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def extract_tree(rev: str, dest: Path) -> Path | None:
    """The repository at `rev` as a plain directory (git archive), or None without git / that commit."""
    try:
        blob = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev, "drivetune"],
                              capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    dest.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=blob, check=True)
    return dest


def run_one(args) -> dict:
    """Subprocess body: time one engine; save its tokens to args.tokens_out; return the figures."""
    torch.set_num_threads(args.threads)
    scene = load_scene(args.scene)
    vocab = grid_vocab()
    torch.manual_seed(0)
    dev = torch.device(args.device)
    model = BehaviorModel(ModelConfig.named(args.size), vocab).eval().to(dev)
    tv = vocab.to_torch(dev)
    cuda = dev.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    engine = model
    if args.run == "recompute":
        call = lambda: recompute_rollouts(model, tv, scene, args.rollouts, seed=1)  # noqa: E731
        recompute_rollouts(model, tv, scene, 1, seed=1)  # warm-up
    else:
        call = lambda: simulate(engine, tv, [scene], args.rollouts, SAMPLER, base_seed=1)[0].tokens  # noqa: E731
        simulate(engine, tv, [scene], 2, SAMPLER)  # warm-up
    walls, cpus = [], []
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    for _ in range(args.repeats):
        sync()
        w0, c0 = time.perf_counter(), time.process_time()
        tokens = call()
        sync()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    np.save(args.tokens_out, tokens)
    res = dict(wall=statistics.median(walls), cpu=statistics.median(cpus), rss_mb=_rss_mb(),
               params=model.num_parameters(), agents=int(tokens.shape[1]),
               code=str(Path(sys.modules["drivetune"].__file__).parent),
               cuda_peak_mb=torch.cuda.max_memory_allocated(dev) / 2**20 if cuda else None)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            call()
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        res["matmul_share"] = sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS) / total
        res["profile"] = events.table(sort_by="self_cpu_time_total", row_limit=16)
    return res


def spawn(run: str, size: str, threads: int, args, tmp: Path, profile: bool, device: str = "cpu") -> dict:
    """Time engine `run` (new / recompute / v1) in its own subprocess."""
    out = tmp / f"{run}_{size}_{threads}_{device}.npy"
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    if run == "v1":  # the older tree's own model and simulate()
        env["DRIVETUNE_BENCH_CODE"] = str(args.before_tree)
    cmd = [sys.executable, __file__, "--run", "new" if run == "v1" else run, "--size", size,
           "--threads", str(threads), "--scene", str(args.scene), "--rollouts", str(args.rollouts),
           "--repeats", str(args.repeats), "--tokens-out", str(out), "--device", device]
    proc = subprocess.run(cmd + (["--profile"] if profile else []), env=env, capture_output=True, text=True, check=True)
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["tokens"] = np.load(out)
    peak = f"cuda peak {res['cuda_peak_mb']:.0f} MB" if res["cuda_peak_mb"] else f"peak RSS {res['rss_mb']:.0f} MB"
    # progress: kept in the log if a time limit cuts the run
    print(f"  ... {run} {size} {threads} thread(s) {device}: wall {res['wall']:.2f} s, cpu {res['cpu']:.2f} s, "
          f"{res['agents']} agents, {peak}, code {res['code']}", flush=True)
    return res


def bench_broadcast(workers: int, repeats: int) -> dict:
    import ray

    from rollout_workers import PolicySpec, PoolConfig, RolloutPool

    tmp = tempfile.mkdtemp(prefix="dtb_", dir="/tmp")
    ray.init(address="local", _temp_dir=tmp, num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=512 * 1024 * 1024,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}})
    try:
        model = BehaviorModel(ModelConfig.named("tiny"), grid_vocab())
        pool = RolloutPool(PolicySpec.from_model(model, rewards=False),
                           PoolConfig(num_workers=workers, num_cpus=2 / workers))
        state = state_dict_to_numpy(model)
        pool.set_weights(state, 0)  # warm-up (actor start)
        ours, plain = [], []
        for v in range(repeats):  # interleaved, so both see the same load
            ours.append(pool.set_weights(state, 2 * v + 1))
            t0 = time.perf_counter()
            ref = ray.put(state)  # the standard way: one put of the numpy dict, the same ref to every worker
            ray.get([w.set_weights.remote(ref, 2 * v + 2) for w in pool.workers])
            plain.append(time.perf_counter() - t0)
            del ref
        pool.shutdown()
        return dict(params=model.num_parameters(), workers=workers, ours_ms=1e3 * statistics.median(ours),
                    plain_ms=1e3 * statistics.median(plain), mb=sum(v.nbytes for v in state.values()) / 2**20)
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="*", default=["micro", "tiny"])
    ap.add_argument("--threads", nargs="*", type=int, default=[1, 2])
    ap.add_argument("--rollouts", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--recompute-sizes", nargs="*", default=["micro"],
                    help="sizes that also run the batched-recomputation baseline (1 thread; tiny needs several GiB)")
    ap.add_argument("--scene", type=Path, default=SCENE)
    ap.add_argument("--broadcast-workers", type=int, default=4)
    ap.add_argument("--broadcast-repeats", type=int, default=15)
    ap.add_argument("--skip-broadcast", action="store_true")
    ap.add_argument("--cuda", action="store_true", help="also run new on the CUDA device (once per size)")
    ap.add_argument("--json", type=Path, help="write every figure to this JSON file")
    ap.add_argument("--no-profile", action="store_true", help="skip the torch-profiler pass (matmul share)")
    ap.add_argument("--before-rev", default="b606c69",
                    help="commit whose whole engine (model v1) is the baseline ('' to skip)")
    ap.add_argument("--run", choices=["new", "recompute"], help=argparse.SUPPRESS)
    ap.add_argument("--size", help=argparse.SUPPRESS)
    ap.add_argument("--tokens-out", help=argparse.SUPPRESS)
    ap.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run:
        args.threads = args.threads[0]
        print(json.dumps(run_one(args)))
        return 0
    if args.cuda and not torch.cuda.is_available():
        print("CUDA not available: the cuda runs are skipped")
        args.cuda = False
    with tempfile.TemporaryDirectory(prefix="dtrb_") as tmp:
        args.before_tree = extract_tree(args.before_rev, Path(tmp) / "before") if args.before_rev else None
        if args.before_rev and args.before_tree is None:
            print(f"no git or no commit {args.before_rev}: the v1 (whole pre-v2 engine) runs are skipped")
        print(f"scene {args.scene.name}, {args.rollouts} rollouts, top-K 32; wall / CPU s (median of {args.repeats}); "
              f"load average {os.getloadavg()[0]:.1f}; v1 = {args.before_rev or '-'}")
        print(f"{'size':<6} {'thr':>3} {'engine':<10} {'wall s':>7} {'cpu s':>7} {'agent-steps/s (cpu)':>19} "
              f"{'(wall)':>9} {'peak MB':>8} {'cpu / v1':>9} {'matmul %':>8} rollouts with new's tokens")
        profiles, figures = [], []
        for size in args.sizes:
            table: dict[tuple[str, int], dict] = {}
            if args.cuda:  # first (fast), so a time limit that cuts the CPU runs short keeps them
                table[("new-cuda", args.threads[0])] = spawn("new", size, args.threads[0], args, Path(tmp), False,
                                                             "cuda")
            for threads in args.threads:
                runs = (["new"] + (["v1"] if args.before_tree else [])
                        + (["recompute"] if size in args.recompute_sizes and threads == 1 else []))
                table.update({(r, threads): spawn(r, size, threads, args, Path(tmp), profile=not args.no_profile
                                                  and threads == 1 and r == "new") for r in runs})
            for (r, threads), x in table.items():
                gpu = r.endswith("-cuda")
                steps = args.rollouts * x["agents"] * NUM_FUTURE_TOKENS
                share = f"{100 * x['matmul_share']:.0f}" if "matmul_share" in x else "-"
                v1 = table.get(("v1", threads))
                vs_v1 = x["cpu"] / v1["cpu"] if v1 and not gpu else None
                ref = table.get(("new", args.threads[0]), x)["tokens"]
                same = int((x["tokens"] == ref).all(axis=(1, 2)).sum())
                peak = x["cuda_peak_mb"] if gpu else x["rss_mb"]
                print(f"{size:<6} {threads:>3} {r:<10} {x['wall']:>7.2f} {x['cpu']:>7.2f} {steps / x['cpu']:>19,.0f} "
                      f"{steps / x['wall']:>9,.0f} {peak:>8.0f} {'-' if vs_v1 is None else f'{vs_v1:.2f}x':>9} "
                      f"{share:>8} {same}/{args.rollouts}", flush=True)
                figures.append(dict(size=size, threads=threads, engine=r, agent_steps=steps, cpu_over_v1=vs_v1,
                                    same_tokens_as_new_cpu=same, **{k: v for k, v in x.items()
                                                                    if k not in ("tokens", "profile")}))
                if "profile" in x and r == "new":
                    profiles.append((size, x["profile"]))
            if args.json:  # after every size: a run cut short by a time limit keeps what it measured
                args.json.write_text(json.dumps(dict(scene=args.scene.name, rollouts=args.rollouts,
                                                     repeats=args.repeats, load_average=os.getloadavg()[0],
                                                     runs=figures), indent=1))
        for size, table in profiles:
            print(f"\ntorch profiler, new engine, {size}, 1 thread (self CPU):\n{table}")
    if not args.skip_broadcast:
        b = bench_broadcast(args.broadcast_workers, repeats=args.broadcast_repeats)
        print(f"weight broadcast, {b['params']:,} params ({b['mb']:.1f} MiB) -> {b['workers']} workers: ours (packed "
              f"buffer, one ray.put) {b['ours_ms']:.1f} ms | one ray.put of the numpy dict {b['plain_ms']:.1f} ms | "
              f"{b['plain_ms'] / b['ours_ms']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
