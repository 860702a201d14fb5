"""Token layout constants, agent-type mapping and the 2D pose/box geometry shared by the tokenizers (torch)."""

from __future__ import annotations


import numpy as np
import torch

from drivetune.scene import NUM_STEPS, AgentType, wrap_angle

TOKEN_STEPS = 5  # steps per token (0.5 s at 10 Hz)
NUM_BOUNDARIES = (NUM_STEPS - 1) // TOKEN_STEPS + 1  # 19 boundaries: steps 0, 5, ..., 90
NUM_TOKENS = NUM_BOUNDARIES - 1  # 18 token intervals per agent
CURRENT_BOUNDARY = 2  # boundary at step 10 (current time)
FIRST_FUTURE_TOKEN = CURRENT_BOUNDARY  # tokens 2..17 are the 16 future tokens

TYPE_VEHICLE, TYPE_PEDESTRIAN, TYPE_CYCLIST = 0, 1, 2
NUM_AGENT_TYPES = 3
TYPE_NAMES = ("vehicle", "pedestrian", "cyclist")
# Fixed box (length, width) per type used for contours in clustering and matching.
TYPE_BOXES = np.array([[4.8, 2.0], [1.0, 1.0], [2.0, 1.0]], dtype=np.float32)

_TYPE_LOOKUP = np.zeros(max(int(t) for t in AgentType) + 1, dtype=np.int64)  # UNSET/OTHER -> vehicle
_TYPE_LOOKUP[int(AgentType.PEDESTRIAN)] = TYPE_PEDESTRIAN
_TYPE_LOOKUP[int(AgentType.CYCLIST)] = TYPE_CYCLIST


def type_index(track_types: np.ndarray) -> np.ndarray:
    """int64 [A] tokenizer type index (0 veh, 1 ped, 2 cyc) of WOMD `AgentType` values; UNSET/OTHER -> vehicle."""
    t = np.asarray(track_types, dtype=np.int64)
    if t.size and (t.min() < 0 or t.max() >= len(_TYPE_LOOKUP)):
        raise ValueError(f"unknown agent type values {sorted(set(t[(t < 0) | (t >= len(_TYPE_LOOKUP))].tolist()))}")
    return _TYPE_LOOKUP[t]


def compose(frame: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
    """Global pose [..., 3] of `local` poses (x, y, heading) expressed in `frame` poses; broadcasts."""
    c, s = torch.cos(frame[..., 2]), torch.sin(frame[..., 2])
    x = frame[..., 0] + c * local[..., 0] - s * local[..., 1]
    y = frame[..., 1] + s * local[..., 0] + c * local[..., 1]
    return torch.stack([x, y, wrap_angle(frame[..., 2] + local[..., 2])], dim=-1)


def relative(frame: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
    """`pose` [..., 3] expressed in the local frame of `frame` [..., 3] (inverse of `compose`)."""
    c, s = torch.cos(frame[..., 2]), torch.sin(frame[..., 2])
    dx, dy = pose[..., 0] - frame[..., 0], pose[..., 1] - frame[..., 1]
    return torch.stack([c * dx + s * dy, -s * dx + c * dy, wrap_angle(pose[..., 2] - frame[..., 2])], dim=-1)


def box_corners(pose: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """Corners [..., 4, 2] of boxes (length, width) [..., 2] at poses [..., 3]: front-left, front-right, rear-right,
    rear-left."""
    half_l, half_w = box[..., 0:1] / 2, box[..., 1:2] / 2
    lx = torch.cat([half_l, half_l, -half_l, -half_l], -1)  # [..., 4] (no constant tensor: no host -> device copy)
    ly = torch.cat([half_w, -half_w, -half_w, half_w], -1)
    c, s = torch.cos(pose[..., 2:3]), torch.sin(pose[..., 2:3])
    x = pose[..., 0:1] + c * lx - s * ly
    y = pose[..., 1:2] + s * lx + c * ly
    return torch.stack([x, y], dim=-1)


def mean_corner_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean over the 4 corners of the distance between corner sets [..., 4, 2]; broadcasts."""
    dx, dy = a[..., 0] - b[..., 0], a[..., 1] - b[..., 1]  # fresh tensors: the in-place ops below are safe
    return dx.mul_(dx).add_(dy.mul_(dy)).sqrt_().mean(dim=-1)
