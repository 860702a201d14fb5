"""Pretraining data as a stream: shard rows -> tokenized samples in Ray Data tasks -> mini-batches on each worker.

No training worker holds its share of the data: the driver builds a lazy Ray Dataset (verified shard reads, the
train/eval split by scenario-id hash, tokenization in `map_batches` tasks), Ray Train splits it across the workers,
and each worker pulls `batch_size` samples at a time through a small local shuffle buffer. Memory per worker is
bounded by the buffer and Ray Data's streaming backpressure, not by the number of scenes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa

from drivetune.model import AgentBatch, MapBatch, agent_batch, map_batch
from drivetune.model.batch import select_agents
from drivetune.scene import Scene
from drivetune.shards import ShardStore, scenes_from_table
from drivetune.scene_sampling import split_predicate
from drivetune.tokenizer import AgentTokens, MapTokens, MotionVocab, tokenize_map, tokenize_scene


@dataclass
class Sample:
    """One tokenized scene: its map tokens and the tokens of the agents the model simulates (`select_agents`)."""

    scenario_id: str
    map_tokens: MapTokens
    agent_tokens: AgentTokens  # rows = the selected agents, in track order
    agents: np.ndarray  # their track indices


def make_sample(scene: Scene, vocab: MotionVocab) -> Sample:
    agents = select_agents(scene)
    full = tokenize_scene(scene, vocab)
    picked = AgentTokens(**{f.name: getattr(full, f.name)[agents] for f in fields(AgentTokens)})
    return Sample(scene.scenario_id, tokenize_map(scene), picked, agents)


def make_batch(samples: Sequence[Sample]) -> tuple[MapBatch, AgentBatch]:
    return map_batch([s.map_tokens for s in samples]), agent_batch([s.agent_tokens for s in samples])


@functools.lru_cache(maxsize=2)
def _vocab(path: str, expected_hash: str) -> MotionVocab:
    vocab = MotionVocab.load(path)
    if vocab.hash != expected_hash:
        raise ValueError(f"{path}: vocabulary changed while training (hash {vocab.hash} != {expected_hash})")
    return vocab


def tokenize_batch(batch: pa.Table, vocab_path: str, vocab_hash: str) -> dict[str, np.ndarray]:
    """Ray Data task: shard rows (Arrow) -> {"scenario_id", "sample"} (a `Sample` object per row)."""
    vocab = _vocab(vocab_path, vocab_hash)
    samples = [make_sample(s, vocab) for s in scenes_from_table(batch, "<ray data batch>")]
    column = np.empty(len(samples), dtype=object)
    column[:] = samples
    return {"scenario_id": np.array([s.scenario_id for s in samples], dtype=object), "sample": column}


def build_datasets(shards: str, vocab_path: str, eval_fraction: float, fraction: float,
                   eval_scenes: int) -> tuple[dict[str, Any], int, int]:
    """Ray Datasets {"train": tokenized samples, "eval": up to `eval_scenes` held-out scene rows}, #train, #eval.
    Without held-out scenes, "eval" holds training scenes (and #eval is 0)."""
    from drivetune.config import ConfigError

    store = ShardStore(shards)
    ids = store.scenario_ids()
    if not ids:
        raise ConfigError(f"{shards}: shard store has no scenes")
    vocab_hash = MotionVocab.load(vocab_path).hash
    keep_train = split_predicate("train", eval_fraction, fraction)
    n_train = sum(map(keep_train, ids))
    if n_train == 0:
        raise ConfigError(f"{shards}: no training scenes (eval_fraction {eval_fraction}, fraction {fraction})")
    train = store.to_ray_dataset(keep=keep_train).map_batches(
        tokenize_batch, batch_format="pyarrow", batch_size=8,
        fn_kwargs={"vocab_path": vocab_path, "vocab_hash": vocab_hash})
    keep_eval = split_predicate("eval", eval_fraction)
    n_eval = sum(map(keep_eval, ids))
    held = store.to_ray_dataset(keep=keep_eval if n_eval else keep_train).limit(eval_scenes)
    return {"train": train, "eval": held}, n_train, n_eval


def training_batches(shard: Any, batch_size: int, shuffle_buffer: int, seed: int) -> Iterator[list[Sample]]:
    """Endless mini-batches of `batch_size` samples from a Ray Train dataset shard, epoch after epoch (a local
    shuffle buffer of `shuffle_buffer` samples, seeded per epoch)."""
    epoch = 0
    while True:
        count = 0
        for batch in shard.iter_batches(batch_size=batch_size, batch_format="numpy", drop_last=True,
                                        local_shuffle_buffer_size=shuffle_buffer or None,
                                        local_shuffle_seed=seed + epoch if shuffle_buffer else None):
            count += 1
            yield list(batch["sample"])
        if count == 0:
            raise ValueError(f"this worker received fewer than batch_size={batch_size} training scenes: use fewer "
                             "workers, a smaller batch_size or more scenes")
        epoch += 1
