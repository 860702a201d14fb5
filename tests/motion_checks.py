"""Checks of logged traffic written for the tests, independent of the generator's own safety pass
(`drivetune.synth.safety`), which already drops what it flags (so testing with it could never fail)."""

from __future__ import annotations

import numpy as np

DT = 0.1  # s between WOMD steps


def _corners(x: float, y: float, heading: float, length: float, width: float) -> np.ndarray:
    """Counter-clockwise corners of an oriented box."""
    c, s = np.cos(heading), np.sin(heading)
    local = np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]]) * [length / 2, width / 2]
    return np.c_[x + local[:, 0] * c - local[:, 1] * s, y + local[:, 0] * s + local[:, 1] * c]


def _clip(subject: np.ndarray, clip: np.ndarray) -> np.ndarray:
    """Sutherland-Hodgman: the part of convex polygon `subject` inside convex CCW polygon `clip`."""
    out = subject
    for k in range(len(clip)):
        a, b = clip[k], clip[(k + 1) % len(clip)]
        if len(out) == 0:
            break
        side = (b[0] - a[0]) * (out[:, 1] - a[1]) - (b[1] - a[1]) * (out[:, 0] - a[0])  # > 0: inside
        kept = []
        for i in range(len(out)):
            p, q, sp, sq = out[i], out[(i + 1) % len(out)], side[i], side[(i + 1) % len(out)]
            if sp >= 0:
                kept.append(p)
            if (sp >= 0) != (sq >= 0):
                kept.append(p + (q - p) * (sp / (sp - sq)))
        out = np.array(kept).reshape(-1, 2)
    return out


def _area(poly: np.ndarray) -> float:
    if len(poly) < 3:
        return 0.0
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def overlapping_boxes(states: np.ndarray, valid: np.ndarray, x: int, y: int, heading: int, length: int, width: int,
                      min_area: float = 1e-4) -> list[tuple[int, int, int]]:
    """(agent i, agent j, step) where both boxes are valid and their intersection area exceeds `min_area` m²
    (polygon clipping; a bounding-circle test only skips far pairs)."""
    found = []
    A, T = valid.shape
    for t in range(T):
        rows = np.flatnonzero(valid[:, t])
        st = states[rows, t]
        r = np.hypot(st[:, length], st[:, width]) / 2
        d = np.hypot(st[:, None, x] - st[None, :, x], st[:, None, y] - st[None, :, y])
        ii, jj = np.nonzero(np.triu(d < r[:, None] + r[None, :], 1))
        for i, j in zip(ii, jj):
            a = _corners(*st[i, [x, y, heading, length, width]])
            b = _corners(*st[j, [x, y, heading, length, width]])
            if _area(_clip(a, b)) > min_area:
                found.append((int(rows[i]), int(rows[j]), t))
    return found


def kinematic_outliers(xy: np.ndarray, heading: np.ndarray, valid: np.ndarray, yaw_checked: np.ndarray,
                       max_accel: float, max_yaw_rate: float) -> list[tuple[int, str, float]]:
    """(agent, "accel" | "yaw rate", value) above the limits. Each track is cut into runs of consecutive valid steps;
    speed is |Δposition| / Δt, acceleration Δspeed / Δt, yaw rate the wrapped Δheading / Δt within a run."""
    out = []
    for a in range(valid.shape[0]):
        steps = np.flatnonzero(valid[a])
        for run in np.split(steps, np.flatnonzero(np.diff(steps) > 1) + 1):
            if len(run) >= 3:
                speed = np.hypot(*np.diff(xy[a, run], axis=0).T) / DT
                acc = np.abs(np.diff(speed)) / DT
                if acc.max() > max_accel:
                    out.append((a, "accel", float(acc.max())))
            if len(run) >= 2 and yaw_checked[a]:
                rate = np.abs(np.angle(np.exp(1j * np.diff(heading[a, run])))) / DT
                if rate.max() > max_yaw_rate:
                    out.append((a, "yaw rate", float(rate.max())))
    return out
