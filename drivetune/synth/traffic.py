"""Vehicle and cyclist traffic on lane routes, vectorised over agents per 10 Hz step.

Longitudinal motion is IDM against the nearest of: the leader on the route (including vehicles that share the start
of a diverging connector and lane-changers still half in the old lane), a stop line (red, undecided yellow, a stop
sign not yet served), a conflict zone with a higher-priority or already-committed vehicle, and an occupied crosswalk.
Lateral motion is the route centreline plus an offset (cyclists ride near the curb; lane changes blend the offset
to zero with a cosine profile).

Per-step work is kept to array arithmetic on the active set (see vehicle_state); the log is kept as per-step arrays
that are scattered into [agents, steps] once at the end.
"""

from __future__ import annotations

import math

import numpy as np

from drivetune.scene import STEP_SECONDS, AgentType
from drivetune.synth.tables import DS, Tables
from drivetune.synth.vehicle_state import ROW, ActiveVehicles, VehicleState

MAX_BRAKE = 6.0
INF = 1e9


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
        # per-route attributes: floats (stop line, length) and ints (control, turn, signal group, connector)
        self._route_f = np.stack([tables.route_conn_s, self.rt.length])
        self._route_i = np.stack([tables.route_ctrl, tables.route_turn, tables.route_group, tables.route_conn])
        self._conf_end = float(tables.conf[2].max(initial=0.0))
        self._has_cw = bool((tables.route_cw >= 0).any())
        self._act: ActiveVehicles | None = None  # cached until an agent enters, leaves or changes lanes
        self._lc_end = 1.0  # latest end of any lane change (lc_t0 + lc_dur: 0 + 1 until the first change)
        self._ghost_end = -np.inf  # latest ghost_until of any lane change
        self._log: list[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None,
                              np.ndarray | None]] = []

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
        self._act = None
        st.route[i], st.s[i], st.v[i] = route, s, v
        st.length[i], st.width[i], st.height[i] = size
        st.kind[i], st.d_base[i], st.style[i] = kind, d_base, style
        lim = self._speed_limit[route]
        st.v0[i] = lim * params["speed_factor"] if kind == AgentType.VEHICLE else params["speed_factor"] * 5.5
        st.headway[i], st.accel[i], st.decel[i] = params["headway"], params["accel"], params["decel"]
        st.min_gap[i], st.gap_accept[i] = params["min_gap"], params["gap_accept"]
        st.yellow_thr[i], st.stop_wait[i] = params["yellow_go"], params["stop_wait"]
        st.lat_scale[i] = math.sqrt(params["lat_accel"] / 2.5)
        st.lc_rate[i] = params["lane_change_rate"] if kind == AgentType.VEHICLE else 0.0
        st.lc_dur[i] = 1.0
        st.ghost_route[i] = -1
        return i

    def _active(self) -> ActiveVehicles:
        if self._act is None:
            self._act = ActiveVehicles(self.st, self.tb, self._route_f, self._route_i, self._has_cw)
        return self._act

    def active(self) -> np.ndarray:
        """Slots of the active agents, ascending."""
        return self._active().idx

    def occupancy(self, lane: int) -> tuple[float, float]:
        """(smallest rear arc length, speed of that agent) among active agents on a lane (inf if none)."""
        st = self.st
        idx = self.active()
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
        c = self._active()
        if len(c.idx) == 0 or not self._has_cw:
            return out
        s, v = st.f[:2, c.idx]
        reach = (s + c.half)[:, None] > c.cw_s0 - (v**2 / 5.0 + 4.0)[:, None]
        hit = c.cw_on & reach & ((s - c.half)[:, None] < c.cw_s1)
        out[c.cw[hit]] = True
        return out

    def _leaders(self, c: ActiveVehicles, s: np.ndarray, v: np.ndarray, sl: np.ndarray, time: float
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Gap to and speed of the nearest agent ahead on each agent's route (INF, 0 if none).

        Candidates are every agent on its current lane plus lane-changers on their old lane (ghosts); an agent on
        a connector that diverges from one on the route counts while it is within the shared start.
        """
        st = self.st
        ghost = ()
        if time < self._ghost_end:
            ghost = ((st.ghost_route[c.idx] >= 0) & (time < st.ghost_until[c.idx])).nonzero()[0]
        if len(ghost):
            g_idx = c.idx[ghost]
            _, g_lane, g_sl = self.rt.piece_at(st.ghost_route[g_idx], s[ghost] + st.ghost_shift[g_idx])
            g_off, g_lim = self.tb.lead[:, c.r[:, None], g_lane[None, :]]
            off, lim = np.concatenate([c.off, g_off], 1), np.concatenate([c.lim, g_lim], 1)
            sl = np.concatenate([sl, g_sl])
            own = np.concatenate([c.ar, ghost])
            mask = (off >= c.cur[:, None]) & (own[None, :] != c.ar[:, None])
            half_sum = (c.L[:, None] + c.L[own][None, :]) / 2
        else:
            off, lim, own, mask, half_sum = c.off, c.lim, c.ar, c.lead_mask, c.half_sum
        gapc = off + sl - s[:, None]
        gap = np.where(mask & (sl < lim) & (gapc > 0), gapc - half_sum, INF)
        j = gap.argmin(1)
        g = gap[c.ar, j]
        return g, np.where(g < INF, v[own[j]], 0.0)

    def step(self, t: int, time: float, cw_busy: np.ndarray, record: int, rng: np.random.Generator) -> None:
        """Advance one step from `time`; log into column `record` (skipped when negative, i.e. warm-up)."""
        tb, st = self.tb, self.st
        c = self._active()
        idx = c.idx
        n = len(idx)
        if n == 0:
            return
        D = st.f[:6, idx]  # s, v, yellow_go, yellow_seen, stop_done, stop_time
        s, v = D[0], D[1]
        if c.next_start is None or np.count_nonzero(s >= c.next_start):
            c.pieces(s, tb.lead)
        front, rear = s + c.half, s - c.half
        gap_l, v_l = self._leaders(c, s, v, s - c.cur, time)

        # ---- stop line: signals and stop signs
        cs = c.cs
        before = s < cs
        line_gap = cs - 0.5 - front
        must_stop = np.zeros(n, bool)
        rank = c.rank0
        if tb.signal is not None:
            lights = tb.signal.group_states(time)
            light = np.array(lights)[c.group]
            sig = c.is_sig & before
            yg, ys = D[2], D[3]
            changed = False
            if 1 in lights:
                newly_yellow = sig & (light == 1) & (ys == 0)
                if np.count_nonzero(newly_yellow):
                    need = v**2 / (2 * np.maximum(line_gap, 0.1))
                    t_cross = (cs - s) / np.maximum(v, 0.1)
                    go = (need > c.yellow_thr) & (t_cross < tb.signal.yellow - 0.5)
                    yg[newly_yellow] = go[newly_yellow]
                    ys[newly_yellow] = 1
                    changed = True
            if 2 in lights and np.count_nonzero(D[2:4]):
                reset = sig & (light == 2)
                yg[reset] = 0
                ys[reset] = 0
                changed = True
            if changed:
                st.f[2:4, idx] = D[2:4]
            go_y = yg > 0
            held = sig & ((light == 0) | ((light == 1) & ~go_y))
            must_stop |= held
            rank = np.where(held, 9.0, rank)
            if 1 in lights:
                rank = np.where(sig & (light == 1) & go_y, 0.5, rank)
        stop = c.is_stop & before
        if np.count_nonzero(stop):
            done, stop_time = D[4], D[5]
            arrived = stop & (done == 0) & (v < 0.3) & (line_gap < c.s0 + 2.5)
            if np.count_nonzero(arrived):
                done[arrived] = 1
                stop_time[arrived] = time
                st.f[4:6, idx] = D[4:6]
            released = (done > 0) & (time >= stop_time + c.stop_wait)
            must_stop |= stop & ~released
            rank = np.where(stop, np.where(released, 3.0 + stop_time * 1e-3, 9.0), rank)
        rank = np.where(s >= cs, 0.5, rank) + c.tie
        gap_s = np.where(must_stop, line_gap, INF)

        # ---- conflicts between intersection connectors
        if c.conflicts:  # i yields to j: [i, j]; *_t matrices hold j's own zone
            entered = front[:, None] > c.z0m
            entered_j = front[None, :] > c.z0m_t
            passed_j = rear[None, :] > c.z1p_t
            tte_j = (c.z0_t - front[None, :]) / np.maximum(v, 0.5)[None, :]
            first = (entered_j & ~passed_j) | ((rank[None, :] < rank[:, None]) & (tte_j < c.gap_accept[:, None]))
            yld = c.cm & ~(entered | passed_j) & first
            if np.count_nonzero(yld):
                gap_c = np.where(yld, c.z0m - front[:, None], INF)
                gap_c = gap_c[c.ar, gap_c.argmin(1)]  # row minima (faster than .min(1) on small rows)
                gap_s = np.minimum(gap_s, gap_c)
                st.yielded[idx[gap_c < INF]] = 1  # the rows with some yield

        # ---- crosswalks with pedestrians on them
        if self._has_cw and np.count_nonzero(cw_busy):
            c0 = c.cw_s0
            wait = c.cw_on & cw_busy[np.maximum(c.cw, 0)] & (front[:, None] < c0 + 0.3)
            gap_s = np.minimum(gap_s, np.where(wait, c0 - 0.5 - front[:, None], INF).min(1))

        # ---- IDM
        i0 = np.minimum((s / DS).astype(np.int64), c.vmax.shape[1] - 1)  # s >= 0 always
        v0 = np.maximum(np.minimum(c.v0, c.vmax[c.r, i0] * c.lat_scale), 1.0)
        # desired gaps to the leader (row 0) and to the stop point (row 1: jam gap 1 m, half headway, standing)
        rel, gaps = np.empty((2, n)), np.empty((2, n))
        np.subtract(v, v_l, out=rel[0])
        rel[1] = v
        gaps[0], gaps[1] = gap_l, gap_s
        s_star = c.jam + v * c.headways + v * rel / c.root
        inter = ((np.maximum(s_star, 0) / np.maximum(gaps, 0.05)) ** 2).max(0)
        a = c.a
        acc = a * (1 - (v / v0) ** 4 - inter)
        acc = np.where((gaps <= 0).any(0), -MAX_BRAKE, acc)
        acc = np.minimum(np.maximum(acc, -MAX_BRAKE), a)
        v_new = np.maximum(v + acc * STEP_SECONDS, 0.0)
        s_new = s + 0.5 * (v + v_new) * STEP_SECONDS
        st.s[idx] = s_new
        st.v[idx] = v_new
        close = gap_l < 8.0
        if np.count_nonzero(close):
            st.close_leader[idx[close]] = 1

        r, route_len = c.r, c.length
        if t % 5 == 0 and self._lane_changes(c, s_new, v_new, gap_l, v_l, time, rng):
            r, s_new = st.route[idx], st.s[idx]
            route_len = self.rt.length[r]
            self._act = None
        if record >= 0:
            self._record(idx, r, s_new, v_new, time + STEP_SECONDS, record)
        # leave the map at the end of the route
        gone = s_new >= route_len - 0.25
        if np.count_nonzero(gone):
            st.active[idx[gone]] = False
            self._act = None

    def _record(self, idx: np.ndarray, r: np.ndarray, s: np.ndarray, v: np.ndarray, time: float, record: int) -> None:
        """Log the post-step state; the lateral offset only while some active agent is changing lanes."""
        d = dd = None
        if time < self._lc_end:
            t0, dur, d0, base = self.st.f[[ROW["lc_t0"], ROW["lc_dur"], ROW["lc_d0"], ROW["d_base"]]][:, idx]
            if (time < t0 + dur).any():
                tau = np.clip((time - t0) / dur, 0.0, 1.0)
                d = base + d0 * 0.5 * (1 + np.cos(np.pi * tau))
                dd = -d0 * 0.5 * np.pi / dur * np.sin(np.pi * tau)
        self._log.append((record, idx, r, s, v, d, dd))

    def flush(self) -> None:
        """Scatter the per-step log into the `rec_*` arrays [capacity, steps] (call once after the last step)."""
        st = self.st
        if not self._log:
            return
        cols = np.concatenate([np.full(len(e[1]), e[0]) for e in self._log])
        rows = np.concatenate([e[1] for e in self._log])
        st.rec_valid[rows, cols] = True
        st.rec_route[rows, cols] = np.concatenate([e[2] for e in self._log])
        st.rec_s[rows, cols] = np.concatenate([e[3] for e in self._log])
        st.rec_v[rows, cols] = np.concatenate([e[4] for e in self._log])
        st.rec_d[rows, cols] = st.d_base[rows]
        for record, idx, _, _, _, d, dd in self._log:
            if d is not None:
                st.rec_d[idx, record], st.rec_dd[idx, record] = d, dd
        self._log = []

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

    def _lane_changes(self, c: ActiveVehicles, s: np.ndarray, v: np.ndarray, gap_l: np.ndarray, v_l: np.ndarray,
                      time: float, rng: np.random.Generator) -> bool:
        """Discretionary lane changes (random per style, more behind a slow leader) where the target gap is safe.
        Returns whether any agent changed lanes."""
        st, idx, r, k = self.st, c.idx, c.r, c.k
        v0, t0, dur, rate = st.f[[ROW["v0"], ROW["lc_t0"], ROW["lc_dur"], ROW["lc_rate"]]][:, idx]
        busy = time < t0 + dur + 2.0
        slow_leader = (gap_l < 35) & (v_l < v0 - 3.0)
        want = (st.kind[idx] == AgentType.VEHICLE) & ~busy & (v > 6.0) & (
            rng.random(len(idx)) < 5 * STEP_SECONDS * (rate + 0.25 * slow_leader))  # checked every 5th step
        want &= (s < c.cs - 35.0) | (s > c.cs + 30.0 + self._conf_end)
        changed = False
        for m in np.flatnonzero(want):
            for side in rng.permutation(2):
                r2 = self.lc_targets[r[m], k[m], side]
                if r2 >= 0 and self._try_change(int(idx[m]), int(r2), time):
                    changed = True
                    break
        return changed

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
        others = self.active()
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
        self._lc_end = max(self._lc_end, float(time + dur))
        self._ghost_end = max(self._ghost_end, float(st.ghost_until[i]))
        return True
