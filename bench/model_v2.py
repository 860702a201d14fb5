"""Does model v2 (SMART's layers) matter? v1 against v2 micro BC at the same data and number of steps, 3 seeds.

Each version trains with its own tree's `drivetune train pretrain` and its own configs/pretrain_micro.yaml (v1: the
commit before model v2, `--v1-rev`, extracted with `git archive` and run from that tree; v2: this checkout), on the
same shards and vocabulary, then is scored by its own `drivetune eval` on the same held-out scenes (a synth seed the
training data never uses, plus the real WOMD scenarios), the same sampler (top-16), rollouts (32) and seeds:
  - held-out token NLL and accuracy (the pretraining evaluation on the held-out split of the training shards);
  - realism meta, collision and offroad rates on the held-out scenes.

    python bench/model_v2.py --shards runs/base/shards --vocab runs/base/vocab.safetensors \
        --heldout runs/bench_v2/heldout --steps 200 --seeds 0 1 2 --out runs/bench_v2

A rerun skips the runs and evaluations that finished (OUT/rows.json).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from drivetune.atomic import atomic_write_bytes

REPO = Path(__file__).resolve().parents[1]
REAL = [REPO.parent / "shared/data/womd/motion_data_one_scenario.tfrecord",
        REPO.parent / "shared/data/womd/womd_scenario_input.tfrecord"]
FIELDS = {"meta": "metametric", "collision": "simulated_collision_rate", "offroad": "simulated_offroad_rate"}


def extract(rev: str, dest: Path) -> Path:
    """The tree of commit `rev` (git archive) in `dest`, once."""
    if not (dest / "drivetune").is_dir():
        dest.mkdir(parents=True, exist_ok=True)
        blob = subprocess.run(["git", "-C", str(REPO), "archive", rev], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=blob, check=True)
    return dest


def cli(tree: Path, *args: str) -> None:
    """`drivetune ARGS` with `tree` first on the path (its Ray workers inherit it)."""
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-m", "drivetune.cli", *args], cwd=tree, env=env, check=True,
                   stdout=subprocess.DEVNULL)


def last_eval(run_dir: Path) -> dict:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return next(r for r in reversed(rows) if "eval_loss" in r)


def measure(version: str, tree: Path, seed: int, args: argparse.Namespace, overrides: tuple[str, ...] = ()) -> dict:
    run_dir = (args.out / f"{version}_s{seed}").resolve()
    t0 = time.perf_counter()
    cli(tree, "train", "pretrain", "--config", "configs/pretrain_micro.yaml", *overrides, f"run_dir={run_dir}",
        f"data.shards={args.shards.resolve()}", f"data.vocab={args.vocab.resolve()}", f"max_steps={args.steps}",
        f"seed={seed}", f"eval_scenes={args.eval_scenes}", "eval_every=0", f"checkpoint_every={args.steps}")
    train_s = time.perf_counter() - t0
    bc = last_eval(run_dir)
    eval_dir = run_dir / "eval"
    scenes = [str(args.heldout.resolve())] + [str(p) for p in REAL if p.is_file()]
    cli(tree, "eval", *scenes, "--checkpoints", str(run_dir), "--rollouts", "32", "--sampler", "topk", "--k", "16",
        "--batch-scenes", "2", "--no-render", "--out", str(eval_dir))
    entry = json.loads((eval_dir / "eval.json").read_text())["checkpoints"][0]
    synth = [s for s in entry["scenes"] if s["scenario_id"] not in args.real_ids]
    real = [s for s in entry["scenes"] if s["scenario_id"] in args.real_ids]
    mean = lambda rows, f: sum(r[f] for r in rows) / max(len(rows), 1)  # noqa: E731
    return {"version": version, "seed": seed, "steps": args.steps, "train_s": train_s,
            "nll": bc["eval_loss"], "token_acc": bc["eval_token_acc"], "repeat_last_acc": bc["eval_repeat_last_acc"],
            **{f"synth_{k}": mean(synth, f) for k, f in FIELDS.items()},
            **{f"real_{k}": mean(real, f) for k, f in FIELDS.items()},
            "synth_scenes": len(synth), "real_scenes": len(real)}


def render(rows: list[dict]) -> str:
    cols = ["nll", "token_acc", "synth_meta", "synth_collision", "synth_offroad", "real_meta", "real_collision",
            "real_offroad"]
    lines = ["| seed | model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 2) + "|"]
    for r in sorted(rows, key=lambda r: (r["seed"], r["version"])):
        lines.append(f"| {r['seed']} | {r['version']} | " + " | ".join(f"{r[c]:.4f}" for c in cols) + " |")
    by = {(r["seed"], r["version"]): r for r in rows}
    seeds = sorted({r["seed"] for r in rows if (r["seed"], "v1") in by and (r["seed"], "v2") in by})
    if seeds:
        lines.append("| **mean v2 − v1** | | " + " | ".join(
            f"{sum(by[(s, 'v2')][c] - by[(s, 'v1')][c] for s in seeds) / len(seeds):+.4f}" for c in cols) + " |")
        better = sum(by[(s, "v2")]["nll"] < by[(s, "v1")]["nll"] for s in seeds)
        meta = sum(by[(s, "v2")]["synth_meta"] > by[(s, "v1")]["synth_meta"] for s in seeds)
        lines.append(f"\nv2 lower held-out NLL on {better}/{len(seeds)} seeds, higher held-out synthetic meta on "
                     f"{meta}/{len(seeds)} seeds.")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shards", type=Path, required=True)
    p.add_argument("--vocab", type=Path, required=True)
    p.add_argument("--heldout", type=Path, required=True, help="held-out synthetic scenes (another synth seed)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--eval-scenes", type=int, default=64, help="held-out split scenes for NLL / accuracy")
    p.add_argument("--v1-rev", default="b606c69", help="the commit before model v2")
    p.add_argument("--variant", nargs=2, action="append", default=[], metavar=("NAME", "OVERRIDES"),
                   help='another v2 row: a name and its pretrain overrides, e.g. v2-noreg '
                        '"optim.label_smoothing=0 model.hist_drop=0"')
    p.add_argument("--out", type=Path, default=Path("runs/bench_v2"))
    args = p.parse_args()
    from drivetune.womd import load_scene

    args.real_ids = {load_scene(p).scenario_id for p in REAL if p.is_file()}
    args.out.mkdir(parents=True, exist_ok=True)
    trees = {"v1": extract(args.v1_rev, args.out / "v1_tree"), "v2": REPO}
    trees.update({name: REPO for name, _ in args.variant})
    extra = {name: tuple(overrides.split()) for name, overrides in args.variant}
    rows_file = args.out / "rows.json"
    rows = json.loads(rows_file.read_text()) if rows_file.exists() else []
    for seed in args.seeds:
        for version, tree in trees.items():
            if any(r["seed"] == seed and r["version"] == version for r in rows):
                continue
            rows.append(measure(version, tree, seed, args, extra.get(version, ())))
            atomic_write_bytes(rows_file, [json.dumps(rows, indent=1).encode()])
            print(json.dumps(rows[-1]), flush=True)
    print(render(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
