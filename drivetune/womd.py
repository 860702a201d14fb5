"""WOMD `Scenario` protos <-> `Scene`, and Scenario TFRecord files, through the official `scenario_pb2`.

Everything a `Scene` holds survives a round trip exactly: proto doubles (positions, timestamps, map points, stop
points) stay float64; the proto's float32 fields (length, width, height, heading, velocities) are widened exactly, so
a Scene read from a file writes back the same values. Proto content with no place in a `Scene` (lane boundaries and
neighbours, lidar/camera data) is not carried. Signalled lanes are kept in order of first appearance over the steps.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
from google.protobuf.message import DecodeError
from waymo_open_dataset.protos import map_pb2, scenario_pb2

from drivetune.errors import WomdError
from drivetune.protowire import FixedLayout, decode_fixed, first_field_offset, repeated_spans
from drivetune.scene import MapFeatureType, Scene, SceneError, SignalState
from drivetune.tfrecord import read_records, write_records

# ObjectState fields in the order of the Scene.states columns (STATE_FIELDS)
STATE_PROTO_KEYS = ("center_x", "center_y", "center_z", "length", "width", "height", "heading", "velocity_x", "velocity_y")
_POLY_FIELD = {  # feature type -> (oneof name, name of its point list)
    MapFeatureType.LANE: ("lane", "polyline"),
    MapFeatureType.ROAD_LINE: ("road_line", "polyline"),
    MapFeatureType.ROAD_EDGE: ("road_edge", "polyline"),
    MapFeatureType.STOP_SIGN: ("stop_sign", "position"),  # one point
    MapFeatureType.CROSSWALK: ("crosswalk", "polygon"),
    MapFeatureType.SPEED_BUMP: ("speed_bump", "polygon"),
    MapFeatureType.DRIVEWAY: ("driveway", "polygon"),
}
_TYPE_OF_ONEOF = {oneof: int(kind) for kind, (oneof, _) in _POLY_FIELD.items()}
_POINTS_OF_ONEOF = dict(_POLY_FIELD.values())
_STATE_KEYS = STATE_PROTO_KEYS + ("valid",)
_STATE_LAYOUT = FixedLayout(scenario_pb2.ObjectState.DESCRIPTOR, _STATE_KEYS)
_POINT_LAYOUT = FixedLayout(map_pb2.MapPoint.DESCRIPTOR, ("x", "y", "z"))
_ABSENT = int(SignalState.ABSENT)


def _ragged(lists: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(lists) + 1, np.int64)
    offsets[1:] = np.cumsum([len(x) for x in lists])
    flat = np.fromiter((v for x in lists for v in x), np.int64, count=int(offsets[-1]))
    return offsets, flat


def _spans(messages: list[Any], field: str, counts: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(buffer, starts, ends) of the `field` elements of all messages, serialized back to back."""
    if not messages:
        return None
    number = messages[0].DESCRIPTOR.fields_by_name[field].number
    chunks, starts, base = [], [], 0
    for msg, count in zip(messages, counts):
        raw = msg.SerializeToString()
        first = first_field_offset(raw, number) if count else 0
        if first is None:
            return None
        chunks.append(raw)
        starts.append(base + first)
        base += len(raw)
    buf = np.frombuffer(b"".join(chunks), np.uint8)
    found = repeated_spans(buf, np.array(starts, np.int64), np.array(counts, np.int64), (number << 3) | 2)
    return None if found is None else (buf, *found)


def _track_table_fast(tracks: Any, T: int) -> np.ndarray | None:
    """[A*T, 10] state values + valid of every track, decoded from the wire format (None: use the proto API)."""
    if not len(tracks):
        return np.zeros((0, len(_STATE_KEYS)))
    found = _spans(list(tracks), "states", [T] * len(tracks))
    return None if found is None else decode_fixed(*found, _STATE_LAYOUT)


def _points_fast(point_lists: list[tuple[Any, str]], counts: list[int]) -> np.ndarray | None:
    """[P, 3] map points decoded from the wire format, grouped by field name (None: use the proto API)."""
    out = np.zeros((sum(counts), 3))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    groups: dict[tuple[str, str], list[int]] = {}  # same field name, different numbers per message type
    for i, (msg, name) in enumerate(point_lists):
        if counts[i]:
            groups.setdefault((msg.DESCRIPTOR.full_name, name), []).append(i)
    for (_, name), which in groups.items():
        found = _spans([point_lists[i][0] for i in which], name, [counts[i] for i in which])
        values = None if found is None else decode_fixed(*found, _POINT_LAYOUT)
        if values is None:
            return None
        rows = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in which])
        out[rows] = values
    return out


def _points_slow(point_lists: list[tuple[Any, str]]) -> np.ndarray:
    pts = [p for msg, name in point_lists for p in ([msg.position] if name == "position" else getattr(msg, name))]
    return np.array([(p.x, p.y, p.z) for p in pts], np.float64).reshape(-1, 3)


def scene_from_proto(proto: scenario_pb2.Scenario, fast: bool = True) -> Scene:
    """Convert one Scenario proto into a validated Scene; raises WomdError naming the scenario.

    `fast` decodes track states and map points straight from the wire format (falling back to the proto API for
    anything unusual); `fast=False` always uses the proto API. Both give identical Scenes.
    """
    sid = proto.scenario_id
    T = len(proto.timestamps_seconds)
    tracks = proto.tracks
    bad = [t.id for t in tracks if len(t.states) != T]
    if bad:
        raise WomdError(f"scenario {sid!r}: tracks {bad[:5]} do not have {T} states (one per timestamp)")
    A = len(tracks)
    table = _track_table_fast(tracks, T) if fast else None
    if table is None:
        table = np.array([[getattr(s, k) for k in _STATE_KEYS] for t in tracks for s in t.states], np.float64)
    table = table.reshape(A, T, len(_STATE_KEYS))
    states, valid = np.ascontiguousarray(table[..., :-1]), table[..., -1] != 0

    types, subtypes, ids, speed, interp = [], [], [], [], []
    point_lists: list[tuple[Any, str]] = []  # (message holding the points, field name)
    entries: list[list[int]] = []
    exits: list[list[int]] = []
    controlled: list[list[int]] = []
    for feature in proto.map_features:
        which = feature.WhichOneof("feature_data")
        if which is None:
            raise WomdError(f"scenario {sid!r}: map feature {feature.id} has no feature data")
        data = getattr(feature, which)
        ids.append(feature.id)
        types.append(_TYPE_OF_ONEOF[which])
        point_lists.append((data, _POINTS_OF_ONEOF[which]))
        subtypes.append(data.type if which in ("lane", "road_line", "road_edge") else 0)
        is_lane = which == "lane"
        speed.append(data.speed_limit_mph if is_lane else 0.0)
        interp.append(data.interpolating if is_lane else False)
        entries.append(list(data.entry_lanes) if is_lane else [])
        exits.append(list(data.exit_lanes) if is_lane else [])
        controlled.append(list(data.lane) if which == "stop_sign" else [])
    F = len(ids)
    counts = [1 if name == "position" else len(getattr(msg, name)) for msg, name in point_lists]
    map_offsets = np.zeros(F + 1, np.int64)
    map_offsets[1:] = np.cumsum(counts)
    points = _points_fast(point_lists, counts) if fast else None
    if points is None:
        points = _points_slow(point_lists)

    signal_lanes: dict[int, int] = {}
    for step in proto.dynamic_map_states:
        for ls in step.lane_states:
            signal_lanes.setdefault(ls.lane, len(signal_lanes))
    if len(proto.dynamic_map_states) > T:
        raise WomdError(f"scenario {sid!r}: {len(proto.dynamic_map_states)} dynamic map states for {T} steps")
    L = len(signal_lanes)
    signal_states = np.full((T, L), _ABSENT, np.int8)
    stop_points = np.zeros((T, L, 3), np.float64)
    for t, step in enumerate(proto.dynamic_map_states):
        for ls in step.lane_states:
            j = signal_lanes[ls.lane]
            if signal_states[t, j] != _ABSENT:
                raise WomdError(f"scenario {sid!r}: lane {ls.lane} has two signal states at step {t}")
            signal_states[t, j] = ls.state
            stop_points[t, j] = (ls.stop_point.x, ls.stop_point.y, ls.stop_point.z)

    entry_offsets, entry_ids = _ragged(entries)
    exit_offsets, exit_ids = _ragged(exits)
    stop_offsets, stop_ids = _ragged(controlled)
    scene = Scene(
        scenario_id=sid,
        timestamps=np.array(proto.timestamps_seconds, np.float64),
        current_time_index=int(proto.current_time_index),
        track_ids=np.array([t.id for t in tracks], np.int64),
        track_types=np.array([t.object_type for t in tracks], np.int8),
        states=states,
        valid=valid,
        sdc_index=int(proto.sdc_track_index),
        tracks_to_predict=np.array([p.track_index for p in proto.tracks_to_predict], np.int64),
        predict_difficulty=np.array([p.difficulty for p in proto.tracks_to_predict], np.int8),
        objects_of_interest=np.array(proto.objects_of_interest, np.int64),
        map_ids=np.array(ids, np.int64),
        map_types=np.array(types, np.int8),
        map_subtypes=np.array(subtypes, np.int8),
        map_offsets=map_offsets,
        map_points=points,
        lane_speed_limit_mph=np.array(speed, np.float32),
        lane_interpolating=np.array(interp, bool),
        lane_entry_offsets=entry_offsets,
        lane_entry_ids=entry_ids,
        lane_exit_offsets=exit_offsets,
        lane_exit_ids=exit_ids,
        stop_sign_lane_offsets=stop_offsets,
        stop_sign_lane_ids=stop_ids,
        signal_lane_ids=np.array(list(signal_lanes), np.int64),
        signal_states=signal_states,
        signal_stop_points=stop_points,
    )
    try:
        return scene.validate()
    except SceneError as exc:
        raise WomdError(str(exc)) from exc


def scene_to_proto(scene: Scene) -> scenario_pb2.Scenario:
    """Convert a Scene into a Scenario proto (validates the Scene first)."""
    try:
        scene.validate()
    except SceneError as exc:
        raise WomdError(str(exc)) from exc
    proto = scenario_pb2.Scenario(
        scenario_id=scene.scenario_id,
        timestamps_seconds=scene.timestamps.tolist(),
        current_time_index=scene.current_time_index,
        sdc_track_index=scene.sdc_index,
        objects_of_interest=scene.objects_of_interest.tolist(),
    )
    for a in range(scene.num_tracks):
        track = proto.tracks.add(id=int(scene.track_ids[a]), object_type=int(scene.track_types[a]))
        track.states.extend(  # zeros left unset, as in WOMD's own files (invalid states carry only z)
            scenario_pb2.ObjectState(valid=ok, **{k: v for k, v in zip(STATE_PROTO_KEYS, row) if v != 0.0})
            for row, ok in zip(scene.states[a].tolist(), scene.valid[a].tolist())
        )
    for idx, difficulty in zip(scene.tracks_to_predict.tolist(), scene.predict_difficulty.tolist()):
        proto.tracks_to_predict.add(track_index=idx, difficulty=difficulty)

    for f in range(scene.num_map_features):
        kind = MapFeatureType(int(scene.map_types[f]))
        oneof, list_name = _POLY_FIELD[kind]
        feature = proto.map_features.add(id=int(scene.map_ids[f]))
        data = getattr(feature, oneof)
        pts = [map_pb2.MapPoint(x=x, y=y, z=z) for x, y, z in scene.polyline(f).tolist()]
        if kind == MapFeatureType.STOP_SIGN:
            if len(pts) != 1:
                raise WomdError(f"scenario {scene.scenario_id!r}: stop sign {scene.map_ids[f]} has {len(pts)} points, needs 1")
            data.position.CopyFrom(pts[0])
            data.lane.extend(scene.stop_sign_lanes(f).tolist())
            continue
        data.SetInParent()  # a polygon/polyline feature with no points still keeps its type
        getattr(data, list_name).extend(pts)
        if kind in (MapFeatureType.LANE, MapFeatureType.ROAD_LINE, MapFeatureType.ROAD_EDGE):
            data.type = int(scene.map_subtypes[f])
        if kind == MapFeatureType.LANE:
            data.speed_limit_mph = float(scene.lane_speed_limit_mph[f])
            if scene.lane_interpolating[f]:  # left unset when false, as in WOMD's own files
                data.interpolating = True
            data.entry_lanes.extend(scene.lane_entries(f).tolist())
            data.exit_lanes.extend(scene.lane_exits(f).tolist())

    lanes = scene.signal_lane_ids.tolist()
    for t in range(scene.num_steps):
        step = proto.dynamic_map_states.add()
        for j in np.flatnonzero(scene.signal_states[t] != SignalState.ABSENT).tolist():
            x, y, z = scene.signal_stop_points[t, j].tolist()
            step.lane_states.add(
                lane=lanes[j], state=int(scene.signal_states[t, j]), stop_point=map_pb2.MapPoint(x=x, y=y, z=z)
            )
    return proto


def scene_from_bytes(payload: bytes, where: str = "<bytes>") -> Scene:
    """Parse a serialized Scenario; `where` (file + offset) goes into the error message."""
    try:
        proto = scenario_pb2.Scenario.FromString(payload)
    except DecodeError as exc:
        raise WomdError(f"{where}: not a valid Scenario proto ({exc})") from exc
    try:
        return scene_from_proto(proto)
    except WomdError as exc:
        raise WomdError(f"{where}: {exc}") from exc


def scene_to_bytes(scene: Scene) -> bytes:
    return scene_to_proto(scene).SerializeToString()


def read_scenes(path: str | os.PathLike) -> Iterator[Scene]:
    """Every Scene of a Scenario TFRecord file (CRCs checked; errors name the file and byte offset)."""
    for offset, payload in read_records(path):
        yield scene_from_bytes(payload, f"{path}: record at byte offset {offset}")


def write_scenes(path: str | os.PathLike, scenes: Iterable[Scene]) -> int:
    """Atomically write Scenes as a Scenario TFRecord file. Returns the number written."""
    return write_records(path, (scene_to_bytes(s) for s in scenes))


def load_scene(path: str | os.PathLike, scenario_id: str | None = None) -> Scene:
    """One Scene from a TFRecord file: the first one, or the one with `scenario_id`."""
    seen: list[str] = []
    for scene in read_scenes(path):
        if scenario_id is None or scene.scenario_id == scenario_id:
            return scene
        seen.append(scene.scenario_id)
    if scenario_id is None:
        raise WomdError(f"{Path(path)}: no scenarios in file")
    raise WomdError(f"{Path(path)}: scenario {scenario_id!r} not found (file holds {len(seen)}: {seen[:5]}...)")
