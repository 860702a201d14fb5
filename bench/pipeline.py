"""The SMART-R1 Table-3-style ablation on our data, written into its section of docs/results.md (`make results`).

From one BC checkpoint, every recipe (BC, SFT, SFT->SFT, SFT->MPO, SFT->GRBO, SFT->GRBO->SFT, SFT->MPO->SFT) is
trained stage by stage with `drivetune train sft` / `train rft` configs (a stage shared by several recipes, e.g. the
first SFT, is trained once per seed), then every final checkpoint is scored with the WOSAC 2025 realism metric on
held-out synthetic scenes and on the real WOMD scenarios: the same rollouts count, sampler and seeds for all (each
checkpoint's scenes split over `--eval-tasks` Ray tasks; a scene's rollout seeds depend on its id only). The report
gives, per recipe, the mean over training seeds with a percentile bootstrap interval over scenes (of the
seed-averaged per-scene values), the paired difference to BC with its interval, every seed's meta, and the issue's
targets checked seed by seed. A Warm-K table (k x lambda, no retraining) is added for BC and the last recipe.

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
from drivetune.evaluation import METRICS, BootstrapConfig, bootstrap_ci, evaluate_policy, parse_sampler_grid, table
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
    p.add_argument("--eval-tasks", type=int, default=2, help="Ray tasks (1 CPU each) scoring a checkpoint's scenes")
    p.add_argument("--render-only", action="store_true", help="write the report from OUT/rows.json as it stands")
    p.add_argument("--out", required=True)
    p.add_argument("--doc", default=None, help="put the Markdown report between its markers in this file "
                   "(docs/results.md; appended when the markers are absent)")
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
                    done_bc = [r for r in rows if r["recipe"] == "BC"]
                    if name == "BC" and done_bc:  # one checkpoint for every seed: scored once
                        rows.append({**done_bc[0], "seed": seed, "seconds": 0.0})
                        continue
                    started = time.perf_counter()
                    ckpt = train_recipe(RECIPES[name], args, seed, cache)
                    row = {"recipe": name, "seed": seed, "checkpoint": ckpt}
                    for set_name, scenes in sets.items():
                        row[set_name] = scene_rows(ckpt, scenes, args.rollouts, sampler, args.eval_tasks)
                    row["seconds"] = time.perf_counter() - started
                    rows.append(row)
                    write_text(rows_file, json.dumps(rows, indent=1, default=float))
                    print(json.dumps({"recipe": name, "seed": seed, "seconds": round(row["seconds"]),
                                      **{k: float(table(row[k])[:, META].mean()) for k in sets}}), flush=True)
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
        write_section(Path(args.doc), report)


def scene_rows(ckpt: str, scenes: list, rollouts: int, sampler: SamplerConfig, tasks: int) -> list[dict]:
    """Per-scene realism rows of `ckpt` on `scenes` (in order), scored by `tasks` Ray tasks of one CPU each."""
    import ray

    @ray.remote(num_cpus=1)
    def score(part: list) -> list[dict]:
        model, _ = load_checkpoint(ckpt)
        return evaluate_policy(model, None, part, rollouts, sampler, seed=1234)["scenes"]

    parts = [scenes[i::tasks] for i in range(tasks) if scenes[i::tasks]]
    by_id = {r["scenario_id"]: r for rows in ray.get([score.remote(p) for p in parts]) for r in rows}
    return [by_id[s.scenario_id] for s in scenes]


BEGIN, END = "<!-- bench/pipeline.py: begin -->", "<!-- bench/pipeline.py: end -->"


def write_section(doc: Path, report: str) -> None:
    """Put `report` between the BEGIN / END markers of `doc` (appended with them when absent); the rest stays."""
    text = doc.read_text() if doc.exists() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + BEGIN + "\n" + report + END + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + BEGIN + "\n" + report + END + "\n"
    write_text(doc, text)


def write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, [text.encode()])


BOOT = BootstrapConfig()
COL = {field: METRICS.index(key) for field, key in FIELDS.items()}
META = COL["meta"]


def per_scene(rows: list, name: str, set_name: str) -> np.ndarray:
    """[seeds, S, len(FIELDS) + 1] per-scene values of a recipe (FIELDS' columns, then collision + offroad)."""
    out = []
    for r in rows:
        if r["recipe"] == name:
            t = table(r[set_name])
            out.append(np.concatenate([t[:, list(COL.values())], t[:, [COL["collision"]]] + t[:, [COL["offroad"]]]], 1))
    return np.stack(out)


def ci_cell(values: np.ndarray) -> str:
    """'mean [lo, hi]' of a per-scene vector [S]."""
    lo, hi = bootstrap_ci(values, BOOT)
    return f"{values.mean():.3f} [{float(lo):.3f}, {float(hi):.3f}]"


def render(rows: list, grid: dict, sets: dict, args: argparse.Namespace, seconds: float) -> str:
    lines = ["## Post-training recipes (SMART-R1 Table 3)", "",
             "Made by `python bench/pipeline.py " + " ".join(a for a in sys.argv[1:] if a != "--render-only") +
             f"` ({seconds / 60:.0f} min on the "
             "2-core CPU machine). SMART-R1 Table-3-style ablation on drivetune's synthetic world: every recipe "
             f"starts from the same BC checkpoint ({args.bc}); SFT stages {args.sft_iters} iterations of CAT-K "
             f"closed-loop SFT, RL stages {args.rl_iters} iterations (configs/sft_catk_micro.yaml, rft_mpo_micro.yaml, "
             f"rft_grbo_micro.yaml; an SFT stage after RL adds {' '.join(FINAL_SFT)}). Scores: WOSAC 2025 realism, "
             f"{args.rollouts} top-16 rollouts per scene, the same seeds for every checkpoint. Each cell: the mean over "
             f"training seeds {args.seeds}, and in brackets the 95 % percentile bootstrap interval over scenes "
             f"({BOOT.resamples} resamples) of the seed-averaged per-scene values; differences to BC are paired over "
             "scenes. The interval is over scenes only: the spread between training seeds is in the last column.", ""]
    names = [n for n in RECIPES if any(r["recipe"] == n for r in rows)]
    for set_name, scenes in sets.items():
        lines += [f"### {set_name} ({len(scenes)} scenes)", "",
                  "| recipe | meta | collision + offroad | collision | offroad | red light | minADE | meta per seed |",
                  "|---|---|---|---|---|---|---|---|"]
        for name in names:
            v = per_scene(rows, name, set_name)
            avg = v.mean(0)  # [S, F + 1]
            seeds = " / ".join(f"{x:.3f}" for x in v[:, :, 0].mean(1))
            lines.append(f"| {name} | {ci_cell(avg[:, 0])} | {ci_cell(avg[:, -1])} | " + " | ".join(
                f"{avg[:, i].mean():.3f}" for i in range(1, len(FIELDS))) + f" | {seeds} |")
        if "BC" in names:
            base = per_scene(rows, "BC", set_name).mean(0)
            lines += ["", "| difference to BC | meta | collision + offroad | collision + offroad cut |", "|---|---|---|---|"]
            for name in names[1:]:
                d = per_scene(rows, name, set_name).mean(0) - base
                lines.append(f"| {name} | {ci_cell(d[:, 0])} | {ci_cell(d[:, -1])} | "
                             f"{-d[:, -1].mean() / base[:, -1].mean():+.0%} |")
        lines.append("")
    lines += targets(rows, names, next(iter(sets)))
    lines += [f"### Warm-K test-time scaling ({args.grid_scenes} held-out synthetic scenes, training seed "
              f"{args.seeds[0]}, no retraining)", "",
              "| policy | k | λ | " + " | ".join(FIELDS) + " |", "|---" * (len(FIELDS) + 3) + "|"]
    for name, entries in grid.items():
        for k, lam, mean in entries:
            lines.append(f"| {name} | {k} | {lam:g} | " + " | ".join(f"{mean[f]:.3f}" for f in FIELDS.values()) + " |")
    return "\n".join(lines) + "\n"


def targets(rows: list, names: list, set_name: str) -> list[str]:
    """The recipe issue's targets on `set_name`, seed by seed (only those whose recipes are in `rows`)."""
    def seed_means(name: str) -> dict[int, np.ndarray]:  # seed -> [F + 1] means over scenes
        return {r["seed"]: per_scene([r], name, set_name)[0].mean(0) for r in rows if r["recipe"] == name}

    out = [f"### Targets ({set_name}, seed by seed)", ""]
    have = set(names)
    if {"BC", "SFT"} <= have:
        bc, sft = seed_means("BC"), seed_means("SFT")
        wins = [s for s in sft if sft[s][0] > bc[s][0]]
        out.append(f"- SFT > BC on meta: {len(wins)}/{len(sft)} seeds (" + ", ".join(
            f"seed {s}: {sft[s][0] - bc[s][0]:+.3f}" for s in sft) + ")")
    if {"SFT", "SFT→MPO"} <= have:
        start, mpo = seed_means("SFT"), seed_means("SFT→MPO")
        above = [s for s in mpo if mpo[s][0] > start[s][0]]
        collapsed = [s for s in mpo if mpo[s][0] < start[s][0] - 0.02]
        out.append(f"- MPO above its start (SFT of the same seed): {len(above)}/{len(mpo)} seeds; seeds below start − "
                   f"0.02: {len(collapsed)} (" + ", ".join(f"seed {s}: {mpo[s][0] - start[s][0]:+.3f}" for s in mpo) + ")")
    if {"BC", "SFT→GRBO", "SFT→GRBO→SFT"} <= have:
        bc, rl, fin = seed_means("BC"), seed_means("SFT→GRBO"), seed_means("SFT→GRBO→SFT")
        parts = []
        for s in fin:
            cut_rl, cut_fin = bc[s][-1] - rl[s][-1], bc[s][-1] - fin[s][-1]
            keep = cut_fin / cut_rl if cut_rl > 0 else float("nan")
            parts.append(f"seed {s}: keeps {keep:.0%} of the cut, meta {fin[s][0] - rl[s][0]:+.3f}")
        out.append("- SFT→GRBO→SFT against SFT→GRBO (target: keeps ≥ 80 % of its collision + offroad cut against BC, "
                   "meta ≥ SFT→GRBO − 0.01): " + "; ".join(parts))
    return out + [""]


if __name__ == "__main__":
    main()
