"""Weights as one flat numpy buffer per dtype: one object-store object with a handful of buffers instead of hundreds,
so each worker deserializes a few arrays and takes zero-copy views of the rest."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class PackedState:
    """`buffers[dtype]` holds the concatenated flat arrays; `index[name] = (dtype, offset, shape)`."""

    buffers: dict[str, np.ndarray]
    index: dict[str, tuple[str, int, tuple[int, ...]]]

    def arrays(self) -> dict[str, np.ndarray]:
        """name -> array views into the buffers (no copy; read-only when the buffers come from the object store)."""
        out = {}
        for name, (dtype, offset, shape) in self.index.items():
            size = int(np.prod(shape, dtype=np.int64))
            out[name] = self.buffers[dtype][offset : offset + size].reshape(shape)
        return out


def pack_state(state: dict[str, np.ndarray]) -> PackedState:
    """Concatenate a numpy state dict into one flat buffer per dtype."""
    index: dict[str, tuple[str, int, tuple[int, ...]]] = {}
    parts: dict[str, list[np.ndarray]] = {}
    sizes: dict[str, int] = {}
    for name, arr in state.items():
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"weights entry {name!r} is {type(arr).__name__}, expected a numpy array (torch tensors "
                            "would be pickled and copied; use drivetune.checkpoint.state_dict_to_numpy)")
        key = arr.dtype.str
        index[name] = (key, sizes.get(key, 0), tuple(arr.shape))
        parts.setdefault(key, []).append(arr.reshape(-1))
        sizes[key] = sizes.get(key, 0) + arr.size
    return PackedState({k: np.concatenate(v) for k, v in parts.items()}, index)
