"""Pedestrians on sidewalks, corner links and crosswalks; they cross only on walk phases with no vehicle threat."""

from __future__ import annotations

import numpy as np

from drivetune.synth.tables import Tables

DT = 0.1
INF = 1e9


class PedSim:
    """Pedestrians on sidewalk / crossing paths: simple speed control with following and curb waits."""

    def __init__(self, tables: Tables, capacity: int, num_steps: int):
        self.tb = tables
        self.pt = tables.peds
        self.capacity = capacity
        self.n = 0
        z = lambda: np.zeros(capacity)  # noqa: E731
        self.active = np.zeros(capacity, bool)
        self.route = np.zeros(capacity, np.int64)
        self.s, self.v, self.v0, self.size, self.length, self.width, self.height = (z() for _ in range(7))
        self.rec_s = np.zeros((capacity, num_steps))
        self.rec_v = np.zeros((capacity, num_steps))
        self.rec_valid = np.zeros((capacity, num_steps), bool)
        # pieces that cross a crosswalk, and the crosswalk each path's next piece crosses
        self.piece_cw = tables.piece_cw
        self._ctx: tuple[np.ndarray, ...] | None = None

    def add(self, route: int, s: float, v0: float, size: tuple[float, float, float]) -> int:
        """Activate a pedestrian on path `route` at arc length s with desired speed v0 (0: standing)."""
        if self.n >= self.capacity:
            return -1
        i = self.n
        self.n += 1
        self.active[i], self.route[i], self.s[i], self.v[i], self.v0[i] = True, route, s, min(v0, 1.0), v0
        self.length[i], self.width[i], self.height[i] = size
        self.size[i] = float(np.hypot(size[0], size[1]))
        return i

    def prepare(self, num_crosswalks: int) -> tuple[np.ndarray, bool]:
        """Per-step pedestrian context: (crosswalks with a pedestrian on a crossing piece [Q], whether some
        pedestrian waits to cross, i.e. vehicle threats are needed). Caches the piece lookup for `step`."""
        busy = np.zeros(max(num_crosswalks, 1), bool)
        idx = np.flatnonzero(self.active)
        self._ctx = None
        if len(idx) == 0:
            return busy, False
        r = self.route[idx]
        k, piece, sl = self.pt.piece_at(r, self.s[idx])
        q = self.piece_cw[piece]
        busy[q[q >= 0]] = True
        P = self.pt.pieces.shape[1]
        nxt = self.pt.pieces[r, np.minimum(k + 1, P - 1)]
        q_next = np.where((k + 1 < P) & (nxt >= 0), self.piece_cw[np.maximum(nxt, 0)], -1)
        self._ctx = (idx, k, piece, sl, q_next)
        return busy, bool((q_next >= 0).any())

    def poses(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """xy [n, T, 2], heading [n, T] and velocity [n, T, 2] of the logged rows (zeros where invalid)."""
        valid = self.rec_valid[rows]
        xy, heading, vel = np.zeros(valid.shape + (2,)), np.zeros(valid.shape), np.zeros(valid.shape + (2,))
        r = np.broadcast_to(self.route[rows][:, None], valid.shape)[valid]
        p, tan, _ = self.pt.lookup(r, self.rec_s[rows][valid])
        xy[valid] = p
        heading[valid] = np.arctan2(tan[:, 1], tan[:, 0])
        vel[valid] = tan * self.rec_v[rows][valid][:, None]
        return xy, heading, vel

    def step(self, time: float, threat: np.ndarray, record: int) -> None:
        """A decision step (after `prepare`): follow, wait at the curb unless walking is allowed, move."""
        if self._ctx is None:
            return
        idx, k, piece, sl, q = self._ctx
        pt, tb = self.pt, self.tb
        n = len(idx)
        r, s, v = self.route[idx], self.s[idx], self.v[idx]
        pieces, starts = pt.pieces[r], pt.starts[r]
        P = pieces.shape[1]
        ok = (np.arange(P)[None] >= k[:, None]) & (pieces >= 0)
        gapc = starts[:, :, None] + sl[None, None, :] - s[:, None, None]
        m = ok[:, :, None] & (pieces[:, :, None] == piece[None, None, :]) & (gapc > 0) & ~np.eye(n, dtype=bool)[:, None]
        half = (self.size[idx][:, None] + self.size[idx][None, :]) / 2
        gap = np.where(m, gapc - half[:, None, :], INF).min(axis=(1, 2))
        # wait at the curb unless the next piece's crosswalk may be entered
        nxt = np.minimum(k + 1, P - 1)
        if (q >= 0).any():
            walk = np.ones(len(threat), bool)
            if tb.signal is not None:
                walk = tb.signal.states(tb.cw_group, time) == 0  # the crossed approach has red
            allowed = walk[np.maximum(q, 0)] & ~threat[np.maximum(q, 0)]
            hold = (q >= 0) & ~allowed
            wait_gap = starts[np.arange(n), nxt] - s - 0.3
            gap = np.where(hold, np.minimum(gap, wait_gap), gap)
        v_safe = np.sqrt(np.maximum(2 * 1.5 * np.maximum(gap - 0.3 - 0.1 * v, 0), 0))  # 2 steps to the next decision
        v_target = np.minimum(self.v0[idx], v_safe)
        v_new = np.clip(v_target, v - 2.4 * DT, v + 1.6 * DT)  # 1.2 m/s^2 / 0.8 m/s^2 over two steps
        v_new = np.maximum(v_new, 0.0)
        self.s[idx] = s + 0.5 * (v + v_new) * DT
        self.v[idx] = v_new
        self._log_and_leave(idx, record)

    def coast(self, record: int) -> None:
        """A step between decisions: keep speed (pedestrians decide at 5 Hz)."""
        idx = np.flatnonzero(self.active)
        self.s[idx] += self.v[idx] * DT
        self._log_and_leave(idx, record)

    def _log_and_leave(self, idx: np.ndarray, record: int) -> None:
        if record >= 0:
            self.rec_s[idx, record] = self.s[idx]
            self.rec_v[idx, record] = self.v[idx]
            self.rec_valid[idx, record] = True
        gone = self.s[idx] >= self.pt.length[self.route[idx]] - 0.1
        self.active[idx[gone]] = False
