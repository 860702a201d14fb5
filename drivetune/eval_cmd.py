"""`drivetune eval SCENES... --checkpoints A B ... --rollouts 32 --out DIR`: compare checkpoints on held-out scenes.

Every checkpoint is rolled out on the same scenes with the same sampler and seeds (`drivetune.evaluation`) and scored
with the WOSAC realism metric. Writes under DIR:
  - `eval.json`: settings, per-checkpoint per-scene rows, means, bootstrap intervals, paired differences to the first
    checkpoint and the sampler-grid rows (schema: docs/evaluation.md);
  - `eval.md`: the same as Markdown tables (also printed);
  - `charts/*.png`: means with intervals, event rates and minADE, per-scene meta, the sampler grid;
  - `render/`: one scene's rollouts under the first and the last checkpoint, side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from drivetune.atomic import atomic_path, atomic_write_bytes
from drivetune.cli import add_scenes_argument, check_device
from drivetune.progress import progress
from drivetune.simulate_cmd import SAMPLER_KINDS  # torch-free, so --help stays fast

# (field, short column name) of the headline tables and charts.
COLUMNS = (
    ("metametric", "meta"), ("kinematic_metrics", "kinematic"), ("interactive_metrics", "interactive"),
    ("map_based_metrics", "map"), ("simulated_collision_rate", "collision"), ("simulated_offroad_rate", "offroad"),
    ("simulated_traffic_light_violation_rate", "red light"), ("min_average_displacement_error", "minADE"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoints", nargs="+", required=True,
                        help="checkpoint directories or training run directories (their latest checkpoint); "
                             "differences are taken to the first")
    add_scenes_argument(parser)
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--rollouts", type=int, default=32, help="rollouts per scene (WOSAC: 32)")
    parser.add_argument("--sampler", default="warmk", choices=SAMPLER_KINDS, help="token sampler (docs/samplers.md)")
    parser.add_argument("--k", type=int, default=32, help="top-K size")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (top-K and Warm-K)")
    parser.add_argument("--warm-lambda", type=float, default=1.0, help="Warm-K lambda (logits per metre)")
    parser.add_argument("--seed", type=int, default=0, help="base seed of the rollouts (the same for every checkpoint)")
    parser.add_argument("--sdc", default="policy", choices=("policy", "log"),
                        help="SDC driven by the policy or replayed from the log")
    parser.add_argument("--scenario-id", action="append", default=None, help="only these scenarios (repeatable)")
    parser.add_argument("--max-scenes", type=int, default=None, help="at most this many scenes (in spec order)")
    parser.add_argument("--batch-scenes", type=int, default=1, help="scenes simulated and scored together")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    parser.add_argument("--config", default="2025", choices=("2025", "2024"), help="realism metric config")
    parser.add_argument("--sampler-grid", default=None,
                        help="test-time sampler table, e.g. 'k=8,32 warm_lambda=0,1,4' (fields of the sampler; "
                             "the others from --sampler ...)")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples over scenes")
    parser.add_argument("--ci-level", type=float, default=0.95, help="confidence level of the intervals")
    parser.add_argument("--bootstrap-seed", type=int, default=0, help="seed of the bootstrap resampling")
    parser.add_argument("--render", default=None, metavar="SCENARIO_ID",
                        help="scene drawn side by side, first vs last checkpoint (default: the first scene)")
    parser.add_argument("--no-render", action="store_true", help="skip the rendering")


def run(args: argparse.Namespace) -> int:
    import torch

    from drivetune.checkpoint import CheckpointError, resolve_checkpoint
    from drivetune.evaluation import BootstrapConfig, evaluate_checkpoints, load_eval_scenes, parse_sampler_grid
    from drivetune.samplers import SamplerConfig

    check_device(args.device)
    sampler = SamplerConfig(kind=args.sampler, k=args.k, temperature=args.temperature, warm_lambda=args.warm_lambda)
    try:
        sampler.validate()
        boot = BootstrapConfig(args.bootstrap, args.ci_level, args.bootstrap_seed).validate()
        grid = parse_sampler_grid(args.sampler_grid, sampler) if args.sampler_grid else []
        if args.rollouts < 1 or args.batch_scenes < 1:
            raise ValueError(f"--rollouts and --batch-scenes must be >= 1 (got {args.rollouts}, {args.batch_scenes})")
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"--device {args.device}: CUDA is not available")
        for c in args.checkpoints:
            resolve_checkpoint(c)
        scenes = load_eval_scenes(args.scenes, args.scenario_id, args.max_scenes)
        shown = None if args.no_render else (args.render or scenes[0].scenario_id)
        if shown is not None and shown not in {s.scenario_id for s in scenes}:
            raise ValueError(f"--render {shown}: not among the evaluated scenes")
    except (ValueError, OSError, CheckpointError) as e:
        print(f"drivetune eval: error: {e}", file=sys.stderr)
        return 2
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    total = len(args.checkpoints) * (1 + len(grid)) * len(scenes)
    with progress(total, "eval", "scene") as bar:  # a bar on a terminal, plain lines in a log
        try:
            result = evaluate_checkpoints(
                args.checkpoints, scenes, args.rollouts, sampler, args.seed, batch_scenes=args.batch_scenes,
                device=args.device, sdc=args.sdc, config=args.config, boot=boot, grid=grid,
                keep_rollouts=[shown] if shown else [], progress=bar.update)
        except (ValueError, OSError, CheckpointError) as e:
            print(f"drivetune eval: error: {e}", file=sys.stderr)
            return 2
    result["settings"]["scenes"] = [str(s) for s in args.scenes]
    kept = [e.pop("rollouts_xy") for e in result["checkpoints"]]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "eval.json", [json.dumps(result, indent=2).encode()])
    markdown = format_markdown(result)
    atomic_write_bytes(out / "eval.md", [markdown.encode()])
    charts = write_charts(result, out / "charts")
    if shown is not None:
        scene = next(s for s in scenes if s.scenario_id == shown)
        charts.append(render_side_by_side(scene, result, kept, out / "render"))
    print(markdown)
    print(f"wrote {out / 'eval.json'}, {out / 'eval.md'}, " + ", ".join(str(p) for p in charts))
    return 0


# ------------------------------------------------------------------------------------------------ Markdown
def _fmt(v: float) -> str:
    return f"{v:.4f}"


def _cell(summary: dict, field: str) -> str:
    lo, hi = summary["ci"][field]
    return f"{_fmt(summary['mean'][field])} [{_fmt(lo)}, {_fmt(hi)}]"


def _sampler_text(s: dict) -> str:
    if s["kind"] == "greedy":
        return "greedy"
    text = f"{s['kind']} k={s['k']}"
    if s["kind"] in ("topk", "warmk"):
        text += f" τ={s['temperature']:g}"
    if s["kind"] == "warmk":
        text += f" λ={s['warm_lambda']:g}"
    return text


def format_markdown(result: dict) -> str:
    """eval.md: settings line, means with intervals, paired differences, per-scene meta, the sampler grid."""
    st, boot = result["settings"], result["settings"]["bootstrap"]
    head = "| checkpoint | " + " | ".join(short for _, short in COLUMNS) + " |"
    rule = "|---" * (len(COLUMNS) + 1) + "|"
    level = f"{100 * boot['level']:g} %"
    lines = [
        "# drivetune eval", "",
        f"{len(st['scenario_ids'])} scenes × {st['rollouts']} rollouts, sampler {_sampler_text(st['sampler'])}, "
        f"seed {st['seed']}, SDC {st['sdc']}, WOSAC {st['config']} metric. Intervals: {level} percentile bootstrap "
        f"over scenes, B = {boot['resamples']} (seed {boot['seed']}). minADE in metres.", "",
        f"## Mean over scenes [{level} CI]", "", head, rule,
    ]
    lines += [f"| {e['name']} | " + " | ".join(_cell(e, f) for f, _ in COLUMNS) + " |" for e in result["checkpoints"]]
    if result["differences"]:
        lines += ["", f"## Difference to {result['differences'][0]['baseline']} (paired over scenes) "
                      f"[{level} CI]", "", head, rule]
        lines += [f"| {d['name']} | " + " | ".join(_cell(d, f) for f, _ in COLUMNS) + " |"
                  for d in result["differences"]]
    names = [e["name"] for e in result["checkpoints"]]
    lines += ["", "## Realism meta metric per scene", "", "| scenario | " + " | ".join(names) + " |",
              "|---" * (len(names) + 1) + "|"]
    for i, sid in enumerate(st["scenario_ids"]):
        lines.append(f"| {sid} | " + " | ".join(_fmt(e["scenes"][i]["metametric"]) for e in result["checkpoints"])
                     + " |")
    if result["sampler_grid"]:
        lines += ["", f"## Sampler grid (test-time, no retraining) [{level} CI]", "",
                  "| checkpoint | sampler | " + " | ".join(short for _, short in COLUMNS) + " |",
                  "|---" * (len(COLUMNS) + 2) + "|"]
        lines += [f"| {g['checkpoint']} | {_sampler_text(g['sampler'])} | "
                  + " | ".join(_cell(g, f) for f, _ in COLUMNS) + " |" for g in result["sampler_grid"]]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ rendering
def render_side_by_side(scene, result: dict, kept: list[dict], out_dir: Path) -> Path:
    """Draw the scene with the rollouts of the first and of the last checkpoint, then put both images side by side
    (`<scenario_id>-side-by-side.png`; the two single images stay beside it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from drivetune.render import render_scene

    picks = sorted({0, len(kept) - 1})
    singles = []
    for i in picks:
        path = out_dir / f"{scene.scenario_id}-checkpoint{i}.png"
        singles.append(render_scene(scene, path, rollouts=kept[i][scene.scenario_id]))
    fig, axes = plt.subplots(1, len(singles), figsize=(10.2 * len(singles), 9.2), squeeze=False)
    for ax, i, path in zip(axes[0], picks, singles):
        e = result["checkpoints"][i]
        ax.imshow(plt.imread(path))
        ax.set_axis_off()
        row = e["scenes"][result["settings"]["scenario_ids"].index(scene.scenario_id)]
        ax.set_title(f"{e['name']}  ·  meta {row['metametric']:.4f}  ·  collision "
                     f"{row['simulated_collision_rate']:.3f}  ·  offroad {row['simulated_offroad_rate']:.3f}",
                     fontsize=11)
    fig.subplots_adjust(left=0.005, right=0.995, bottom=0.005, top=0.95, wspace=0.02)
    target = out_dir / f"{scene.scenario_id}-side-by-side.png"
    try:
        with atomic_path(target) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        plt.close(fig)
    return target



# ------------------------------------------------------------------------------------------------ charts
def _errorbars(summary: dict, fields: list[str]) -> tuple[list[float], list[list[float]]]:
    means = [summary["mean"][f] for f in fields]
    err = [[m - summary["ci"][f][0] for m, f in zip(means, fields)],
           [summary["ci"][f][1] - m for m, f in zip(means, fields)]]
    return means, err


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    try:
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)
    return path


def write_charts(result: dict, out_dir: Path) -> list[Path]:
    """summary.png (means with intervals), scenes.png (per-scene meta), differences.png and sampler_grid.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = result["checkpoints"]
    names = [e["name"] for e in entries]
    groups = ([f for f, _ in COLUMNS[:4]], [f for f, _ in COLUMNS[4:7]], [COLUMNS[7][0]])
    short = dict(COLUMNS)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), gridspec_kw={"width_ratios": [4, 3, 1.5]})
    width = 0.8 / len(entries)
    for ax, fields, title in zip(axes, groups, ("realism (higher is better)", "event rates (lower is better)",
                                                "minADE (m)")):
        for i, e in enumerate(entries):
            means, err = _errorbars(e, fields)
            ax.bar([j + (i - (len(entries) - 1) / 2) * width for j in range(len(fields))], means, width, yerr=err,
                   capsize=3, label=e["name"])
        ax.set_xticks(range(len(fields)), [short[f] for f in fields])
        ax.set_title(title, fontsize=10)
    axes[0].legend(fontsize=8)
    paths = [_save(fig, out_dir / "summary.png")]

    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(entries) + 3), 4.5))
    meta = [[row["metametric"] for row in e["scenes"]] for e in entries]
    for s, sid in enumerate(result["settings"]["scenario_ids"]):
        ax.plot(range(len(entries)), [m[s] for m in meta], "o-", color="gray", alpha=0.4, lw=0.8)
    ax.plot(range(len(entries)), [e["mean"]["metametric"] for e in entries], "o-", color="C3", lw=2.5, label="mean")
    ax.set_xticks(range(len(entries)), names, rotation=15, fontsize=8)
    ax.set_ylabel("realism meta metric")
    ax.set_title("per scene (gray) and mean (red)", fontsize=10)
    paths.append(_save(fig, out_dir / "scenes.png"))

    if result["differences"]:
        fields = [f for f, _ in COLUMNS]
        fig, axes = plt.subplots(1, 2, figsize=(12, 1.2 + 0.45 * len(fields) * len(result["differences"])),
                                 gridspec_kw={"width_ratios": [3, 1]})
        for d_i, d in enumerate(result["differences"]):
            for ax, part in zip(axes, (fields[:-1], fields[-1:])):
                means, err = _errorbars(d, part)
                ys = [j + d_i / (len(result["differences"]) + 1) for j in range(len(part))]
                ax.errorbar(means, ys, xerr=err, fmt="o", capsize=3, label=d["name"])
                ax.set_yticks(range(len(part)), [short[f] for f in part])
                ax.axvline(0.0, color="black", lw=0.8)
        for ax in axes:
            ax.invert_yaxis()  # meta on top, as in the tables
        axes[0].set_title(f"difference to {result['differences'][0]['baseline']} (paired)", fontsize=10)
        axes[1].set_title("minADE difference (m)", fontsize=10)
        axes[0].legend(fontsize=8)
        paths.append(_save(fig, out_dir / "differences.png"))

    if result["sampler_grid"]:
        paths.append(_grid_chart(result["sampler_grid"], names, out_dir / "sampler_grid.png"))
    return paths


def _grid_chart(rows: list[dict], names: list[str], path: Path) -> Path:
    """Meta metric over the last varying sampler field, one line per value of the other varying fields."""
    import matplotlib.pyplot as plt

    keys = [k for k in rows[0]["sampler"] if len({str(r["sampler"][k]) for r in rows}) > 1] or ["kind"]
    x_key, line_keys = keys[-1], keys[:-1]
    xs = sorted({r["sampler"][x_key] for r in rows}, key=str if x_key == "kind" else float)
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names):
        lines: dict[tuple, list[dict]] = {}
        for r in rows:
            if r["checkpoint"] == name:
                lines.setdefault(tuple(r["sampler"][k] for k in line_keys), []).append(r)
        for key, group in lines.items():
            pos = [xs.index(r["sampler"][x_key]) for r in group]
            means, err = _errorbars({"mean": {i: r["mean"]["metametric"] for i, r in enumerate(group)},
                                     "ci": {i: r["ci"]["metametric"] for i, r in enumerate(group)}},
                                    list(range(len(group))))
            ax.errorbar(pos, means, yerr=err, fmt="o-", capsize=3,
                        label=", ".join(f"{k}={v}" for k, v in zip(line_keys, key)) or None)
        ax.set_xticks(range(len(xs)), [str(x) for x in xs])
        ax.set_xlabel(x_key)
        ax.set_ylabel("realism meta metric")
        ax.set_title(name, fontsize=9)
        if line_keys:
            ax.legend(fontsize=8)
    return _save(fig, path)
