"""Safety and physics checks of logged traffic: box overlaps, drivable area, red-light crossings, kinematics.

The generator uses them to drop offending agents before a scene is emitted; the tests re-check emitted scenes.
"""

from __future__ import annotations

import numpy as np

from drivetune.scene import STEP_SECONDS, wrap_angle

from drivetune.synth.geometry import box_corners, boxes_overlap
from drivetune.synth.roads import Network

MAX_ACCEL = 8.0  # m/s^2, |d speed / dt| from logged positions
MAX_YAW_RATE = 1.5  # rad/s for vehicles and cyclists


def on_road(net: Network, pts: np.ndarray) -> np.ndarray:
    """bool [N]: points (local frame) inside the drivable area that the network's road edges bound."""
    if net.ref is not None:
        ref = net.ref  # 1 m spacing, curvature radius >= 90 m: the nearest 5th point is within 5 of the nearest
        rx, ry = ref[:, 0], ref[:, 1]
        ex, ey = rx[1:] - rx[:-1], ry[1:] - ry[:-1]  # segment vectors
        px, py = pts[:, 0], pts[:, 1]
        coarse = ref[::5]
        d2 = (px[:, None] - coarse[None, :, 0]) ** 2 + (py[:, None] - coarse[None, :, 1]) ** 2
        win = np.clip(d2.argmin(1)[:, None] * 5 + np.arange(-6, 7)[None], 0, len(ref) - 2)
        # nearest segment in the window, x / y kept apart (no [..., 2] temporaries)
        apx, apy, abx, aby = px[:, None] - rx[win], py[:, None] - ry[win], ex[win], ey[win]
        t = np.clip((apx * abx + apy * aby) / (ex * ex + ey * ey)[win], 0, 1)
        dx, dy = apx - abx * t, apy - aby * t
        m = np.sqrt(dx * dx + dy * dy).argmin(1)
        ar = np.arange(len(pts))
        abx, aby, apx, apy = abx[ar, m], aby[ar, m], apx[ar, m], apy[ar, m]
        lateral = (abx * apy - aby * apx) / np.sqrt(abx * abx + aby * aby)
        h_f, h_b = net.ref_half
        return (lateral >= -h_f) & (lateral <= h_b)
    arms = net.arms
    s = pts @ np.stack([a.u for a in arms]).T  # [N, arms] along each arm
    lat = pts @ np.stack([a.n for a in arms]).T  # [N, arms] left of each arm's outward direction
    h_in = np.array([a.half(+1) for a in arms])
    h_out = np.array([a.half(-1) for a in arms])
    length = np.array([a.length for a in arms])
    inside = ((s >= 0) & (s <= length + 8.0) & (lat >= -h_out) & (lat <= h_in)).any(1)
    cs = [c for c in net.corners if c.center is not None]
    rest = np.flatnonzero(~inside)  # only these can still be on a corner fillet
    if cs and len(rest):
        pts, s, lat = pts[rest], s[rest], lat[rest]
        k = np.array([c.k for c in cs])
        j = np.array([c.j for c in cs])
        centre = np.stack([c.center for c in cs])
        d2 = (pts[:, 0, None] - centre[None, :, 0]) ** 2 + (pts[:, 1, None] - centre[None, :, 1]) ** 2
        fillet = (lat[:, k] >= h_in[k]) & (lat[:, j] <= -h_out[j]) & (s[:, k] <= np.array([c.s_k for c in cs]))
        fillet &= (s[:, j] <= np.array([c.s_j for c in cs])) & (d2 >= np.array([c.radius for c in cs]) ** 2)
        inside[rest] = fillet.any(1)
    return inside


def corners_of(xy: np.ndarray, heading: np.ndarray, length: np.ndarray, width: np.ndarray) -> np.ndarray:
    """[A, T, 4, 2] box corners from [A, T] poses and per-agent sizes [A]."""
    return box_corners(xy, heading, np.broadcast_to(length[:, None], heading.shape),
                       np.broadcast_to(width[:, None], heading.shape))


def overlap_pairs(xy: np.ndarray, heading: np.ndarray, length: np.ndarray, width: np.ndarray, valid: np.ndarray,
                  inflate: float = 0.1) -> list[tuple[int, int]]:
    """Pairs (i < j) of agents whose boxes (grown by `inflate` m) overlap at some step where both are valid."""
    A = xy.shape[0]
    if A < 2:
        return []
    L, W = length + inflate, width + inflate
    reach = np.hypot(L, W) / 2
    # candidate pairs: bounding boxes of the whole valid trajectories (grown by the reach) intersect
    x, y = xy[..., 0], xy[..., 1]
    lo_x, hi_x = np.where(valid, x, np.inf).min(1) - reach, np.where(valid, x, -np.inf).max(1) + reach
    lo_y, hi_y = np.where(valid, y, np.inf).min(1) - reach, np.where(valid, y, -np.inf).max(1) + reach
    cand = ((lo_x[:, None] <= hi_x[None, :]) & (lo_x[None, :] <= hi_x[:, None]) & (lo_y[:, None] <= hi_y[None, :])
            & (lo_y[None, :] <= hi_y[:, None]))
    iu, ju = np.nonzero(np.triu(cand, 1))
    d2 = (x[iu] - x[ju]) ** 2 + (y[iu] - y[ju]) ** 2  # [pairs, T]
    near = (d2 < ((reach[iu] + reach[ju]) ** 2)[:, None]) & valid[iu] & valid[ju]
    p, t = np.nonzero(near)
    i, j = iu[p], ju[p]
    if len(i) == 0:
        return []
    ci = box_corners(xy[i, t], heading[i, t], L[i], W[i])
    cj = box_corners(xy[j, t], heading[j, t], L[j], W[j])
    hit = boxes_overlap(ci, cj)
    return sorted({(int(a), int(b)) for a, b in zip(i[hit], j[hit])})


def kinematic_violations(xy: np.ndarray, heading: np.ndarray, valid: np.ndarray, check_yaw: np.ndarray) -> np.ndarray:
    """bool [A]: |acceleration| > MAX_ACCEL, or |yaw rate| > MAX_YAW_RATE where check_yaw, over consecutive valid steps."""
    both = valid[:, 1:] & valid[:, :-1]
    speed = np.linalg.norm(np.diff(xy, axis=1), axis=-1) / STEP_SECONDS
    acc = np.diff(speed, axis=1) / STEP_SECONDS
    acc_ok = both[:, 1:] & both[:, :-1]
    bad = (np.abs(acc) > MAX_ACCEL) & acc_ok
    dh = wrap_angle(np.diff(heading, axis=1))
    bad_yaw = (np.abs(dh) / STEP_SECONDS > MAX_YAW_RATE) & both & check_yaw[:, None]
    return bad.any(1) | bad_yaw.any(1)


def red_light_crossings(xy: np.ndarray, valid: np.ndarray, stop_xy: np.ndarray, stop_dir: np.ndarray,
                        red: np.ndarray, lateral_tol: float = 2.0) -> np.ndarray:
    """bool [A]: agent centre passes a stop point (within lateral_tol of it) between steps t-1 and t, red at t.

    stop_xy, stop_dir: [L, 2] stop points and unit lane directions there; red: bool [T, L]. A superset of the
    WOSAC red-light feature (which also requires the signalled lane to be the nearest lane).
    """
    A = xy.shape[0]
    if A == 0 or stop_xy.shape[0] == 0:
        return np.zeros(A, bool)
    rel = xy[:, :, None, :] - stop_xy[None, None]  # [A, T, L, 2]
    along = (rel * stop_dir[None, None]).sum(-1)
    lat = np.abs(rel[..., 0] * stop_dir[None, None, :, 1] - rel[..., 1] * stop_dir[None, None, :, 0])
    crossed = (along[:, :-1] < 0) & (along[:, 1:] >= 0) & (lat[:, 1:] < lateral_tol)
    crossed &= (valid[:, :-1] & valid[:, 1:])[..., None] & red[None, 1:]
    return crossed.any(axis=(1, 2))


def drop_overlaps(pairs: list[tuple[int, int]], protect: int) -> set[int]:
    """Greedy minimal-ish set of agents to drop so no overlapping pair remains (never `protect` if avoidable)."""
    drop: set[int] = set()
    live = list(pairs)
    while live:
        count: dict[int, int] = {}
        for a, b in live:
            count[a] = count.get(a, 0) + 1
            count[b] = count.get(b, 0) + 1
        victim = max(count, key=lambda x: (x != protect, count[x], x))
        drop.add(victim)
        live = [(a, b) for a, b in live if victim not in (a, b)]
    return drop
