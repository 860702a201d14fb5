"""One WOMD scenario as numpy arrays: the data model every part of drivetune shares.

Tracks are dense `[A, T]` arrays (T = 91 steps at 10 Hz, current step 10). The map is a set of typed polylines
stored flat (points + offsets), ragged id lists (lane entry/exit lanes, stop-sign controlled lanes) likewise.
Traffic signals are dense over (step, signalled lane). Enum values are the WOMD proto's own numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from enum import IntEnum

import numpy as np

from drivetune.errors import SceneError

NUM_STEPS = 91
CURRENT_TIME_INDEX = 10
NUM_FUTURE_STEPS = 80
STEP_SECONDS = 0.1

# Columns of `Scene.states` (the `valid` flag lives in `Scene.valid`).
STATE_FIELDS = ("x", "y", "z", "length", "width", "height", "heading", "vx", "vy")
X, Y, Z, LENGTH, WIDTH, HEIGHT, HEADING, VX, VY = range(len(STATE_FIELDS))


def wrap_angle(a):
    """Angles wrapped to [-pi, pi) (floor modulo); works on floats, numpy arrays and torch tensors alike."""
    return (a + math.pi) % (2 * math.pi) - math.pi


class AgentType(IntEnum):
    """`Track.ObjectType` of the WOMD proto."""

    UNSET = 0
    VEHICLE = 1
    PEDESTRIAN = 2
    CYCLIST = 3
    OTHER = 4


class MapFeatureType(IntEnum):
    """Which `MapFeature.feature_data` oneof a map feature holds."""

    LANE = 1
    ROAD_LINE = 2
    ROAD_EDGE = 3
    STOP_SIGN = 4
    CROSSWALK = 5
    SPEED_BUMP = 6
    DRIVEWAY = 7


class LaneType(IntEnum):
    UNDEFINED = 0
    FREEWAY = 1
    SURFACE_STREET = 2
    BIKE_LANE = 3


class RoadLineType(IntEnum):
    UNKNOWN = 0
    BROKEN_SINGLE_WHITE = 1
    SOLID_SINGLE_WHITE = 2
    SOLID_DOUBLE_WHITE = 3
    BROKEN_SINGLE_YELLOW = 4
    BROKEN_DOUBLE_YELLOW = 5
    SOLID_SINGLE_YELLOW = 6
    SOLID_DOUBLE_YELLOW = 7
    PASSING_DOUBLE_YELLOW = 8


class RoadEdgeType(IntEnum):
    UNKNOWN = 0
    BOUNDARY = 1
    MEDIAN = 2


class SignalState(IntEnum):
    """`TrafficSignalLaneState.State`; ABSENT (-1) marks a lane with no entry at that step."""

    ABSENT = -1
    UNKNOWN = 0
    ARROW_STOP = 1
    ARROW_CAUTION = 2
    ARROW_GO = 3
    STOP = 4
    CAUTION = 5
    GO = 6
    FLASHING_STOP = 7
    FLASHING_CAUTION = 8


RED_SIGNAL_STATES = (SignalState.ARROW_STOP, SignalState.STOP, SignalState.FLASHING_STOP)


@dataclass
class Scene:
    """One scenario. Shapes: A tracks, T steps, F map features, P map points, L signalled lanes."""

    scenario_id: str
    timestamps: np.ndarray  # float64 [T] seconds
    current_time_index: int
    # tracks
    track_ids: np.ndarray  # int64 [A]
    track_types: np.ndarray  # int8 [A], AgentType
    states: np.ndarray  # float64 [A, T, 9], columns STATE_FIELDS
    valid: np.ndarray  # bool [A, T]
    sdc_index: int
    tracks_to_predict: np.ndarray  # int64 [K], indices into tracks
    predict_difficulty: np.ndarray  # int8 [K], TrackToPredict.difficulty
    objects_of_interest: np.ndarray  # int64 [M], track ids
    # map: polylines stored flat; feature f owns map_points[map_offsets[f]:map_offsets[f+1]]
    map_ids: np.ndarray  # int64 [F]
    map_types: np.ndarray  # int8 [F], MapFeatureType
    map_subtypes: np.ndarray  # int8 [F], LaneType / RoadLineType / RoadEdgeType, else 0
    map_offsets: np.ndarray  # int64 [F+1]
    map_points: np.ndarray  # float64 [P, 3]
    lane_speed_limit_mph: np.ndarray  # float32 [F], 0 for non-lanes
    lane_interpolating: np.ndarray  # bool [F]
    lane_entry_offsets: np.ndarray  # int64 [F+1] into lane_entry_ids
    lane_entry_ids: np.ndarray  # int64 [*]
    lane_exit_offsets: np.ndarray  # int64 [F+1] into lane_exit_ids
    lane_exit_ids: np.ndarray  # int64 [*]
    stop_sign_lane_offsets: np.ndarray  # int64 [F+1] into stop_sign_lane_ids (controlled lanes)
    stop_sign_lane_ids: np.ndarray  # int64 [*]
    # traffic signals, dense over (step, signalled lane)
    signal_lane_ids: np.ndarray  # int64 [L]
    signal_states: np.ndarray  # int8 [T, L], SignalState (ABSENT where the lane has no entry)
    signal_stop_points: np.ndarray  # float64 [T, L, 3]

    # ---------------------------------------------------------------- tracks
    @property
    def num_tracks(self) -> int:
        return int(self.track_ids.shape[0])

    @property
    def num_steps(self) -> int:
        return int(self.timestamps.shape[0])

    @property
    def sdc_id(self) -> int:
        return int(self.track_ids[self.sdc_index])

    def sim_agent_mask(self) -> np.ndarray:
        """bool [A]: tracks valid at the current step (the official sim agents)."""
        return self.valid[:, self.current_time_index].copy()

    def sim_agent_ids(self) -> np.ndarray:
        """Ids of the tracks valid at the current step, in track order (official `get_sim_agent_ids`)."""
        return self.track_ids[self.sim_agent_mask()]

    def evaluated_agent_ids(self) -> np.ndarray:
        """Sorted ids of the SDC plus tracks_to_predict (official `get_evaluation_sim_agent_ids`)."""
        ids = {self.sdc_id} | {int(self.track_ids[i]) for i in self.tracks_to_predict}
        return np.array(sorted(ids), dtype=np.int64)

    def track_index(self, ids: np.ndarray) -> np.ndarray:
        """Indices of the given track ids; raises SceneError naming any unknown id."""
        lookup = {int(t): i for i, t in enumerate(self.track_ids)}
        missing = [int(i) for i in ids if int(i) not in lookup]
        if missing:
            raise SceneError(f"scenario {self.scenario_id}: unknown track ids {missing[:10]}")
        return np.array([lookup[int(i)] for i in ids], dtype=np.int64)

    # ------------------------------------------------------------------- map
    @property
    def num_map_features(self) -> int:
        return int(self.map_ids.shape[0])

    def polyline(self, f: int) -> np.ndarray:
        """float64 [n, 3] points of map feature f."""
        return self.map_points[self.map_offsets[f] : self.map_offsets[f + 1]]

    def features_of_type(self, kind: MapFeatureType) -> np.ndarray:
        """Indices of the map features of one type."""
        return np.flatnonzero(self.map_types == int(kind))

    def map_feature_counts(self) -> dict[str, int]:
        """Number of map features per type name (every type listed, zeros included)."""
        return {t.name.lower(): int((self.map_types == int(t)).sum()) for t in MapFeatureType}

    def lane_entries(self, f: int) -> np.ndarray:
        return self.lane_entry_ids[self.lane_entry_offsets[f] : self.lane_entry_offsets[f + 1]]

    def lane_exits(self, f: int) -> np.ndarray:
        return self.lane_exit_ids[self.lane_exit_offsets[f] : self.lane_exit_offsets[f + 1]]

    def stop_sign_lanes(self, f: int) -> np.ndarray:
        return self.stop_sign_lane_ids[self.stop_sign_lane_offsets[f] : self.stop_sign_lane_offsets[f + 1]]

    def num_signalled_lanes(self) -> int:
        """Lanes with at least one signal entry in any step."""
        return int((self.signal_states != SignalState.ABSENT).any(axis=0).sum())

    # ------------------------------------------------------------ integrity
    def validate(self) -> "Scene":
        """Check shapes, dtypes-by-shape, finiteness and index ranges; raise SceneError naming the problem."""
        A, T, F = self.num_tracks, self.num_steps, self.num_map_features
        where = f"scenario {self.scenario_id!r}"

        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise SceneError(f"{where}: {msg}")

        need(self.states.shape == (A, T, len(STATE_FIELDS)), f"states shape {self.states.shape} != {(A, T, 9)}")
        need(self.valid.shape == (A, T), f"valid shape {self.valid.shape} != {(A, T)}")
        need(self.track_types.shape == (A,), f"track_types shape {self.track_types.shape} != {(A,)}")
        need(0 <= self.current_time_index < T, f"current_time_index {self.current_time_index} outside [0, {T})")
        need(0 <= self.sdc_index < A, f"sdc_index {self.sdc_index} outside [0, {A})")
        need(bool(np.all((self.tracks_to_predict >= 0) & (self.tracks_to_predict < A))), "tracks_to_predict out of range")
        need(bool(np.isfinite(self.states[self.valid]).all()), "non-finite values in valid track states")
        need(len(np.unique(self.track_ids)) == A, "duplicate track ids")
        need(self.map_offsets.shape == (F + 1,), f"map_offsets shape {self.map_offsets.shape} != {(F + 1,)}")
        need(int(self.map_offsets[-1]) == self.map_points.shape[0], "map_offsets[-1] != number of map points")
        need(bool(np.all(np.diff(self.map_offsets) >= 0)), "map_offsets not non-decreasing")
        need(bool(np.isfinite(self.map_points).all()), "non-finite map points")
        L = self.signal_lane_ids.shape[0]
        need(self.signal_states.shape == (T, L), f"signal_states shape {self.signal_states.shape} != {(T, L)}")
        need(self.signal_stop_points.shape == (T, L, 3), "signal_stop_points shape mismatch")
        for name in ("lane_entry", "lane_exit", "stop_sign_lane"):
            offs, ids = getattr(self, f"{name}_offsets"), getattr(self, f"{name}_ids")
            need(offs.shape == (F + 1,) and int(offs[-1]) == ids.shape[0], f"{name} offsets inconsistent")
        return self

    def equals(self, other: "Scene") -> bool:
        """Exact equality of every field (NaN-aware for float arrays)."""
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if isinstance(a, np.ndarray):
                if a.shape != b.shape or not np.array_equal(a, b, equal_nan=a.dtype.kind == "f"):
                    return False
            elif a != b:
                return False
        return True

