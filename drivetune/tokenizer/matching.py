"""Rolling token matching of logged tracks: boundary-pose preparation (heading-flip cleanup, short-gap interpolation,
backward extrapolation to the previous token boundary) and `tokenize_scene`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from drivetune.scene import HEADING, HEIGHT, LENGTH, STEP_SECONDS, VX, VY, WIDTH, X, Y, Scene, wrap_angle
from drivetune.tokenizer.layout import NUM_AGENT_TYPES, NUM_BOUNDARIES, NUM_TOKENS, TOKEN_STEPS, TYPE_NAMES
from drivetune.tokenizer.layout import type_index
from drivetune.tokenizer.motion import MotionVocab, TorchVocab, nearest_tokens, token_end_poses, token_step_poses

HEADING_FLIP_RAD = 1.5  # a step-to-step heading change above this is a sensor flip, not motion
MAX_GAP_STEPS = 2 * TOKEN_STEPS  # interior invalid gaps up to this long are interpolated at boundaries


def clean_headings(heading: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """float64 [A, T] headings where a valid step jumping > 1.5 rad from the last kept valid heading (seen within
    `TOKEN_STEPS` steps) repeats that heading instead. Invalid steps are left as they are."""
    out = np.array(heading, dtype=np.float64)
    prev = np.zeros(out.shape[0])
    last_seen = np.full(out.shape[0], -(10**6))
    for t in range(out.shape[1]):
        v = valid[:, t]
        recent = v & (t - last_seen <= TOKEN_STEPS)
        flip = recent & (np.abs(wrap_angle(out[:, t] - prev)) > HEADING_FLIP_RAD)
        out[flip, t] = prev[flip]
        prev = np.where(v, out[:, t], prev)
        last_seen = np.where(v, t, last_seen)
    return out


def boundary_poses(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """Logged poses at the 19 token boundaries: (poses float64 [A, 19, 3] (x, y, heading), available bool [A, 19]).

    A boundary is available if its step is valid; or it lies in an interior invalid gap of at most `MAX_GAP_STEPS`
    (linear interpolation); or it is the last boundary before the track's first valid step (constant-velocity
    extrapolation backwards, so a track appearing mid-token still gets that token). Scenes shorter than 91 steps
    (e.g. 11-step history-only scenes) get the boundaries they reach."""
    st, valid = scene.states, scene.valid.astype(bool)
    A, T = valid.shape
    head = clean_headings(st[:, :, HEADING], valid)
    steps = np.arange(NUM_BOUNDARIES) * TOKEN_STEPS  # boundaries past the scene's last step stay unavailable
    idx = np.arange(T)
    prev_valid = np.maximum.accumulate(np.where(valid, idx, -1), axis=1)  # last valid step <= t
    next_valid = np.flip(np.minimum.accumulate(np.flip(np.where(valid, idx, T), axis=1), axis=1), axis=1)
    poses = np.zeros((A, NUM_BOUNDARIES, 3))
    avail = np.zeros((A, NUM_BOUNDARIES), dtype=bool)
    rows = np.arange(A)
    for b, s in enumerate(steps[steps < T]):
        p, n = prev_valid[:, s], next_valid[:, s]
        direct = valid[:, s]
        gap = ~direct & (p >= 0) & (n < T) & (n - p <= MAX_GAP_STEPS)
        before = ~direct & (p < 0) & (n < T) & (n - s < TOKEN_STEPS)
        pc, nc = np.clip(p, 0, T - 1), np.clip(n, 0, T - 1)
        w = np.where(gap, (s - pc) / np.maximum(nc - pc, 1), 0.0)
        xy = (1 - w)[:, None] * st[rows, pc][:, [X, Y]] + w[:, None] * st[rows, nc][:, [X, Y]]
        h = head[rows, pc] + w * wrap_angle(head[rows, nc] - head[rows, pc])
        back = (s - nc) * STEP_SECONDS  # negative: seconds before the first valid step
        xy_back = st[rows, nc][:, [X, Y]] + back[:, None] * st[rows, nc][:, [VX, VY]]
        poses[:, b, :2] = np.where(direct[:, None], st[:, s, [X, Y]], np.where(before[:, None], xy_back, xy))
        poses[:, b, 2] = wrap_angle(np.where(direct, head[:, s], np.where(before, head[rows, nc], h)))
        avail[:, b] = direct | gap | before
    return poses, avail


@dataclass
class AgentTokens:
    """Tokens of every track of a scene (scene order). See the package docstring for the layout."""

    token_ids: np.ndarray  # int64 [A, 18]
    token_valid: np.ndarray  # bool [A, 18]
    poses: np.ndarray  # float64 [A, 19, 3] matched boundary poses (x, y, heading)
    pose_valid: np.ndarray  # bool [A, 19]
    logged_poses: np.ndarray  # float64 [A, 19, 3] logged (cleaned/interpolated) boundary poses
    type_idx: np.ndarray  # int64 [A]
    size: np.ndarray  # float32 [A, 3] length, width, height (at the current step; else the mean over valid steps)


def _as_torch(vocab: MotionVocab | TorchVocab) -> TorchVocab:
    return vocab.to_torch("cpu") if isinstance(vocab, MotionVocab) else vocab


def tokenize_scene(scene: Scene, vocab: MotionVocab | TorchVocab) -> AgentTokens:
    """Rolling matching: token i is the nearest token (end box vs logged box at boundary i+1) applied from the
    *matched* pose at boundary i; a chain (re)starts at the logged pose after any unavailable boundary.
    Matching runs in the vocabulary's dtype/device on coordinates centred on the scene (exact in float32)."""
    tv = _as_torch(vocab)
    logged, avail = boundary_poses(scene)
    types = type_index(scene.track_types)
    A = scene.num_tracks
    ids = np.zeros((A, NUM_TOKENS), dtype=np.int64)
    tok_valid = avail[:, :-1] & avail[:, 1:]
    origin = np.zeros(3)
    if avail.any():
        origin[:2] = logged[avail][:, :2].mean(axis=0)
    local = torch.as_tensor(logged - origin, dtype=tv.poses.dtype, device=tv.device)  # [A, 19, 3]
    matched = local.clone()
    t_idx = torch.as_tensor(types, device=tv.device)
    for i in range(NUM_TOKENS):
        sel = torch.as_tensor(np.flatnonzero(tok_valid[:, i]), device=tv.device)
        if sel.numel() == 0:
            continue
        best, _ = nearest_tokens(tv, t_idx[sel], matched[sel, i], local[sel, i + 1], k=1)
        ids[sel.cpu().numpy(), i] = best[:, 0].cpu().numpy()
        matched[sel, i + 1] = token_end_poses(tv, t_idx[sel], matched[sel, i], best[:, 0])
    poses = matched.cpu().double().numpy() + origin
    poses[~avail] = 0.0
    return AgentTokens(ids, tok_valid, poses, avail, logged, types, agent_sizes(scene))


def agent_sizes(scene: Scene) -> np.ndarray:
    """[A, 3] float32 length, width, height of every track: at the current step where valid, else the mean over the
    track's valid steps (0 for a track never valid)."""
    box = scene.states[:, :, [LENGTH, WIDTH, HEIGHT]]
    valid = scene.valid.astype(bool)
    mean = (box * valid[..., None]).sum(1) / np.maximum(valid.sum(1), 1)[:, None]
    cur = scene.current_time_index
    return np.where(valid[:, cur, None], box[:, cur], mean).astype(np.float32)


def reconstruction_errors(scene: Scene, tokens: AgentTokens, vocab: MotionVocab | TorchVocab) -> dict[str, np.ndarray]:
    """Per-type arrays of errors, matched vs logged: boundary position error (m) and |heading error| (rad) over
    chained boundaries, and 10 Hz position error over every valid logged step covered by a valid token."""
    tv = _as_torch(vocab)
    out: dict[str, np.ndarray] = {}
    chained = np.zeros_like(tokens.pose_valid)
    chained[:, 1:] = tokens.token_valid
    pos = np.linalg.norm(tokens.poses[..., :2] - tokens.logged_poses[..., :2], axis=-1)
    head = np.abs(wrap_angle(tokens.poses[..., 2] - tokens.logged_poses[..., 2]))
    origin = np.zeros(3)
    if tokens.pose_valid.any():
        origin[:2] = tokens.poses[tokens.pose_valid][:, :2].mean(axis=0)
    starts = torch.as_tensor(tokens.poses[:, :-1] - origin, dtype=tv.poses.dtype, device=tv.device)
    types = torch.as_tensor(tokens.type_idx, device=tv.device)[:, None]
    ids = torch.as_tensor(tokens.token_ids, device=tv.device)
    steps = token_step_poses(tv, types, starts, ids).double().cpu().numpy() + origin  # [A, 18, 5, 3]
    t = np.arange(NUM_TOKENS)[:, None] * TOKEN_STEPS + np.arange(1, TOKEN_STEPS + 1)[None, :]  # [18, 5]
    inside = t < scene.num_steps
    t = np.minimum(t, scene.num_steps - 1)
    logged_xy = scene.states[:, t][..., [X, Y]]
    ok10 = scene.valid[:, t] & tokens.token_valid[:, :, None] & inside[None]
    err10 = np.linalg.norm(steps[..., :2] - logged_xy, axis=-1)
    for k in range(NUM_AGENT_TYPES):
        a = tokens.type_idx == k
        name = TYPE_NAMES[k]
        out[f"{name}_pos"] = pos[a][chained[a]]
        out[f"{name}_heading"] = head[a][chained[a]]
        out[f"{name}_pos10hz"] = err10[a][ok10[a]]
    return out
