"""A second, numpy-only implementation of the WOSAC road-edge signed distance (the sign from the edge winding, with
block pruning), used by the synthetic-world tests as an independent check of the generator's on-road guarantee."""

from __future__ import annotations

import numpy as np


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
