"""Realism reports: the table of `drivetune simulate`, and the Markdown tables, charts and side-by-side rendering of
`drivetune eval` (from the result of `drivetune.evaluation.evaluate_checkpoints`)."""

from __future__ import annotations

from pathlib import Path

from drivetune.atomic import atomic_path
from drivetune.realism.metrics import HEADLINE_METRICS, mean_metrics

# (field, short column name) of the headline tables and charts.
COLUMNS: tuple[tuple[str, str], ...] = tuple(HEADLINE_METRICS.items())


def format_table(rows: list[dict]) -> str:
    """Realism table of `drivetune simulate` and `serve-demo`: one line per scene plus the mean."""
    widths = [max(8, len(short) + 1) for _, short in COLUMNS]
    head = f"{'scenario':<18}" + "".join(f"{short:>{w}}" for (_, short), w in zip(COLUMNS, widths))
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['scenario_id']:<18}" + "".join(f"{r[k]:>{w}.4f}" for (k, _), w in zip(COLUMNS, widths)))
    if len(rows) > 1:
        mean = mean_metrics(rows)
        lines.append(f"{'mean':<18}" + "".join(f"{mean[k]:>{w}.4f}" for (k, _), w in zip(COLUMNS, widths)))
    return "\n".join(lines)


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
