"""One synthetic WOMD-format scene: road network + simulated traffic + safety pass + the Scene arrays."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from drivetune.scene import (CURRENT_TIME_INDEX, NUM_STEPS, STEP_SECONDS, AgentType, LaneType, MapFeatureType, Scene,
                             SignalState, wrap_angle)
from drivetune.synth import safety
from drivetune.synth.pedestrians import PedSim
from drivetune.synth.population import Populator, lane_change_targets
from drivetune.synth.roads import Network, build_network
from drivetune.synth.tables import MPH, Tables, build_tables
from drivetune.synth.traffic import VehicleSim

BURN_IN = 20  # unlogged warm-up steps so queues and gaps settle


@dataclass
class Tracks:
    """Logged agents in the local frame (rows = agents)."""

    xy: np.ndarray  # [A, T, 2]
    heading: np.ndarray  # [A, T]
    vel: np.ndarray  # [A, T, 2]
    valid: np.ndarray  # [A, T]
    size: np.ndarray  # [A, 3] length, width, height
    types: np.ndarray  # [A]
    turn: np.ndarray  # [A] 0 straight / none, 1 right, 2 left
    interacting: np.ndarray  # [A] bool: yielded or followed closely

    def take(self, keep: np.ndarray) -> "Tracks":
        return Tracks(*(getattr(self, f)[keep] for f in self.__dataclass_fields__))


def _signal_table(net: Network, tb: Tables) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Signalled connector lane indices [L], per-step states [T, L] (SignalState) and red flags [T, L]."""
    lanes = np.array([i for i, ln in enumerate(net.lanes) if ln.controlled == "signal"], np.int64)
    if tb.signal is None or len(lanes) == 0:
        return np.zeros(0, np.int64), np.zeros((NUM_STEPS, 0), np.int8), np.zeros((NUM_STEPS, 0), bool)
    groups = np.array([net.lanes[i].group for i in lanes])
    times = (BURN_IN + np.arange(NUM_STEPS) + 1) * STEP_SECONDS  # the time each logged step ends
    light = tb.signal.states(groups[None, :], times[:, None])
    lut = np.array([SignalState.STOP, SignalState.CAUTION, SignalState.GO], np.int8)
    return lanes, lut[light], light == 0


def _simulate(net: Network, tb: Tables, rng: np.random.Generator) -> tuple[Tracks, int]:
    limits = np.array([net.lanes[r[0]].speed_mph * MPH for r in net.routes])
    veh = VehicleSim(tb, lane_change_targets(net), limits, capacity=160, num_steps=NUM_STEPS)
    peds = PedSim(tb, 48, NUM_STEPS)
    pop = Populator(net, tb, veh, peds, rng)
    sdc = pop.place_sdc()
    pop.initial()
    parked = pop.parked()
    n_cw = len(net.crosswalks)
    for tau in range(BURN_IN + NUM_STEPS):
        if tau % 2 == 0:  # pedestrians decide at 5 Hz and move at 10 Hz
            busy, waiting = peds.prepare(n_cw)
            threat = veh.threats() if waiting else np.zeros(max(n_cw, 1), bool)
        veh.step(tau, tau * STEP_SECONDS, busy, tau - BURN_IN, rng)
        if tau % 2 == 0:
            peds.step(tau * STEP_SECONDS, threat, tau - BURN_IN)
        else:
            peds.coast(tau - BURN_IN)
        pop.spawn()
    veh.flush()
    peds.flush()
    st = veh.st
    rows_v = np.flatnonzero(st.rec_valid[: st.n].any(1))
    rows_p = np.flatnonzero(peds.rec_valid[: peds.n].any(1))
    n_park = len(parked)
    T = NUM_STEPS
    park_xy = np.array([p[0] for p in parked]).reshape(n_park, 1, 2).repeat(T, 1)
    park_h = np.array([p[1] for p in parked]).reshape(n_park, 1).repeat(T, 1)
    v_xy, v_head, v_vel = veh.poses(rows_v)
    p_xy, p_head, p_vel = peds.poses(rows_p)
    tracks = Tracks(
        xy=np.concatenate([v_xy, p_xy, park_xy]),
        heading=np.concatenate([v_head, p_head, park_h]),
        vel=np.concatenate([v_vel, p_vel, np.zeros((n_park, T, 2))]),
        valid=np.concatenate([st.rec_valid[rows_v], peds.rec_valid[rows_p], np.ones((n_park, T), bool)]),
        size=np.concatenate([np.stack([st.length, st.width, st.height], 1)[rows_v],
                             np.stack([peds.length, peds.width, peds.height], 1)[rows_p],
                             np.array([p[2] for p in parked]).reshape(n_park, 3)]),
        types=np.concatenate([
            np.where(st.kind[rows_v] == AgentType.CYCLIST, AgentType.CYCLIST, AgentType.VEHICLE),
            np.full(len(rows_p), AgentType.PEDESTRIAN), np.full(n_park, AgentType.VEHICLE)]).astype(np.int64),
        turn=np.concatenate([tb.route_turn[st.route[rows_v]], np.zeros(len(rows_p) + n_park, np.int64)]),
        interacting=np.concatenate([(st.yielded[rows_v] + st.close_leader[rows_v]) > 0,
                                    np.zeros(len(rows_p) + n_park, bool)]),
    )
    sdc_rows = np.flatnonzero(rows_v == sdc)
    return tracks, int(sdc_rows[0]) if len(sdc_rows) else -1


def _enforce_safety(net: Network, tracks: Tracks, sdc: int, stop_xy: np.ndarray, stop_dir: np.ndarray,
                    red: np.ndarray) -> np.ndarray:
    """bool [A] agents to keep: drops agents that overlap, leave the road, run a red light or move unphysically."""
    A = len(tracks.types)
    bad = np.zeros(A, bool)
    on_road_type = tracks.types != AgentType.PEDESTRIAN
    vr = np.flatnonzero(on_road_type)
    if len(vr):
        c = safety.corners_of(tracks.xy[vr], tracks.heading[vr], tracks.size[vr, 0], tracks.size[vr, 1])
        v = tracks.valid[vr]
        ok = np.ones(c.shape[:2], bool)
        ok[v] = safety.on_road(net, c[v].reshape(-1, 2)).reshape(-1, 4).all(1)
        bad[vr] |= ~ok.all(1)
        bad[vr] |= safety.red_light_crossings(tracks.xy[vr], v, stop_xy, stop_dir, red)
    bad |= safety.kinematic_violations(tracks.xy, tracks.heading, tracks.valid, on_road_type)
    keep = ~bad
    rows = np.flatnonzero(keep)
    pairs = safety.overlap_pairs(tracks.xy[rows], tracks.heading[rows], tracks.size[rows, 0], tracks.size[rows, 1],
                                 tracks.valid[rows])
    protect = int(np.flatnonzero(rows == sdc)[0]) if sdc in rows else -1
    for d in safety.drop_overlaps(pairs, protect):
        keep[rows[d]] = False
    return keep


def _choose_sdc(tracks: Tracks, preferred: int) -> int:
    full = tracks.valid.all(1) & (tracks.types == AgentType.VEHICLE)
    if 0 <= preferred < len(full) and full[preferred]:
        return preferred
    cur = tracks.valid[:, CURRENT_TIME_INDEX] & (tracks.types == AgentType.VEHICLE)
    cand = np.flatnonzero(full) if full.any() else np.flatnonzero(cur)
    if len(cand) == 0:
        cand = np.flatnonzero(tracks.valid[:, CURRENT_TIME_INDEX])
    d = np.linalg.norm(tracks.xy[cand, CURRENT_TIME_INDEX], axis=1)
    moved = np.linalg.norm(tracks.xy[cand, -1] - tracks.xy[cand, 0], axis=1) > 5.0
    score = d - 50.0 * tracks.valid[cand].mean(1) - 100.0 * moved  # prefer moving, fully logged, central
    return int(cand[np.argmin(score)])


def _choose_predictions(tracks: Tracks, sdc: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    c = CURRENT_TIME_INDEX
    fut = tracks.valid[:, c + 1 :].mean(1)
    moved = np.linalg.norm(np.ptp(np.where(tracks.valid[..., None], tracks.xy, tracks.xy[:, c : c + 1]), axis=1), axis=1)
    cand = np.flatnonzero(tracks.valid[:, c] & (fut >= 0.5) & (moved > 1.0))
    cand = cand[cand != sdc]
    if len(cand) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int8)
    near = np.linalg.norm(tracks.xy[cand, c] - tracks.xy[sdc, c], axis=1) < 30.0
    score = (2.0 * (tracks.turn[cand] > 0) + 1.5 * (tracks.types[cand] != AgentType.VEHICLE) + tracks.interacting[cand]
             + near + 0.8 * rng.random(len(cand)))
    k = min(len(cand), int(rng.integers(2, 9)))
    pick = cand[np.argsort(-score, kind="stable")[:k]]
    diff = np.where((tracks.turn[pick] > 0) | tracks.interacting[pick], 2, 1).astype(np.int8)
    return pick.astype(np.int64), diff


def _map_arrays(net: Network, id_base: int, transform) -> dict[str, np.ndarray]:
    polys, types, subtypes, speed = [], [], [], []
    for ln in net.lanes:
        polys.append(ln.pts), types.append(MapFeatureType.LANE), subtypes.append(LaneType.SURFACE_STREET)
        speed.append(ln.speed_mph)
    for pts, t in net.lines:
        polys.append(pts), types.append(MapFeatureType.ROAD_LINE), subtypes.append(t), speed.append(0.0)
    for pts, t in net.edges:
        polys.append(pts), types.append(MapFeatureType.ROAD_EDGE), subtypes.append(t), speed.append(0.0)
    for pos, _ in net.stop_signs:
        polys.append(pos[None]), types.append(MapFeatureType.STOP_SIGN), subtypes.append(0), speed.append(0.0)
    for quad in net.crosswalks:
        polys.append(quad), types.append(MapFeatureType.CROSSWALK), subtypes.append(0), speed.append(0.0)
    F = len(polys)
    ids = id_base + np.arange(F, dtype=np.int64)
    lane_ids = ids[: len(net.lanes)]
    counts = [len(p) for p in polys]
    local = np.concatenate(polys)
    pts = np.concatenate([transform(local), net.z(local)[:, None]], 1)

    def ragged(lists: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        full = lists + [[] for _ in range(F - len(lists))]
        offs = np.concatenate([[0], np.cumsum([len(x) for x in full])]).astype(np.int64)
        flat = np.array([int(lane_ids[i]) for x in full for i in x], np.int64)
        return offs, flat

    entry = ragged([ln.entries for ln in net.lanes])
    exit_ = ragged([ln.exits for ln in net.lanes])
    n_before_stop = len(net.lanes) + len(net.lines) + len(net.edges)
    stop = ragged([[] for _ in range(n_before_stop)] + [lanes for _, lanes in net.stop_signs])
    return dict(map_ids=ids, map_types=np.array(types, np.int8), map_subtypes=np.array(subtypes, np.int8),
                map_offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), map_points=pts,
                lane_speed_limit_mph=np.array(speed, np.float32), lane_interpolating=np.zeros(F, bool),
                lane_entry_offsets=entry[0], lane_entry_ids=entry[1], lane_exit_offsets=exit_[0],
                lane_exit_ids=exit_[1], stop_sign_lane_offsets=stop[0], stop_sign_lane_ids=stop[1])


def generate_scene(seed: int | np.random.SeedSequence) -> Scene:
    """Build one deterministic synthetic scene from a seed."""
    rng = np.random.default_rng(seed)
    scenario_id = format(int(rng.integers(0, 2**63)), "016x")
    net = build_network(rng)
    tb = build_tables(net, rng)
    tracks, sdc = _simulate(net, tb, rng)
    sig_lanes, sig_states, red = _signal_table(net, tb)
    stop_xy = np.array([net.lanes[i].pts[0] for i in sig_lanes]).reshape(-1, 2)
    d = np.array([net.lanes[i].pts[1] - net.lanes[i].pts[0] for i in sig_lanes]).reshape(-1, 2)
    stop_dir = d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-9)
    keep = _enforce_safety(net, tracks, sdc, stop_xy, stop_dir, red)
    sdc = int(np.cumsum(keep)[sdc] - 1) if sdc >= 0 and keep[sdc] else -1
    tracks = tracks.take(keep)
    sdc = _choose_sdc(tracks, sdc)
    ttp, difficulty = _choose_predictions(tracks, sdc, rng)

    # local frame -> a random global pose, WOMD-like magnitudes
    phi = float(rng.uniform(-np.pi, np.pi))
    rot = np.array([[np.cos(phi), -np.sin(phi)], [np.sin(phi), np.cos(phi)]])
    offset = rng.uniform(-4000.0, 4000.0, 2)
    transform = lambda p: p @ rot.T + offset  # noqa: E731
    A, T = len(tracks.types), NUM_STEPS
    order = rng.permutation(A)
    inv = np.argsort(order)
    states = np.zeros((A, T, 9))
    states[..., 0:2] = transform(tracks.xy)
    states[..., 2] = net.z(tracks.xy) + tracks.size[:, None, 2] / 2
    states[..., 3:6] = tracks.size[:, None, :]
    states[..., 6] = wrap_angle(tracks.heading + phi)
    states[..., 7:9] = tracks.vel @ rot.T
    states[~tracks.valid] = 0.0
    track_ids = np.sort(rng.choice(np.arange(100, 100 + 20 * max(A, 1)), A, replace=False)).astype(np.int64)
    states, valid = states[order], tracks.valid[order]
    types = tracks.types[order].astype(np.int8)
    map_arrays = _map_arrays(net, int(rng.integers(1, 400)), transform)
    sig_ids = map_arrays["map_ids"][sig_lanes]
    stop_pts = np.zeros((T, len(sig_lanes), 3))
    if len(sig_lanes):
        stop_pts[:] = np.concatenate([transform(stop_xy), net.z(stop_xy)[:, None]], 1)[None]
    interesting = []
    if len(ttp) and tracks.interacting[ttp[0]]:
        interesting = [int(track_ids[inv[ttp[0]]]), int(track_ids[inv[sdc]])]
    scene = Scene(
        scenario_id=scenario_id, timestamps=np.arange(T) * STEP_SECONDS, current_time_index=CURRENT_TIME_INDEX,
        track_ids=track_ids, track_types=types, states=states, valid=valid, sdc_index=int(inv[sdc]),
        tracks_to_predict=inv[ttp].astype(np.int64), predict_difficulty=difficulty,
        objects_of_interest=np.array(interesting, np.int64),
        signal_lane_ids=sig_ids.astype(np.int64), signal_states=sig_states, signal_stop_points=stop_pts,
        **map_arrays,
    )
    return scene.validate()
