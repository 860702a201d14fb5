"""RL post-training: effect on held-out scenes and throughput of the loop.

Effect: from one BC checkpoint, train GRBO, MPO and GRPO (configs/rft_<algo>_micro.yaml) for the same wall-clock
budget per run and training seed, then score BC and every result with the WOSAC 2025 realism metric (the same
rollouts count, sampler and seeds for all) on held-out synthetic scenes (another synth seed) and on the real WOMD
scenarios. Prints and writes a table with mean and spread over training seeds.

    python bench/rl.py effect --bc runs/bench_rl/bc --shards runs/bench_rl/shards \
        --heldout runs/bench_rl/heldout_synth --minutes 6 --seeds 0 1 2 --out runs/bench_rl/effect

Learner: the baseline commit's update against this tree's, in process on the same fixed groups (4 x 8 rollouts of
the base policy), alternating processes; wall and CPU seconds, tokens/s.

    python bench/rl.py learner --bc base/micro --shards runs/bench_rl/shards --updates 2 --rounds 2 \
        --out runs/bench_rl/ln

Throughput: GRBO iterations (configs/rft_grbo_micro.yaml, 1 rollout worker + the learner) of the RL code of a baseline
commit (git archive, default bb9ed4c: before the learner work of issue 22) synchronous, of this tree synchronous and
of this tree one-step-off (max_staleness 1), in interleaved rounds, each run in its own process and Ray; prints
seconds per phase, groups/s, learner tokens/s and the ratios.

    python bench/rl.py throughput --bc base/micro --shards runs/bench_rl/shards --iters 4 --rounds 1 \
        --out runs/bench_rl/tp
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cluster.rft import RFTConfig, train
from drivetune.checkpoint import load_checkpoint, resolve_checkpoint
from drivetune.config import load_config
from drivetune.evaluation import evaluate_policy
from drivetune.ray_runtime import ray_session
from drivetune.samplers import SamplerConfig
from drivetune.sources import iter_scenes

REPO = Path(__file__).resolve().parents[1]
REAL = [REPO.parent / "shared/data/womd/motion_data_one_scenario.tfrecord",
        REPO.parent / "shared/data/womd/womd_scenario_input.tfrecord"]
FIELDS = {"meta": "metametric", "collision": "simulated_collision_rate", "offroad": "simulated_offroad_rate",
          "red_light": "simulated_traffic_light_violation_rate", "minADE": "min_average_displacement_error"}


def rl_config(algo: str, bc: str, shards: str, run_dir: Path, *overrides: str) -> RFTConfig:
    return load_config(RFTConfig, REPO / "configs" / f"rft_{algo}_micro.yaml",
                       [f"init={bc}", f"run_dir={run_dir}", f"data.shards={shards}", "pool.num_workers=1",
                        "pool.num_cpus=1", "learner.num_cpus=1", *overrides]).validate()


def score(checkpoint: str, scenes: list, rollouts: int, sampler: SamplerConfig, seed: int) -> dict[str, float]:
    """Mean official fields over scenes of `rollouts` closed-loop rollouts per scene."""
    model, _ = load_checkpoint(resolve_checkpoint(checkpoint))
    mean = evaluate_policy(model, None, scenes, rollouts, sampler, seed)["mean"]
    return {name: float(mean[key]) for name, key in FIELDS.items()}


def effect(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sets = {"heldout_synth": list(iter_scenes(args.heldout))[: args.heldout_scenes],
            "womd_real": [s for p in REAL if p.exists() for s in iter_scenes(str(p))]}
    sampler = SamplerConfig(kind=args.eval_sampler, k=args.eval_k, warm_lambda=args.eval_warm_lambda)
    command = " ".join(["python bench/rl.py", *args.argv])
    saved = out / "results.json"  # runs accumulate: a later call adds its runs (BC is scored once)
    results = json.loads(saved.read_text()) if saved.is_file() else {"runs": []}
    results.setdefault("commands", []).append(command)

    def evaluate(name: str, algo: str, seed: int | None, ckpt: str, extra: dict) -> None:
        t0 = time.perf_counter()
        row = {"name": name, "algo": algo, "train_seed": seed, "checkpoint": ckpt, "command": command, **extra}
        for set_name, scenes in sets.items():
            row[set_name] = score(ckpt, scenes, args.eval_rollouts, sampler, args.eval_seed)
        row["eval_seconds"] = time.perf_counter() - t0
        results["runs"].append(row)
        print(json.dumps(row), flush=True)
        (out / "results.json").write_text(json.dumps(results, indent=1))

    if not any(r["algo"] == "bc" for r in results["runs"]):
        evaluate("BC", "bc", None, args.bc, {})
    with ray_session(num_cpus=2, log_to_driver=False):
        for seed in args.seeds:
            for algo in args.algos:
                name = f"{algo}{'-' + args.tag if args.tag else ''}"
                run_dir = out / f"{name}_s{seed}"
                t0 = time.perf_counter()
                records = train(rl_config(algo, args.bc, args.shards, run_dir, f"seed={seed}",
                                          f"max_iters={args.max_iters}", f"max_minutes={args.minutes}",
                                          *args.set), progress=False)
                evaluate(name.upper(), name, seed, str(run_dir), {"iterations": records[-1]["iteration"],
                                                                  "train_seconds": time.perf_counter() - t0,
                                                                  "overrides": args.set})
    print(table(results))
    (out / "table.md").write_text(table(results))


def table(results: dict) -> str:
    """Markdown: per method and scene set, mean ± std over training seeds of each field; change vs BC."""
    runs = results["runs"]
    bc = next(r for r in runs if r["algo"] == "bc")  # every row's change is against this one
    lines = []
    for set_name in ("heldout_synth", "womd_real"):
        lines += [f"\n**{set_name}**\n", "| method | seeds | iters | " + " | ".join(FIELDS) + " | coll+off vs BC |",
                  "|---" * (len(FIELDS) + 4) + "|"]
        for algo in dict.fromkeys(r["algo"] for r in runs):
            rows = [r[set_name] for r in runs if r["algo"] == algo]
            iters = [r.get("iterations", 0) for r in runs if r["algo"] == algo]
            cells = []
            for f in FIELDS:
                v = np.array([x[f] for x in rows])
                cells.append(f"{v.mean():.3f} ± {v.std():.3f}" if len(v) > 1 else f"{v.mean():.3f}")
            co = np.array([x["collision"] + x["offroad"] for x in rows])
            base = bc[set_name]["collision"] + bc[set_name]["offroad"]
            lines.append(f"| {algo.upper()} | {len(rows)} | {np.mean(iters):.0f} | " + " | ".join(cells)
                         + f" | {100 * (co.mean() / base - 1):+.1f} % |")
    return "\n".join(lines)


PHASES = ("seconds_iteration", "seconds_rollout", "seconds_update", "seconds_broadcast", "seconds_reward_worker",
          "seconds_rollout_worker", "groups_per_s", "learner_tokens_per_s")


def extract_tree(rev: str, dest: Path) -> Path:
    """The RL code of commit `rev` (git archive of the packages and configs) as a plain directory."""
    blob = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", rev, "drivetune", "trainer", "cluster",
                           "rollout_workers", "configs"], capture_output=True, check=True).stdout
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=blob, check=True)
    return dest


def run_one(args: argparse.Namespace) -> None:
    """Subprocess body: `iters` GRBO iterations of the tree on sys.path; prints the steady-state means as JSON."""
    import cluster.rft

    configs = Path(cluster.rft.__file__).resolve().parents[1] / "configs"  # the tree's own configs (its keys)
    cfg = load_config(RFTConfig, configs / "rft_grbo_micro.yaml",
                      [f"init={args.bc}", f"run_dir={args.out}", f"data.shards={args.shards}", "pool.num_workers=1",
                       "pool.num_cpus=1", "learner.num_cpus=1", "resume=false", f"max_iters={args.iters}",
                       f"max_staleness={args.staleness}", *args.set]).validate()
    with ray_session(num_cpus=2, log_to_driver=False):
        recs = train(cfg, progress=False)
    steady = recs[1:]  # the first iteration pays actor start-up
    row = {k: float(np.mean([r[k] for r in steady])) for k in PHASES}
    row["logp_diff_max"] = float(max(r["logp_diff_max"] for r in recs))
    print("RESULT " + json.dumps(row), flush=True)


def throughput(args: argparse.Namespace) -> None:
    """Interleaved rounds of: the baseline commit synchronous, this tree synchronous, this tree one-step-off."""
    out = Path(args.out)
    base = extract_tree(args.baseline, (out / f"tree_{args.baseline}").resolve())
    new = extract_tree(args.new, (out / f"tree_{args.new}").resolve()) if args.new else REPO
    arms = {"baseline sync": (base, 0), "new sync": (new, 0), "new one-step-off": (new, 1)}
    rows: dict[str, list[dict]] = {name: [] for name in arms}
    for rnd in range(args.rounds):
        for name, (tree, staleness) in arms.items():
            env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS="1")
            cmd = [sys.executable, str(REPO / "bench/rl.py"), "_run", "--bc", str(Path(args.bc).resolve()),
                   "--shards", str(Path(args.shards).resolve()), "--iters", str(args.iters), "--staleness",
                   str(staleness), "--out", str((out / f"{name.replace(' ', '_')}_{rnd}").resolve()), "--set",
                   *args.set]
            proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)  # cwd: Ray workers' path
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode or not line:
                raise RuntimeError(f"{name}: {proc.stderr[-3000:]}")
            rows[name].append(json.loads(line[0][7:]))
            print(f"round {rnd} {name}: " + ", ".join(f"{k} {v:.3g}" for k, v in rows[name][-1].items()), flush=True)
    mean = {name: {k: float(np.mean([r[k] for r in rs])) for k in rs[0]} for name, rs in rows.items()}
    b, n, o = mean["baseline sync"], mean["new sync"], mean["new one-step-off"]
    print(f"learner update: {b['seconds_update']:.2f} s -> {n['seconds_update']:.2f} s per iteration "
          f"(x{b['seconds_update'] / n['seconds_update']:.2f}); tokens/s {b['learner_tokens_per_s']:.0f} -> "
          f"{n['learner_tokens_per_s']:.0f}")
    print(f"whole iteration (sync): {b['seconds_iteration']:.2f} s -> {n['seconds_iteration']:.2f} s "
          f"(x{b['seconds_iteration'] / n['seconds_iteration']:.2f}); rollout phase {n['seconds_rollout']:.2f} s")
    print(f"one-step-off: {o['seconds_iteration']:.2f} s/iteration against {n['seconds_iteration']:.2f} s synchronous "
          f"(iteration rate x{n['seconds_iteration'] / o['seconds_iteration']:.2f})")
    (out / "throughput.json").write_text(json.dumps({"command": " ".join(["python bench/rl.py", *args.argv]),
                                                     "rows": rows, "mean": mean}, indent=1))


def learner_groups(args: argparse.Namespace, path: Path) -> None:
    """Fixed input for `learner`: one iteration's 4 groups of 8 rollouts of the base policy, one scene per call."""
    import pickle

    from cluster.rft import SceneSampler
    from drivetune.checkpoint import state_dict_to_numpy
    from rollout_workers import PolicySpec, RolloutWorker

    cfg = rl_config("grbo", args.bc, args.shards, path.parent / "unused")
    scenes = SceneSampler(cfg.data.shards, 1.0, cfg.data.eval_fraction).draw(cfg.scenes_per_iter, 0, 0)
    worker = RolloutWorker(PolicySpec.from_checkpoint(args.bc, reward_agents=cfg.scored))
    model, _ = load_checkpoint(resolve_checkpoint(args.bc))
    worker.set_weights(state_dict_to_numpy(model), 0)
    batches = [worker.generate([s], cfg.group_size, cfg.sampler, seed=0, sdc=cfg.sdc)[0] for s in scenes]
    path.write_bytes(pickle.dumps((scenes, batches)))


def learner_one(args: argparse.Namespace) -> None:
    """Subprocess body: `updates` learner updates (the tree on sys.path) on the fixed groups, each labelled with
    the learner's version; prints wall and CPU seconds of each as JSON."""
    import dataclasses
    import pickle

    import cluster.rft
    from trainer.learner import Learner

    configs = Path(cluster.rft.__file__).resolve().parents[1] / "configs"
    cfg = load_config(RFTConfig, configs / "rft_grbo_micro.yaml", [f"init={args.bc}", *args.set])
    scenes, batches = pickle.loads(Path(args.groups).read_bytes())
    learner = Learner(cfg.init, cfg.algo, cfg.reward, cfg.learner, cfg.seed)
    torch.set_num_threads(args.threads)  # after the constructor, which reads OMP_NUM_THREADS
    rows = []
    for _ in range(args.updates):
        cpu = time.process_time()
        stats = learner.update([dataclasses.replace(b, policy_version=learner.version) for b in batches], scenes)
        rows.append({"seconds_update": stats["seconds_update"], "cpu_seconds": time.process_time() - cpu,
                     "learner_tokens_per_s": stats["learner_tokens_per_s"], "logp_diff_max": stats["logp_diff_max"]})
    print("RESULT " + json.dumps(rows), flush=True)


def learner_bench(args: argparse.Namespace) -> None:
    """The learner alone, in process: the baseline commit's update against this tree's on the same groups,
    alternating, each in its own process; wall and CPU seconds (CPU time is what a loaded machine distorts least)."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    groups = out / "groups.pkl"
    if not groups.is_file():
        learner_groups(args, groups)
    trees = {"baseline": extract_tree(args.baseline, (out / f"tree_{args.baseline}").resolve()),
             "new": extract_tree(args.new, (out / f"tree_{args.new}").resolve()) if args.new else REPO}
    rows: dict[str, list[dict]] = {name: [] for name in trees}
    for rnd in range(args.rounds):
        for name, tree in trees.items():
            cmd = [sys.executable, str(REPO / "bench/rl.py"), "_learner", "--bc", str(Path(args.bc).resolve()),
                   "--groups", str(groups.resolve()), "--updates", str(args.updates), "--threads",
                   str(args.new_threads if name == "new" else 1), "--set", *args.set]
            proc = subprocess.run(cmd, cwd=tree, env=dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS="1"),
                                  capture_output=True, text=True)
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode or not line:
                raise RuntimeError(f"{name}: {proc.stderr[-3000:]}")
            rows[name] += json.loads(line[0][7:])
            print(f"round {rnd} {name}: " + "; ".join(", ".join(f"{k} {v:.3g}" for k, v in r.items())
                                                      for r in rows[name][-args.updates:]), flush=True)
    mean = {name: {k: float(np.mean([r[k] for r in rs])) for k in rs[0]} for name, rs in rows.items()}
    b, n = mean["baseline"], mean["new"]
    print(f"learner update: wall {b['seconds_update']:.2f} -> {n['seconds_update']:.2f} s "
          f"(x{b['seconds_update'] / n['seconds_update']:.2f}), CPU {b['cpu_seconds']:.2f} -> {n['cpu_seconds']:.2f} s "
          f"(x{b['cpu_seconds'] / n['cpu_seconds']:.2f}), tokens/s {b['learner_tokens_per_s']:.0f} -> "
          f"{n['learner_tokens_per_s']:.0f}, logp_diff_max {b['logp_diff_max']:.2g} / {n['logp_diff_max']:.2g}")
    (out / "learner.json").write_text(json.dumps({"command": " ".join(["python bench/rl.py", *args.argv]),
                                                  "rows": rows, "mean": mean}, indent=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="mode", required=True)
    e = sub.add_parser("effect")
    e.add_argument("--bc", required=True)
    e.add_argument("--shards", required=True)
    e.add_argument("--heldout", required=True, help="held-out synthetic scenes (another synth seed)")
    e.add_argument("--heldout-scenes", type=int, default=16)
    e.add_argument("--algos", nargs="+", default=["grbo", "mpo", "grpo"])
    e.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    e.add_argument("--minutes", type=float, default=6.0, help="wall-clock training budget per run")
    e.add_argument("--max-iters", type=int, default=1000)
    e.add_argument("--eval-rollouts", type=int, default=32)
    e.add_argument("--eval-sampler", default="topk")
    e.add_argument("--eval-k", type=int, default=16)
    e.add_argument("--eval-warm-lambda", type=float, default=0.0)
    e.add_argument("--eval-seed", type=int, default=1234)
    e.add_argument("--set", nargs="*", default=[], help="extra config overrides for every run (key=value)")
    e.add_argument("--tag", default="", help="name suffix of these runs (e.g. a variant of an algorithm)")
    e.add_argument("--out", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--bc", required=True)
    t.add_argument("--shards", required=True)
    t.add_argument("--iters", type=int, default=4)
    t.add_argument("--rounds", type=int, default=1, help="interleaved rounds of the three arms")
    t.add_argument("--baseline", default="bb9ed4c", help="commit whose RL code is the baseline (git archive)")
    t.add_argument("--new", default="", help="commit measured as the new code (default: this working tree)")
    t.add_argument("--out", required=True)
    t.add_argument("--set", nargs="*", default=[], help="config overrides for every arm (keys both trees know)")
    lb = sub.add_parser("learner")
    lb.add_argument("--bc", required=True)
    lb.add_argument("--shards", required=True)
    lb.add_argument("--updates", type=int, default=2, help="updates per process (the same groups)")
    lb.add_argument("--rounds", type=int, default=2)
    lb.add_argument("--baseline", default="bb9ed4c")
    lb.add_argument("--new", default="")
    lb.add_argument("--out", required=True)
    lb.add_argument("--set", nargs="*", default=[], help="config overrides for both arms (keys both trees know)")
    lb.add_argument("--new-threads", type=int, default=1, help="intra-op threads of the new arm (baseline: 1, as its "
                    "Ray actor ran)")
    r1 = sub.add_parser("_learner")
    r1.add_argument("--bc", required=True)
    r1.add_argument("--groups", required=True)
    r1.add_argument("--updates", type=int, required=True)
    r1.add_argument("--threads", type=int, required=True)
    r1.add_argument("--set", nargs="*", default=[])
    r = sub.add_parser("_run")  # one measurement, in its own process (throughput starts it)
    for name in ("--bc", "--shards", "--out"):
        r.add_argument(name, required=True)
    r.add_argument("--iters", type=int, required=True)
    r.add_argument("--staleness", type=int, required=True)
    r.add_argument("--set", nargs="*", default=[])
    args = p.parse_args()
    args.argv = sys.argv[1:]
    {"effect": effect, "throughput": throughput, "learner": learner_bench, "_run": run_one,
     "_learner": learner_one}[args.mode](args)


if __name__ == "__main__":
    main()
