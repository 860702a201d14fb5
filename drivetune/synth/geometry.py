"""Plane geometry shared by the synthetic world and its safety checks (numpy only)."""

from __future__ import annotations

import math

import numpy as np


def rot90(v: np.ndarray) -> np.ndarray:
    """Rotate 2-D vectors by +90 degrees (counter-clockwise)."""
    return np.stack([-v[..., 1], v[..., 0]], axis=-1)


def unit(angle: float) -> np.ndarray:
    return np.array([np.cos(angle), np.sin(angle)])


def arc_length(pts: np.ndarray) -> np.ndarray:
    """Cumulative arc length [n] of a polyline [n, 2]."""
    d = pts[1:] - pts[:-1]
    out = np.zeros(len(pts))
    np.cumsum(np.sqrt((d * d).sum(1)), out=out[1:])
    return out


def span(stop: float, n: int) -> np.ndarray:
    """n >= 2 evenly spaced values from 0 to stop (both included); np.linspace(0, stop, n) without its overhead."""
    out = np.arange(n) * (stop / (n - 1))
    out[-1] = stop
    return out


def gradient(f: np.ndarray) -> np.ndarray:
    """np.gradient(f, axis=0) for unit spacing and at least two samples, without its overhead."""
    out = np.empty_like(f)
    out[1:-1] = (f[2:] - f[:-2]) / 2.0
    out[0] = f[1] - f[0]
    out[-1] = f[-1] - f[-2]
    return out


def resample(pts: np.ndarray, spacing: float, s: np.ndarray | None = None) -> np.ndarray:
    """Resample a polyline at (about) uniform arc-length spacing, keeping both end points (s: its arc length)."""
    s = arc_length(pts) if s is None else s
    n = max(math.ceil(s[-1] / spacing), 1) + 1
    t = span(float(s[-1]), n)
    out = np.empty((n, 2))
    out[:, 0] = np.interp(t, s, pts[:, 0])
    out[:, 1] = np.interp(t, s, pts[:, 1])
    return out


def segment(a: np.ndarray, b: np.ndarray, spacing: float = 1.0) -> np.ndarray:
    """Straight polyline from a to b with (about) `spacing` between points, both ends included."""
    d = b - a
    n = max(math.ceil(math.hypot(float(d[0]), float(d[1])) / spacing), 1) + 1
    return a + d * span(1.0, n)[:, None]


def bezier(p0: np.ndarray, c0: np.ndarray, c1: np.ndarray, p1: np.ndarray, spacing: float = 0.5) -> np.ndarray:
    """Cubic Bezier curve, resampled at uniform arc length."""
    t = np.linspace(0.0, 1.0, 200)[:, None]
    pts = (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * c0 + 3 * (1 - t) * t**2 * c1 + t**3 * p1
    return resample(pts, spacing)


def line_intersection(p: np.ndarray, d: np.ndarray, q: np.ndarray, e: np.ndarray) -> np.ndarray | None:
    """Intersection of lines p + a d and q + b e, or None when (nearly) parallel."""
    den = d[0] * e[1] - d[1] * e[0]
    if abs(den) < 1e-6:
        return None
    w = q - p
    a = (w[0] * e[1] - w[1] * e[0]) / den
    return p + a * d


def smooth_connector(p0: np.ndarray, d0: np.ndarray, p1: np.ndarray, d1: np.ndarray, spacing: float = 0.5) -> np.ndarray:
    """Tangent-continuous curve from p0 (heading d0) to p1 (heading d1).

    Turns use the quadratic-equivalent cubic through the intersection of the two tangent lines; (nearly) straight
    connections a cubic with thirds of the chord as handles.
    """
    q = line_intersection(p0, d0, p1, d1)
    chord = float(np.linalg.norm(p1 - p0))
    if q is not None and float(np.dot(q - p0, d0)) > 0 and float(np.dot(p1 - q, d1)) > 0 and abs(d0 @ rot90(d1)) > 0.2:
        return bezier(p0, p0 + 2.0 / 3.0 * (q - p0), p1 + 2.0 / 3.0 * (q - p1), p1, spacing)
    return bezier(p0, p0 + d0 * chord / 3, p1 - d1 * chord / 3, p1, spacing)


def box_corners(xy: np.ndarray, heading: np.ndarray, length: np.ndarray, width: np.ndarray) -> np.ndarray:
    """Corners [..., 4, 2] of oriented boxes, counter-clockwise from front-left."""
    c, s = np.cos(heading), np.sin(heading)
    f = np.stack([c, s], -1) * (length / 2)[..., None]
    l = np.stack([-s, c], -1) * (width / 2)[..., None]
    return np.stack([xy + f + l, xy - f + l, xy - f - l, xy + f - l], axis=-2)


def boxes_overlap(ca: np.ndarray, cb: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """Separating-axis test between oriented boxes given as corners [..., 4, 2]; True where they overlap.

    `margin` shrinks the test (a positive margin tolerates touching boxes).
    """
    shape = np.broadcast_shapes(ca.shape[:-2], cb.shape[:-2])
    # corner-major copies [4, 2, ...]: reductions over the 4 corners become elementwise
    a = np.ascontiguousarray(np.moveaxis(np.broadcast_to(ca, shape + (4, 2)), (-2, -1), (0, 1)))
    b = np.ascontiguousarray(np.moveaxis(np.broadcast_to(cb, shape + (4, 2)), (-2, -1), (0, 1)))
    overlap = np.ones(shape, dtype=bool)
    for corners in (a, b):
        for k in (0, 1):
            ux, uy = corners[k + 1, 0] - corners[k, 0], corners[k + 1, 1] - corners[k, 1]
            norm = np.maximum(np.sqrt(ux * ux + uy * uy), 1e-9)
            ux, uy = ux / norm, uy / norm
            pa = a[:, 0] * ux + a[:, 1] * uy
            pb = b[:, 0] * ux + b[:, 1] * uy
            sep = (pa.max(0) < pb.min(0) + margin) | (pb.max(0) < pa.min(0) + margin)
            overlap &= ~sep
    return overlap


def _flat_segments(edges: list[np.ndarray]) -> dict[str, np.ndarray]:
    """All edge segments flattened, with each one's neighbours and the convexity of its two joints."""
    a, b, prev, nxt, conv_b, conv_a = [], [], [], [], [], []
    base = 0
    for poly in edges:
        p = np.asarray(poly)[:, :2]
        m = len(p) - 1
        if m < 1:
            continue
        ab = p[1:] - p[:-1]
        cyclic = float(((p[0] - p[-1]) ** 2).sum()) < 1.0
        i = np.arange(m)
        pi = (i - 1) % m if cyclic else np.maximum(i - 1, 0)
        ni = (i + 1) % m if cyclic else np.minimum(i + 1, m - 1)
        pad = np.concatenate([ab[-1:], ab, ab[:1]])  # joint convexity; wrap-around only matters when cyclic
        convex = (pad[:-1, 0] * pad[1:, 1] - pad[:-1, 1] * pad[1:, 0]) > 0
        a.append(p[:-1]), b.append(p[1:]), prev.append(pi + base), nxt.append(ni + base)
        conv_b.append(convex[:-1]), conv_a.append(convex[1:])
        base += m
    cat = np.concatenate
    return dict(a=cat(a), b=cat(b), prev=cat(prev), next=cat(nxt), convex_before=cat(conv_b), convex_after=cat(conv_a))


def _blocks(seg: dict[str, np.ndarray], size: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs of `size` consecutive segments: centres [B, 2], radii [B] and segment indices [B, size] (padded)."""
    n = len(seg["a"])
    idx = np.minimum(np.arange(0, n + (-n) % size).reshape(-1, size), n - 1)
    ends = np.concatenate([seg["a"][idx], seg["b"][idx]], axis=1)
    centre = ends.mean(1)
    radius = np.linalg.norm(ends - centre[:, None], axis=-1).max(1)
    return centre, radius, idx


def signed_edge_distance(points: np.ndarray, edges: list[np.ndarray], blocks: int = 12) -> np.ndarray:
    """Signed 2-D distance of points [N, 2] to the road boundary given as polylines (road on their LEFT).

    Negative = on the road. Follows the WOSAC convention: the nearest segment decides; past a segment's end the sign
    comes from the convexity of the joint with the neighbouring segment (cyclic polylines wrap). Segments are
    searched in blocks of 16 with a bounding-circle bound; points whose bound is not conclusive search all blocks.
    """
    seg = _flat_segments(edges)
    a, b = seg["a"], seg["b"]
    centre, radius, bidx = _blocks(seg)

    def exact(p: np.ndarray, cand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ap = p[:, None, :] - a[cand]
        ab = b[cand] - a[cand]
        t = np.clip((ap * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-12), 0, 1)
        dist = np.linalg.norm(ap - ab * t[..., None], axis=-1)
        r = np.arange(len(p))
        j = dist.argmin(1)
        best = cand[r, j]

        def side(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            q, e = p - a[idx], b[idx] - a[idx]
            return (q * e).sum(-1) / np.maximum((e * e).sum(-1), 1e-12), np.sign(q[:, 0] * e[:, 1] - q[:, 1] * e[:, 0])

        tt, n = side(best)  # n = +1 on the right of the segment (off-road)
        _, n_prev = side(seg["prev"][best])
        _, n_next = side(seg["next"][best])
        before = np.where(seg["convex_before"][best], np.maximum(n, n_prev), np.minimum(n, n_prev))
        after = np.where(seg["convex_after"][best], np.maximum(n, n_next), np.minimum(n, n_next))
        sign = np.where(tt < 0, before, np.where(tt > 1, after, n))
        return sign * dist[r, j], dist[r, j]

    def search(p: np.ndarray, k: int) -> np.ndarray:
        lb = np.linalg.norm(p[:, None] - centre[None], axis=-1) - radius[None]
        if k >= len(centre):
            return exact(p, np.broadcast_to(bidx.reshape(-1), (len(p), bidx.size)))[0]
        order = np.argpartition(lb, k, axis=1)
        signed, dist = exact(p, bidx[order[:, :k]].reshape(len(p), -1))
        rest = np.take_along_axis(lb, order[:, k : k + 1], 1)[:, 0]  # nearest bound among unsearched blocks
        redo = np.flatnonzero(dist > rest)
        if len(redo):
            signed[redo] = search(p[redo], 4 * k)
        return signed

    return np.concatenate([search(points[lo : lo + 4096, :2], blocks) for lo in range(0, len(points), 4096)]
                          or [np.zeros(0)])
