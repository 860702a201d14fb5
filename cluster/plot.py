"""The curves of a run's `metrics.jsonl` (RL or pretraining) in one PNG."""

from __future__ import annotations

import io
import math
from pathlib import Path

# Panels drawn when the run logged them: (title, keys). Missing keys are skipped; empty panels are dropped.
PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("reward", ("reward",)),
    ("reward terms", ("reward_meta_single", "reward_loo_contribution", "reward_group_meta", "reward_collision",
                      "reward_offroad", "reward_red_light")),
    ("realism meta", ("group_meta", "eval_metametric")),
    ("safety rates", ("collision_rate", "offroad_rate", "red_light_rate", "eval_simulated_collision_rate",
                      "eval_simulated_offroad_rate")),
    ("KL to reference", ("kl_k1", "kl_k3")),
    ("policy", ("clip_frac", "entropy", "human_nll")),
    ("advantages", ("adv_mean", "adv_std", "adv_abs_mean")),
    ("optimisation", ("grad_norm", "logp_diff_max")),
    ("seconds per phase", ("seconds_rollout", "seconds_update", "seconds_broadcast", "seconds_reward_worker")),
    ("throughput", ("groups_per_s", "learner_tokens_per_s")),
    ("pretraining", ("loss", "eval_loss", "token_acc", "repeat_last_acc", "eval_token_acc")),
)


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw every available panel of RUN_DIR/metrics.jsonl to `out` (default RUN_DIR/metrics.png)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from drivetune.atomic import atomic_write_bytes
    from trainer.run_directory import RunDirectory

    run = RunDirectory(run_dir)
    rows = run.read_metrics()
    if not rows:
        raise FileNotFoundError(f"{run.metrics_path}: no metrics to plot")
    x_key = "iteration" if any("iteration" in r for r in rows) else "step"
    panels = [(title, [k for k in keys if any(_finite(r.get(k)) for r in rows)]) for title, keys in PANELS]
    panels = [(t, ks) for t, ks in panels if ks]
    cols = 3
    fig, axes = plt.subplots(math.ceil(len(panels) / cols), cols, figsize=(5 * cols, 3.2 * math.ceil(len(panels) / cols)),
                             squeeze=False)
    for ax, (title, keys) in zip(axes.flat, panels):
        for key in keys:
            pts = [(r[x_key], r[key]) for r in rows if x_key in r and _finite(r.get(key))]
            ax.plot(*zip(*pts), marker="." if len(pts) < 30 else None, label=key)
        ax.set_title(title)
        ax.set_xlabel(x_key)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(str(Path(run_dir).name))
    fig.tight_layout()
    out = Path(out) if out else run.root / "metrics.png"
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    atomic_write_bytes(out, [buf.getvalue()])
    return out


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
