"""Per-step trajectory and interaction features: kinematics, ADE, distance to nearest object, time to collision.

Shapes: S scenes, R1 = 1 + R rollouts (0 = log), A agents, E scored agents, T = 91 steps (80 future).
All features are returned on the 80 future steps.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from drivetune.realism.batch import Batch
from drivetune.realism.geometry import box_signed_distance, corner_list, polygon_signed_distance, to_local
from drivetune.scene import wrap_angle

STEP = 0.1
FAR = 1e10
CORNER_ROUNDING = 0.7
MAX_HEADING_DIFF = math.radians(75.0)
MAX_HEADING_DIFF_SMALL_OVERLAP = math.radians(10.0)
SMALL_OVERLAP = 0.5
MAX_TTC = 5.0


def central_diff(v: Tensor) -> Tensor:
    """(v[t+1] - v[t-1]) / 2 along the last axis, NaN at both ends."""
    pad = torch.full_like(v[..., :1], float("nan"))
    return torch.cat((pad, (v[..., 2:] - v[..., :-2]) / 2, pad), dim=-1)


def central_and(v: Tensor) -> Tensor:
    pad = torch.zeros_like(v[..., :1])
    return torch.cat((pad, v[..., 2:] & v[..., :-2], pad), dim=-1)


def kinematics(traj: Tensor) -> dict[str, Tensor]:
    """Linear/angular speed and acceleration ([..., T]) from x, y, z, heading ([..., T, 4]); 3-D linear terms."""
    d = central_diff(traj[..., :3].movedim(-1, 0))
    speed = torch.sqrt((d * d).sum(0)) / STEP
    accel = central_diff(speed) / STEP
    dh = wrap_angle(central_diff(traj[..., 3]) * 2) / 2
    d2h = wrap_angle(central_diff(dh) * 2) / 2
    return {"linear_speed": speed, "linear_acceleration": accel, "angular_speed": dh / STEP,
            "angular_acceleration": d2h / STEP**2}


def kinematic_validity(valid: Tensor) -> tuple[Tensor, Tensor]:
    """Masks for speeds and accelerations (neighbours valid), on the window they are computed on."""
    sv = central_and(valid)
    return sv, central_and(sv)


def displacement_error(batch: Batch) -> Tensor:
    """[S, R, E] 3-D ADE of each simulated rollout against the log over all logged-valid steps (history included)."""
    tr = batch.scored_traj[..., :3]
    err = torch.linalg.vector_norm(tr[:, 1:] - tr[:, :1], dim=-1)  # [S, R, E, T]
    lv = batch.scored_valid[:, :1]
    return torch.where(lv, err, torch.zeros_like(err)).sum(-1) / lv.sum(-1).clamp_min(1).to(err.dtype)


def _rollout_chunks(batch: Batch, per_rollout: int, budget: int = 40_000_000):
    R1 = batch.traj.shape[1]
    step = max(1, min(R1, budget // max(1, per_rollout)))
    return [(i, min(R1, i + step)) for i in range(0, R1, step)]


def distance_to_nearest_object(batch: Batch, cur: int, cap: float = 40.0) -> Tensor:
    """[S, R1, E, 80] signed distance between rounded boxes (corner rounding 0.7) to the nearest other valid object.

    Every sim agent is an obstacle; pairs where either object is invalid, and the object itself, count as 1e10.
    Only pairs that can be the nearest one below `cap` metres are measured exactly (bounds from centre distances and
    box radii); when none can, the smallest centre distance (> cap) stands in. Results below `cap` are exact.
    """
    S, R1, A, T, _ = batch.traj.shape
    E = batch.scored.shape[1]
    shrink = torch.minimum(batch.length, batch.width) * CORNER_ROUNDING / 2  # [S, A]
    hl, hw = (batch.length - 2 * shrink) * 0.5, (batch.width - 2 * shrink) * 0.5
    radius = torch.hypot(batch.length, batch.width) / 2
    self_mask = batch.scored[:, :, None] == torch.arange(A, device=batch.scored.device)[None, None]  # [S, E, A]
    out = []
    for r0, r1 in _rollout_chunks(batch, S * E * A * (T - cur - 1) * 4):
        tr = batch.traj[:, r0:r1, :, cur + 1 :]  # [S, r, A, 80, 4]
        va = batch.valid[:, r0:r1, :, cur + 1 :]
        idx = batch.scored[:, None, :, None].expand(-1, r1 - r0, -1, tr.shape[3])
        ex, ey = (torch.gather(tr[..., k], 2, idx)[:, :, :, None] for k in (0, 1))  # [S, r, E, 1, 80]
        e_ok = torch.gather(va, 2, idx)[:, :, :, None]
        centre = torch.hypot(tr[..., 0][:, :, None] - ex, tr[..., 1][:, :, None] - ey)  # [S, r, E, A, 80]
        lb = centre - torch.gather(radius, 1, batch.scored)[:, None, :, None, None] - radius[:, None, None, :, None]
        pair_ok = e_ok & va[:, :, None] & ~self_mask[:, None, :, :, None]
        # the nearest object is within its centre distance (an upper bound), so only pairs whose lower bound is
        # below every upper bound (and below the cap) can hold the minimum
        ub = torch.where(pair_ok, centre, torch.full_like(centre, FAR)).amin(3)  # [S, r, E, 80]
        near = pair_ok & (lb <= torch.clamp(ub, max=cap)[:, :, :, None])
        far_min = torch.where(near.any(3), torch.full_like(ub, FAR), ub)
        s_, r_, e_, a_, t_ = torch.nonzero(near, as_tuple=True)
        ea = batch.scored[s_, e_]
        ego = (*(tr[s_, r_, ea, t_, k] for k in (0, 1, 3)), hl[s_, ea], hw[s_, ea])
        oth = (*(tr[s_, r_, a_, t_, k] for k in (0, 1, 3)), hl[s_, a_], hw[s_, a_])
        d = box_signed_distance(ego, oth) - shrink[s_, ea] - shrink[s_, a_]
        flat = ((s_ * (r1 - r0) + r_) * E + e_) * tr.shape[3] + t_
        near_min = torch.full((far_min.numel(),), FAR, dtype=d.dtype, device=d.device).scatter_reduce(0, flat, d, "amin")
        # re-measure each nearest pair with corners rounded at absolute coordinates, as the official code does
        big = torch.iinfo(torch.long).max
        win = torch.where(d == near_min[flat], torch.arange(d.numel(), device=d.device), big)
        win = torch.full_like(near_min, big, dtype=torch.long).scatter_reduce(0, flat, win, "amin")
        win = win[win < big]
        ws, wr, wa, wt, wea = s_[win], r_[win], a_[win], t_[win], ea[win]
        org = (batch.origin_t[ws, 0], batch.origin_t[ws, 1])
        ca = corner_list(*(tr[ws, wr, wea, wt, k] for k in (0, 1, 3)), hl[ws, wea], hw[ws, wea], org)
        cb = corner_list(*(tr[ws, wr, wa, wt, k] for k in (0, 1, 3)), hl[ws, wa], hw[ws, wa], org)
        near_min[flat[win]] = polygon_signed_distance(ca, cb) - shrink[ws, wea] - shrink[ws, wa]
        out.append(torch.minimum(far_min, near_min.view_as(far_min)))
    return torch.cat(out, 1)


def time_to_collision(batch: Batch, cur: int) -> Tensor:
    """[S, R1, E, 80] seconds until the scored agent reaches the object it follows at constant speeds (max 5 s).

    Following: the other box is ahead of the front bumper, overlaps the agent's lane laterally and has a raw (not
    wrapped) heading difference <= 75 deg (<= 10 deg when the lateral overlap is under 0.5 m). Planar speeds.
    """
    S, R1, A, T, _ = batch.traj.shape
    E = batch.scored.shape[1]
    d = central_diff(batch.traj[..., :2].movedim(-1, 0))
    speed = torch.sqrt((d * d).sum(0))[..., cur + 1 :] / STEP  # [S, R1, A, 80]
    out = []
    for r0, r1 in _rollout_chunks(batch, S * E * A * (T - cur - 1) * 30):
        tr = batch.traj[:, r0:r1, :, cur + 1 :]
        va = batch.valid[:, r0:r1, :, cur + 1 :]
        sp = speed[:, r0:r1]
        idx = batch.scored[:, None, :, None].expand(-1, r1 - r0, -1, tr.shape[3])
        ex, ey, eh, es = (torch.gather(v, 2, idx)[:, :, :, None] for v in (tr[..., 0], tr[..., 1], tr[..., 3], sp))
        ox, oy, oh, osp = (v[:, :, None] for v in (tr[..., 0], tr[..., 1], tr[..., 3], sp))
        el = torch.gather(batch.length, 1, batch.scored)[:, None, :, None, None]
        ew = torch.gather(batch.width, 1, batch.scored)[:, None, :, None, None]
        ol, ow = batch.length[:, None, None, :, None], batch.width[:, None, None, :, None]
        yaw = (oh - eh).abs()
        c, s = torch.cos(yaw).abs(), torch.sin(yaw).abs()
        long_off = ol / 2 * c + ow / 2 * s
        lat_off = ol / 2 * s + ow / 2 * c
        rx, ry = to_local(ox - ex, oy - ey, eh)
        long_d = rx - el / 2 - long_off
        lat = ry.abs() - ew / 2 - lat_off
        follow = (long_d > 0) & (yaw <= MAX_HEADING_DIFF) & (lat < 0) & ((lat < -SMALL_OVERLAP) | (yaw <= MAX_HEADING_DIFF_SMALL_OVERLAP))
        ok = follow & va[:, :, None]
        masked = torch.where(ok, long_d, torch.full_like(long_d, float("inf")))
        dist, j = masked.min(3)  # [S, r, E, 80]
        ahead_speed = torch.gather(osp.expand_as(masked), 3, j[:, :, :, None])[:, :, :, 0]
        rel = es[:, :, :, 0] - ahead_speed
        ttc = torch.where(ok.any(3) & (rel > 0), torch.clamp(dist / rel, max=MAX_TTC), torch.full_like(rel, MAX_TTC))
        out.append(ttc)
    return torch.cat(out, 1)
