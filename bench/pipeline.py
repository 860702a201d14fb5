"""The SMART-R1 Table-3-style ablation on our data, written to docs/results.md (`make results`).

From one BC checkpoint, every recipe (BC, SFT, SFT->SFT, SFT->MPO, SFT->GRBO, SFT->GRBO->SFT, SFT->MPO->SFT) is
trained stage by stage with `drivetune train sft` / `train rft` configs (a stage shared by several recipes, e.g. the
first SFT, is trained once per seed), then every final checkpoint is scored with the WOSAC 2025 realism metric on
held-out synthetic scenes and on the real WOMD scenarios: the same rollouts count, sampler and seeds for all. A
Warm-K table (k x lambda, no retraining) is added for BC and the last recipe. Mean and spread over training seeds.

    python bench/pipeline.py --bc base/micro --shards runs/results_data/shards \
        --heldout runs/results_data/heldout --seeds 0 1 2 --sft-iters 4 --rl-iters 10 --out runs/results \
        --doc docs/results.md

`make results` (bench/results.sh) makes the data first and post-trains the shipped base (`make base`). A rerun
continues from OUT/rows.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from cluster.rft import RFTConfig, train
from drivetune.atomic import atomic_write_bytes
from drivetune.checkpoint import load_checkpoint, resolve_checkpoint
from drivetune.config import load_config
from drivetune.evaluation import evaluate_policy, parse_sampler_grid
from drivetune.ray_runtime import ray_session
from drivetune.samplers import SamplerConfig
from drivetune.sources import iter_scenes

REPO = Path(__file__).resolve().parents[1]
REAL = [REPO.parent / "shared/data/womd/motion_data_one_scenario.tfrecord",
        REPO.parent / "shared/data/womd/womd_scenario_input.tfrecord"]
STAGE_CONFIGS = {"sft": "sft_catk_micro", "mpo": "rft_mpo_micro", "grbo": "rft_grbo_micro"}
RECIPES = {"BC": (), "SFT": ("sft",), "SFT→SFT": ("sft", "sft"), "SFT→MPO": ("sft", "mpo"),
           "SFT→GRBO": ("sft", "grbo"), "SFT→GRBO→SFT": ("sft", "grbo", "sft"), "SFT→MPO→SFT": ("sft", "mpo", "sft")}
FINAL_SFT = ["algo.beta=8"]  # an SFT stage after RL keeps RL's gains: exact KL to the RL policy (configs/pipeline_micro.yaml)
TRAIN_ORDER = ["BC", "SFT", "SFT→MPO", "SFT→MPO→SFT", "SFT→SFT", "SFT→GRBO", "SFT→GRBO→SFT"]  # riskiest first
FIELDS = {"meta": "metametric", "collision": "simulated_collision_rate", "offroad": "simulated_offroad_rate",
          "red light": "simulated_traffic_light_violation_rate", "minADE": "min_average_displacement_error"}


def train_recipe(stages: tuple[str, ...], args: argparse.Namespace, seed: int, cache: dict) -> str:
    """Final checkpoint of `stages` after BC; every prefix is trained once per seed (cached)."""
    ckpt = args.bc
    for i in range(len(stages)):
        key = (seed, stages[: i + 1])
        if key not in cache:
            run_dir = Path(args.out) / f"s{seed}" / "-".join(stages[: i + 1])
            iters = args.sft_iters if stages[i] == "sft" else args.rl_iters
            after_rl = stages[i] == "sft" and i > 0 and stages[i - 1] != "sft"
            cfg = load_config(RFTConfig, REPO / "configs" / f"{STAGE_CONFIGS[stages[i]]}.yaml",
                              [f"init={ckpt}", f"run_dir={run_dir}", f"data.shards={args.shards}", f"seed={seed}",
                               f"max_iters={iters}", f"stage={stages[i]}", "pool.num_workers=1", "pool.num_cpus=1",
                               "learner.num_cpus=1", *(FINAL_SFT if after_rl else [])])
            train(cfg, progress=False)
            cache[key] = str(resolve_checkpoint(run_dir))
        ckpt = cache[key]
    return ckpt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bc", required=True)
    p.add_argument("--shards", required=True)
    p.add_argument("--heldout", required=True)
    p.add_argument("--heldout-scenes", type=int, default=16)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--recipes", nargs="+", default=list(RECIPES))
    p.add_argument("--sft-iters", type=int, default=6)
    p.add_argument("--rl-iters", type=int, default=12)
    p.add_argument("--rollouts", type=int, default=32)
    p.add_argument("--grid", default="k=8,32 warm_lambda=0,1,4")
    p.add_argument("--grid-scenes", type=int, default=8, help="held-out scenes of the Warm-K table")
    p.add_argument("--render-only", action="store_true", help="write the report from OUT/rows.json as it stands")
    p.add_argument("--out", required=True)
    p.add_argument("--doc", default=None, help="write the Markdown report here (e.g. docs/results.md)")
    args = p.parse_args()
    sets = {"held-out synthetic": list(iter_scenes(args.heldout))[: args.heldout_scenes],
            "real WOMD": [s for f in REAL if f.exists() for s in iter_scenes(str(f))]}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows_file, grid_file = out / "rows.json", out / "grid.json"
    rows = json.loads(rows_file.read_text()) if rows_file.exists() else []  # a rerun continues where it stopped
    grid = json.loads(grid_file.read_text()) if grid_file.exists() else {}
    sampler = SamplerConfig(kind="topk", k=16)
    cache, t0, earlier = {}, time.perf_counter(), sum(r.get("seconds", 0.0) for r in rows)  # rows of earlier runs
    order = [r for r in TRAIN_ORDER if r in args.recipes]
    if not args.render_only:
        with ray_session(num_cpus=2, log_to_driver=False):
            for seed in args.seeds:
                for name in order:
                    if any(r["recipe"] == name and r["seed"] == seed for r in rows):
                        continue
                    started = time.perf_counter()
                    ckpt = train_recipe(RECIPES[name], args, seed, cache)
                    model, _ = load_checkpoint(ckpt)
                    row = {"recipe": name, "seed": seed, "checkpoint": ckpt}
                    for set_name, scenes in sets.items():
                        row[set_name] = evaluate_policy(model, None, scenes, args.rollouts, sampler, seed=1234)["mean"]
                    row["seconds"] = time.perf_counter() - started
                    rows.append(row)
                    write_text(rows_file, json.dumps(rows, indent=1, default=float))
                    print(json.dumps({"recipe": name, "seed": seed, **{k: row[k]["metametric"] for k in sets}}),
                          flush=True)
            grid_sampler = SamplerConfig(kind="warmk")
            for name in ("BC", order[-1]):
                if name in grid:
                    continue
                model, _ = load_checkpoint(train_recipe(RECIPES[name], args, args.seeds[0], cache))
                scenes = sets["held-out synthetic"][: args.grid_scenes]
                grid[name] = [[s.k, s.warm_lambda, evaluate_policy(model, None, scenes, args.rollouts, s, seed=1234)["mean"]]
                              for s in parse_sampler_grid(args.grid, grid_sampler)]
                write_text(grid_file, json.dumps(grid, indent=1, default=float))
    report = render(rows, grid, sets, args, earlier + time.perf_counter() - t0)
    print(report)
    if args.doc:
        write_text(Path(args.doc), report)


def write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, [text.encode()])


def render(rows: list, grid: dict, sets: dict, args: argparse.Namespace, seconds: float) -> str:
    lines = ["# Results: post-training recipes against BC", "",
             "Made by `python bench/pipeline.py " + " ".join(a for a in sys.argv[1:] if a != "--render-only") +
             f"` ({seconds / 60:.0f} min on the "
             "shared 2-core CPU machine). SMART-R1 Table-3-style ablation on drivetune's synthetic world: every recipe "
             f"starts from the same BC checkpoint; SFT stages {args.sft_iters} iterations of CAT-K closed-loop SFT, "
             f"RL stages {args.rl_iters} iterations (configs/sft_catk_micro.yaml, rft_mpo_micro.yaml, "
             f"rft_grbo_micro.yaml). Scores: WOSAC 2025 realism, {args.rollouts} top-16 rollouts per scene, the same "
             f"seeds for every checkpoint; mean ± std over training seeds {args.seeds}.", ""]
    for set_name, scenes in sets.items():
        lines += [f"## {set_name} ({len(scenes)} scenes)", "", "| recipe | " + " | ".join(FIELDS) + " | meta per seed |",
                  "|---" * (len(FIELDS) + 2) + "|"]
        for name in [n for n in RECIPES if any(r["recipe"] == n for r in rows)]:
            vals = [r[set_name] for r in rows if r["recipe"] == name]
            cells = []
            for key in FIELDS.values():
                v = np.array([x[key] for x in vals])
                cells.append(f"{v.mean():.3f} ± {v.std():.3f}" if np.ptp(v) > 0 else f"{v.mean():.3f}")
            per_seed = " / ".join(f"{x['metametric']:.3f}" for x in vals) if name != "BC" else "one checkpoint"
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {per_seed} |")
        lines.append("")
    lines += [f"## Warm-K test-time scaling ({args.grid_scenes} held-out synthetic scenes, training seed "
              f"{args.seeds[0]}, no retraining)", "",
              "| policy | k | λ | " + " | ".join(FIELDS) + " |", "|---" * (len(FIELDS) + 3) + "|"]
    for name, entries in grid.items():
        for k, lam, mean in entries:
            lines.append(f"| {name} | {k} | {lam:g} | " + " | ".join(f"{mean[f]:.3f}" for f in FIELDS.values()) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
