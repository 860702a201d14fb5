"""Map tokens: every map polyline resampled every 0.5 m along its length and cut into segments of at most 5 m, each
with position, direction, length, a type/subtype category and the traffic-signal state of its lane."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from drivetune.scene import MapFeatureType, Scene, SignalState

SPACING = 0.5  # metres between resampled points
SEGMENT_LENGTH = 5.0  # metres of polyline per segment (the last piece of a polyline may be shorter)
POINTS_PER_SEGMENT = int(round(SEGMENT_LENGTH / SPACING)) + 1  # 11
POLYGON_TYPES = (MapFeatureType.CROSSWALK, MapFeatureType.SPEED_BUMP, MapFeatureType.DRIVEWAY)

# category = offset of the feature type + subtype (lanes 4 LaneTypes, road lines 9, road edges 3; others one each)
_CATEGORY_BASE = {
    MapFeatureType.LANE: 0,
    MapFeatureType.ROAD_LINE: 4,
    MapFeatureType.ROAD_EDGE: 13,
    MapFeatureType.STOP_SIGN: 16,
    MapFeatureType.CROSSWALK: 17,
    MapFeatureType.SPEED_BUMP: 18,
    MapFeatureType.DRIVEWAY: 19,
}
_NUM_SUBTYPES = {MapFeatureType.LANE: 4, MapFeatureType.ROAD_LINE: 9, MapFeatureType.ROAD_EDGE: 3}
NUM_MAP_CATEGORIES = 20
NUM_SIGNAL_CLASSES = len(SignalState)  # embedding index = signal_state + 1 (ABSENT -> 0)


@dataclass
class MapTokens:
    """S map segments of one scene (feature order, then along each polyline)."""

    points: np.ndarray  # float64 [S, 11, 2] resampled xy, padded by repeating the last point
    point_mask: np.ndarray  # bool [S, 11] real resampled points
    position: np.ndarray  # float64 [S, 2] point halfway along the segment
    z: np.ndarray  # float64 [S] mean elevation of the segment's points
    heading: np.ndarray  # float64 [S] direction first -> last point (0 for single-point segments, e.g. stop signs)
    length: np.ndarray  # float64 [S] length along the polyline (<= 5 m)
    feature_index: np.ndarray  # int64 [S] map feature the segment comes from
    map_type: np.ndarray  # int64 [S] MapFeatureType
    category: np.ndarray  # int64 [S] in [0, NUM_MAP_CATEGORIES): type + subtype
    signal_lane: np.ndarray  # int64 [S] column of scene.signal_states for signalled lanes, else -1
    signal_state: np.ndarray  # int64 [S] SignalState at the tokenised step (ABSENT = -1 where none)

    @property
    def num_segments(self) -> int:
        return int(self.points.shape[0])

    def signal_state_at(self, scene: Scene, step: int) -> np.ndarray:
        """int64 [S] SignalState of every segment at another step (ABSENT where no signal)."""
        if not 0 <= step < scene.signal_states.shape[0]:
            raise ValueError(f"step {step} outside [0, {scene.signal_states.shape[0]})")
        states = scene.signal_states[step].astype(np.int64)
        out = np.full(self.num_segments, int(SignalState.ABSENT), np.int64)
        has = self.signal_lane >= 0
        out[has] = states[self.signal_lane[has]]
        return out


def resample(points: np.ndarray, spacing: float = SPACING) -> np.ndarray:
    """[m, 3] points every `spacing` metres along the xy length of a polyline [n, 3], plus its end point."""
    if points.ndim != 2 or points.shape[1] != 3 or len(points) == 0:
        raise ValueError(f"polyline shape {points.shape} is not [n>0, 3]")
    step = np.linalg.norm(np.diff(points[:, :2], axis=0), axis=1)
    keep = np.concatenate([[True], step > 1e-9])
    points, step = points[keep], step[step > 1e-9]
    if len(points) == 1:
        return points.copy()
    s = np.concatenate([[0.0], np.cumsum(step)])
    at = np.arange(0.0, s[-1], spacing)
    if s[-1] - at[-1] > 1e-6:
        at = np.append(at, s[-1])
    return np.stack([np.interp(at, s, points[:, k]) for k in range(3)], axis=1)


def _category(kind: int, subtype: int) -> int:
    k = MapFeatureType(kind)
    n = _NUM_SUBTYPES.get(k, 1)
    return _CATEGORY_BASE[k] + (int(subtype) if 0 <= subtype < n else 0)


def tokenize_map(
    scene: Scene, step: int | None = None, spacing: float = SPACING, segment_length: float = SEGMENT_LENGTH
) -> MapTokens:
    """Segments of every map feature; signal states are taken at `step` (default: the scene's current step)."""
    per_seg = int(round(segment_length / spacing))
    if per_seg < 1 or abs(per_seg * spacing - segment_length) > 1e-9:
        raise ValueError(f"segment_length {segment_length} must be a positive multiple of spacing {spacing}")
    step = scene.current_time_index if step is None else step
    width = per_seg + 1
    lane_col = {int(lane): j for j, lane in enumerate(scene.signal_lane_ids)}
    pts, masks, feat = [], [], []
    for f in range(scene.num_map_features):
        line = scene.polyline(f)
        if len(line) == 0:
            continue
        if scene.map_types[f] in POLYGON_TYPES and len(line) > 2:
            line = np.concatenate([line, line[:1]])
        r = resample(line, spacing)
        for lo in range(0, max(len(r) - 1, 1), per_seg):
            piece = r[lo : lo + width]
            pad = np.repeat(piece[-1:], width - len(piece), axis=0)
            pts.append(np.concatenate([piece, pad]))
            masks.append(np.arange(width) < len(piece))
            feat.append(f)
    if not pts:
        raise ValueError(f"scenario {scene.scenario_id}: no map polylines to tokenize")
    points, mask, feat_idx = np.stack(pts), np.stack(masks), np.array(feat, np.int64)
    count = mask.sum(axis=1)
    rows = np.arange(len(points))
    last = points[rows, count - 1]
    gaps = np.linalg.norm(np.diff(points[:, :, :2], axis=1), axis=-1)  # [S, width-1], zero over padding
    cum = np.concatenate([np.zeros((len(points), 1)), np.cumsum(gaps, axis=1)], axis=1)
    seg_len = cum[:, -1]
    j = np.clip((cum <= seg_len[:, None] / 2).sum(axis=1) - 1, 0, np.maximum(count - 2, 0))
    frac = np.clip((seg_len / 2 - cum[rows, j]) / np.maximum(gaps[rows, np.minimum(j, width - 2)], 1e-9), 0, 1)
    nxt = np.minimum(j + 1, count - 1)
    mid = (1 - frac)[:, None] * points[rows, j, :2] + frac[:, None] * points[rows, nxt, :2]
    d = last[:, :2] - points[:, 0, :2]
    heading = np.where(np.linalg.norm(d, axis=1) > 1e-9, np.arctan2(d[:, 1], d[:, 0]), 0.0)
    z = (points[:, :, 2] * mask).sum(axis=1) / count
    types = scene.map_types[feat_idx].astype(np.int64)
    feat_cat = [_category(int(k), int(sub)) for k, sub in zip(scene.map_types, scene.map_subtypes)]
    category = np.array(feat_cat, np.int64)[feat_idx]
    is_lane = scene.map_types == MapFeatureType.LANE
    feat_lane = np.array([lane_col.get(int(i), -1) if lane else -1 for i, lane in zip(scene.map_ids, is_lane)])
    lanes = feat_lane.astype(np.int64)[feat_idx]
    empty = np.zeros(len(points), np.int64)
    tokens = MapTokens(points[:, :, :2], mask, mid, z, heading, seg_len, feat_idx, types, category, lanes, empty)
    tokens.signal_state = tokens.signal_state_at(scene, step)
    return tokens
