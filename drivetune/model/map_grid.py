"""Per-scene grid index of map tokens: exact radius-limited nearest-map-token queries without scanning every token.

Each scene's valid map tokens are bucketed into square cells of side `cell` = (radius + margin) / reach. A query point
only looks at the tokens listed for its own cell: every valid token whose cell is within `reach` cells (Chebyshev) of
it. Any token within `radius` of the point differs from it by less than reach * cell on each axis, so its cell is
within `reach` cells: the candidate list holds every token the radius admits (the `margin` absorbs float32 rounding of
the cell coordinates), and the k nearest candidates inside the radius are exactly the k nearest tokens inside it.
Points outside the grid are clamped to the border cell per axis, which keeps the argument true (tokens within the
radius of such a point lie in the border cells it is clamped to, or further in by at most `reach` cells).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

MARGIN = 0.1  # metres added to the radius: far above float32 rounding of WOMD coordinates (~1e-3 m)
REACH = 3  # cell side = (radius + margin) / REACH
MAX_CELLS = 4096  # per scene; a larger map gets larger cells (and longer candidate lists), not a larger table


@dataclass
class MapGrid:
    """origin [S, 2] (lower-left corner of cell (0, 0)), dims [S, 2] long (cells per axis); per scene and cell (flat
    row s * cells + c) the candidate tokens as flat indices s * M + m in `table` [S * cells, C] long and their
    positions in `points` [S * cells, 2, C] (x row, y row; padding: index 0 and an infinitely far position, never
    within any radius); cell side in m."""

    origin: torch.Tensor
    dims: torch.Tensor
    table: torch.Tensor
    points: torch.Tensor
    cell: float

    def candidates(self, scene_index: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Candidate flat map-token indices [B, Q, C] and their *squared* distances [B, Q, C] (inf for padding) for
        points [B, Q, 2] of the scenes `scene_index` [B]. No host synchronisation (device-agnostic)."""
        origin = self.origin[scene_index][:, None]
        top = self.dims[scene_index][:, None] - 1
        cell = torch.floor((points - origin) / self.cell).long()
        cell = torch.minimum(torch.maximum(cell, torch.zeros_like(top)), top)
        row = (scene_index[:, None] * (self.table.shape[0] // self.origin.shape[0])
               + cell[..., 0] * (top[..., 1] + 1) + cell[..., 1]).reshape(-1)
        shape = (*points.shape[:2], self.table.shape[1])
        cand = torch.index_select(self.table, 0, row).view(shape)
        where = torch.index_select(self.points, 0, row).view(shape[0], shape[1], 2, shape[2])
        dx = where[:, :, 0] - points[..., 0:1]
        dy = where[:, :, 1] - points[..., 1:2]
        return cand, dx.mul_(dx).add_(dy.mul_(dy))


def build_map_grid(points: torch.Tensor, valid: torch.Tensor, radius: float) -> MapGrid:
    """Grid of the valid map tokens `points` [S, M, 2] for queries of radius `radius` (m). Runs once per encoded map
    (it reads a few sizes back to the host; the per-step `candidates` does not)."""
    s, m = valid.shape
    dev = points.device
    reach_m = radius + MARGIN
    big = torch.finfo(points.dtype).max
    lo = torch.where(valid[..., None], points, big).amin(1)
    hi = torch.where(valid[..., None], points, -big).amax(1)
    empty = ~valid.any(1)
    lo, hi = lo.masked_fill(empty[:, None], 0.0), hi.masked_fill(empty[:, None], 0.0)
    extent = (hi - lo).amax(0).tolist()
    cell = max(reach_m / REACH, math.sqrt(max(extent[0], 1.0) * max(extent[1], 1.0) / MAX_CELLS))
    reach = math.ceil(reach_m / cell)
    dims = torch.floor((hi - lo) / cell).long() + 1
    # cells whose nearest point lies within reach_m of some point of the query's cell (a rounded square)
    span = torch.arange(-reach, reach + 1, device=dev)
    offsets = torch.stack(torch.meshgrid(span, span, indexing="ij"), -1).view(-1, 2)
    gap = (offsets.abs() - 1).clamp_min(0).to(points.dtype) * cell
    offsets = offsets[(gap ** 2).sum(-1) <= reach_m ** 2]  # [O, 2]
    cells = int(dims.prod(-1).max())
    tables = []
    for i in range(s):
        tok = torch.nonzero(valid[i]).squeeze(-1)
        own = torch.minimum(torch.floor((points[i, tok] - lo[i]) / cell).long(), dims[i] - 1)  # [Mv, 2]
        near = own[:, None] + offsets  # [Mv, O, 2] cells that list this token
        inside = ((near >= 0) & (near < dims[i])).all(-1)
        cid = (near[..., 0] * dims[i, 1] + near[..., 1])[inside]
        who = tok[:, None].expand_as(inside)[inside]
        cid, order = torch.sort(cid, stable=True)
        who = who[order]
        counts = torch.bincount(cid, minlength=cells)
        width = max(int(counts.max()) if len(cid) else 0, 1)
        slot = torch.arange(len(cid), device=dev) - (torch.cumsum(counts, 0) - counts)[cid]
        table = torch.full((cells, width), -1, dtype=torch.long, device=dev)
        table[cid, slot] = who
        tables.append(table)
    width = max(t.shape[1] for t in tables)
    table = torch.stack([torch.nn.functional.pad(t, (0, width - t.shape[1]), value=-1) for t in tables])  # [S, c, C]
    pad = table < 0
    flat = (table + torch.arange(s, device=dev)[:, None, None] * m).masked_fill(pad, 0)
    where = points.flatten(0, 1)[flat].masked_fill(pad[..., None], float("inf"))
    planes = where.flatten(0, 1).transpose(1, 2).contiguous()  # [S * cells, 2, C]
    return MapGrid(origin=lo, dims=dims, table=flat.flatten(0, 1), points=planes, cell=cell)
