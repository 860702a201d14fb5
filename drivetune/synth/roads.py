"""Procedural road networks in a local frame: 4-way / T intersections and multi-lane curved roads.

Right-hand traffic. Road edges keep the drivable area on their LEFT (WOSAC convention: port side on-road), lanes
carry entry/exit connectivity, connectors through an intersection start at the stop line (where WOMD puts signal stop
points). Pedestrian paths (sidewalks, crosswalk crossings, corner links) are kept as extra pieces that are not map
features.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from drivetune.scene import RoadEdgeType, RoadLineType, wrap_angle
from drivetune.synth.geometry import arc_length, resample, rot90, segment, smooth_connector, unit

SIDEWALK = 2.0  # sidewalk centre beyond the curb, m


@dataclass
class Lane:
    pts: np.ndarray  # [n, 2]
    speed_mph: float
    kind: str  # "in", "out", "conn", "road"
    arm: int = -1
    index: int = 0  # lane index counted from the centre line
    turn: str = ""  # connectors: "S", "L", "R"
    group: int = -1  # signal phase group of a connector's approach
    controlled: str = ""  # connectors: "signal", "stop" or "" (how their start is controlled)
    entries: list[int] = field(default_factory=list)
    exits: list[int] = field(default_factory=list)

    @cached_property
    def length(self) -> float:
        """Arc length (pts never change after construction)."""
        return float(arc_length(self.pts)[-1])


@dataclass
class Arm:
    angle: float
    n_in: int
    n_out: int
    width: float
    park: float
    length: float
    speed_mph: float
    group: int
    r_stop: float = 0.0
    cw: tuple[float, float] = (0.0, 0.0)
    in_lanes: list[int] = field(default_factory=list)
    out_lanes: list[int] = field(default_factory=list)

    @cached_property
    def u(self) -> np.ndarray:
        """Outward unit direction (the angle never changes after construction)."""
        return unit(self.angle)

    @cached_property
    def n(self) -> np.ndarray:
        return rot90(self.u)

    def half(self, side: int) -> float:
        """Curb offset on the inbound (+1) or outbound (-1) side."""
        return (self.n_in if side > 0 else self.n_out) * self.width + self.park

    def at(self, s: float, lateral: float) -> np.ndarray:
        return s * self.u + lateral * self.n


@dataclass
class Corner:
    k: int  # arm whose inbound (left) curb starts the corner
    j: int  # arm whose outbound (right) curb ends it
    center: np.ndarray | None  # fillet centre (None for a straight side)
    radius: float
    s_k: float  # tangent point, arc length along arm k
    s_j: float


@dataclass
class PedPiece:
    pts: np.ndarray
    crosswalk: int = -1  # index of the crosswalk this piece crosses, else -1

    @cached_property
    def length(self) -> float:
        return float(arc_length(self.pts)[-1])


@dataclass
class Network:
    kind: str  # "4way", "tee", "road"
    control: str  # "signal", "allstop", "minorstop", "none"
    lanes: list[Lane]
    routes: list[list[int]]  # vehicle routes as lane sequences
    lines: list[tuple[np.ndarray, int]]
    edges: list[tuple[np.ndarray, int]]
    crosswalks: list[np.ndarray]
    stop_signs: list[tuple[np.ndarray, list[int]]]
    ped_pieces: list[PedPiece]
    ped_routes: list[list[int]]
    arms: list[Arm] = field(default_factory=list)
    corners: list[Corner] = field(default_factory=list)
    ref: np.ndarray | None = None  # road scenes: reference line (centre line) [n, 2]
    ref_half: tuple[float, float] = (0.0, 0.0)  # road scenes: curb offsets to the right / left of ref
    z_params: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0, 200.0, 0.0)

    def z(self, xy: np.ndarray) -> np.ndarray:
        """Gentle ground elevation at local xy [..., 2]."""
        z0, gx, gy, amp, wl, phi = self.z_params
        along = xy[..., 0] * np.cos(phi) + xy[..., 1] * np.sin(phi)
        return z0 + gx * xy[..., 0] + gy * xy[..., 1] + amp * np.sin(2 * np.pi * along / wl)


def _corner(arms: list[Arm], k: int, j: int, rng: np.random.Generator) -> Corner:
    ak, aj = arms[k], arms[j]
    alpha = (aj.angle - ak.angle) % (2 * np.pi)
    if alpha > np.radians(150):
        return Corner(k, j, None, 0.0, 0.0, 0.0)
    pk, pj = ak.half(+1) * ak.n, -aj.half(-1) * aj.n
    # intersection of the two curb lines pk + a u_k and pj + b u_j
    den = ak.u[0] * aj.u[1] - ak.u[1] * aj.u[0]
    w = pj - pk
    p = pk + (w[0] * aj.u[1] - w[1] * aj.u[0]) / den * ak.u
    radius = float(rng.uniform(6.0, 10.0))
    t = radius / np.tan(alpha / 2)
    bis = ak.u + aj.u
    center = p + radius / np.sin(alpha / 2) * bis / np.linalg.norm(bis)
    return Corner(k, j, center, radius, float((p + t * ak.u) @ ak.u), float((p + t * aj.u) @ aj.u))


def corner_path(arms: list[Arm], c: Corner, s_from: float, d_k: float, s_to: float, d_j: float) -> np.ndarray:
    """Path from arm k (inbound side, d_k metres inside its curb) round corner c to arm j (outbound side)."""
    ak, aj = arms[c.k], arms[c.j]
    a = ak.at(s_from, ak.half(+1) - d_k)
    b = aj.at(s_to, -(aj.half(-1) - d_j))
    if c.center is None:
        return segment(a, b, 0.5)
    a1 = ak.at(c.s_k, ak.half(+1) - d_k)
    b1 = aj.at(c.s_j, -(aj.half(-1) - d_j))
    th1 = np.arctan2(*(a1 - c.center)[::-1])
    th2 = np.arctan2(*(b1 - c.center)[::-1])
    sweep = (th2 - th1) % (2 * np.pi) - 2 * np.pi  # clockwise round the centre
    th = th1 + sweep * np.linspace(0, 1, 40)
    rad = np.linspace(np.linalg.norm(a1 - c.center), np.linalg.norm(b1 - c.center), 40)
    arc = c.center + rad[:, None] * np.stack([np.cos(th), np.sin(th)], 1)
    return resample(np.concatenate([segment(a, a1, 0.5)[:-1], arc, segment(b1, b, 0.5)[1:]]), 0.5)


def _lines_for_arm(arm: Arm, s0: float) -> list[tuple[np.ndarray, int]]:
    s1 = arm.length
    out = [(segment(arm.at(s0, 0), arm.at(s1, 0)), int(RoadLineType.SOLID_DOUBLE_YELLOW))]
    for side, count in ((+1, arm.n_in), (-1, arm.n_out)):
        for i in range(1, count):
            out.append((segment(arm.at(s0, side * i * arm.width), arm.at(s1, side * i * arm.width)),
                        int(RoadLineType.BROKEN_SINGLE_WHITE)))
        if arm.park > 0:
            off = side * count * arm.width
            out.append((segment(arm.at(s0, off), arm.at(s1, off)), int(RoadLineType.SOLID_SINGLE_WHITE)))
    return out


def _intersection(rng: np.random.Generator, kind: str) -> Network:
    jit = lambda: float(np.clip(rng.normal(0, np.radians(4)), -np.radians(8), np.radians(8)))  # noqa: E731
    if kind == "4way":
        base = [0.0, np.pi / 2 + jit(), np.pi + jit(), 3 * np.pi / 2 + jit()]
        pairs = [0, 1, 0, 1]
        control = rng.choice(["signal", "allstop", "minorstop"], p=[0.55, 0.25, 0.2])
    else:
        base = [0.0, np.pi / 2 + jit(), np.pi]
        pairs = [0, 1, 0]
        control = rng.choice(["signal", "minorstop"], p=[0.4, 0.6])
    lanes_per = [int(rng.choice([1, 2, 2, 3])), int(rng.choice([1, 1, 2]))]
    width = [float(rng.uniform(3.4, 3.9)) for _ in range(2)]
    park = [float(rng.choice([0.0, 2.4], p=[0.65, 0.35])) for _ in range(2)]
    mph = [float(rng.choice([25, 30, 35, 40, 45])), float(rng.choice([25, 30, 35]))]
    arms = [Arm(a, lanes_per[p], lanes_per[p], width[p], park[p], float(rng.uniform(75, 100)), mph[p], p)
            for a, p in zip(base, pairs)]
    na = len(arms)
    corners = [_corner(arms, k, (k + 1) % na, rng) for k in range(na)]
    lanes: list[Lane] = []
    lines: list[tuple[np.ndarray, int]] = []
    edges: list[tuple[np.ndarray, int]] = []
    crosswalks: list[np.ndarray] = []
    for k, arm in enumerate(arms):
        s_core = max([c.s_k for c in corners if c.k == k] + [c.s_j for c in corners if c.j == k] + [4.0])
        cw_w = float(rng.uniform(3.5, 4.5))
        arm.cw = (s_core + 0.5, s_core + 0.5 + cw_w)
        arm.r_stop = arm.cw[1] + 1.0
        crosswalks.append(np.stack([arm.at(arm.cw[0], arm.half(+1)), arm.at(arm.cw[0], -arm.half(-1)),
                                    arm.at(arm.cw[1], -arm.half(-1)), arm.at(arm.cw[1], arm.half(+1))]))
        for i in range(arm.n_in):
            o = (i + 0.5) * arm.width
            arm.in_lanes.append(len(lanes))
            lanes.append(Lane(segment(arm.at(arm.length, o), arm.at(arm.r_stop, o)), arm.speed_mph, "in", k, i))
        for i in range(arm.n_out):
            o = -(i + 0.5) * arm.width
            arm.out_lanes.append(len(lanes))
            lanes.append(Lane(segment(arm.at(arm.r_stop, o), arm.at(arm.length, o)), arm.speed_mph, "out", k, i))
        lines += _lines_for_arm(arm, arm.r_stop)
    for c in corners:
        edge = corner_path(arms, c, arms[c.k].length, 0.0, arms[c.j].length, 0.0)
        edges.append((resample(edge, 1.0) if c.center is None else edge, int(RoadEdgeType.BOUNDARY)))
    routes: list[list[int]] = []
    for k, ak in enumerate(arms):
        for j, aj in enumerate(arms):
            if j == k:
                continue
            delta = wrap_angle(aj.angle - (ak.angle + np.pi))
            turn = "S" if abs(delta) < np.radians(35) else ("L" if delta > 0 else "R")
            if turn == "S":
                pairs_ij = [(i, i) for i in range(min(ak.n_in, aj.n_out))]
            elif turn == "L":
                pairs_ij = [(0, 0)]
            else:
                pairs_ij = [(ak.n_in - 1, aj.n_out - 1)]
            for i, m in pairs_ij:
                oi, om = (i + 0.5) * ak.width, (m + 0.5) * aj.width
                if turn == "R":
                    c = corners[k]
                    pts = corner_path(arms, c, ak.r_stop, ak.half(+1) - oi, aj.r_stop, aj.half(-1) - om)
                else:
                    pts = smooth_connector(ak.at(ak.r_stop, oi), -ak.u, aj.at(aj.r_stop, -om), aj.u)
                ctrl = {"signal": "signal", "allstop": "stop", "minorstop": "stop" if ak.group == 1 else ""}[control]
                lin, lout = ak.in_lanes[i], aj.out_lanes[m]
                cid = len(lanes)
                lanes.append(Lane(pts, ak.speed_mph, "conn", k, i, turn, ak.group, ctrl, [lin], [lout]))
                lanes[lin].exits.append(cid)
                lanes[lout].entries.append(cid)
                routes.append([lin, cid, lout])
    stop_signs = []
    if control in ("allstop", "minorstop"):
        for arm in arms:
            if control == "allstop" or arm.group == 1:
                stop_signs.append((arm.at(arm.r_stop, arm.half(+1) + 0.8), list(arm.in_lanes)))
    pieces, ped_routes = _intersection_peds(arms, corners)
    return Network(kind, str(control), lanes, routes, lines, edges, crosswalks, stop_signs, pieces, ped_routes, arms,
                   corners)


def _intersection_peds(arms: list[Arm], corners: list[Corner]) -> tuple[list[PedPiece], list[list[int]]]:
    """Sidewalk pieces (in/out per arm side), crossings of each crosswalk and corner links, plus their routes."""
    pieces: list[PedPiece] = []
    ins: dict[tuple[int, int], int] = {}
    outs: dict[tuple[int, int], int] = {}
    for k, arm in enumerate(arms):
        s_c = 0.5 * (arm.cw[0] + arm.cw[1])
        for side in (+1, -1):
            lat_in = side * (arm.half(side) + SIDEWALK + 0.5 * side)
            lat_out = side * (arm.half(side) + SIDEWALK - 0.5 * side)
            ins[k, side] = len(pieces)
            pieces.append(PedPiece(segment(arm.at(arm.length, lat_in), arm.at(s_c, lat_in), 0.5)))
            outs[k, side] = len(pieces)
            pieces.append(PedPiece(segment(arm.at(s_c, lat_out), arm.at(arm.length, lat_out), 0.5)))
    routes: list[list[int]] = []
    for k, arm in enumerate(arms):
        s_c = 0.5 * (arm.cw[0] + arm.cw[1])
        for side in (+1, -1):
            a = pieces[ins[k, side]].pts[-1]
            b = pieces[outs[k, -side]].pts[0]
            s_x = s_c - 0.6 * side
            pts = np.stack([a, arm.at(s_x, side * arm.half(side)), arm.at(s_x, -side * arm.half(-side)), b])
            routes.append([ins[k, side], len(pieces), outs[k, -side]])
            pieces.append(PedPiece(resample(pts, 0.5), crosswalk=k))
    for c in corners:
        sk = 0.5 * sum(arms[c.k].cw)
        sj = 0.5 * sum(arms[c.j].cw)
        fwd = corner_path(arms, c, sk, -(SIDEWALK + 0.5), sj, -(SIDEWALK + 0.5))
        routes.append([ins[c.k, +1], len(pieces), outs[c.j, -1]])
        pieces.append(PedPiece(fwd))
        back = corner_path(arms, c, sk, -(SIDEWALK - 0.5), sj, -(SIDEWALK - 0.5))[::-1]
        routes.append([ins[c.j, -1], len(pieces), outs[c.k, +1]])
        pieces.append(PedPiece(np.ascontiguousarray(back)))
    return pieces, routes


def _road(rng: np.random.Generator) -> Network:
    """A multi-lane two-way road with gentle curves, lanes split into pieces, optional mid-block crosswalk."""
    total = float(rng.uniform(200, 240))
    n_seg = int(rng.integers(2, 5))
    cuts = np.sort(rng.uniform(0, total, n_seg - 1))
    bounds = np.concatenate([[0.0], cuts, [total]])
    kappa = [float(rng.choice([0.0, 1.0, -1.0]) / rng.uniform(90, 250)) for _ in range(n_seg)]
    s = np.arange(0.0, total + 1e-9, 1.0)
    k_s = np.array(kappa)[np.clip(np.searchsorted(bounds, s, side="right") - 1, 0, n_seg - 1)]
    theta = np.concatenate([[0.0], np.cumsum(k_s[:-1])])
    ref = np.stack([np.cumsum(np.cos(theta)), np.cumsum(np.sin(theta))], 1)
    ref -= ref[len(ref) // 2]
    nrm = rot90(np.stack([np.cos(theta), np.sin(theta)], 1))
    n_f, n_b = int(rng.choice([1, 2, 2, 3])), int(rng.choice([1, 2, 2, 3]))
    w = float(rng.uniform(3.4, 3.9))
    mph = float(rng.choice([30, 35, 40, 45, 50]))
    splits = [0, len(s) // 3, 2 * len(s) // 3, len(s) - 1]
    lanes: list[Lane] = []
    routes: list[list[int]] = []
    for direction, count in ((+1, n_f), (-1, n_b)):
        for i in range(count):
            line = ref - direction * (i + 0.5) * w * nrm
            chain = []
            for a, b in zip(splits[:-1], splits[1:]):
                pts = line[a : b + 1] if direction > 0 else line[a : b + 1][::-1]
                chain.append(len(lanes))
                lanes.append(Lane(np.ascontiguousarray(pts), mph, "road", direction, i))
            if direction < 0:
                chain = chain[::-1]
            for p, q in zip(chain[:-1], chain[1:]):
                lanes[p].exits.append(q)
                lanes[q].entries.append(p)
            routes.append(chain)
    lines = [(ref.copy(), int(RoadLineType.SOLID_DOUBLE_YELLOW))]
    for direction, count in ((+1, n_f), (-1, n_b)):
        for i in range(1, count):
            lines.append((ref - direction * i * w * nrm, int(RoadLineType.BROKEN_SINGLE_WHITE)))
    h_f, h_b = n_f * w, n_b * w
    edges = [(ref - h_f * nrm, int(RoadEdgeType.BOUNDARY)), (np.ascontiguousarray((ref + h_b * nrm)[::-1]),
                                                             int(RoadEdgeType.BOUNDARY))]
    crosswalks: list[np.ndarray] = []
    mid = int(rng.integers(int(0.4 * len(s)), int(0.6 * len(s))))
    has_cw = bool(rng.random() < 0.5)
    if has_cw:
        a, b = ref[mid - 2], ref[mid + 2]
        na, nb = nrm[mid - 2], nrm[mid + 2]
        crosswalks.append(np.stack([a + h_b * na, a - h_f * na, b - h_f * nb, b + h_b * nb]))
    pieces: list[PedPiece] = []
    ped_routes: list[list[int]] = []
    ids = {}
    for side, h in ((+1, h_b), (-1, h_f)):
        for direction in (+1, -1):
            lat = side * (h + SIDEWALK) - 0.5 * direction  # keep right
            line = ref + lat * nrm
            first, second = line[: mid + 1], line[mid:]
            if direction < 0:
                first, second = line[mid:][::-1], line[: mid + 1][::-1]
            ids[side, direction] = (len(pieces), len(pieces) + 1)
            pieces += [PedPiece(np.ascontiguousarray(first)), PedPiece(np.ascontiguousarray(second))]
            ped_routes.append([len(pieces) - 2, len(pieces) - 1])
    if has_cw:
        for side in (+1, -1):
            a = pieces[ids[side, +1][0]].pts[-1]
            b = pieces[ids[-side, +1][1]].pts[0]
            h_a, h_b2 = (h_b, h_f) if side > 0 else (h_f, h_b)
            m = mid + side  # the two directions cross 1 m apart
            c = ref[m] + side * h_a * nrm[m]
            d = ref[m] - side * h_b2 * nrm[m]
            ped_routes.append([ids[side, +1][0], len(pieces), ids[-side, +1][1]])
            pieces.append(PedPiece(resample(np.stack([a, c, d, b]), 0.5), crosswalk=0))
    return Network("road", "none", lanes, routes, lines, edges, crosswalks, [], pieces, ped_routes, ref=ref,
                   ref_half=(h_f, h_b))


def build_network(rng: np.random.Generator) -> Network:
    """A random road network: 4-way intersection (45 %), T junction (30 %) or curved road (25 %)."""
    kind = str(rng.choice(["4way", "tee", "road"], p=[0.45, 0.3, 0.25]))
    net = _road(rng) if kind == "road" else _intersection(rng, kind)
    g = rng.normal(0, 0.01, 2)
    net.z_params = (float(rng.uniform(-60, 200)), float(g[0]), float(g[1]), float(rng.uniform(0, 0.6)),
                    float(rng.uniform(150, 300)), float(rng.uniform(0, np.pi)))
    return net


def route_polyline(net: Network, route: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated points [n, 2] of a lane route and the route arc length at each lane's start [len(route)]."""
    parts, starts, acc = [], [], 0.0
    for i, lane in enumerate(route):
        pts = net.lanes[lane].pts
        starts.append(acc)
        acc += net.lanes[lane].length
        parts.append(pts if i == 0 else pts[1:])
    return np.concatenate(parts), np.array(starts)
