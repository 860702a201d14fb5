"""Scenario proto <-> Scene on the two real WOMD samples: the facts of ../shared/data/womd/README.md, round trips."""

from __future__ import annotations

import numpy as np
import pytest
from waymo_open_dataset.protos import scenario_pb2

from drivetune.scene import HEADING, X, Y, Z, AgentType, LaneType, MapFeatureType, SignalState
from drivetune.tfrecord import read_records, write_records
from drivetune.womd import (
    WomdError,
    load_scene,
    read_scenes,
    scene_from_bytes,
    scene_from_proto,
    scene_to_bytes,
    scene_to_proto,
    write_scenes,
)

# Facts from ../shared/data/womd/README.md, per file.
FACTS = {
    "womd_637": dict(
        scenario_id="637f20cafde22ff8", last_time=9.0, tracks=83, sdc=(2406, 82),
        ttp={2320: AgentType.PEDESTRIAN, 1676: AgentType.VEHICLE, 1675: AgentType.VEHICLE}, ooi=[],
        sim={AgentType.VEHICLE: 45, AgentType.PEDESTRIAN: 3, AgentType.CYCLIST: 2},
        evaluated={1675: 80, 1676: 69, 2320: 80, 2406: 80}, full_future=24, no_future=0, holes=14,
        map=dict(road_edge=28, road_line=59, lane=199, crosswalk=4, speed_bump=3, stop_sign=8, driveway=0),
        road_edge_points=5279, lane_types={LaneType.SURFACE_STREET: 198, LaneType.BIKE_LANE: 1},
        signalled=12, signal_states={SignalState.UNKNOWN, SignalState.STOP, SignalState.ARROW_STOP},
        heading=(-3.37, 7.83), over_pi=14, z10=(-185.5, -182.5),
    ),
    "womd_ee5": dict(
        scenario_id="ee519cf571686d19", last_time=9.02, tracks=257, sdc=(2893, 256),
        ttp={625: AgentType.VEHICLE, 2694: AgentType.PEDESTRIAN, 2677: AgentType.PEDESTRIAN, 635: AgentType.VEHICLE},
        ooi=[625, 2694], sim={AgentType.VEHICLE: 55, AgentType.PEDESTRIAN: 29},
        evaluated={625: 80, 635: 57, 2677: 51, 2694: 80, 2893: 80}, full_future=13, no_future=1, holes=24,
        map=dict(road_edge=75, road_line=12, lane=114, crosswalk=4, speed_bump=6, stop_sign=4, driveway=0),
        road_edge_points=3897, lane_types={LaneType.SURFACE_STREET: 114},
        signalled=0, signal_states=set(), heading=(-2.39, 10.19), over_pi=None, z10=(-3.15, -0.95),
    ),
}  # fmt: skip


@pytest.fixture(scope="module", params=sorted(FACTS))
def case(request):
    path = request.getfixturevalue(request.param)
    return load_scene(path), FACTS[request.param], path


def test_identity_tracks_and_agents(case):
    scene, fx, _ = case
    assert scene.scenario_id == fx["scenario_id"]
    assert scene.num_steps == 91 and scene.current_time_index == 10
    assert scene.timestamps[0] == 0.0 and scene.timestamps[-1] == pytest.approx(fx["last_time"], abs=0.005)
    assert scene.num_tracks == fx["tracks"]
    assert (scene.sdc_id, scene.sdc_index) == fx["sdc"]
    ttp_ids = scene.track_ids[scene.tracks_to_predict].tolist()
    assert ttp_ids == list(fx["ttp"])  # proto order kept
    assert scene.track_types[scene.tracks_to_predict].tolist() == [int(t) for t in fx["ttp"].values()]
    assert scene.objects_of_interest.tolist() == fx["ooi"]
    sim = scene.sim_agent_mask()
    assert int(sim.sum()) == sum(fx["sim"].values())
    counts = {AgentType(t): int(n) for t, n in zip(*np.unique(scene.track_types[sim], return_counts=True))}
    assert counts == fx["sim"]
    assert scene.evaluated_agent_ids().tolist() == sorted(fx["evaluated"])


def test_future_validity(case):
    scene, fx, _ = case
    ev = scene.track_index(np.array(list(fx["evaluated"])))
    assert scene.valid[ev, 11:].sum(axis=1).tolist() == list(fx["evaluated"].values())
    fut = scene.valid[scene.sim_agent_mask(), 11:]
    assert int(fut.all(axis=1).sum()) == fx["full_future"]
    assert int((~fut.any(axis=1)).sum()) == fx["no_future"]
    spans = [np.flatnonzero(r) for r in fut if r.any()]
    assert sum(int(s[-1] - s[0] + 1 != len(s)) for s in spans) == fx["holes"]


def test_map_features(case):
    scene, fx, _ = case
    assert scene.map_feature_counts() == fx["map"]
    assert scene.num_map_features == sum(fx["map"].values())
    edges = scene.features_of_type(MapFeatureType.ROAD_EDGE)
    assert int(sum(len(scene.polyline(f)) for f in edges)) == fx["road_edge_points"]
    lanes = scene.features_of_type(MapFeatureType.LANE)
    types, n = np.unique(scene.map_subtypes[lanes], return_counts=True)
    assert {LaneType(t): int(c) for t, c in zip(types, n)} == fx["lane_types"]
    stops = scene.features_of_type(MapFeatureType.STOP_SIGN)
    assert all(len(scene.polyline(f)) == 1 for f in stops)
    assert scene.stop_sign_lane_offsets[-1] > 0  # some stop signs control lanes (not all do in WOMD)
    assert set(scene.stop_sign_lane_ids.tolist()) <= set(scene.map_ids[lanes].tolist())
    for kind in (MapFeatureType.CROSSWALK, MapFeatureType.SPEED_BUMP):
        assert all(len(scene.polyline(f)) >= 3 for f in scene.features_of_type(kind))
    assert scene.lane_speed_limit_mph[lanes].max() > 0
    assert (scene.lane_entry_offsets[-1] > 0) and (scene.lane_exit_offsets[-1] > 0)


def test_signals(case):
    scene, fx, _ = case
    assert scene.signal_states.shape == (91, fx["signalled"])
    assert scene.num_signalled_lanes() == fx["signalled"]
    assert set(SignalState(s) for s in np.unique(scene.signal_states)) == fx["signal_states"]
    if fx["signalled"]:
        assert (scene.signal_states != SignalState.ABSENT).all()  # every step lists all 12 lanes
        lane_rows = np.searchsorted(scene.map_ids, scene.signal_lane_ids, sorter=np.argsort(scene.map_ids))
        idx = np.argsort(scene.map_ids)[lane_rows]
        assert (scene.map_types[idx] == MapFeatureType.LANE).all()
        assert (scene.map_subtypes[idx] == LaneType.SURFACE_STREET).all()


def test_headings_and_heights(case):
    scene, fx, _ = case
    sim = scene.sim_agent_mask()
    h = scene.states[sim, :, HEADING][scene.valid[sim]]
    assert h.min() == pytest.approx(fx["heading"][0], abs=0.005)
    assert h.max() == pytest.approx(fx["heading"][1], abs=0.005)
    if fx["over_pi"] is not None:
        over = (np.abs(np.where(scene.valid[sim], scene.states[sim, :, HEADING], 0)) > np.pi).any(axis=1)
        assert int(over.sum()) == fx["over_pi"]
    # README: invalid states hold x = y = z = heading = 0. In the files most do; a few hold stale values and the
    # zeros carry a tiny z (|z| < 5 cm). Both are kept exactly as logged.
    invalid = scene.states[~scene.valid]
    zeroed = (invalid[:, [X, Y, HEADING]] == 0).all(axis=1)
    assert zeroed.mean() > 0.9
    assert np.abs(invalid[zeroed, Z]).max() < 0.05
    z10 = scene.states[sim, 10, Z]
    assert fx["z10"][0] <= z10.min() and z10.max() <= fx["z10"][1]


def test_exact_round_trip(case, tmp_path):
    scene, _, path = case
    again = scene_from_bytes(scene_to_bytes(scene))
    assert again.equals(scene)
    out = tmp_path / "rt.tfrecord"
    assert write_scenes(out, [scene, scene]) == 2
    back = list(read_scenes(out))
    assert len(back) == 2 and all(b.equals(scene) for b in back)
    # every track value of the official proto comes back out of scene_to_proto unchanged
    original = scenario_pb2.Scenario.FromString(next(read_records(path))[1])
    rebuilt = scene_to_proto(scene)

    def track_values(proto):
        return [(t.id, t.object_type, [(s.center_x, s.center_y, s.center_z, s.length, s.width, s.height, s.heading,
                                        s.velocity_x, s.velocity_y, s.valid) for s in t.states]) for t in proto.tracks]

    assert track_values(rebuilt) == track_values(original)
    assert list(rebuilt.timestamps_seconds) == list(original.timestamps_seconds)
    assert rebuilt.tracks_to_predict == original.tracks_to_predict
    assert rebuilt.dynamic_map_states == original.dynamic_map_states
    for feature in original.map_features:  # lane boundaries and neighbours are the one map content not carried
        if feature.HasField("lane"):
            for name in ("left_boundaries", "right_boundaries", "left_neighbors", "right_neighbors"):
                feature.lane.ClearField(name)
    assert rebuilt.map_features == original.map_features


def test_wire_fast_path_matches_proto_api(case):
    _, _, path = case
    proto = scenario_pb2.Scenario.FromString(next(read_records(path))[1])
    assert scene_from_proto(proto, fast=True).equals(scene_from_proto(proto, fast=False))


@pytest.mark.parametrize(
    "extra",
    [bytes([0xA2, 0x06, 100]) + bytes(100),  # unknown field 100, 100 bytes: the state grows past 127 bytes
     bytes([0x65, 1, 2, 3, 4])],  # unknown field 12 (fixed32): a tag the decoder does not know
)  # fmt: skip
def test_wire_fast_path_falls_back_on_unusual_encoding(womd_637, extra):
    import drivetune.womd as womd

    proto = scenario_pb2.Scenario.FromString(next(read_records(womd_637))[1])
    state = proto.tracks[0].states[3]
    state.MergeFromString(extra)
    assert womd._track_table_fast(proto.tracks, 91) is None  # the proto API takes over
    assert scene_from_proto(proto).equals(scene_from_proto(proto, fast=False))


def test_optional_features_round_trip(womd_637):
    proto = scenario_pb2.Scenario.FromString(next(read_records(womd_637))[1])
    drive = proto.map_features.add(id=99999)
    for x, y in [(0.5, 0.25), (3.125, 0.0), (3.0, 2.0)]:
        drive.driveway.polygon.add(x=x, y=y, z=-185.0)
    lane = next(f for f in proto.map_features if f.HasField("lane"))
    lane.lane.interpolating = True
    lane.lane.speed_limit_mph = 27.5
    del proto.dynamic_map_states[5].lane_states[3]  # a sparse step: lane absent there
    scene = scene_from_proto(proto)
    assert scene.map_feature_counts()["driveway"] == 1
    assert scene.lane_interpolating.sum() == 1 and 27.5 in scene.lane_speed_limit_mph
    assert (scene.signal_states == SignalState.ABSENT).sum() == 1
    assert scene_from_proto(scene_to_proto(scene)).equals(scene)


def test_load_scene_by_id(womd_637, womd_ee5, tmp_path):
    both = tmp_path / "both.tfrecord"
    write_scenes(both, [load_scene(womd_637), load_scene(womd_ee5)])
    assert load_scene(both, "ee519cf571686d19").num_tracks == 257
    with pytest.raises(WomdError, match="scenario 'nope' not found"):
        load_scene(both, "nope")


def test_bad_payload_names_file_and_offset(tmp_path, womd_637):
    path = tmp_path / "bad.tfrecord"
    write_records(path, [next(read_records(womd_637))[1], b"\xff\xff\xff not a proto"])
    with pytest.raises(WomdError, match=r"bad\.tfrecord: record at byte offset 952963: not a valid Scenario"):
        list(read_scenes(path))


def test_inconsistent_proto_names_scenario():
    proto = scenario_pb2.Scenario(scenario_id="broken", timestamps_seconds=[0.0, 0.1])
    proto.tracks.add(id=7).states.add(center_x=1.0)
    with pytest.raises(WomdError, match=r"scenario 'broken': tracks \[7\] do not have 2 states"):
        scene_from_proto(proto)
