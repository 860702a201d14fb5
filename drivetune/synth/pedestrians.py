"""Pedestrians on sidewalks, corner links and crosswalks; they cross only on walk phases with no vehicle threat."""

from __future__ import annotations

import numpy as np

from drivetune.scene import STEP_SECONDS

from drivetune.synth.tables import Tables

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
        self._ctx: np.ndarray | None = None  # arc lengths at the last `prepare`
        self._act: _Active | None = None  # cached until someone enters or leaves
        self._log: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []

    def add(self, route: int, s: float, v0: float, size: tuple[float, float, float]) -> int:
        """Activate a pedestrian on path `route` at arc length s with desired speed v0 (0: standing)."""
        if self.n >= self.capacity:
            return -1
        i = self.n
        self.n += 1
        self.active[i], self.route[i], self.s[i], self.v[i], self.v0[i] = True, route, s, min(v0, 1.0), v0
        self.length[i], self.width[i], self.height[i] = size
        self.size[i] = float(np.hypot(size[0], size[1]))
        self._act = None
        return i

    def _active(self) -> "_Active":
        if self._act is None:
            self._act = _Active(self)
        return self._act

    def prepare(self, num_crosswalks: int) -> tuple[np.ndarray, bool]:
        """Per-step pedestrian context: (crosswalks with a pedestrian on a crossing piece [Q], whether some
        pedestrian waits to cross, i.e. vehicle threats are needed). Caches the piece lookup for `step`."""
        busy = np.zeros(max(num_crosswalks, 1), bool)
        c = self._active()
        self._ctx = None
        if len(c.idx) == 0:
            return busy, False
        s = self.s[c.idx]
        if c.next_start is None or np.count_nonzero(s >= c.next_start):
            c.pieces(s, self)
        busy[c.q_busy] = True
        self._ctx = s
        return busy, c.waiting

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
        s, c, tb = self._ctx, self._active(), self.tb
        idx = c.idx
        v = self.v[idx]
        # nearest pedestrian ahead on the own path (each path holds a piece at most once)
        gapc = c.off + (s - c.cur) - s[:, None]
        gap = np.where(c.lead_mask & (gapc > 0), gapc - c.half_sum, INF)
        gap = gap[c.ar, gap.argmin(1)]  # row minima (faster than .min(1) on small rows)
        # wait at the curb unless the next piece's crosswalk may be entered
        if c.waiting:
            q = c.q_next
            walk = np.ones(len(threat), bool)
            if tb.signal is not None:
                walk = tb.signal.states(tb.cw_group, time) == 0  # the crossed approach has red
            qc = np.maximum(q, 0)
            hold = (q >= 0) & ~(walk[qc] & ~threat[qc])
            gap = np.where(hold, np.minimum(gap, c.wait_start - s - 0.3), gap)
        v_safe = np.sqrt(np.maximum(2 * 1.5 * np.maximum(gap - 0.3 - 0.1 * v, 0), 0))  # 2 steps to the next decision
        v_target = np.minimum(c.v0, v_safe)
        # at most 1.2 m/s^2 slower / 0.8 m/s^2 faster, reached over two steps
        v_new = np.minimum(np.maximum(v_target, v - 2.4 * STEP_SECONDS), v + 1.6 * STEP_SECONDS)
        v_new = np.maximum(v_new, 0.0)
        s_new = s + 0.5 * (v + v_new) * STEP_SECONDS
        self.s[idx] = s_new
        self.v[idx] = v_new
        self._log_and_leave(s_new, v_new, record)

    def coast(self, record: int) -> None:
        """A step between decisions: keep speed (pedestrians decide at 5 Hz)."""
        idx = self._active().idx
        v = self.v[idx]
        s_new = self.s[idx] + v * STEP_SECONDS
        self.s[idx] = s_new
        self._log_and_leave(s_new, v, record)

    def _log_and_leave(self, s: np.ndarray, v: np.ndarray, record: int) -> None:
        c = self._active()
        idx = c.idx
        if record >= 0:
            self._log.append((record, idx, s, v))
        gone = s >= c.length - 0.1
        if np.count_nonzero(gone):
            self.active[idx[gone]] = False
            self._act = None

    def flush(self) -> None:
        """Scatter the per-step log into the `rec_*` arrays [capacity, steps] (call once after the last step)."""
        if not self._log:
            return
        rows = np.concatenate([e[1] for e in self._log])
        cols = np.concatenate([np.full(len(e[1]), e[0]) for e in self._log])
        self.rec_valid[rows, cols] = True
        self.rec_s[rows, cols] = np.concatenate([e[2] for e in self._log])
        self.rec_v[rows, cols] = np.concatenate([e[3] for e in self._log])
        self._log = []


class _Active:
    """Active pedestrians (slot order) and what only changes when someone enters, leaves or changes piece."""

    def __init__(self, sim: PedSim):
        self.idx = idx = np.flatnonzero(sim.active)
        n = len(idx)
        self.ar = np.arange(n)
        self.r = r = sim.route[idx]
        self.length = sim.pt.length[r]
        self.v0 = sim.v0[idx]
        size = sim.size[idx]
        self.half_sum = (size[:, None] + size[None, :]) / 2
        self.not_self = self.ar[:, None] != self.ar[None, :]
        self.starts = np.concatenate([sim.pt.starts[r], np.full((n, 1), np.inf)], 1)  # +inf: no next piece
        self.r_pieces = sim.pt.pieces[r]
        self.next_start: np.ndarray | None = None  # piece-level part, filled by `pieces`

    def pieces(self, s: np.ndarray, sim: PedSim) -> None:
        """Piece of every pedestrian at arc lengths s, the crosswalks on and ahead, and the leader lookup."""
        k = np.maximum((s[:, None] >= self.starts).sum(1) - 1, 0)
        P = self.r_pieces.shape[1]
        piece = self.r_pieces[self.ar, k]
        self.cur, self.next_start = self.starts[self.ar, k], self.starts[self.ar, k + 1]
        q = sim.piece_cw[piece]
        self.q_busy = q[q >= 0]
        nxt = np.minimum(k + 1, P - 1)
        nxt_piece = self.r_pieces[self.ar, nxt]
        self.q_next = np.where((k + 1 < P) & (nxt_piece >= 0), sim.piece_cw[np.maximum(nxt_piece, 0)], -1)
        self.waiting = bool((self.q_next >= 0).any())
        self.wait_start = self.starts[self.ar, nxt]
        self.off = sim.tb.ped_lead[self.r[:, None], piece[None, :]]  # where j's piece starts on i's path
        self.lead_mask = (self.off >= self.cur[:, None]) & self.not_self
