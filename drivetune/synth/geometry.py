"""Plane geometry shared by the synthetic world and its safety checks (numpy only)."""

from __future__ import annotations

import numpy as np


def rot90(v: np.ndarray) -> np.ndarray:
    """Rotate 2-D vectors by +90 degrees (counter-clockwise)."""
    return np.stack([-v[..., 1], v[..., 0]], axis=-1)


def unit(angle: float) -> np.ndarray:
    return np.array([np.cos(angle), np.sin(angle)])


def arc_length(pts: np.ndarray) -> np.ndarray:
    """Cumulative arc length [n] of a polyline [n, 2]."""
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    return np.concatenate([[0.0], np.cumsum(seg)])


def resample(pts: np.ndarray, spacing: float) -> np.ndarray:
    """Resample a polyline at (about) uniform arc-length spacing, keeping both end points."""
    s = arc_length(pts)
    n = max(int(np.ceil(s[-1] / spacing)), 1) + 1
    t = np.linspace(0.0, s[-1], n)
    return np.stack([np.interp(t, s, pts[:, 0]), np.interp(t, s, pts[:, 1])], axis=1)


def segment(a: np.ndarray, b: np.ndarray, spacing: float = 1.0) -> np.ndarray:
    """Straight polyline from a to b with (about) `spacing` between points, both ends included."""
    n = max(int(np.ceil(float(np.hypot(*(b - a))) / spacing)), 1) + 1
    return a + (b - a) * np.linspace(0.0, 1.0, n)[:, None]


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
    overlap = np.ones(ca.shape[:-2], dtype=bool)
    for corners in (ca, cb):
        for k in (0, 1):
            axis = corners[..., k + 1, :] - corners[..., k, :]
            axis = axis / np.maximum(np.linalg.norm(axis, axis=-1, keepdims=True), 1e-9)
            pa = np.einsum("...ij,...j->...i", ca, axis)
            pb = np.einsum("...ij,...j->...i", cb, axis)
            sep = (pa.max(-1) < pb.min(-1) + margin) | (pb.max(-1) < pa.min(-1) + margin)
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
