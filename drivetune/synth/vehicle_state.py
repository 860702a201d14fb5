"""Per-agent state of route agents (vehicles, cyclists) and the per-step caches of the active set.

The traffic step is dominated by numpy call overhead at ~40 agents, so per-agent floats live in one [fields,
capacity] matrix (one gather per step), and everything that only changes when an agent enters, leaves or changes
lanes (parameters, route attributes, conflict zones, leader lookups) is gathered once into `ActiveVehicles`.
"""

from __future__ import annotations

import numpy as np

from drivetune.synth.tables import Tables

# float fields, in matrix row order: the first six change every step, `ActiveVehicles` gathers length .. stop_wait
FLOATS = ("s", "v", "yellow_go", "yellow_seen", "stop_done", "stop_time", "length", "v0", "lat_scale", "accel",
          "decel", "headway", "min_gap", "gap_accept", "yellow_thr", "stop_wait", "ghost_shift", "ghost_until",
          "d_base", "lc_d0", "lc_t0", "lc_dur", "width", "height", "lc_rate", "style", "yielded", "close_leader")
ROW = {name: i for i, name in enumerate(FLOATS)}


class VehicleState:
    """Struct of arrays for route agents (capacity fixed up front); `rec_*` hold the logged steps after `flush`.

    Every name in FLOATS is a row view of `f`, so `st.v[i] = x` writes into the matrix.
    """

    def __init__(self, capacity: int, num_steps: int):
        self.capacity = capacity
        self.n = 0
        self.active = np.zeros(capacity, bool)
        self.f = np.zeros((len(FLOATS), capacity))
        for name, row in zip(FLOATS, self.f):
            setattr(self, name, row)
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


class ActiveVehicles:
    """Per-agent quantities that only change when an agent enters, leaves or changes lanes (slot order).

    route_f / route_i: per-route floats (stop line, length) and ints (control, turn, signal group, connector).
    """

    def __init__(self, st: VehicleState, tb: Tables, route_f: np.ndarray, route_i: np.ndarray, has_cw: bool):
        rt = tb.routes
        self.idx = idx = np.flatnonzero(st.active)
        n = len(idx)
        self.ar = np.arange(n)
        (self.L, self.v0, self.lat_scale, self.a, b, self.T, self.s0, self.gap_accept, self.yellow_thr,
         self.stop_wait) = st.f[ROW["length"]:ROW["stop_wait"] + 1, idx]
        self.half = self.L / 2
        self.root = 2 * np.sqrt(self.a * b)
        self.jam = np.stack([self.s0, np.ones(n)])  # IDM jam gap and time headway: leader / stop point rows
        self.headways = np.stack([self.T, 0.5 * self.T])
        self.r = r = st.route[idx]
        self.r_pieces = rt.pieces[r]
        self.cs, self.length = route_f[:, r]
        ctrl, turn, group, conn = route_i[:, r]
        self.group = group
        self.is_sig, self.is_stop = ctrl == 1, ctrl == 2
        self.rank0 = np.where(turn == 2, 2.0, 1.0)
        self.tie = idx * 1e-6
        self.starts = np.concatenate([rt.starts[r], np.full((n, 1), np.inf)], 1)  # +inf: no next piece
        self.half_sum = (self.L[:, None] + self.L[None, :]) / 2
        self.not_self = self.ar[:, None] != self.ar[None, :]
        self.vmax = rt.vmax
        has = conn >= 0
        self.conflicts = np.count_nonzero(has) > 1
        if self.conflicts:
            ci = np.maximum(conn, 0)
            cm, z0, z1 = tb.conf[:, ci[:, None], ci[None, :]]
            self.cm = cm > 0
            if not has.all():
                self.cm &= has[:, None] & has[None, :]
            z0 = z0 + self.cs[:, None]
            z1 = z1 + self.cs[:, None]
            self.z0m = z0 - 0.5
            # transposed copies: [i, j] holds agent j's zone w.r.t. agent i (what i looks at when it yields to j)
            self.z0_t, self.z0m_t, self.z1p_t = z0.T.copy(), self.z0m.T.copy(), (z1 + 0.5).T.copy()
        if has_cw:  # crosswalks along each route: index (-1 none), start, end + 0.5
            self.cw, self.cw_s0, self.cw_s1 = tb.route_cw[r], tb.route_cw_s0[r], tb.route_cw_s1[r] + 0.5
            self.cw_on = self.cw >= 0
        self.next_start = None  # piece-level cache, filled by `pieces`

    def pieces(self, s: np.ndarray, lead: np.ndarray) -> None:
        """Piece index, lane and piece start of every agent at arc lengths s, and the leader lookup for them."""
        k = np.maximum((s[:, None] >= self.starts).sum(1) - 1, 0)
        self.k = k
        self.lane = lane = self.r_pieces[self.ar, k]
        self.cur = self.starts[self.ar, k]
        self.next_start = self.starts[self.ar, k + 1]
        self.off, self.lim = lead[:, self.r[:, None], lane[None, :]]
        self.lead_mask = (self.off >= self.cur[:, None]) & self.not_self
