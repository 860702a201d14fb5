"""Which scenes a stage uses: the held-out split by scenario-id hash (shared by pretraining, SFT and RL) and a
seeded sample of scenes from a shard store for rollouts.

The split is a pure function of the id (CRC-32 of the UTF-8 id, 10,000 buckets), so every stage, worker and run
agrees on which scenes are held out without a list being passed around. `fraction` restricts a stage to a stable
subset of its split, chosen by a second, independent hash of the id (a salted CRC-32), so the subset does not
correlate with the eval split and grows monotonically with `fraction`.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from typing import Iterable, Literal

import numpy as np

from drivetune.scene import Scene
from drivetune.shards import ShardStore, read_shard

_BUCKETS = 10_000
Split = Literal["train", "eval", "all"]


def _bucket(scenario_id: str, salt: bytes = b"") -> int:
    return zlib.crc32(salt + scenario_id.encode()) % _BUCKETS


def is_eval_id(scenario_id: str, eval_fraction: float) -> bool:
    """True for held-out scenes: the id's hash bucket falls below `eval_fraction` of the buckets."""
    return _bucket(scenario_id) < eval_fraction * _BUCKETS


def in_fraction(scenario_id: str, fraction: float) -> bool:
    """True for the stable `fraction` subset (independent of the eval split)."""
    return _bucket(scenario_id, b"fraction:") < fraction * _BUCKETS


def split_ids(ids: Iterable[str], eval_fraction: float) -> tuple[list[str], list[str]]:
    """(train ids, eval ids), each in the given order."""
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    train, held = [], []
    for sid in ids:
        (held if is_eval_id(sid, eval_fraction) else train).append(sid)
    return train, held


def split_predicate(split: Split, eval_fraction: float, fraction: float = 1.0):
    """A picklable predicate on scenario ids for `split` restricted to `fraction` (for `ShardStore.to_ray_dataset`)."""
    return _SplitFilter(split, eval_fraction, fraction)


class _SplitFilter:
    def __init__(self, split: Split, eval_fraction: float, fraction: float) -> None:
        if split not in ("train", "eval", "all"):
            raise ValueError(f"split must be 'train', 'eval' or 'all', got {split!r}")
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        if not 0.0 <= eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
        self.split, self.eval_fraction, self.fraction = split, eval_fraction, fraction

    def __call__(self, scenario_id: str) -> bool:
        if self.split != "all" and is_eval_id(scenario_id, self.eval_fraction) != (self.split == "eval"):
            return False
        return self.fraction >= 1.0 or in_fraction(scenario_id, self.fraction)


def sample_scenes(store: ShardStore, n: int, seed: int, fraction: float = 1.0, split: Split = "train",
                  eval_fraction: float = 0.1) -> list[Scene]:
    """`n` distinct scenes drawn (seeded) from the `fraction` subset of `split`; each shard touched is verified and
    only the drawn row groups are read. Raises ValueError when the pool holds fewer than `n` scenes."""
    keep = split_predicate(split, eval_fraction, fraction)
    pool = [sid for sid in store.scenario_ids() if keep(sid)]
    if n < 1 or n > len(pool):
        raise ValueError(f"{store.directory}: cannot sample {n} scenes from the {len(pool)} of split {split!r} "
                         f"(fraction {fraction}, eval_fraction {eval_fraction})")
    chosen = [pool[i] for i in np.random.default_rng(seed).choice(len(pool), n, replace=False)]
    by_shard: dict[str, list[str]] = defaultdict(list)
    for sid in chosen:
        by_shard[store.shard_of(sid)].append(sid)
    found: dict[str, Scene] = {}
    for name, ids in by_shard.items():
        found.update((s.scenario_id, s) for s in read_shard(store.directory / name, ids, store.shards[name]["sha256"]))
    return [found[sid] for sid in chosen]
