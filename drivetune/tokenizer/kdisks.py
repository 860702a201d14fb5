"""Building motion vocabularies: local 6-pose segments from scenes, then greedy k-disks clustering per type."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from drivetune.scene import HEADING, X, Y, Scene
from drivetune.tokenizer.layout import NUM_AGENT_TYPES, TYPE_BOXES, TYPE_NAMES, box_corners, relative, type_index
from drivetune.tokenizer.matching import clean_headings
from drivetune.tokenizer.motion import NUM_POSES, MotionVocab
from drivetune.vocab_defaults import DEFAULT_COVERAGE, DEFAULT_MAX_SEGMENTS, DEFAULT_SIZES, DEFAULT_TOLERANCES

# start-pose jitter sigmas (x m, y m, heading rad) per type for the corrective copies of `jitter_segments`
DEFAULT_JITTER = ((0.15, 0.15, 0.03), (0.1, 0.1, 0.1), (0.1, 0.1, 0.03))
MAX_STEP_M = 6.0  # 60 m/s: longer 0.1 s steps are position glitches, not motion
MICRO_SIZES = (256, 128, 128)  # for the micro (CPU demo) model
_MAX_SEARCH_ROUNDS = 20
_SEARCH_FACTOR = 1.15
_CELL_OFFSET = 1 << 20  # grid cell indices are shifted positive before packing two into one int64 key
_CELL_STRIDE = 1 << 21


def scene_segments(scene: Scene) -> list[np.ndarray]:
    """Every window of 6 consecutive valid steps of every track (heading flips cleaned; windows with a step longer
    than `MAX_STEP_M`, i.e. position glitches, dropped), in its first pose's frame: one float32 [n, 6, 3] array
    (x, y, heading) per type."""
    valid = scene.valid.astype(bool)
    head = clean_headings(scene.states[:, :, HEADING], valid)
    poses = np.stack([scene.states[:, :, X], scene.states[:, :, Y], head], axis=-1)  # [A, T, 3]
    win = np.lib.stride_tricks.sliding_window_view(valid, NUM_POSES, axis=1).all(axis=-1)  # [A, T-5]
    a, s = np.nonzero(win)
    seg = poses[a[:, None], s[:, None] + np.arange(NUM_POSES)[None, :]]  # [n, 6, 3]
    sane = (np.linalg.norm(np.diff(seg[:, :, :2], axis=1), axis=-1) <= MAX_STEP_M).all(axis=1)
    seg, a = seg[sane], a[sane]
    seg_t = torch.from_numpy(seg)
    local = relative(seg_t[:, :1], seg_t).numpy().astype(np.float32)
    types = type_index(scene.track_types)[a]
    return [local[types == k] for k in range(NUM_AGENT_TYPES)]


def _mean_pose(members: np.ndarray) -> np.ndarray:
    """Mean of [m, 6, 3] local poses (circular mean for heading) -> [6, 3]; pose 0 stays the origin."""
    m = float(len(members))
    out = np.empty((NUM_POSES, 3), np.float32)
    out[:, :2] = members[..., :2].sum(axis=0) / m
    h = members[..., 2]
    out[:, 2] = np.arctan2(np.sin(h).sum(axis=0), np.cos(h).sum(axis=0))
    out[0] = 0.0
    return out


def kdisks(
    segments: np.ndarray,
    size: int,
    tolerance: float,
    box: Sequence[float],
    seed: int = 0,
    desc: str = "",
    coverage: float = DEFAULT_COVERAGE,
    probe: int = 20_000,
) -> tuple[np.ndarray, dict]:
    """k-disks with a tolerance search: starting at `tolerance`, the radius grows by 1.15x until `size` disks cover
    at least `coverage` of a `probe`-segment random subsample (coverage 0 keeps `tolerance`); then one pass over all
    segments at that radius (`kdisks_pass`). Returns (poses float32 [k, 6, 3], stats incl. the radius used)."""
    if segments.ndim != 3 or segments.shape[1:] != (NUM_POSES, 3):
        raise ValueError(f"segments shape {segments.shape} != (n, {NUM_POSES}, 3)")
    radius = float(tolerance)
    if coverage > 0 and len(segments):
        sub = segments[np.random.default_rng(seed).permutation(len(segments))[:probe]]
        for _ in range(_MAX_SEARCH_ROUNDS):
            _, st = kdisks_pass(sub, size, radius, box, seed, show=False)
            if st["uncovered_segments"] <= (1.0 - coverage) * len(sub):
                break
            radius *= _SEARCH_FACTOR
    poses, stats = kdisks_pass(segments, size, radius, box, seed, desc)
    return poses, {**stats, "tolerance": round(radius, 6)}


def kdisks_pass(
    segments: np.ndarray, size: int, tolerance: float, box: Sequence[float], seed: int = 0, desc: str = "",
    show: bool = True,
) -> tuple[np.ndarray, dict]:
    """Greedy k-disks over [n, 6, 3] local segments. Token 0 is the zero motion; each further token is the mean of
    the still-unassigned segments within `tolerance` (mean distance over the box corners of poses 1..5) of a
    randomly drawn unassigned segment. Returns (poses float32 [k, 6, 3] with k <= size, stats)."""
    seg = np.ascontiguousarray(segments, dtype=np.float32)
    n = len(seg)
    if n == 0:
        return np.zeros((1, NUM_POSES, 3), np.float32), {"segments": 0, "zero_motion_segments": 0,
                                                         "uncovered_segments": 0, "tokens": 1}
    box_t = torch.tensor(np.asarray(box, dtype=np.float32))
    corners = box_corners(torch.from_numpy(seg[:, 1:]), box_t).reshape(n, 4 * (NUM_POSES - 1), 2).numpy()  # [n, 20, 2]
    cx, cy = np.ascontiguousarray(corners[..., 0]), np.ascontiguousarray(corners[..., 1])
    # Pruning keys, both lower bounds of the mean corner distance: the mean pose centre (= mean of the 20 corners)
    # and the mean heading scaled by 2r/pi (r = half box diagonal; opposite corners of a box rotated by dh are
    # 2 r sin(dh/2) >= 2 r dh/pi apart on average; headings are not unwrapped, so a segment ending near +-pi may miss
    # a neighbour across the wrap). A grid of tolerance-sized cells over these 3 keys yields the candidates from the
    # 3x3x3 cells around a query.
    radius = float(np.hypot(*np.asarray(box, dtype=np.float64)) / 2)
    keys3 = np.concatenate([seg[:, 1:, :2].mean(axis=1), seg[:, 1:, 2:].mean(axis=1) * 2 * radius / np.pi], axis=1)
    keys3 = np.ascontiguousarray(keys3, dtype=np.float32)
    cells = np.floor(keys3 / tolerance).astype(np.int64) + _CELL_OFFSET
    packed = (cells[:, 0] * _CELL_STRIDE + cells[:, 1]) * _CELL_STRIDE + cells[:, 2]
    by_key = np.argsort(packed, kind="stable")
    sorted_keys = packed[by_key]
    alive = np.ones(n, dtype=bool)

    def take(ref_corners: np.ndarray, ref_key: np.ndarray) -> np.ndarray:
        kx, ky, kh = (np.floor(ref_key / tolerance).astype(np.int64) + _CELL_OFFSET).tolist()
        starts = [((kx + a) * _CELL_STRIDE + ky + b) * _CELL_STRIDE + kh - 1 for a in (-1, 0, 1) for b in (-1, 0, 1)]
        lo = np.searchsorted(sorted_keys, starts)
        hi = np.searchsorted(sorted_keys, [k + 2 for k in starts], side="right")
        cand = np.concatenate([by_key[a:b] for a, b in zip(lo, hi)])
        gap = keys3[cand] - ref_key
        cand = cand[alive[cand] & (np.abs(gap[:, 2]) < tolerance) & (np.hypot(gap[:, 0], gap[:, 1]) < tolerance)]
        dx, dy = cx[cand] - ref_corners[:, 0], cy[cand] - ref_corners[:, 1]
        members = cand[np.sqrt(dx * dx + dy * dy).mean(axis=1) < tolerance]
        alive[members] = False
        return members

    zero = box_corners(torch.zeros(NUM_POSES - 1, 3), box_t).reshape(-1, 2).numpy()
    zero_members = len(take(zero, np.zeros(3, np.float32)))
    tokens = [np.zeros((NUM_POSES, 3), np.float32)]
    order = np.random.default_rng(seed).permutation(n)
    ptr = 0
    with tqdm(total=size - 1, desc=desc or "k-disks", leave=False, disable=None if show else True) as bar:
        while len(tokens) < size:
            while ptr < n and not alive[order[ptr]]:
                ptr += 1
            if ptr == n:
                break
            pick = order[ptr]
            members = take(corners[pick], keys3[pick])
            tokens.append(_mean_pose(seg[members]))
            bar.update(1)
    stats = {
        "segments": int(n),
        "zero_motion_segments": int(zero_members),
        "uncovered_segments": int(alive.sum()),
        "tokens": len(tokens),
    }
    return np.stack(tokens), stats


def _subsample(seg: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    """At most `limit` rows, drawn without replacement, order preserved."""
    return seg if len(seg) <= limit else seg[np.sort(rng.choice(len(seg), limit, replace=False))]


def _dedup(seg: np.ndarray) -> np.ndarray:
    """Segments with duplicates at 1 cm / 1 mrad removed (first occurrence kept, order preserved)."""
    key = np.round(seg.reshape(len(seg), NUM_POSES * 3) * np.array([100.0, 100.0, 1000.0] * NUM_POSES))
    mult = np.random.default_rng(12345).integers(1, 2**62, size=key.shape[1], dtype=np.int64)
    with np.errstate(over="ignore"):
        row_hash = (key.astype(np.int64) * mult).sum(axis=1)  # wrapping 64-bit hash of the rounded segment
    _, first = np.unique(row_hash, return_index=True)
    return seg[np.sort(first)]


def jitter_segments(seg: np.ndarray, sigma: Sequence[float], rng: np.random.Generator) -> np.ndarray:
    """Copies of [n, 6, 3] segments seen from a start pose offset by N(0, sigma) (x, y, heading) in the start frame,
    the offset fading linearly to zero by the end pose: the *corrective* motions that rolling matching needs once its
    matched pose has drifted from the log. Returned in the offset start's frame."""
    offset = rng.normal(0.0, 1.0, size=(len(seg), 1, 3)) * np.asarray(sigma, dtype=np.float64)
    fade = (1.0 - np.arange(NUM_POSES) / (NUM_POSES - 1))[None, :, None]
    moved = torch.from_numpy(seg.astype(np.float64) + fade * offset)
    out = relative(moved[:, :1], moved).numpy().astype(np.float32)
    out[:, 0] = 0.0
    return out


def build_vocab(
    scenes: Iterable[Scene],
    sizes: Sequence[int] = DEFAULT_SIZES,
    tolerances: Sequence[float] = DEFAULT_TOLERANCES,
    max_segments: int = DEFAULT_MAX_SEGMENTS,
    seed: int = 0,
    jitter: Sequence[Sequence[float]] | None = DEFAULT_JITTER,
    coverage: float = DEFAULT_COVERAGE,
) -> MotionVocab:
    """Cluster the motion segments of `scenes` into one vocabulary per type (see `kdisks`). Segments are deduplicated
    at 1 cm / 1 mrad and subsampled (seeded) to `max_segments` per type, half of them being jittered copies of the
    other half when `jitter` is set (`jitter_segments`, per-type sigmas; None disables). `tolerances` are the
    smallest k-disks radii, grown per type until the disks cover `coverage` of the segments. Deterministic."""
    if len(sizes) != NUM_AGENT_TYPES or len(tolerances) != NUM_AGENT_TYPES:
        raise ValueError(f"need 3 sizes and 3 tolerances (vehicle, pedestrian, cyclist), got {sizes}, {tolerances}")
    if min(sizes) < 2 or min(tolerances) <= 0:
        raise ValueError(f"sizes must be >= 2 and tolerances > 0, got {sizes}, {tolerances}")
    if jitter is not None and (len(jitter) != NUM_AGENT_TYPES or any(len(j) != 3 for j in jitter)):
        raise ValueError(f"jitter must be 3 (x, y, heading) sigmas per type, got {jitter}")
    parts: list[list[np.ndarray]] = [[] for _ in range(NUM_AGENT_TYPES)]
    num_scenes = 0
    for scene in scenes:
        for k, seg in enumerate(scene_segments(scene)):
            parts[k].append(seg)
        num_scenes += 1
    rng = np.random.default_rng(seed)
    vocabs = []
    info = {"scenes": num_scenes, "seed": seed, "tolerances": [float(t) for t in tolerances],
            "coverage": float(coverage), "jitter": None if jitter is None else [[float(x) for x in j] for j in jitter]}
    for k in range(NUM_AGENT_TYPES):
        seg = np.concatenate(parts[k]) if parts[k] else np.zeros((0, NUM_POSES, 3), np.float32)
        seg = _dedup(_subsample(seg, 4 * max_segments, rng))
        if jitter is not None and len(seg):
            seg = _subsample(seg, max_segments // 2, rng)
            seg = np.concatenate([seg, jitter_segments(seg, jitter[k], rng)])
        seg = _subsample(seg, max_segments, rng)
        poses, stats = kdisks(
            seg, int(sizes[k]), float(tolerances[k]), TYPE_BOXES[k], seed + k, TYPE_NAMES[k], coverage
        )
        vocabs.append(poses)
        info[TYPE_NAMES[k]] = stats
    width = max(int(sizes[k]) for k in range(NUM_AGENT_TYPES))
    padded = np.zeros((NUM_AGENT_TYPES, width, NUM_POSES, 3), np.float32)
    for k, p in enumerate(vocabs):
        padded[k, : len(p)] = p
    info["requested_sizes"] = [int(s) for s in sizes]
    return MotionVocab(padded, np.array([len(p) for p in vocabs]), TYPE_BOXES.copy(), info)
