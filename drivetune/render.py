"""Draw a scenario's map, agents and trajectories (and optional rollouts) to PNG / JPEG / SVG / PDF
(`drivetune render`).

Works on any Scene: synthetic or real WOMD, from TFRecords or shard directories.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from drivetune.atomic import atomic_path
from drivetune.scene import (HEADING, LENGTH, RED_SIGNAL_STATES, WIDTH, X, Y, AgentType, MapFeatureType,
                             RoadLineType, Scene, SignalState)
from drivetune.synth.geometry import box_corners

TYPE_COLORS = {AgentType.VEHICLE: "#1f77b4", AgentType.PEDESTRIAN: "#ff7f0e", AgentType.CYCLIST: "#2ca02c",
               AgentType.OTHER: "#7f7f7f", AgentType.UNSET: "#7f7f7f"}
SDC_COLOR = "#d62728"
YELLOW_LINES = {RoadLineType.BROKEN_SINGLE_YELLOW, RoadLineType.BROKEN_DOUBLE_YELLOW, RoadLineType.SOLID_SINGLE_YELLOW,
                RoadLineType.SOLID_DOUBLE_YELLOW, RoadLineType.PASSING_DOUBLE_YELLOW}
IMAGE_FORMATS = {"png": "png", "jpg": "jpeg", "jpeg": "jpeg", "svg": "svg", "pdf": "pdf"}  # suffix -> format
BROKEN_LINES = {RoadLineType.BROKEN_SINGLE_WHITE, RoadLineType.BROKEN_SINGLE_YELLOW, RoadLineType.BROKEN_DOUBLE_YELLOW}


def _signal_color(state: int) -> str | None:
    if state in [int(s) for s in RED_SIGNAL_STATES]:
        return "#e41a1c"
    if state in (SignalState.CAUTION, SignalState.ARROW_CAUTION, SignalState.FLASHING_CAUTION):
        return "#ffbf00"
    if state in (SignalState.GO, SignalState.ARROW_GO):
        return "#2ca02c"
    if state == SignalState.UNKNOWN:
        return "#999999"
    return None


def _view(scene: Scene, step: int, radius: float | None) -> tuple[float, float, float, float]:
    v = scene.valid[:, step]
    xy = scene.states[v, step, X:Y + 1]
    sdc = scene.states[scene.sdc_index, step, X:Y + 1]
    if radius is not None or len(xy) == 0:
        r = radius or 60.0
        return sdc[0] - r, sdc[0] + r, sdc[1] - r, sdc[1] + r
    # agents within 90 m of the SDC, framed with a margin, squared up
    xy = xy[np.linalg.norm(xy - sdc, axis=1) < 90.0]
    lo, hi = xy.min(0) - 15.0, xy.max(0) + 15.0
    c, half = (lo + hi) / 2, max((hi - lo).max() / 2, 35.0)
    return c[0] - half, c[0] + half, c[1] - half, c[1] + half


def render_scene(scene: Scene, out_path: str | os.PathLike, rollouts: np.ndarray | None = None,
                 step: int | None = None, radius: float | None = None, dpi: int = 130) -> Path:
    """Draw the scene at `step` (default: the current step) to an image file, atomically; the format follows the
    suffix (`IMAGE_FORMATS`), anything else is a ValueError.

    rollouts: optional xy [R, A_sim, 80, 2] of the sim agents (tracks valid at the current step, in track order).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch, Polygon

    step = scene.current_time_index if step is None else int(step)
    if not 0 <= step < scene.num_steps:
        raise ValueError(f"step {step} outside [0, {scene.num_steps}) of scenario {scene.scenario_id}")
    if radius is not None and not radius > 0:
        raise ValueError(f"radius must be a positive number of metres, got {radius}")
    fmt = image_format(out_path)
    fig, ax = plt.subplots(figsize=(10.2, 8.5))
    ax.set_facecolor("#f4f4f2")
    x0, x1, y0, y1 = _view(scene, step, radius)
    for f in range(scene.num_map_features):
        pts = scene.polyline(f)[:, :2]
        kind = int(scene.map_types[f])
        if len(pts) == 0:
            continue
        if kind == MapFeatureType.LANE:
            ax.plot(pts[:, 0], pts[:, 1], color="#c8c8d0", lw=0.7, zorder=1)
        elif kind == MapFeatureType.ROAD_LINE:
            sub = int(scene.map_subtypes[f])
            color = "#e6b800" if sub in YELLOW_LINES else "#8c8c8c"
            ax.plot(pts[:, 0], pts[:, 1], color=color, lw=1.0, ls="--" if sub in BROKEN_LINES else "-", zorder=2)
        elif kind == MapFeatureType.ROAD_EDGE:
            ax.plot(pts[:, 0], pts[:, 1], color="#303030", lw=1.6, zorder=2)
        elif kind == MapFeatureType.CROSSWALK and len(pts) >= 3:
            ax.add_patch(Polygon(pts, closed=True, fc="#ffffff", ec="#888888", hatch="////", lw=0.6, zorder=1.5))
        elif kind == MapFeatureType.SPEED_BUMP and len(pts) >= 3:
            ax.add_patch(Polygon(pts, closed=True, fc="#d9c27a", ec="none", alpha=0.7, zorder=1.5))
        elif kind == MapFeatureType.STOP_SIGN:
            ax.plot(pts[0, 0], pts[0, 1], marker="8", ms=9, color="#c0392b", mec="white", zorder=6)
    # signal states at this step, drawn on the first metres of each signalled lane
    lane_rows = {int(i): f for f, i in enumerate(scene.map_ids)}
    for l_idx, lane_id in enumerate(scene.signal_lane_ids):
        color = _signal_color(int(scene.signal_states[step, l_idx]))
        if color is None:
            continue
        f = lane_rows.get(int(lane_id))
        if f is not None:
            pts = scene.polyline(f)[:12, :2]
            ax.plot(pts[:, 0], pts[:, 1], color=color, lw=3.5, alpha=0.85, solid_capstyle="round", zorder=3)
        sp = scene.signal_stop_points[step, l_idx]
        ax.plot(sp[0], sp[1], "o", ms=5, color=color, mec="black", mew=0.5, zorder=7)
    # trajectories and boxes
    predict = set(int(i) for i in scene.tracks_to_predict)
    c = scene.current_time_index
    for a in range(scene.num_tracks):
        v = scene.valid[a]
        if not v[step]:
            continue
        color = SDC_COLOR if a == scene.sdc_index else TYPE_COLORS.get(AgentType(int(scene.track_types[a])), "gray")
        hist = np.flatnonzero(v[: c + 1])
        fut = np.flatnonzero(v[c:]) + c
        xy = scene.states[a, :, X:Y + 1]
        if len(hist) > 1:
            ax.plot(xy[hist, 0], xy[hist, 1], color=color, lw=2.0, alpha=0.45, zorder=4)
        if len(fut) > 1:
            ax.plot(xy[fut, 0], xy[fut, 1], color=color, lw=1.0, ls=(0, (3, 2)), alpha=0.8, zorder=4)
        st = scene.states[a, step]
        ec = "black" if (a in predict or a == scene.sdc_index) else "white"
        ax.add_patch(Polygon(box_corners(st[X:Y + 1], st[HEADING], st[LENGTH], st[WIDTH]), closed=True, fc=color, ec=ec,
                             lw=1.4 if ec == "black" else 0.6, alpha=0.9, zorder=5))
        if int(scene.track_types[a]) in (AgentType.PEDESTRIAN, AgentType.CYCLIST):  # small: add a visible dot
            ax.plot(st[X], st[Y], "o", ms=4.5, color=color, mec=ec, mew=0.6, zorder=5.5)
    if rollouts is not None:
        ro = np.asarray(rollouts)
        if ro.ndim != 4 or ro.shape[-1] != 2:
            raise ValueError(f"rollouts must be [R, A_sim, steps, 2], got shape {ro.shape}")
        sim = np.flatnonzero(scene.sim_agent_mask())
        if ro.shape[1] != len(sim):
            raise ValueError(f"rollouts hold {ro.shape[1]} agents, scene has {len(sim)} sim agents")
        for r in range(ro.shape[0]):
            for k, a in enumerate(sim):
                color = SDC_COLOR if a == scene.sdc_index else TYPE_COLORS.get(AgentType(int(scene.track_types[a])))
                ax.plot(ro[r, k, :, 0], ro[r, k, :, 1], color=color, lw=0.6, alpha=0.25, zorder=3.5)
    handles = [Patch(fc=TYPE_COLORS[AgentType.VEHICLE], label="vehicle"),
               Patch(fc=TYPE_COLORS[AgentType.PEDESTRIAN], label="pedestrian"),
               Patch(fc=TYPE_COLORS[AgentType.CYCLIST], label="cyclist"), Patch(fc=SDC_COLOR, label="SDC"),
               Patch(fc="white", ec="black", label="to predict"),
               Line2D([], [], color="gray", lw=2, alpha=0.5, label="history"),
               Line2D([], [], color="gray", lw=1, ls=(0, (3, 2)), label="future (log)"),
               Line2D([], [], color="#303030", lw=1.6, label="road edge"),
               Line2D([], [], color="#e41a1c", lw=3.5, label="signal: stop"),
               Line2D([], [], color="#2ca02c", lw=3.5, label="signal: go"),
               Line2D([], [], color="#c0392b", marker="8", ls="none", label="stop sign")]
    if rollouts is not None:
        handles.append(Line2D([], [], color="gray", lw=0.6, alpha=0.5, label="rollouts"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_aspect("equal")
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    t = scene.timestamps[step] if len(scene.timestamps) > step else step
    ax.set_title(f"scenario {scene.scenario_id}  ·  step {step} (t = {t:.1f} s)  ·  "
                 f"{int(scene.sim_agent_mask().sum())} sim agents", fontsize=10)
    fig.tight_layout()
    out = Path(out_path)
    try:
        with atomic_path(out) as tmp:
            fig.savefig(tmp, dpi=dpi, format=fmt)
    finally:
        plt.close(fig)
    return out


def image_format(path: str | os.PathLike) -> str:
    """The matplotlib format of an output path from its suffix; ValueError for a suffix we do not write."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in IMAGE_FORMATS:
        raise ValueError(f"{path}: cannot write a {suffix or 'suffix-less'!r} image; use one of "
                         f"{', '.join('.' + s for s in IMAGE_FORMATS)}")
    return IMAGE_FORMATS[suffix]
