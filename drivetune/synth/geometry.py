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
