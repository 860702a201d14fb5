"""Dense lookup tables derived from a road network, so the traffic step is pure array arithmetic.

Routes are resampled at uniform arc length (DS) and padded; conflicts between intersection connectors, connector
divergence (lanes that start together), crosswalk intervals along routes and the signal plan are precomputed once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from drivetune.synth.geometry import arc_length, gradient, resample
from drivetune.synth.roads import Network, route_polyline

DS = 0.5  # route sampling step, m
CONFLICT_RADIUS = 4.0  # connector paths closer than this conflict, m
MPH = 0.44704


@dataclass
class SignalPlan:
    """Two phase groups: green, yellow, all-red each, the cycle shifted by `offset` seconds."""

    green: tuple[float, float]
    yellow: float
    all_red: float
    offset: float

    def states(self, groups: np.ndarray, t: float | np.ndarray) -> np.ndarray:
        """0 red, 1 yellow, 2 green for each group at time t (s); groups and an array t broadcast together."""
        g0, g1 = self.green
        cycle = g0 + g1 + 2 * (self.yellow + self.all_red)
        tau = (t + self.offset) % cycle
        start = np.where(groups == 0, 0.0, g0 + self.yellow + self.all_red)
        local = tau - start
        green = np.where(groups == 0, g0, g1)
        return np.where((local >= 0) & (local < green), 2, np.where((local >= green) & (local < green + self.yellow), 1, 0))

    def group_states(self, t: float) -> tuple[int, int]:
        """`states` of groups 0 and 1 at time t, as plain ints (the per-step fast path)."""
        g0, g1 = self.green
        cycle = g0 + g1 + 2 * (self.yellow + self.all_red)
        tau = (t + self.offset) % cycle
        out = []
        for start, green in ((0.0, g0), (g0 + self.yellow + self.all_red, g1)):
            local = tau - start
            out.append(2 if 0 <= local < green else 1 if green <= local < green + self.yellow else 0)
        return out[0], out[1]


@dataclass
class PathTable:
    """Uniformly sampled paths (vehicle routes or pedestrian routes) and their pieces."""

    pts: np.ndarray  # [R, N, 2]
    tan: np.ndarray  # [R, N, 2] unit tangents
    length: np.ndarray  # [R]
    pieces: np.ndarray  # [R, P] lane / piece ids, -1 padded
    starts: np.ndarray  # [R, P] route arc length at each piece start (+inf padded)
    vmax: np.ndarray  # [R, N] curvature speed cap (m/s) for a 2.5 m/s^2 lateral budget

    def lookup(self, r: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Point [n, 2], unit tangent [n, 2] and sample index [n] of path r at arc length s."""
        f = np.clip(s / DS, 0, self.pts.shape[1] - 1.001)
        i0 = f.astype(np.int64)
        w = (f - i0)[:, None]
        p = self.pts[r, i0] * (1 - w) + self.pts[r, i0 + 1] * w
        t = self.tan[r, i0] * (1 - w) + self.tan[r, i0 + 1] * w
        return p, t / np.linalg.norm(t, axis=1, keepdims=True), i0

    def piece_at(self, r: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Piece position k [n], piece id [n] and arc length within the piece [n]."""
        st = self.starts[r]
        k = np.maximum((s[:, None] >= st).sum(1) - 1, 0)
        ar = np.arange(len(r))
        return k, self.pieces[r, k], s - st[ar, k]


def _path_table(polys: list[np.ndarray], starts: list[np.ndarray], pieces: list[list[int]],
                speed_caps: bool = True) -> PathTable:
    res, totals = [], []
    for p in polys:
        s_in = arc_length(p)
        totals.append(float(s_in[-1]))
        res.append(resample(p, DS, s_in) if len(p) > 1 else np.repeat(p, 2, 0))
    n = max(len(p) for p in res) + 24  # room to run past the end for a step or two
    R, P = len(res), max(len(x) for x in pieces)
    pts = np.zeros((R, n, 2))
    tan = np.zeros((R, n, 2))
    vmax = np.zeros((R, n))
    length = np.zeros(R)
    pc = -np.ones((R, P), np.int64)
    st = np.full((R, P), np.inf)
    smooth = np.ones(9) / 9
    for r, p in enumerate(res):
        m = len(p)
        d = gradient(p)
        d /= np.maximum(np.sqrt((d * d).sum(1)), 1e-9)[:, None]
        # extend beyond the end along the last tangent so lookups past the end stay smooth
        pts[r, :m], tan[r, :m] = p, d
        pts[r, m:] = p[-1] + d[-1] * DS * np.arange(1, n - m + 1)[:, None]
        tan[r, m:] = d[-1]
        if speed_caps:
            ang = np.unwrap(np.arctan2(d[:, 1], d[:, 0]))
            kappa = np.convolve(np.abs(gradient(ang)) / DS, smooth, mode="same")
            s = np.arange(m) * DS
            ahead = np.minimum.accumulate((2.5 / np.maximum(kappa, 1e-4) + 3.0 * s)[::-1])[::-1] - 3.0 * s
            vmax[r, :m] = np.sqrt(np.maximum(ahead, 0))  # 1.5 m/s^2 braking
            vmax[r, m:] = vmax[r, m - 1]
        length[r] = (m - 1) * DS
        scale = length[r] / max(totals[r], 1e-9)
        pc[r, : len(pieces[r])] = pieces[r]
        st[r, : len(pieces[r])] = starts[r] * scale
    return PathTable(pts, tan, length, pc, st, vmax)


@dataclass
class Tables:
    routes: PathTable
    peds: PathTable
    route_conn: np.ndarray  # [R] connector lane id on the route, -1
    route_conn_s: np.ndarray  # [R] route arc length where the connector starts (the stop line)
    route_turn: np.ndarray  # [R] 0 none / straight, 1 right, 2 left
    route_ctrl: np.ndarray  # [R] 0 none, 1 signal, 2 stop sign
    route_group: np.ndarray  # [R] signal group
    route_cw: np.ndarray  # [R, Q] crosswalk index, -1
    route_cw_s0: np.ndarray  # [R, Q]
    route_cw_s1: np.ndarray
    piece_cw: np.ndarray  # [pedestrian pieces] crosswalk index, -1
    cw_group: np.ndarray  # [num crosswalks] signal group of the crossed approach (-1: unsignalised)
    signal: SignalPlan | None
    lead: np.ndarray  # [2, R, C] leader lookup of vehicle routes (see _leader_table)
    ped_lead: np.ndarray  # [Rp, pieces] route arc length where each pedestrian piece starts, -inf if not on it
    # [3, C, C], lanes indexed directly (C = number of lanes), stacked for one gather per step: conflict (0/1), the
    # conflict zone's start and end on the first lane w.r.t. the second (lane arc length)
    conf: np.ndarray


def _in_quad(p: np.ndarray, quad: np.ndarray, grow: float) -> np.ndarray:
    c = quad.mean(0)
    q = c + (quad - c) * (1 + grow / np.maximum(np.linalg.norm(quad - c, axis=1, keepdims=True), 1e-9))
    inside = np.ones(len(p), bool)
    e1, e2 = q[1] - q[0], q[2] - q[1]
    sgn = np.sign(e1[0] * e2[1] - e1[1] * e2[0])
    for i in range(4):
        a, b = q[i], q[(i + 1) % 4]
        inside &= sgn * ((b[0] - a[0]) * (p[:, 1] - a[1]) - (b[1] - a[1]) * (p[:, 0] - a[0])) >= 0
    return inside


def _conflicts(net: Network) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Conflict zones between connectors (lane arc-length ranges where another connector is within reach) and the
    divergence distance of connectors that share their entry lane. All lanes are indexed; only connectors are set."""
    C = len(net.lanes)
    conf_mask = np.zeros((C, C), bool)
    conf_s0 = np.zeros((C, C))
    conf_s1 = np.zeros((C, C))
    diverge = np.full((C, C), -np.inf)
    np.fill_diagonal(diverge, np.inf)
    conns = np.array([i for i, ln in enumerate(net.lanes) if ln.kind == "conn"], np.int64)
    if len(conns) < 2:
        return conf_mask, conf_s0, conf_s1, diverge
    pts = [resample(net.lanes[c].pts, 2.0) for c in conns]
    sizes = np.array([len(p) for p in pts])
    offs = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    allp = np.concatenate(pts)
    s_pts = [arc_length(p) for p in pts]
    s_all = np.concatenate([s * (net.lanes[c].length / max(s[-1], 1e-9)) for s, c in zip(s_pts, conns)])
    x, y = allp[:, 0], allp[:, 1]
    d2 = (x[:, None] - x[None, :]) ** 2 + (y[:, None] - y[None, :]) ** 2
    # [points, connectors]; +1: 2 m sampling (sqrt after the min: it is monotonic)
    near = np.sqrt(np.minimum.reduceat(d2, offs, axis=1)) < CONFLICT_RADIUS + 1.0
    first = np.minimum.reduceat(np.where(near, s_all[:, None], np.inf), offs, axis=0)  # [a, b]
    last = np.maximum.reduceat(np.where(near, s_all[:, None], -np.inf), offs, axis=0)
    far_first = np.minimum.reduceat(np.where(~near, s_all[:, None], np.inf), offs, axis=0)
    length = np.array([net.lanes[c].length for c in conns])
    entry = [tuple(net.lanes[c].entries) for c in conns]
    sib = np.array([[ea == eb for eb in entry] for ea in entry])
    hit = np.isfinite(first)
    np.fill_diagonal(hit, False)
    ia, ib = np.nonzero(hit & ~sib)
    conf_mask[conns[ia], conns[ib]] = True
    conf_s0[conns[ia], conns[ib]] = np.maximum(first[ia, ib] - 1.0, 0.0)  # 2 m sampling: pad by 1 m
    conf_s1[conns[ia], conns[ib]] = np.minimum(last[ia, ib] + 1.0, length[ia])
    ia, ib = np.nonzero(sib & ~np.eye(len(conns), dtype=bool))
    diverge[conns[ia], conns[ib]] = np.minimum(np.maximum(far_first[ia, ib], far_first[ib, ia]), length[ib])
    return conf_mask, conf_s0, conf_s1, diverge


def _crosswalk_spans(net: Network, routes: PathTable) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per route, the crosswalks it passes and the route arc-length span over each (grown by 1 m)."""
    R, N = routes.pts.shape[:2]
    s = np.arange(N) * DS
    on = s[None] <= routes.length[:, None]
    spans = []
    for quad in net.crosswalks:
        inside = _in_quad(routes.pts.reshape(-1, 2), quad, 1.0).reshape(R, N) & on
        lo = np.where(inside, s[None], np.inf).min(1) - 0.5
        hi = np.where(inside, s[None], -np.inf).max(1) + 0.5
        spans.append((inside.any(1), lo, hi))
    hits = np.array([h for h, _, _ in spans]).T.reshape(R, len(spans))
    Q = max(1, int(hits.sum(1).max(initial=0)))
    route_cw = -np.ones((R, Q), np.int64)
    route_cw_s0 = np.zeros((R, Q))
    route_cw_s1 = np.zeros((R, Q))
    for r, qs in enumerate(hits):
        for slot, q in enumerate(np.flatnonzero(qs)):
            route_cw[r, slot], route_cw_s0[r, slot], route_cw_s1[r, slot] = q, spans[q][1][r], spans[q][2][r]
    return route_cw, route_cw_s0, route_cw_s1


def _leader_table(paths: PathTable, counts_as: np.ndarray) -> np.ndarray:
    """[2, R, C]: for path r and lane c, the path arc length where c (or the piece c counts as) starts, and the
    lane arc length below which an agent on c counts as on the path (-inf, -inf where c is not on path r).

    counts_as[a, c] is that limit for piece a of the path (+inf for a itself, finite for connectors diverging from
    a shared entry, -inf otherwise); a path holds each lane at most once, so every (r, c) has at most one piece.
    """
    R, P = paths.pieces.shape
    out = np.full((2, R, counts_as.shape[1]), -np.inf)
    for p in range(P):
        rows = np.flatnonzero(paths.pieces[:, p] >= 0)
        lim = counts_as[paths.pieces[rows, p]]
        rr, cc = np.nonzero(lim > -np.inf)
        out[0, rows[rr], cc] = paths.starts[rows[rr], p]
        out[1, rows[rr], cc] = lim[rr, cc]
    return out


def build_tables(net: Network, rng: np.random.Generator) -> Tables:
    polys, starts = zip(*(route_polyline(net, r) for r in net.routes))
    routes = _path_table(list(polys), list(starts), net.routes)
    ped_polys, ped_starts = [], []
    for pr in net.ped_routes:
        parts = [net.ped_pieces[i].pts for i in pr]
        lens = [net.ped_pieces[i].length for i in pr]
        ped_polys.append(np.concatenate([parts[0]] + [p[1:] for p in parts[1:]]))
        ped_starts.append(np.concatenate([[0.0], np.cumsum(lens)[:-1]]))
    peds = _path_table(ped_polys, ped_starts, net.ped_routes, speed_caps=False)

    R = len(net.routes)
    route_conn = -np.ones(R, np.int64)
    route_conn_s = np.full(R, np.inf)
    route_turn = np.zeros(R, np.int64)
    route_ctrl = np.zeros(R, np.int64)
    route_group = np.zeros(R, np.int64)
    for r, lanes in enumerate(net.routes):
        for k, lane in enumerate(lanes):
            ln = net.lanes[lane]
            if ln.kind == "conn":
                route_conn[r], route_conn_s[r] = lane, routes.starts[r, k]
                route_turn[r] = {"S": 0, "R": 1, "L": 2}[ln.turn]
                route_ctrl[r] = {"": 0, "signal": 1, "stop": 2}[ln.controlled]
                route_group[r] = ln.group
    conf_mask, conf_s0, conf_s1, diverge = _conflicts(net)
    route_cw, route_cw_s0, route_cw_s1 = _crosswalk_spans(net, routes)
    piece_cw = np.array([pc.crosswalk for pc in net.ped_pieces], np.int64)
    signal = None
    cw_group = -np.ones(len(net.crosswalks), np.int64)
    if net.control == "signal":
        signal = SignalPlan((float(rng.uniform(8, 20)), float(rng.uniform(8, 16))), float(rng.uniform(3.0, 4.0)),
                            float(rng.uniform(1.0, 2.0)), float(rng.uniform(0, 60)))
        cw_group[:] = [arm.group for arm in net.arms]
    lead = _leader_table(routes, diverge)
    n_pieces = len(net.ped_pieces)
    ped_lead = _leader_table(peds, np.where(np.eye(n_pieces, dtype=bool), np.inf, -np.inf))[0]
    conf = np.stack([conf_mask.astype(np.float64), conf_s0, conf_s1])
    return Tables(routes, peds, route_conn, route_conn_s, route_turn, route_ctrl, route_group, route_cw, route_cw_s0,
                  route_cw_s1, piece_cw, cw_group, signal, lead, ped_lead, conf)
