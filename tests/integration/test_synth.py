"""Synthetic world: determinism, agent counts, safety/physics of the logged traffic, signals, TFRecord round trip."""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import numpy as np
import pytest

from drivetune.commands import synth as synth_cmd
from drivetune.errors import InputError
from drivetune.scene import HEADING, LENGTH, RED_SIGNAL_STATES, WIDTH, X, Y, AgentType, MapFeatureType, SignalState
from drivetune.synth.files import generate
from drivetune.synth.geometry import box_corners
from drivetune.womd import read_scenes, write_scenes

sys.path.insert(0, str(Path(__file__).parents[1]))
from edge_distance import signed_edge_distance  # noqa: E402
from motion_checks import kinematic_outliers, overlapping_boxes  # noqa: E402

MAX_ACCEL, MAX_YAW_RATE = 8.0, 1.5  # the safety pass's promise (README): |acceleration| m/s², |yaw rate| rad/s

NUM_SCENES = 200


@pytest.fixture(scope="module")
def scenes():
    return [generate(11, i) for i in range(NUM_SCENES)]


def _edges(scene):
    return [scene.polyline(f)[:, :2] for f in scene.features_of_type(MapFeatureType.ROAD_EDGE)]


def test_same_seed_same_scene_and_distinct_seeds_differ():
    a, b = generate(5, 3), generate(5, 3)
    assert a.equals(b)
    assert not a.equals(generate(5, 4))
    assert a.scenario_id != generate(6, 3).scenario_id


def test_cli_is_byte_identical_across_worker_counts(tmp_path):
    outs = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        args = argparse.Namespace(num_scenes=5, out=str(out), seed=9, workers=workers, scenes_per_file=2,
                                  no_progress=True)
        assert synth_cmd.run(args) == 0
        outs.append({p.name: p.read_bytes() for p in sorted(out.iterdir())})
    assert len(outs[0]) == 3 and outs[0] == outs[1]
    # the files hold exactly the in-memory scenes
    first = sorted((tmp_path / "w1").iterdir())[0]
    back = list(read_scenes(first))
    assert [s.scenario_id for s in back] == [generate(9, i).scenario_id for i in (0, 1)]


def test_cli_rejects_bad_arguments(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    bad = [dict(num_scenes=0, out=str(tmp_path / "o")), dict(num_scenes=2, out=str(f)),
           dict(num_scenes=2, out=str(tmp_path / "o"), workers=0)]
    for kw in bad:
        args = argparse.Namespace(**{"seed": 0, "workers": 1, "scenes_per_file": 50, "no_progress": True, **kw})
        with pytest.raises(InputError, match="--num-scenes must be positive|not a directory|must be positive"):
            synth_cmd.run(args)


def test_agent_counts_and_prediction_targets(scenes):
    sim = np.array([s.sim_agent_mask().sum() for s in scenes])
    assert sim.mean() >= 8, sim.mean()
    c = scenes[0].current_time_index
    kinds = set()
    for s in scenes:
        assert s.valid[s.sdc_index].all(), "the SDC is logged on every step"
        assert s.track_types[s.sdc_index] == AgentType.VEHICLE
        assert len(s.tracks_to_predict) >= 1
        assert s.valid[s.tracks_to_predict, c].all()
        assert set(s.evaluated_agent_ids()) <= set(s.sim_agent_ids())
        kinds |= set(int(t) for t in s.track_types)
        # agents enter and leave at the map boundary: validity masks are not all full
    assert {int(AgentType.VEHICLE), int(AgentType.PEDESTRIAN), int(AgentType.CYCLIST)} <= kinds
    partial = sum(int((~s.valid.all(1)).sum()) for s in scenes)
    assert partial > NUM_SCENES, "expected agents entering/leaving the scene"


def _overlaps(s):
    return overlapping_boxes(s.states, s.valid, X, Y, HEADING, LENGTH, WIDTH)


def test_no_overlapping_boxes(scenes):
    """Every step of 50 scenes, box intersection by polygon clipping (tests/motion_checks.py)."""
    for s in scenes[:50]:
        hits = _overlaps(s)
        assert hits == [], f"{s.scenario_id}: overlapping boxes (i, j, step) {hits[:5]}"
    # the checker is not vacuous: put an agent onto its neighbour's box at the current step
    s = copy.deepcopy(scenes[0])
    c = s.current_time_index
    a, b = np.flatnonzero(s.valid[:, c])[:2]
    s.states[b, c, [X, Y, HEADING]] = s.states[a, c, [X, Y, HEADING]] + [0.5, 0.2, 0.3]
    assert (min(a, b), max(a, b), c) in _overlaps(s)


def test_vehicles_stay_on_the_drivable_area(scenes):
    """WOSAC sign convention (road on the left of road edges): every vehicle/cyclist box corner is on the road.
    Every 10th step of all scenes, every step of the first 5."""
    for n, s in enumerate(scenes):
        steps = np.arange(s.num_steps) if n < 5 else np.arange(0, s.num_steps, 10)
        rows = np.flatnonzero(s.track_types != AgentType.PEDESTRIAN)
        st = s.states[rows][:, steps]
        v = s.valid[rows][:, steps]
        corners = box_corners(st[..., X:Y + 1], st[..., HEADING], st[..., LENGTH], st[..., WIDTH])[v]
        d = signed_edge_distance(corners.reshape(-1, 2), _edges(s))
        assert d.max() <= 0.0, f"{s.scenario_id}: a corner is {d.max():.2f} m off the road"


def test_lanes_lie_inside_road_edges(scenes):
    for s in scenes[:20]:
        lanes = s.features_of_type(MapFeatureType.LANE)
        pts = np.concatenate([s.polyline(f)[:, :2] for f in lanes])
        assert signed_edge_distance(pts, _edges(s)).max() < 0.0


def _red_light_violations(s) -> tuple[int, int]:
    """WOSAC semantics: nearest lane is a signalled lane in STOP / ARROW_STOP and the centre crosses its stop point.
    Returns (violations, stop-line crossings examined)."""
    if len(s.signal_lane_ids) == 0:
        return 0, 0
    lanes = s.features_of_type(MapFeatureType.LANE)
    segs, owner = [], []
    for f in lanes:
        p = s.polyline(f)[:, :2]
        segs.append(np.stack([p[:-1], p[1:]], 1))
        owner += [int(s.map_ids[f])] * (len(p) - 1)
    segs, owner = np.concatenate(segs), np.array(owner)
    rows = np.flatnonzero(s.track_types == AgentType.VEHICLE)
    xy, valid = s.states[rows, :, X:Y + 1], s.valid[rows]
    stop = s.signal_stop_points[0, :, :2]
    rows_of = {int(i): f for f, i in enumerate(s.map_ids)}
    first = np.stack([np.diff(s.polyline(rows_of[int(i)])[:2, :2], axis=0)[0] for i in s.signal_lane_ids])
    along = ((xy[:, :, None] - stop[None, None]) * first[None, None]).sum(-1)  # [A, T, L]
    # prefilter (a superset of the official condition): the centre passes some stop line, near its stop point
    crossing = (along[:, :-1] < 0) & (along[:, 1:] > 0)
    crossing &= (np.linalg.norm(xy[:, 1:, None] - stop[None, None], axis=-1) < 15.0)
    a_idx, t_idx = np.nonzero(crossing.any(-1) & valid[:, 1:] & valid[:, :-1])
    t_idx = t_idx + 1
    if len(a_idx) == 0:
        return 0, 0
    q = xy[a_idx, t_idx]
    ab = segs[:, 1] - segs[:, 0]
    ap = q[:, None] - segs[None, :, 0]
    u = np.clip((ap * ab).sum(-1) / (ab * ab).sum(-1), 0, 1)
    lane_t = owner[np.linalg.norm(ap - ab * u[..., None], axis=-1).argmin(1)]  # nearest lane at step t
    red = np.isin(s.signal_states, [int(x) for x in RED_SIGNAL_STATES])
    count = 0
    for l, lane_id in enumerate(s.signal_lane_ids):
        on = (lane_t == lane_id) & red[t_idx, l]
        if not on.any():
            continue
        p0, p1 = s.polyline(rows_of[int(lane_id)])[:2, :2]
        d = p1 - p0
        prev_rel = ((xy[a_idx[on], t_idx[on] - 1] - p0) @ d) / (d @ d)
        cur_rel = ((xy[a_idx[on], t_idx[on]] - p0) @ d) / (d @ d)
        stop_rel = ((s.signal_stop_points[t_idx[on], l, :2] - p0) * d).sum(-1) / (d @ d)
        count += int(((prev_rel < stop_rel) & (cur_rel > stop_rel)).sum())
    return count, len(a_idx)


def test_no_red_light_running(scenes):
    signalled = [s for s in scenes if len(s.signal_lane_ids)]
    assert len(signalled) >= 20
    examined = 0
    for s in signalled:
        violations, crossings = _red_light_violations(s)
        assert violations == 0, s.scenario_id
        examined += crossings
    assert examined > 50, "vehicles should cross stop lines (on green) in signalled scenes"
    # the checker is not vacuous: with every light forced to STOP, the logged green crossings become violations
    forced = copy.deepcopy(next(s for s in signalled if _red_light_violations(s)[1] > 0))
    forced.signal_states[:] = int(SignalState.STOP)
    assert _red_light_violations(forced)[0] > 0


def _kinematic_outliers(s):
    return kinematic_outliers(s.states[..., X:Y + 1], s.states[..., HEADING], s.valid,
                              s.track_types != AgentType.PEDESTRIAN, MAX_ACCEL, MAX_YAW_RATE)


def test_physical_accelerations_and_yaw_rates(scenes):
    for s in scenes:
        bad = _kinematic_outliers(s)
        assert not bad, f"{s.scenario_id}: (track, quantity, value) {bad[:5]}"
    # the checker is not vacuous: a 1 m jump and a 0.3 rad heading flick on one vehicle are found
    s = copy.deepcopy(scenes[0])
    v = int(s.sdc_index)
    s.states[v, 40:, X] += 1.0
    s.states[v, 60, HEADING] += 0.3
    assert {(v, "accel"), (v, "yaw rate")} <= {(a, q) for a, q, _ in _kinematic_outliers(s)}


def test_signal_phases_never_give_conflicting_approaches_green(scenes):
    green = {int(SignalState.GO), int(SignalState.CAUTION)}
    seen_states = set()
    for s in [s for s in scenes if len(s.signal_lane_ids)]:
        rows = {int(i): f for f, i in enumerate(s.map_ids)}
        d = np.array([np.diff(s.polyline(rows[int(i)])[:2, :2], axis=0)[0] for i in s.signal_lane_ids])
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        for t in range(s.num_steps):
            on = np.array([int(x) in green for x in s.signal_states[t]])
            seen_states |= set(int(x) for x in s.signal_states[t])
            dd = d[on]
            cross = np.abs(dd[:, None, 0] * dd[None, :, 1] - dd[:, None, 1] * dd[None, :, 0])
            assert (cross < np.sin(np.radians(35))).all(), f"{s.scenario_id} step {t}: crossing approaches green"
        assert np.allclose(s.signal_stop_points[:, :, :2], np.stack([s.polyline(rows[int(i)])[0, :2]
                                                                      for i in s.signal_lane_ids])[None])
    assert {int(SignalState.GO), int(SignalState.CAUTION), int(SignalState.STOP)} <= seen_states


def test_tfrecord_round_trip_keeps_every_field(scenes, tmp_path):
    subset = [s for s in scenes if len(s.signal_lane_ids)][:3] + [s for s in scenes if len(s.stop_sign_lane_ids)][:2]
    path = tmp_path / "synth.tfrecord"
    write_scenes(path, subset)
    back = list(read_scenes(path))
    assert len(back) == len(subset)
    for a, b in zip(subset, back):
        assert a.scenario_id == b.scenario_id
        np.testing.assert_array_equal(a.signal_states, b.signal_states)
        np.testing.assert_array_equal(a.valid, b.valid)
        np.testing.assert_allclose(a.states[a.valid], b.states[b.valid], atol=1e-3)
        np.testing.assert_array_equal(a.lane_exit_ids, b.lane_exit_ids)
        np.testing.assert_array_equal(a.stop_sign_lane_ids, b.stop_sign_lane_ids)
        assert a.map_feature_counts() == b.map_feature_counts()
