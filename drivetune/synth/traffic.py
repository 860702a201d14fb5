"""Vehicle and cyclist traffic on lane routes, vectorised over agents per 10 Hz step.

Longitudinal motion is IDM against the nearest of: the leader on the route (including vehicles that share the start
of a diverging connector and lane-changers still half in the old lane), a stop line (red, undecided yellow, a stop
sign not yet served), a conflict zone with a higher-priority or already-committed vehicle, and an occupied crosswalk.
Lateral motion is the route centreline plus an offset (cyclists ride near the curb; lane changes blend the offset
to zero with a cosine profile).
"""

from __future__ import annotations

import numpy as np

from drivetune.synth.agents import VEHICLE
from drivetune.synth.tables import DS, Tables

DT = 0.1
MAX_BRAKE = 6.0
INF = 1e9


class VehicleState:
    """Struct of arrays for route agents (capacity fixed up front); `rec_*` hold the logged steps."""

    FIELDS = ("route", "s", "v", "length", "width", "height", "kind", "d_base", "lc_d0", "lc_t0", "lc_dur",
              "ghost_route", "ghost_shift", "ghost_until", "yellow_go", "yellow_seen", "stop_done", "stop_time",
              "v0", "headway", "accel", "decel", "min_gap", "gap_accept", "yellow_thr", "stop_wait", "lat_scale",
              "lc_rate", "style", "yielded", "close_leader")

    def __init__(self, capacity: int, num_steps: int):
        self.capacity = capacity
        self.n = 0
        self.active = np.zeros(capacity, bool)
        for f in self.FIELDS:
            setattr(self, f, np.zeros(capacity))
        self.route = np.zeros(capacity, np.int64)
        self.ghost_route = -np.ones(capacity, np.int64)
        self.kind = np.zeros(capacity, np.int64)
        # raw log per step (route, arc length, lateral offset and its rate, speed); poses are derived in one batch
        self.rec_route = np.zeros((capacity, num_steps), np.int64)
        self.rec_s = np.zeros((capacity, num_steps))
        self.rec_d = np.zeros((capacity, num_steps))
        self.rec_dd = np.zeros((capacity, num_steps))
        self.rec_v = np.zeros((capacity, num_steps))
        self.rec_valid = np.zeros((capacity, num_steps), bool)


class VehicleSim:
    """Vehicles and cyclists on lane routes; `step` advances every active agent by one 10 Hz step."""

    def __init__(self, tables: Tables, lc_targets: np.ndarray, speed_limit: np.ndarray, capacity: int,
                 num_steps: int):
        self.tb = tables
        self.rt = tables.routes
        self.lc_targets = lc_targets  # [R, P, 2] route after a lane change to the left / right, -1
        self._speed_limit = speed_limit  # [R] m/s
        self.st = VehicleState(capacity, num_steps)
        self.num_steps = num_steps

    # ----------------------------------------------------------------- set-up
    def add(self, route: int, s: float, v: float, size: tuple[float, float, float], kind: int,
            params: dict[str, float], style: float, d_base: float = 0.0) -> int:
        """Activate a new agent on `route` at arc length s; returns its slot (-1 when full)."""
        st = self.st
        if st.n >= st.capacity:
            return -1
        i = st.n
        st.n += 1
        st.active[i] = True
        st.route[i], st.s[i], st.v[i] = route, s, v
        st.length[i], st.width[i], st.height[i] = size
        st.kind[i], st.d_base[i], st.style[i] = kind, d_base, style
        lim = self._speed_limit[route]
        st.v0[i] = lim * params["speed_factor"] if kind == VEHICLE else params["speed_factor"] * 5.5
        st.headway[i], st.accel[i], st.decel[i] = params["headway"], params["accel"], params["decel"]
        st.min_gap[i], st.gap_accept[i] = params["min_gap"], params["gap_accept"]
        st.yellow_thr[i], st.stop_wait[i] = params["yellow_go"], params["stop_wait"]
        st.lat_scale[i] = np.sqrt(params["lat_accel"] / 2.5)
        st.lc_rate[i] = params["lane_change_rate"] if kind == VEHICLE else 0.0
        st.lc_dur[i] = 1.0
        st.ghost_route[i] = -1
        return i

    def occupancy(self, lane: int) -> tuple[float, float]:
        """(smallest rear arc length, speed of that agent) among active agents on a lane (inf if none)."""
        st = self.st
        idx = np.flatnonzero(st.active)
        if len(idx) == 0:
            return INF, 0.0
        _, piece, sl = self.rt.piece_at(st.route[idx], st.s[idx])
        on = piece == lane
        if not on.any():
            return INF, 0.0
        j = np.argmin(np.where(on, sl - st.length[idx] / 2, INF))
        return float(sl[j] - st.length[idx][j] / 2), float(st.v[idx][j])

    # ------------------------------------------------------------------ step
    def threats(self) -> np.ndarray:
        """bool [num crosswalks]: some vehicle is in, or could not comfortably stop before, each crosswalk."""
        tb, st = self.tb, self.st
        out = np.zeros(max(len(tb.cw_group), 1), bool)
        idx = np.flatnonzero(st.active)
        if len(idx) == 0 or not (tb.route_cw >= 0).any():
            return out
        r, s, v, L = st.route[idx], st.s[idx], st.v[idx], st.length[idx]
        cw = tb.route_cw[r]
        reach = (s + L / 2)[:, None] > tb.route_cw_s0[r] - (v**2 / 5.0 + 4.0)[:, None]
        inside = (s - L / 2)[:, None] < tb.route_cw_s1[r] + 0.5
        hit = (cw >= 0) & reach & inside
        np.logical_or.at(out, cw[hit], True)
        return out

    def step(self, t: int, time: float, cw_busy: np.ndarray, record: int, rng: np.random.Generator) -> None:
        """Advance one step from `time`; log into column `record` (skipped when negative, i.e. warm-up)."""
        tb, rt, st = self.tb, self.rt, self.st
        idx = np.flatnonzero(st.active)
        if len(idx) == 0:
            return
        n = len(idx)
        r, s, v, L = st.route[idx], st.s[idx], st.v[idx], st.length[idx]
        front, rear = s + L / 2, s - L / 2
        k, lane, sl = rt.piece_at(r, s)
        pieces, starts = rt.pieces[r], rt.starts[r]
        P = pieces.shape[1]
        eye = np.eye(n, dtype=bool)

        # ---- leaders along the route (own identity + lane-change ghosts)
        ok = (np.arange(P)[None] >= k[:, None]) & (pieces >= 0)
        pc = np.maximum(pieces, 0)[:, :, None]
        gap_l = np.full(n, INF)
        v_l = np.zeros(n)
        ghost = (st.ghost_route[idx] >= 0) & (time < st.ghost_until[idx])
        idents = [(lane, sl, np.ones(n, bool))]
        if ghost.any():
            gr = np.where(ghost, st.ghost_route[idx], r)
            _, g_lane, g_sl = rt.piece_at(gr, s + st.ghost_shift[idx])
            idents.append((g_lane, g_sl, ghost))
        for lane_j, sl_j, valid_j in idents:
            lim = tb.diverge[pc, lane_j[None, None, :]]  # [n, P, n]
            gapc = starts[:, :, None] + sl_j[None, None, :] - s[:, None, None]
            m = ok[:, :, None] & (sl_j[None, None, :] < lim) & (gapc > 0) & valid_j[None, None, :] & ~eye[:, None, :]
            gap = np.where(m, gapc - (L[:, None, None] + L[None, None, :]) / 2, INF).min(1)  # [n, n]
            j = gap.argmin(1)
            g = gap[np.arange(n), j]
            better = g < gap_l
            gap_l = np.where(better, g, gap_l)
            v_l = np.where(better, v[j], v_l)

        # ---- stop line: signals and stop signs
        cs, ctrl = tb.route_conn_s[r], tb.route_ctrl[r]
        before = s < cs
        line_gap = cs - 0.5 - front
        must_stop = np.zeros(n, bool)
        rank = np.where(tb.route_turn[r] == 2, 2.0, 1.0)
        if tb.signal is not None:
            light = tb.signal.states(tb.route_group[r], time)
            sig = (ctrl == 1) & before
            newly_yellow = sig & (light == 1) & (st.yellow_seen[idx] == 0)
            if newly_yellow.any():
                need = v**2 / (2 * np.maximum(line_gap, 0.1))
                t_cross = (cs - s) / np.maximum(v, 0.1)
                go = (need > st.yellow_thr[idx]) & (t_cross < tb.signal.yellow - 0.5)
                st.yellow_go[idx[newly_yellow]] = go[newly_yellow]
                st.yellow_seen[idx[newly_yellow]] = 1
            reset = sig & (light == 2)
            st.yellow_seen[idx[reset]] = 0
            st.yellow_go[idx[reset]] = 0
            go_y = st.yellow_go[idx] > 0
            must_stop |= sig & ((light == 0) | ((light == 1) & ~go_y))
            rank = np.where(sig & ((light == 0) | ((light == 1) & ~go_y)), 9.0, rank)
            rank = np.where(sig & (light == 1) & go_y, 0.5, rank)
        stop = (ctrl == 2) & before
        if stop.any():
            arrived = stop & (st.stop_done[idx] == 0) & (v < 0.3) & (line_gap < st.min_gap[idx] + 2.5)
            st.stop_done[idx[arrived]] = 1
            st.stop_time[idx[arrived]] = time
            served = st.stop_done[idx] > 0
            released = served & (time >= st.stop_time[idx] + st.stop_wait[idx])
            must_stop |= stop & ~released
            rank = np.where(stop, np.where(released, 3.0 + st.stop_time[idx] * 1e-3, 9.0), rank)
        rank = np.where(s >= cs, 0.5, rank) + idx * 1e-6
        gap_s = np.where(must_stop, line_gap, INF)

        # ---- conflicts between intersection connectors
        conn = tb.route_conn[r]
        has = conn >= 0
        if has.sum() > 1:
            ci = np.maximum(conn, 0)
            cm = tb.conf_mask[ci][:, ci] & has[:, None] & has[None, :]
            z0 = cs[:, None] + tb.conf_s0[ci][:, ci]
            z1 = cs[:, None] + tb.conf_s1[ci][:, ci]
            entered = front[:, None] > z0 - 0.5
            passed = rear[:, None] > z1 + 0.5
            occ = entered & ~passed
            tte = (z0 - front[:, None]) / np.maximum(v, 0.5)[:, None]
            yld = cm & ~entered & ~passed.T & (occ.T | ((rank[None, :] < rank[:, None]) & (tte.T < st.gap_accept[idx][:, None])))
            if yld.any():
                gap_c = np.where(yld, z0 - 0.5 - front[:, None], INF).min(1)
                gap_s = np.minimum(gap_s, gap_c)
                st.yielded[idx[yld.any(1)]] = 1

        # ---- crosswalks with pedestrians on them
        if cw_busy.any():
            cw = tb.route_cw[r]
            c0 = tb.route_cw_s0[r]
            wait = (cw >= 0) & cw_busy[np.maximum(cw, 0)] & (front[:, None] < c0 + 0.3)
            gap_s = np.minimum(gap_s, np.where(wait, c0 - 0.5 - front[:, None], INF).min(1))

        # ---- IDM
        i0 = np.clip((s / DS).astype(np.int64), 0, rt.vmax.shape[1] - 1)
        v0 = np.maximum(np.minimum(st.v0[idx], rt.vmax[r, i0] * st.lat_scale[idx]), 1.0)
        a, b, T, s0 = st.accel[idx], st.decel[idx], st.headway[idx], st.min_gap[idx]
        root = 2 * np.sqrt(a * b)
        s_star_l = s0 + v * T + v * (v - v_l) / root
        s_star_s = 1.0 + v * 0.5 * T + v * v / root
        inter = np.maximum((np.maximum(s_star_l, 0) / np.maximum(gap_l, 0.05)) ** 2,
                           (np.maximum(s_star_s, 0) / np.maximum(gap_s, 0.05)) ** 2)
        acc = a * (1 - (v / v0) ** 4 - inter)
        acc = np.where((gap_l <= 0) | (gap_s <= 0), -MAX_BRAKE, acc)
        acc = np.clip(acc, -MAX_BRAKE, a)
        v_new = np.maximum(v + acc * DT, 0.0)
        st.s[idx] = s + 0.5 * (v + v_new) * DT
        st.v[idx] = v_new
        st.close_leader[idx[gap_l < 8.0]] = 1

        if t % 5 == 0:
            self._lane_changes(idx, k, gap_l, v_l, time, rng)
        self._record(t, time + DT, record)
        # leave the map at the end of the route
        gone = st.s[idx] >= rt.length[st.route[idx]] - 0.25
        st.active[idx[gone]] = False

    def _lateral(self, idx: np.ndarray, time: float) -> tuple[np.ndarray, np.ndarray]:
        st = self.st
        if not (time < st.lc_t0[idx] + st.lc_dur[idx]).any():  # no lane change in progress
            return st.d_base[idx], np.zeros(len(idx))
        tau = np.clip((time - st.lc_t0[idx]) / st.lc_dur[idx], 0.0, 1.0)
        d = st.d_base[idx] + st.lc_d0[idx] * 0.5 * (1 + np.cos(np.pi * tau))
        dd = -st.lc_d0[idx] * 0.5 * np.pi / st.lc_dur[idx] * np.sin(np.pi * tau)
        return d, dd

    def _record(self, t: int, time: float, record: int) -> None:
        if record < 0:
            return
        st = self.st
        idx = np.flatnonzero(st.active)
        st.rec_d[idx, record], st.rec_dd[idx, record] = self._lateral(idx, time)
        st.rec_route[idx, record] = st.route[idx]
        st.rec_s[idx, record] = st.s[idx]
        st.rec_v[idx, record] = st.v[idx]
        st.rec_valid[idx, record] = True

    def poses(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """xy [n, T, 2], heading [n, T] and velocity [n, T, 2] of the logged rows (zeros where invalid)."""
        st = self.st
        valid = st.rec_valid[rows]
        xy = np.zeros(valid.shape + (2,))
        heading = np.zeros(valid.shape)
        vel = np.zeros(valid.shape + (2,))
        r, s = st.rec_route[rows][valid], st.rec_s[rows][valid]
        d, dd, v = st.rec_d[rows][valid], st.rec_dd[rows][valid], st.rec_v[rows][valid]
        p, tan, _ = self.rt.lookup(r, s)
        nrm = np.stack([-tan[:, 1], tan[:, 0]], 1)
        xy[valid] = p + nrm * d[:, None]
        heading[valid] = np.arctan2(tan[:, 1], tan[:, 0]) + np.arctan2(dd, np.maximum(v, 3.0))
        vel[valid] = tan * v[:, None] + nrm * dd[:, None]
        return xy, heading, vel

    def _lane_changes(self, idx: np.ndarray, k: np.ndarray, gap_l: np.ndarray, v_l: np.ndarray, time: float,
                      rng: np.random.Generator) -> None:
        """Discretionary lane changes (random per style, more behind a slow leader) where the target gap is safe."""
        st, tb = self.st, self.tb
        r = st.route[idx]
        s, v = st.s[idx], st.v[idx]
        busy = time < st.lc_t0[idx] + st.lc_dur[idx] + 2.0
        slow_leader = (gap_l < 35) & (v_l < st.v0[idx] - 3.0)
        want = (st.kind[idx] == VEHICLE) & ~busy & (v > 6.0) & (
            rng.random(len(idx)) < 5 * DT * (st.lc_rate[idx] + 0.25 * slow_leader))  # checked every 5th step
        want &= (s < tb.route_conn_s[r] - 35.0) | (s > tb.route_conn_s[r] + 30.0 + tb.conf_s1.max())
        for m in np.flatnonzero(want):
            i = idx[m]
            sides = rng.permutation(2)
            for side in sides:
                r2 = self.lc_targets[r[m], k[m], side]
                if r2 < 0:
                    continue
                if self._try_change(i, int(r2), time):
                    break

    def _try_change(self, i: int, r2: int, time: float) -> bool:
        st, rt = self.st, self.rt
        p, _, _ = rt.lookup(np.array([st.route[i]]), np.array([st.s[i]]))
        cand = st.s[i] + np.arange(-8.0, 8.0, DS)
        q, tq, _ = rt.lookup(np.full(len(cand), r2), np.maximum(cand, 0))
        j = int(np.linalg.norm(q - p, axis=1).argmin())
        s2 = float(max(cand[j] + (p[0] - q[j]) @ tq[j], 0.0))  # project onto the target centreline
        q2, tq2, _ = rt.lookup(np.array([r2]), np.array([s2]))
        lateral = float((p[0] - q2[0]) @ np.array([-tq2[0, 1], tq2[0, 0]]))
        if abs(lateral) < 2.0 or abs(lateral) > 4.5 or s2 > rt.length[r2] - 60:
            return False
        # gaps to every agent on the target route's lanes ahead and behind
        others = np.flatnonzero(st.active)
        others = others[others != i]
        _, lane2, sl2 = rt.piece_at(np.array([r2]), np.array([s2]))
        _, lane_o, sl_o = rt.piece_at(st.route[others], st.s[others])
        gr = st.ghost_route[others]
        same = lane_o == lane2[0]
        if (gr >= 0).any():
            g = (gr >= 0) & (time < st.ghost_until[others])
            if g.any():
                _, gl, gsl = rt.piece_at(np.where(g, gr, st.route[others]), st.s[others] + st.ghost_shift[others])
                same |= g & (gl == lane2[0])
                sl_o = np.where(g & (gl == lane2[0]), gsl, sl_o)
        v = st.v[i]
        for j in others[same]:
            jj = np.flatnonzero(others == j)[0]
            dist = sl_o[jj] - sl2[0]
            half = (st.length[i] + st.length[j]) / 2
            if dist >= 0 and dist - half < max(10.0, 1.0 * v + (v - st.v[j]) * 2.0):
                return False
            if dist < 0 and -dist - half < max(8.0, 1.2 * st.v[j] + (st.v[j] - v) * 2.5):
                return False
        st.ghost_route[i], st.ghost_shift[i] = st.route[i], st.s[i] - s2
        dur = 4.0 + 1.5 * (1 - st.style[i])
        st.ghost_until[i] = time + 0.6 * dur
        st.route[i], st.s[i] = r2, s2
        st.lc_d0[i], st.lc_t0[i], st.lc_dur[i] = lateral, time, dur
        return True
