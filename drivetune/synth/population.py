"""Initial placement and boundary spawning of vehicles, cyclists, parked cars and pedestrians."""

from __future__ import annotations

import numpy as np

from drivetune.scene import AgentType
from drivetune.synth.agents import cyclist_size, pedestrian_size, style_params, vehicle_size
from drivetune.synth.pedestrians import PedSim
from drivetune.synth.roads import Network
from drivetune.synth.tables import Tables
from drivetune.synth.traffic import VehicleSim


def lane_change_targets(net: Network) -> np.ndarray:
    """[R, P, 2]: route to switch to when changing to the left (0) / right (1) lane at piece k, else -1."""
    R, P = len(net.routes), max(len(r) for r in net.routes)
    out = -np.ones((R, P, 2), np.int64)
    key = {}
    for r, route in enumerate(net.routes):
        for k, lane in enumerate(route):
            ln = net.lanes[lane]
            if ln.kind != "conn":
                key[(ln.kind, ln.arm, ln.index, k)] = lane
    for r, route in enumerate(net.routes):
        exit_arm = net.lanes[route[-1]].arm
        for k, lane in enumerate(route):
            ln = net.lanes[lane]
            if ln.kind == "conn":
                continue
            for side, di in ((0, -1), (1, +1)):
                l2 = key.get((ln.kind, ln.arm, ln.index + di, k))
                if l2 is None:
                    continue
                for r2, route2 in enumerate(net.routes):
                    if route2[k] == l2 and (ln.kind != "in" or net.lanes[route2[-1]].arm == exit_arm):
                        out[r, k, side] = r2
                        break
    return out


def _style(rng: np.random.Generator) -> float:
    return float(rng.beta(2.0, 2.0))


def _is_rightmost(net: Network, lane: int) -> bool:
    ln = net.lanes[lane]
    if ln.kind == "road":
        return not any(o.kind == "road" and o.arm == ln.arm and o.index == ln.index + 1 for o in net.lanes)
    arm = net.arms[ln.arm]
    return ln.index == (arm.n_in if ln.kind == "in" else arm.n_out) - 1


def _lane_width(net: Network, lane: int) -> float:
    ln = net.lanes[lane]
    if ln.kind == "road":
        h_f, h_b = net.ref_half
        count = sum(1 for o in net.lanes if o.kind == "road" and o.arm == ln.arm) // 3
        return (h_f if ln.arm > 0 else h_b) / max(count, 1)
    return net.arms[ln.arm].width


class Populator:
    def __init__(self, net: Network, tables: Tables, veh: VehicleSim, peds: PedSim, rng: np.random.Generator):
        self.net, self.tb, self.veh, self.peds, self.rng = net, tables, veh, peds, rng
        self.density = float(rng.uniform(0.45, 1.0))
        self.entry_routes: dict[int, list[int]] = {}
        for r, route in enumerate(net.routes):
            self.entry_routes.setdefault(route[0], []).append(r)
        self._entries = list(self.entry_routes.items())
        self.cyclist_share = float(rng.choice([0.0, 0.05, 0.12]))

    def _new_vehicle(self, route: int, s: float, v: float | None, allow_cyclist: bool = True) -> int:
        rng, net = self.rng, self.net
        first = net.routes[route][0]
        turn = self.tb.route_turn[route]
        style = _style(rng)
        params = style_params(style, rng)
        if allow_cyclist and turn != 2 and _is_rightmost(net, first) and rng.random() < self.cyclist_share:
            size = cyclist_size(rng)
            d = -(_lane_width(net, first) / 2 - 0.6)
            i = self.veh.add(route, s, 0.0, size, AgentType.CYCLIST, params, style, d)
        else:
            size = vehicle_size(rng, allow_large=turn == 0)
            i = self.veh.add(route, s, 0.0, size, AgentType.VEHICLE, params, style)
        if i >= 0:
            st = self.veh.st
            st.v[i] = st.v0[i] * rng.uniform(0.7, 1.0) if v is None else min(v, st.v0[i])
        return i

    def place_sdc(self) -> int:
        """The SDC: a vehicle near the start of a route through the intersection (or along the road)."""
        rng = self.rng
        routes = list(range(len(self.net.routes)))
        turning = [r for r in routes if self.tb.route_turn[r] > 0]
        r = int(rng.choice(turning if turning and rng.random() < 0.4 else routes))
        s = float(rng.uniform(3.0, 12.0))
        style = float(rng.uniform(0.3, 0.6))
        params = style_params(style, rng)
        i = self.veh.add(r, s, 0.0, vehicle_size(rng, allow_large=False), AgentType.VEHICLE, params, style)
        st = self.veh.st
        st.v0[i] = min(st.v0[i], (self.tb.routes.length[r] - s - 15.0) / 14.0)
        st.v[i] = st.v0[i] * 0.8
        return i

    def initial(self) -> None:
        """Vehicles spread along every non-connector lane, then pedestrians."""
        net, tb, rng, st = self.net, self.tb, self.rng, self.veh.st
        for lane_id, ln in enumerate(net.lanes):
            if ln.kind == "conn" or (ln.kind == "road" and ln.entries):
                continue
            cands = [(r, k) for r, route in enumerate(net.routes) for k, l in enumerate(route) if l == lane_id]
            length = float(tb.routes.length[cands[0][0]]) if ln.kind == "road" else ln.length
            pos = length - float(rng.uniform(2.0, 15.0))
            v_prev = None
            while pos > 5.0:
                r, k = cands[int(rng.integers(len(cands)))]
                s = float(tb.routes.starts[r, k]) + pos
                occupied = np.flatnonzero(st.active[: st.n])
                if len(occupied):
                    _, lane_o, sl_o = tb.routes.piece_at(st.route[occupied], st.s[occupied])
                    same = (lane_o == lane_id) & (np.abs(sl_o - pos) < 14.0)
                    same |= (st.route[occupied] == r) & (np.abs(st.s[occupied] - s) < 14.0)
                    if same.any():
                        pos -= 14.0
                        continue
                i = self._new_vehicle(r, s, None)
                if i < 0:
                    return
                dist_line = tb.route_conn_s[r] - s
                if tb.route_ctrl[r] > 0 and dist_line > 0:
                    st.v[i] = min(st.v[i], np.sqrt(2 * 1.2 * max(dist_line - 6.0, 0.0)))
                if v_prev is not None:
                    st.v[i] = min(st.v[i], v_prev + 1.0)
                v_prev = float(st.v[i])
                gap = st.min_gap[i] + st.v[i] * st.headway[i] * 1.3 + rng.exponential(25.0 / self.density)
                pos -= st.length[i] + gap
        n_ped = int(rng.integers(2, 12 if net.kind != "road" else 6))
        for _ in range(n_ped):
            self._new_ped(at_start=False)

    def _new_ped(self, at_start: bool) -> None:
        rng, pt = self.rng, self.tb.peds
        r = int(rng.integers(len(self.net.ped_routes)))
        first_len = float(pt.starts[r, 1]) if pt.pieces.shape[1] > 1 and pt.pieces[r, 1] >= 0 else pt.length[r]
        s = 0.1 if at_start else float(rng.uniform(0.0, first_len - 0.5))
        idx = np.flatnonzero(self.peds.active[: self.peds.n])
        if len(idx):
            p, _, _ = pt.lookup(np.array([r]), np.array([s]))
            q, _, _ = pt.lookup(self.peds.route[idx], self.peds.s[idx])
            if np.linalg.norm(q - p, axis=1).min() < 2.5:
                return
        standing = not at_start and rng.random() < 0.2
        self.peds.add(r, s, 0.0 if standing else float(rng.uniform(1.0, 1.7)), pedestrian_size(rng))

    def spawn(self) -> None:
        """Boundary arrivals of vehicles (per entry lane, Poisson) and pedestrians."""
        rng = self.rng
        draws = rng.random(len(self.entry_routes) + 1)
        for m in np.flatnonzero(draws[:-1] <= 0.1 * 0.18 * self.density):
            lane, routes = self._entries[m]
            rear, v_occ = self.veh.occupancy(lane)
            r = int(routes[int(rng.integers(len(routes)))])
            if rear < 30.0:
                continue
            i = self._new_vehicle(r, 3.0, None)
            if i >= 0 and rear < 80.0:
                st = self.veh.st
                st.v[i] = min(st.v[i], v_occ + 0.3 * (rear - 30.0) / 5.0)
        if draws[-1] < 0.1 * 0.15:
            self._new_ped(at_start=True)

    def parked(self) -> list[tuple[np.ndarray, float, tuple[float, float, float]]]:
        """Static cars in the parking strips: (xy, heading, size)."""
        out = []
        for arm in self.net.arms:
            if arm.park <= 0:
                continue
            for side in (+1, -1):
                count = arm.n_in if side > 0 else arm.n_out
                lat = side * (count * arm.width + arm.park / 2)
                heading = arm.angle + (np.pi if side > 0 else 0.0)
                s = arm.r_stop + 10.0
                while s < arm.length - 6.0:
                    size = vehicle_size(self.rng, allow_large=False)
                    size = (min(size[0], 5.2), min(size[1], 2.05), size[2])
                    if self.rng.random() < 0.6:
                        out.append((arm.at(s + size[0] / 2, lat), float(heading), size))
                    s += size[0] + float(self.rng.uniform(1.0, 6.0))
        return out
