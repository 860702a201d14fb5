"""Per-type motion vocabularies: storage (safetensors + sha256 content hash) and batched torch token geometry."""

from __future__ import annotations

import hashlib
import math
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from drivetune.atomic import atomic_path
from drivetune.errors import VocabError
from drivetune.tokenizer.layout import NUM_AGENT_TYPES, TOKEN_STEPS, TYPE_BOXES, TYPE_NAMES, box_corners, compose
from drivetune.tokenizer.layout import mean_corner_distance, relative

FORMAT = "drivetune-motion-vocab-v1"
NUM_POSES = TOKEN_STEPS + 1  # poses at steps 0..5 of a token
_PRUNE = 64  # tokens with the nearest end centres whose exact corner distance nearest_tokens computes first


def _content_hash(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256(FORMAT.encode())
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


@dataclass
class MotionVocab:
    """All three types' vocabularies, padded to a common size V. See the package docstring for the layout."""

    poses: np.ndarray  # float32 [3, V, 6, 3] local (x, y, heading) per token pose, steps 0..5
    sizes: np.ndarray  # int64 [3] real vocabulary size per type (token ids >= size are padding)
    boxes: np.ndarray = field(default_factory=lambda: TYPE_BOXES.copy())  # float32 [3, 2] (length, width)
    info: dict = field(default_factory=dict)  # build parameters and statistics (not hashed)

    def __post_init__(self) -> None:
        self.poses = np.ascontiguousarray(self.poses, dtype=np.float32)
        self.sizes = np.ascontiguousarray(self.sizes, dtype=np.int64)
        self.boxes = np.ascontiguousarray(self.boxes, dtype=np.float32)
        p = self.poses
        if p.ndim != 4 or p.shape[0] != NUM_AGENT_TYPES or p.shape[2:] != (NUM_POSES, 3):
            raise VocabError(f"poses shape {p.shape} != (3, V, {NUM_POSES}, 3)")
        if self.sizes.shape != (NUM_AGENT_TYPES,) or self.sizes.min() < 1 or self.sizes.max() > p.shape[1]:
            raise VocabError(f"sizes {self.sizes.tolist()} must be 3 values in [1, {p.shape[1]}]")
        if self.boxes.shape != (NUM_AGENT_TYPES, 2) or not (self.boxes > 0).all():
            raise VocabError(f"boxes {self.boxes.tolist()} must be [3, 2] positive (length, width)")
        if not np.isfinite(p).all():
            raise VocabError("non-finite token poses")
        if np.abs(p[:, :, 0]).max() > 1e-5 or np.abs(p[:, 0]).max() > 1e-5:
            raise VocabError("every token must start at the origin and token 0 must be the zero motion")

    @property
    def num_tokens(self) -> int:
        """Common (padded) vocabulary size V: the width of the model's output head."""
        return int(self.poses.shape[1])

    @property
    def token_mask(self) -> np.ndarray:
        """bool [3, V]: True for real tokens of each type."""
        return np.arange(self.num_tokens)[None, :] < self.sizes[:, None]

    def arrays(self) -> dict[str, np.ndarray]:
        return {"poses": self.poses, "sizes": self.sizes, "boxes": self.boxes}

    @property
    def hash(self) -> str:
        """sha256 hex of the arrays (poses, sizes, boxes): the identity checkpoints record."""
        return _content_hash(self.arrays())

    def save(self, path: str | Path) -> Path:
        """Write atomically as safetensors with the hash and build info in its metadata."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"format": FORMAT, "hash": self.hash, "info": json.dumps(self.info, sort_keys=True)}
        with atomic_path(path) as tmp:
            save_file(self.arrays(), str(tmp), metadata=meta)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "MotionVocab":
        """Read a vocabulary; raises VocabError if the file is malformed or its arrays do not match its hash."""
        path = Path(path)
        if not path.is_file():
            raise VocabError(f"{path}: no such vocabulary file")
        try:
            with safe_open(str(path), framework="numpy") as f:
                meta = f.metadata() or {}
                arrays = {name: f.get_tensor(name) for name in f.keys()}
        except (SafetensorError, OSError, ValueError) as e:
            raise VocabError(f"{path}: not a readable safetensors vocabulary ({e})") from e
        if meta.get("format") != FORMAT:
            raise VocabError(f"{path}: format {meta.get('format')!r} != {FORMAT!r}")
        missing = {"poses", "sizes", "boxes"} - set(arrays)
        if missing:
            raise VocabError(f"{path}: missing arrays {sorted(missing)}")
        try:
            vocab = cls(arrays["poses"], arrays["sizes"], arrays["boxes"], json.loads(meta.get("info", "{}")))
        except (VocabError, json.JSONDecodeError) as e:
            raise VocabError(f"{path}: {e}") from e
        if vocab.hash != meta.get("hash"):
            raise VocabError(f"{path}: content hash {vocab.hash[:16]} != recorded {str(meta.get('hash'))[:16]}")
        return vocab

    def to_torch(self, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> "TorchVocab":
        return TorchVocab.from_vocab(self, device, dtype)

    def summary(self) -> str:
        return ", ".join(f"{n} {int(s)}" for n, s in zip(TYPE_NAMES, self.sizes)) + f" tokens (hash {self.hash[:12]})"


@dataclass
class TorchVocab:
    """Torch view of a MotionVocab on one device, with precomputed local end-box corners."""

    poses: torch.Tensor  # [3, V, 6, 3]
    token_mask: torch.Tensor  # bool [3, V]
    boxes: torch.Tensor  # [3, 2]
    end_corners: torch.Tensor  # [3, V, 4, 2] corners of each token's end box in its start frame
    end_centres: torch.Tensor  # [3, V, 2] centre of each token's end box (its end position)
    hash: str

    @classmethod
    def from_vocab(cls, vocab: MotionVocab, device: str | torch.device, dtype: torch.dtype) -> "TorchVocab":
        poses = torch.as_tensor(vocab.poses, dtype=dtype, device=device)
        boxes = torch.as_tensor(vocab.boxes, dtype=dtype, device=device)
        ends = box_corners(poses[:, :, -1], boxes[:, None, :])
        mask = torch.as_tensor(vocab.token_mask, device=device)
        return cls(poses, mask, boxes, ends, poses[:, :, -1, :2].contiguous(), vocab.hash)

    @property
    def num_tokens(self) -> int:
        return int(self.poses.shape[1])

    @property
    def device(self) -> torch.device:
        return self.poses.device


def _broadcast(tv: TorchVocab, type_idx, start_pose, *others):
    start_pose = torch.as_tensor(start_pose, dtype=tv.poses.dtype, device=tv.device)
    type_idx = torch.as_tensor(type_idx, dtype=torch.long, device=tv.device)
    shape = torch.broadcast_shapes(type_idx.shape, start_pose.shape[:-1], *[o.shape[:-1] for o in others])
    return shape, type_idx.expand(shape), start_pose.expand(*shape, 3)


def token_end_poses(tv: TorchVocab, type_idx, start_pose, token_ids) -> torch.Tensor:
    """Global pose [..., 3] reached by applying `token_ids` [...] from `start_pose` [..., 3] (broadcasting)."""
    token_ids = torch.as_tensor(token_ids, dtype=torch.long, device=tv.device)
    shape, t, start = _broadcast(tv, type_idx, start_pose, token_ids[..., None])
    return compose(start, tv.poses[t, token_ids.expand(shape), -1])


def token_step_poses(tv: TorchVocab, type_idx, start_pose, token_ids) -> torch.Tensor:
    """The token's global 10 Hz poses at its steps 1..5: [..., 5, 3]; the last equals `token_end_poses`."""
    token_ids = torch.as_tensor(token_ids, dtype=torch.long, device=tv.device)
    shape, t, start = _broadcast(tv, type_idx, start_pose, token_ids[..., None])
    return compose(start[..., None, :], tv.poses[t, token_ids.expand(shape), 1:])


def nearest_tokens(
    tv: TorchVocab, type_idx, start_pose, target_pose, k: int = 1, chunk: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k tokens whose end box, placed at `start_pose`, is nearest to the box at `target_pose` (type's fixed shape,
    mean corner distance). Returns (ids int64 [..., k], distances [..., k]) in ascending distance; padding ids come
    only with distance inf (k above the type's size). Work is chunked by `chunk` rows to bound memory. On CPU the
    type ids are checked and a pruned search runs per type; on other devices every row is measured against its whole
    vocabulary (the same exact result, with no host synchronisation)."""
    target_pose = torch.as_tensor(target_pose, dtype=tv.poses.dtype, device=tv.device)
    shape, t, start = _broadcast(tv, type_idx, start_pose, target_pose)
    if not 1 <= k <= tv.num_tokens:
        raise ValueError(f"k={k} outside [1, {tv.num_tokens}]")
    target = target_pose.expand(*shape, 3).reshape(-1, 3)
    t, start = t.reshape(-1), start.reshape(-1, 3)
    if t.device.type == "cpu" and t.numel() and (int(t.min()) < 0 or int(t.max()) >= tv.poses.shape[0]):
        raise ValueError(f"type_idx values must be in [0, {tv.poses.shape[0]}), got {t.min().item()}..{t.max().item()}")
    goal = box_corners(relative(start, target), tv.boxes[t])  # [n, 4, 2] target box in the start frame
    ids = torch.zeros(t.shape[0], k, dtype=torch.long, device=tv.device)
    dists = torch.zeros(t.shape[0], k, dtype=tv.poses.dtype, device=tv.device)
    if tv.device.type != "cpu":
        for lo in range(0, t.shape[0], chunk):
            r = slice(lo, lo + chunk)
            d = mean_corner_distance(tv.end_corners[t[r]], goal[r, None]).masked_fill_(~tv.token_mask[t[r]], math.inf)
            dists[r], ids[r] = torch.topk(d, k, dim=-1, largest=False, sorted=True)
        return ids.reshape(*shape, k), dists.reshape(*shape, k)
    for kind in range(tv.poses.shape[0]):
        rows = torch.nonzero(t == kind).flatten()
        for lo in range(0, rows.shape[0], chunk):
            r = rows[lo : lo + chunk]
            ids[r], dists[r] = _nearest_of_type(tv, kind, goal[r], k)
    return ids.reshape(*shape, k), dists.reshape(*shape, k)


def _nearest_of_type(tv: TorchVocab, kind: int, goal: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k by mean corner distance for [m, 4, 2] goal boxes of one type. The box-centre distance is a lower
    bound of the mean corner distance, so the exact distance is computed for the `prune` tokens with the nearest
    centres only; rows whose k-th exact distance exceeds their `prune`-th centre distance are recomputed in full."""
    mask = tv.token_mask[kind]
    prune = min(tv.num_tokens, max(4 * k, _PRUNE))
    g = goal.mean(dim=1)  # [m, 2] goal box centre
    cx, cy = tv.end_centres[kind, :, 0] - g[:, :1], tv.end_centres[kind, :, 1] - g[:, 1:]  # [m, V]
    centre_sq = cx.mul_(cx).add_(cy.mul_(cy)).masked_fill_(~mask, float("inf"))
    bound_sq, cand = torch.topk(centre_sq, prune, dim=-1, largest=False, sorted=True)  # [m, P]
    d = mean_corner_distance(tv.end_corners[kind][cand], goal[:, None])  # [m, P]
    d = d.masked_fill_(~mask[cand], float("inf"))
    top_d, pos = torch.topk(d, k, dim=-1, largest=False, sorted=True)
    top_i = torch.gather(cand, 1, pos)
    unsure = torch.nonzero(top_d[:, -1] ** 2 > bound_sq[:, -1]).flatten() if prune < tv.num_tokens else pos[:0, 0]
    if unsure.numel():
        full = mean_corner_distance(tv.end_corners[kind][None], goal[unsure, None]).masked_fill_(~mask, float("inf"))
        redo = torch.topk(full, k, dim=-1, largest=False, sorted=True)
        top_d[unsure], top_i[unsure] = redo.values, redo.indices
    return top_i, top_d
