"""Signed distance to road edges (offroad), with the exact pruned nearest-segment search of `spatial`.

The 4 bottom corners of each scored box query the nearest road-edge segment by 3-D distance with z stretched 3x; the
answer is the planar distance, negative on the port (road) side, with the official sign rules at segment ends
(neighbour segment and local convexity; closed polylines wrap only when they are as long as the scene's longest edge,
a quirk of the official padding). Corners are rounded as the official float32 code rounds them at absolute
coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from drivetune.realism.batch import Batch, local32
from drivetune.realism.geometry import box_corners
from drivetune.realism.spatial import SegmentIndex, build_index, nearest_segment
from drivetune.scene import MapFeatureType, Scene

Z_STRETCH = 3.0
CYCLE_TOL2 = 1.0


@dataclass
class EdgeTable:
    """Road-edge segments (start and vector in `index`) with their sign-rule neighbours."""

    prev: Tensor  # long [N], -1 when the sign rule has no previous segment
    next: Tensor
    convex_prev: Tensor  # bool [N]: cross(prev, this) > 0
    convex_next: Tensor
    index: SegmentIndex


@dataclass
class LaneTable:
    lane_id: Tensor  # long [N]
    index: SegmentIndex


def _edge_arrays(scene: Scene, origin: np.ndarray):
    polys = [scene.polyline(f) for f in scene.features_of_type(MapFeatureType.ROAD_EDGE)]
    polys = [p for p in polys if len(p) >= 2]
    if not polys:
        raise ValueError(f"scenario {scene.scenario_id}: no road edges (the offroad features need them)")
    longest = max(len(p) for p in polys) - 1
    st, vec, prev, nxt, poly = [], [], [], [], []
    base = 0
    for i, p in enumerate(polys):
        p32 = p.astype(np.float32)
        cyclic = float(((p32[0] - p32[-1]) ** 2).sum(dtype=np.float32)) < CYCLE_TOL2
        q = local32(p, origin)
        n = len(p) - 1
        k = np.arange(n)
        wrap = cyclic and n == longest
        pr = np.where(k > 0, base + k - 1, (base + n - 1) if wrap else -1)
        nx = np.where(k < n - 1, base + k + 1, base if wrap else -1)
        st.append(q[:-1]), vec.append(q[1:] - q[:-1]), prev.append(pr), nxt.append(nx), poly.append(np.full(n, i))
        base += n
    return [np.concatenate(v) for v in (st, vec, prev, nxt, poly)]


def build_edges(scenes: list[Scene], batch: Batch) -> EdgeTable:
    parts = [_edge_arrays(s, batch.origin[i]) for i, s in enumerate(scenes)]
    offs = np.cumsum([0] + [len(p[0]) for p in parts])
    st = np.concatenate([p[0] for p in parts])
    vec = np.concatenate([p[1] for p in parts])
    prev = np.concatenate([np.where(p[2] >= 0, p[2] + o, -1) for p, o in zip(parts, offs)])
    nxt = np.concatenate([np.where(p[3] >= 0, p[3] + o, -1) for p, o in zip(parts, offs)])
    poly = np.concatenate([p[4] + 100000 * i for i, p in enumerate(parts)])
    scene_of = np.concatenate([np.full(len(p[0]), i) for i, p in enumerate(parts)])
    cross = lambda a, b: a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]  # noqa: E731
    cp = np.where(prev >= 0, cross(vec[np.maximum(prev, 0)], vec) > 0, False)
    cn = np.where(nxt >= 0, cross(vec, vec[np.maximum(nxt, 0)]) > 0, False)
    dev, dt = batch.traj.device, batch.traj.dtype
    T = lambda a: torch.as_tensor(a, dtype=dt, device=dev)  # noqa: E731
    L = lambda a: torch.as_tensor(a, dtype=torch.long, device=dev)  # noqa: E731
    index = build_index(L(poly), L(scene_of), T(st), T(vec), "edge", Z_STRETCH)
    return EdgeTable(L(prev), L(nxt), torch.as_tensor(cp, device=dev), torch.as_tensor(cn, device=dev), index)


def nearest_for(pts: Tensor, ok: Tensor, index: SegmentIndex) -> Tensor:
    """Nearest segment id for every valid point of [S, ...leading, D] (0 where not ok)."""
    S = pts.shape[0]
    scene = torch.arange(S, device=pts.device).view(S, *([1] * (ok.dim() - 1))).expand_as(ok)
    out = torch.zeros(ok.shape, dtype=torch.long, device=pts.device)
    out[ok] = nearest_segment(pts[ok], scene[ok], index)
    return out


def distance_to_road_edge(batch: Batch, edges: EdgeTable, cur: int) -> Tensor:
    """[S, R1, E, 80] signed planar distance of the most off-road bottom corner (-1e10 where invalid)."""
    tr = batch.scored_traj[:, :, :, cur + 1 :]  # [S, R1, E, 80, 4]
    ok = batch.scored_valid[:, :, :, cur + 1 :]
    idx = batch.scored
    hl = torch.gather(batch.length, 1, idx)[:, None, :, None] * 0.5
    hw = torch.gather(batch.width, 1, idx)[:, None, :, None] * 0.5
    hz = torch.gather(batch.height, 1, idx)[:, None, :, None] * 0.5
    o = batch.origin_t[:, None, None, None]  # [S, 1, 1, 1, 3]
    xy = box_corners(tr[..., 0], tr[..., 1], tr[..., 3], hl.expand_as(tr[..., 0]), hw.expand_as(tr[..., 0]),
                     (o[..., 0], o[..., 1]))
    z = ((tr[..., 2] + o[..., 2]) + (-hz)) - o[..., 2]  # bottom face, rounded at absolute height
    pts = torch.cat((xy, z[..., None, None].expand(*z.shape, 4, 1)), -1)  # [S, R1, E, 80, 4, 3]
    okq = ok[..., None].expand(*ok.shape, 4)
    k = nearest_for(pts, okq, edges.index)
    d = _signed_edge_distance(pts, k, edges)
    return torch.where(okq, d, torch.full_like(d, -1e10)).amax(-1)


def _signed_edge_distance(p: Tensor, k: Tensor, e: EdgeTable) -> Tensor:
    def side(j: Tensor) -> Tensor:
        q, v = p[..., :2] - e.index.start[j][..., :2], e.index.vec[j][..., :2]
        return torch.sign(q[..., 0] * v[..., 1] - q[..., 1] * v[..., 0])

    q, v = p - e.index.start[k], e.index.vec[k]
    den = (v[..., :2] ** 2).sum(-1)
    t = torch.where(den > 0, (q[..., :2] * v[..., :2]).sum(-1) / torch.where(den > 0, den, 1), 0)
    w = q[..., :2] - v[..., :2] * t.clamp(0, 1)[..., None]
    dist = torch.sqrt((w * w).sum(-1))
    n = side(k)
    pr, nx = e.prev[k], e.next[k]
    n_pr, n_nx = side(pr.clamp_min(0)), side(nx.clamp_min(0))
    before = torch.where(e.convex_prev[k], torch.maximum(n, n_pr), torch.minimum(n, n_pr))
    after = torch.where(e.convex_next[k], torch.maximum(n, n_nx), torch.minimum(n, n_nx))
    sign = torch.where((t < 0) & (pr >= 0), before, torch.where((t > 1) & (nx >= 0), after, n))
    return sign * dist
