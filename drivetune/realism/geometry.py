"""Oriented-box geometry: corners (optionally rounded like the official float32 code) and signed distances.

Boxes are (center x, y, heading, half length, half width), batched by broadcasting.
"""

from __future__ import annotations

import torch
from torch import Tensor


def to_local(dx: Tensor, dy: Tensor, heading: Tensor) -> tuple[Tensor, Tensor]:
    """Rotate world offsets (dx, dy) into the frame of a box with the given heading."""
    c, s = torch.cos(heading), torch.sin(heading)
    return c * dx + s * dy, -s * dx + c * dy


Corners = list[tuple[Tensor, Tensor]]  # 4 corners, each (x, y) shaped like the boxes (component-major: fast)

_SIGNS = ((1.0, 1.0), (-1.0, 1.0), (-1.0, -1.0), (1.0, -1.0))  # front-left, rear-left, rear-right, front-right


def corner_list(
    x: Tensor, y: Tensor, heading: Tensor, half_l: Tensor, half_w: Tensor, origin: tuple[Tensor, Tensor] | None = None,
) -> Corners:
    """Counter-clockwise corners of boxes.

    With `origin` (x, y offsets broadcastable to x), the corners are rounded as if computed at the absolute position
    (x + ox, y + oy) in the working precision (the official float32 arithmetic), then shifted back exactly.
    """
    c, s = torch.cos(heading), torch.sin(heading)
    out = []
    for sl, sw in _SIGNS:
        lx, ly = sl * half_l, sw * half_w
        offx, offy = c * lx + (-s) * ly, s * lx + c * ly
        if origin is None:
            out.append((x + offx, y + offy))
        else:
            ox, oy = origin
            out.append((((x + ox) + offx) - ox, ((y + oy) + offy) - oy))
    return out


def box_corners(
    x: Tensor, y: Tensor, heading: Tensor, half_l: Tensor, half_w: Tensor, origin: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """[..., 4, 2] stacked `corner_list`."""
    return torch.stack([torch.stack(c, -1) for c in corner_list(x, y, heading, half_l, half_w, origin)], -2)


def polygon_signed_distance(a: Corners, b: Corners) -> Tensor:
    """Signed distance between convex counter-clockwise quads (gap, or minus the penetration depth)."""

    def edges_vs_vertices(p: Corners, q: Corners) -> tuple[Tensor, Tensor]:
        gap2 = sep = None
        for i in range(4):
            (px, py), (nx, ny) = p[i], p[(i + 1) % 4]
            ex, ey = nx - px, ny - py
            len2 = ex * ex + ey * ey
            inv_len = torch.rsqrt(len2)
            edge_sep = None
            for qx, qy in q:
                dx, dy = qx - px, qy - py
                t = ((dx * ex + dy * ey) / len2).clamp(0, 1)
                g = (dx - t * ex) ** 2 + (dy - t * ey) ** 2
                m = (ey * dx - ex * dy) * inv_len  # along the outward normal
                gap2 = g if gap2 is None else torch.minimum(gap2, g)
                edge_sep = m if edge_sep is None else torch.minimum(edge_sep, m)
            sep = edge_sep if sep is None else torch.maximum(sep, edge_sep)
        return gap2, sep

    ga, sa = edges_vs_vertices(a, b)
    gb, sb = edges_vs_vertices(b, a)
    sep = torch.maximum(sa, sb)
    return torch.where(sep > 0, torch.sqrt(torch.minimum(ga, gb)), sep)


def box_signed_distance(a: tuple[Tensor, ...], b: tuple[Tensor, ...]) -> Tensor:
    """Signed distance between oriented rectangles a and b, each (x, y, heading, half_l, half_w), broadcast.

    Positive: the Euclidean gap; negative: minus the penetration depth (separating-axis margins).
    """
    gap2 = sep = None
    for (fx, fy, fh, hl, hw), other in ((a, b), (b, a)):
        # the other box's corners in this box's frame: gap per corner, and separating margins along the face normals
        c, s = torch.cos(fh), torch.sin(fh)
        u, v = [], []
        for cx, cy in corner_list(*other):
            dx, dy = cx - fx, cy - fy
            u.append(c * dx + s * dy)
            v.append(-s * dx + c * dy)
        for ui, vi in zip(u, v):
            g = (ui.abs() - hl).clamp_min(0) ** 2 + (vi.abs() - hw).clamp_min(0) ** 2
            gap2 = g if gap2 is None else torch.minimum(gap2, g)
        umin, umax = _reduce(torch.minimum, u), _reduce(torch.maximum, u)
        vmin, vmax = _reduce(torch.minimum, v), _reduce(torch.maximum, v)
        m = torch.maximum(torch.maximum(umin - hl, -umax - hl), torch.maximum(vmin - hw, -vmax - hw))
        sep = m if sep is None else torch.maximum(sep, m)
    return torch.where(sep > 0, torch.sqrt(gap2), sep)


def _reduce(op, xs: list[Tensor]) -> Tensor:
    out = xs[0]
    for x in xs[1:]:
        out = op(out, x)
    return out
