"""Red-light violations of the scored agents, with the official semantics.

The agent's lane is the surface-street lane segment nearest to its centre under the official lane metric
|p - s + t (e - s)| (t the clipped planar projection; lanes shorter than the longest one also own a segment from their
last point to the map origin, as the official zero padding makes them). A violation is crossing a signal's stop point
(behind at t-1, ahead at t, along that signal lane's segment nearest to the stop point) while the signal is STOP or
ARROW_STOP and the agent's current lane is the signal's lane.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from drivetune.realism.batch import Batch, local32
from drivetune.realism.spatial import build_index
from drivetune.realism.map_features import LaneTable, nearest_for
from drivetune.scene import LaneType, MapFeatureType, Scene, SignalState

STOP_STATES = (int(SignalState.ARROW_STOP), int(SignalState.STOP))


@dataclass
class SignalTable:
    lane_id: Tensor  # long [S, L] signalled lane ids (-2 padding)
    usable: Tensor  # bool [S, L]: the lane is a surface-street lane of the map
    is_stop: Tensor  # bool [S, T, L]
    seg_start: Tensor  # [S, T, L, 2] start of the lane segment nearest to the stop point
    seg_vec: Tensor  # [S, T, L, 2]
    stop_t: Tensor  # [S, T, L] stop point's coordinate along that segment


def _lane_segments(scene: Scene, origin: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Surface-street lane segments as the official zero-padded lane tensor sees them.

    Returns lane ids [K], segment offsets per lane [K+1], starts and vectors [N, 2] (local frame). Lanes shorter than
    the longest one get a last segment to the padding point, the map origin (-origin locally).
    """
    f = scene.features_of_type(MapFeatureType.LANE)
    cnt = scene.map_offsets[f + 1] - scene.map_offsets[f]
    keep = (scene.map_subtypes[f] == int(LaneType.SURFACE_STREET)) & (cnt >= 2)
    f, cnt = f[keep], cnt[keep]
    longest = int(cnt.max()) if len(cnt) else 0
    nseg = cnt - 1 + (cnt < longest)
    offs = np.concatenate([[0], np.cumsum(nseg)])
    lane = np.repeat(np.arange(len(f)), nseg)
    within = np.arange(offs[-1]) - offs[lane]
    first = scene.map_offsets[f][lane] + within
    pts = local32(scene.map_points[:, :2], origin[:2])
    starts = pts[first]
    phantom = within == cnt[lane] - 1
    ends = np.where(phantom[:, None], -origin[None, :2], pts[np.minimum(first + 1, len(pts) - 1)])
    return scene.map_ids[f].astype(np.int64), offs, starts, ends - starts


def _lane_metric(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    den = (v * v).sum(-1)
    t = np.where(den > 0, (q * v).sum(-1) / np.where(den > 0, den, 1), 0.0)
    return np.linalg.norm(q + v * np.clip(t, 0, 1)[..., None], axis=-1)


def build_lanes_and_signals(scenes: list[Scene], batch: Batch) -> tuple[LaneTable | None, SignalTable | None]:
    """Lane segment table (all scenes) and per-scene signal tables; (None, None) when no scene has any."""
    T = scenes[0].num_steps
    st_all, vec_all, lid_all, poly_all, scene_all = [], [], [], [], []
    sig = []
    n_lanes = 0
    for s, scene in enumerate(scenes):
        o = batch.origin[s]
        ids, offs, starts, vecs = _lane_segments(scene, o)
        st_all.append(starts), vec_all.append(vecs), lid_all.append(np.repeat(ids, np.diff(offs)))
        poly_all.append(np.repeat(np.arange(len(ids)) + n_lanes, np.diff(offs)))
        scene_all.append(np.full(len(starts), s))
        n_lanes += len(ids)
        row_of = {int(i): r for r, i in enumerate(ids)}
        present = (scene.signal_states != int(SignalState.ABSENT)).any(0)
        lanes = scene.signal_lane_ids[present]
        states = np.where(scene.signal_states[:, present] == int(SignalState.ABSENT), 0, scene.signal_states[:, present])
        stops = np.where((scene.signal_states[:, present] == int(SignalState.ABSENT))[..., None], -o[None, None, :2],
                         local32(scene.signal_stop_points[:, present, :2], o[:2]))
        L = len(lanes)
        seg_start, seg_vec = np.zeros((T, L, 2)), np.zeros((T, L, 2))
        usable = np.array([int(i) in row_of for i in lanes], bool)
        for j in range(L):  # a handful of signalled lanes per scene
            if not usable[j]:
                continue
            r = row_of[int(lanes[j])]
            st, v = starts[offs[r] : offs[r + 1]], vecs[offs[r] : offs[r + 1]]
            col = np.argmin(_lane_metric(stops[:, j, None] - st[None], v[None]), axis=1)  # [T]
            seg_start[:, j], seg_vec[:, j] = st[col], v[col]
        den = (seg_vec**2).sum(-1)
        stop_t = np.where(den > 0, ((stops - seg_start) * seg_vec).sum(-1) / np.where(den > 0, den, 1), 0.0)
        is_stop = np.isin(states, STOP_STATES)
        sig.append((lanes, usable, is_stop, seg_start, seg_vec, stop_t))
    if n_lanes == 0 or max(len(x[0]) for x in sig) == 0:
        return None, None
    dev, dt = batch.traj.device, batch.traj.dtype
    Tt = lambda a: torch.as_tensor(a, dtype=dt, device=dev)  # noqa: E731
    Lg = lambda a: torch.as_tensor(a, dtype=torch.long, device=dev)  # noqa: E731
    st, vec = np.concatenate(st_all), np.concatenate(vec_all)
    st3 = np.concatenate([st, np.zeros((len(st), 1))], 1)
    vec3 = np.concatenate([vec, np.zeros((len(st), 1))], 1)
    index = build_index(Lg(np.concatenate(poly_all)), Lg(np.concatenate(scene_all)), Tt(st3), Tt(vec3), "lane", 0.0)
    lanes = LaneTable(Lg(np.concatenate(lid_all)), index)
    Lm = max(len(x[0]) for x in sig)
    S = len(scenes)
    lane_id = np.full((S, Lm), -2, np.int64)
    usable = np.zeros((S, Lm), bool)
    is_stop = np.zeros((S, T, Lm), bool)
    seg_start, seg_vec, stop_t = np.zeros((S, T, Lm, 2)), np.zeros((S, T, Lm, 2)), np.zeros((S, T, Lm))
    for s, (ln, us, stp, ss, sv, sp) in enumerate(sig):
        n = len(ln)
        lane_id[s, :n], usable[s, :n], is_stop[s, :, :n] = ln, us, stp
        seg_start[s, :, :n], seg_vec[s, :, :n], stop_t[s, :, :n] = ss, sv, sp
    return lanes, SignalTable(Lg(lane_id), torch.as_tensor(usable, device=dev), torch.as_tensor(is_stop, device=dev),
                              Tt(seg_start), Tt(seg_vec), Tt(stop_t))


def red_light_violation(batch: Batch, lanes: LaneTable | None, sig: SignalTable | None, cur: int) -> Tensor:
    """bool [S, R1, E, 80]: the agent crosses a red signal's stop point on its current lane at that step."""
    S, R1 = batch.traj.shape[:2]
    E = batch.scored.shape[1]
    T = batch.traj.shape[3]
    if lanes is None or sig is None:
        return torch.zeros((S, R1, E, T - cur - 1), dtype=torch.bool, device=batch.traj.device)
    tr = batch.scored_traj[..., cur:, :2]  # [S, R1, E, 81, 2]
    ok = batch.scored_valid[..., cur + 1 :]

    k = nearest_for(tr[:, :, :, 1:], ok, lanes.index)  # [S, R1, E, 80]
    lane_now = lanes.lane_id[k]
    # coordinate along each signal's stop segment, per step (segment of that same step)
    st = sig.seg_start[:, None, None, cur:]  # [S, 1, 1, 81, L, 2]
    v = sig.seg_vec[:, None, None, cur:]
    den = (v * v).sum(-1)
    rel = ((tr[..., None, :] - st) * v).sum(-1)
    rel = torch.where(den > 0, rel / torch.where(den > 0, den, 1), torch.zeros_like(rel))
    stop_t = sig.stop_t[:, None, None, cur:]
    crossed = (rel[..., :-1, :] < stop_t[..., :-1, :]) & (rel[..., 1:, :] > stop_t[..., 1:, :])
    match = lane_now[..., None] == sig.lane_id[:, None, None, None, :]
    red = sig.is_stop[:, None, None, cur + 1 :] & sig.usable[:, None, None, None, :]
    return (ok[..., None] & match & red & crossed).any(-1)
