"""Exact nearest-segment queries on polylines with three levels of pruning.

Segments are grouped into blocks of consecutive segments. Query points are binned into square cells. (1) Each cell
keeps the blocks whose lower bound (planar gap between boxes) does not exceed the smallest upper bound (farthest
cell corner to a block anchor). (2) Within those blocks each cell keeps the segments whose lower bound does not exceed
the smallest per-segment upper bound. (3) Each point measures only its cell's segments. Since a point's nearest
segment always survives both prunings, the answer is exact; ties go to the lowest segment id (the official order).

Two metrics: "edge" (3-D point-to-segment distance, z scaled by `zscale`, projection from the planar part) and
"lane" (the official lane metric |q + t v| with t the clipped planar projection, bounded by |q| <= . <= |q| + |v|).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

BLOCK = 16  # segments per block
CELL = {"edge": 1.0, "lane": 2.0}  # metres, side of a query cell (tuned on WOMD maps, 0.5 m segments)
_CELL_CHUNK = 4096  # cells per bound matrix
_SLACK = (1e-4, 1e-3)  # relative and absolute tolerance on the upper bounds (keeps rounding on the safe side)


@dataclass
class SegmentIndex:
    start: Tensor  # [N, 3]
    vec: Tensor  # [N, 3]
    inv: Tensor  # [N] 1 / |vec_xy|^2, 0 for degenerate segments
    scene: Tensor  # long [N]
    block_seg: Tensor  # long [NB, BLOCK], -1 padding
    block_min: Tensor  # [NB, 2] box of the blocks' lower-bound geometry
    block_max: Tensor
    block_z: Tensor  # [NB, 2] z range of the blocks' segments
    anchor: Tensor  # [NB, 3] a point of the block's first segment, for the upper bound ...
    anchor_extra: Tensor  # [NB] ... plus this slack
    block_scene: Tensor  # long [NB]
    metric: str
    zscale: float

    @property
    def comps(self) -> tuple[Tensor, ...]:
        """Contiguous 1-D start x, y, z and vector x, y, z (cached)."""
        if getattr(self, "_comps", None) is None:
            self._comps = tuple(t[:, k].contiguous() for t in (self.start, self.vec) for k in range(3))
        return self._comps


def _lo_geometry(start: Tensor, vec: Tensor, metric: str, seg: Tensor) -> tuple[Tensor, Tensor]:
    """Planar box of the geometry that bounds the metric from below: the segment (edge) or its start (lane)."""
    s = start[seg, :2]
    if metric == "lane":
        return s, s
    e = s + vec[seg, :2]
    return torch.minimum(s, e), torch.maximum(s, e)


def build_index(polyline: Tensor, scene: Tensor, start: Tensor, vec: Tensor, metric: str, zscale: float = 1.0) -> SegmentIndex:
    """Index segments (per segment: polyline id, scene id, start, vector [N, 3]); polylines must be contiguous."""
    if metric not in ("edge", "lane"):
        raise ValueError(f"unknown segment metric {metric!r}")
    dev, dt = start.device, start.dtype
    n = polyline.numel()
    new = torch.ones(n, dtype=torch.bool, device=dev)
    new[1:] = polyline[1:] != polyline[:-1]
    rank = torch.cumsum(new.long(), 0) - 1
    pos = torch.arange(n, device=dev) - torch.nonzero(new).squeeze(1)[rank]
    per_poly = (torch.bincount(rank) + BLOCK - 1) // BLOCK
    block_of = (torch.cumsum(per_poly, 0) - per_poly)[rank] + pos // BLOCK
    nb = int(per_poly.sum())
    block_seg = torch.full((nb, BLOCK), -1, dtype=torch.long, device=dev)
    block_seg[block_of, pos % BLOCK] = torch.arange(n, device=dev)
    den = vec[:, 0] ** 2 + vec[:, 1] ** 2
    inv = torch.where(den > 0, 1 / torch.where(den > 0, den, 1), torch.zeros_like(den))
    lo, hi = _lo_geometry(start, vec, metric, torch.arange(n, device=dev))
    big = torch.finfo(dt).max
    i2 = block_of[:, None].expand(-1, 2)
    block_min = torch.full((nb, 2), big, dtype=dt, device=dev).scatter_reduce(0, i2, lo, "amin")
    block_max = torch.full((nb, 2), -big, dtype=dt, device=dev).scatter_reduce(0, i2, hi, "amax")
    z0, z1 = start[:, 2], start[:, 2] + vec[:, 2]
    zr = torch.stack((torch.minimum(z0, z1), torch.maximum(z0, z1)), 1)
    block_z = torch.stack((torch.full((nb,), big, dtype=dt, device=dev).scatter_reduce(0, block_of, zr[:, 0], "amin"),
                           torch.full((nb,), -big, dtype=dt, device=dev).scatter_reduce(0, block_of, zr[:, 1], "amax")), 1)
    first = block_seg[:, 0]
    anchor_extra = torch.linalg.vector_norm(vec[first, :2], dim=1) if metric == "lane" else torch.zeros_like(inv[first])
    return SegmentIndex(start, vec, inv, scene, block_seg, block_min, block_max, block_z, start[first], anchor_extra,
                        scene[first], metric, zscale)


def _gap2(bmin: Tensor, bmax: Tensor, cmin: Tensor, cmax: Tensor, zgap: Tensor | None = None) -> Tensor:
    """Squared planar gap between boxes, plus the squared (scaled) gap between z ranges when given."""
    g = torch.maximum(bmin - cmax, cmin - bmax).clamp_min(0)
    out = g[..., 0] ** 2 + g[..., 1] ** 2
    return out if zgap is None else out + zgap**2


def _zgap(a_lo: Tensor, a_hi: Tensor, b_lo: Tensor, b_hi: Tensor, scale: float) -> Tensor:
    return torch.maximum(a_lo - b_hi, b_lo - a_hi).clamp_min(0) * scale


def _corners(cmin: Tensor, cmax: Tensor) -> Tensor:
    """[..., 4, 2] corners of boxes."""
    return torch.stack((cmin, torch.stack((cmin[..., 0], cmax[..., 1]), -1), cmax,
                        torch.stack((cmax[..., 0], cmin[..., 1]), -1)), -2)


def _keep_below_bound(group: Tensor, lo2: Tensor, hi: Tensor, n_groups: int) -> Tensor:
    bound = torch.full((n_groups,), float("inf"), dtype=hi.dtype, device=hi.device).scatter_reduce(0, group, hi, "amin")
    b = bound[group] * (1 + _SLACK[0]) + _SLACK[1]
    return lo2 <= b * b


def point_distance(idx: SegmentIndex, p: tuple[Tensor, ...], table: Tensor, rows: Tensor) -> Tensor:
    """The metric (squared) from points (components [M, 1]) to the segments of `table[rows]` ([M, K], -1 = none)."""
    seg = table.clamp_min(0)
    sx, sy, sz, vx, vy, vz = (idx.comps[k][seg].index_select(0, rows) for k in range(6))
    inv = idx.inv[seg].index_select(0, rows)
    qx, qy = p[0] - sx, p[1] - sy
    t = ((qx * vx + qy * vy) * inv).clamp_(0, 1)
    if idx.metric == "lane":
        wx, wy = qx.addcmul_(vx, t), qy.addcmul_(vy, t)
        d = wx.mul_(wx).addcmul_(wy, wy)
    else:
        wx, wy = qx.addcmul_(vx, t, value=-1), qy.addcmul_(vy, t, value=-1)
        wz = (p[2] - sz).addcmul_(vz, t, value=-1).mul_(idx.zscale)
        d = wx.mul_(wx).addcmul_(wy, wy).addcmul_(wz, wz)
    return d.masked_fill_((table < 0).index_select(0, rows), float("inf"))


def _cell_segment_upper(idx: SegmentIndex, seg: Tensor, cmin: Tensor, cmax: Tensor, zlo: Tensor, zhi: Tensor) -> Tensor:
    """Upper bound on the metric from any point of a cell (and its z range) to a segment."""
    corners = _corners(cmin, cmax)  # [M, 4, 2]
    s, v = idx.start[seg][:, None], idx.vec[seg][:, None]
    qx, qy = corners[..., 0] - s[..., 0], corners[..., 1] - s[..., 1]
    if idx.metric == "lane":
        return torch.sqrt(qx * qx + qy * qy).amax(1) + torch.sqrt(v[..., 0] ** 2 + v[..., 1] ** 2)[:, 0]
    t = ((qx * v[..., 0] + qy * v[..., 1]) * idx.inv[seg][:, None]).clamp(0, 1)
    planar = ((qx - v[..., 0] * t) ** 2 + (qy - v[..., 1] * t) ** 2).amax(1)
    z0, z1 = s[:, 0, 2], s[:, 0, 2] + v[:, 0, 2]
    dz = torch.maximum(torch.maximum(zhi - z0, zhi - z1), torch.maximum(z0 - zlo, z1 - zlo)).clamp_min(0)
    return torch.sqrt(planar + (idx.zscale * dz) ** 2)


def _cell_blocks(idx: SegmentIndex, blocks: Tensor, cmin: Tensor, cmax: Tensor, zlo: Tensor, zhi: Tensor):
    """(cell, block) index pairs (into the given cells and `blocks`) that may hold a cell point's nearest segment."""
    a = idx.anchor[blocks].T.contiguous()  # [3, nb]: component-major for fast broadcasting
    x0, y0, x1, y1 = (v[:, None] for v in (cmin[:, 0], cmin[:, 1], cmax[:, 0], cmax[:, 1]))
    far_x = torch.maximum((a[0] - x0).abs_(), (a[0] - x1).abs_())
    far_y = torch.maximum((a[1] - y0).abs_(), (a[1] - y1).abs_())
    far_z = torch.maximum((a[2] - zlo[:, None]).abs_(), (a[2] - zhi[:, None]).abs_()).mul_(idx.zscale)
    hi = (far_x.mul_(far_x).addcmul_(far_y, far_y).addcmul_(far_z, far_z)).sqrt_().add_(idx.anchor_extra[blocks])
    bound = hi.amin(1, keepdim=True) * (1 + _SLACK[0]) + _SLACK[1]
    bmin, bmax, bz = (t[blocks].T.contiguous() for t in (idx.block_min, idx.block_max, idx.block_z))
    gx = torch.maximum(bmin[0] - x1, x0 - bmax[0]).clamp_min_(0)
    gy = torch.maximum(bmin[1] - y1, y0 - bmax[1]).clamp_min_(0)
    gz = torch.maximum(bz[0] - zhi[:, None], zlo[:, None] - bz[1]).clamp_min_(0).mul_(idx.zscale)
    lo2 = gx.mul_(gx).addcmul_(gy, gy).addcmul_(gz, gz)
    return torch.nonzero(lo2 <= bound * bound, as_tuple=True)


def nearest_segment(pts: Tensor, scene: Tensor, idx: SegmentIndex) -> Tensor:
    """Global id of the segment nearest (under idx.metric) to each point [N, D] of scene `scene` [N]."""
    n, dev = pts.shape[0], pts.device
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=dev)
    size = CELL[idx.metric]
    ij = torch.floor(pts[:, :2] / size).long()
    ij = ij - ij.amin(0)
    key = (scene * (ij[:, 0].amax() + 1) + ij[:, 0]) * (ij[:, 1].amax() + 1) + ij[:, 1]
    _, cell = torch.unique(key, return_inverse=True)
    nc = int(cell.max()) + 1
    first = torch.full((nc,), n, dtype=torch.long, device=dev).scatter_reduce(0, cell, torch.arange(n, device=dev), "amin")
    cmin = torch.floor(pts[first, :2] / size) * size
    cmax = cmin + size
    if pts.shape[1] == 3:
        big = torch.finfo(pts.dtype).max
        zlo = torch.full((nc,), big, dtype=pts.dtype, device=dev).scatter_reduce(0, cell, pts[:, 2], "amin")
        zhi = torch.full((nc,), -big, dtype=pts.dtype, device=dev).scatter_reduce(0, cell, pts[:, 2], "amax")
    else:
        zlo = zhi = torch.zeros(nc, dtype=pts.dtype, device=dev)
    # (1) cell -> blocks, per scene and in chunks of cells (cells and blocks are both ordered by scene)
    cell_scene = scene[first]
    parts = []
    for sc in torch.unique(cell_scene).tolist():
        cs = torch.nonzero(cell_scene == sc).squeeze(1)
        bs = torch.nonzero(idx.block_scene == sc).squeeze(1)
        for i in range(0, cs.numel(), _CELL_CHUNK):
            c = cs[i : i + _CELL_CHUNK]
            ci, bi = _cell_blocks(idx, bs, cmin[c], cmax[c], zlo[c], zhi[c])
            parts.append((c[ci], bs[bi]))
    c1, b1 = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    order = torch.argsort(c1 * idx.block_seg.shape[0] + b1)
    c1, b1 = c1[order], b1[order]
    # (2) cell -> segments of those blocks
    c2 = c1[:, None].expand(-1, BLOCK).reshape(-1)
    seg = idx.block_seg[b1].reshape(-1)
    c2, seg = c2[seg >= 0], seg[seg >= 0]
    lo, hi_geo = _lo_geometry(idx.start, idx.vec, idx.metric, seg)
    z0, z1 = idx.start[seg, 2], idx.start[seg, 2] + idx.vec[seg, 2]
    zg = _zgap(torch.minimum(z0, z1), torch.maximum(z0, z1), zlo[c2], zhi[c2], idx.zscale)
    lo2 = _gap2(lo, hi_geo, cmin[c2], cmax[c2], zg)
    up = _cell_segment_upper(idx, seg, cmin[c2], cmax[c2], zlo[c2], zhi[c2])
    keep = _keep_below_bound(c2, lo2, up, nc)
    c2, seg = c2[keep], seg[keep]  # sorted by cell
    # (3) points -> their cell's segments, as padded [cells, K] tables bucketed by power-of-two K
    per_cell = torch.bincount(c2, minlength=nc)
    start = torch.cumsum(per_cell, 0) - per_cell
    width = torch.where(per_cell > 1, 2 ** torch.ceil(torch.log2(per_cell.clamp_min(1).double())).long(), 1)
    out = torch.zeros(n, dtype=torch.long, device=dev)
    comps = [pts[:, k].contiguous() for k in range(pts.shape[1])]
    for k in torch.unique(width).tolist():
        cells_k = torch.nonzero(width == k).squeeze(1)
        row = torch.full((nc,), -1, dtype=torch.long, device=dev)
        row[cells_k] = torch.arange(cells_k.numel(), device=dev)
        j = torch.arange(k, device=dev)
        slot = start[cells_k, None] + j
        table = torch.where(j < per_cell[cells_k, None], seg[slot.clamp_max(max(seg.numel() - 1, 0))], -1)
        pidx = torch.nonzero(row[cell] >= 0).squeeze(1)
        rows = row[cell[pidx]]
        d = point_distance(idx, tuple(c.index_select(0, pidx)[:, None] for c in comps), table, rows)
        best = table.index_select(0, rows).gather(1, d.argmin(1, keepdim=True))[:, 0]
        out[pidx] = best.clamp_min(0)
    return out
