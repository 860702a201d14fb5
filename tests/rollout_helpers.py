"""A micro policy, six small scene groups and in-process reference rollouts for rollout-pool tests (metrics, fault
tolerance); the reference is what the pool must return whatever happens to its workers or nodes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from drivetune.checkpoint import state_dict_to_numpy
from drivetune.model import BehaviorModel, ModelConfig
from drivetune.samplers import SamplerConfig
from drivetune.scene import Scene
from drivetune.womd import load_scene
from model_helpers import grid_vocab
from rollout_workers import PolicySpec, RolloutBatch, RolloutWorker

SAMPLER = SamplerConfig(kind="topk", k=8)
GROUP, SEED = 2, 4
COMPARED = ("tokens", "logp", "x", "y", "heading")


def micro_policy(scene_files: list[Path], copies: int = 3) -> tuple[list[Scene], dict[str, np.ndarray], PolicySpec]:
    """Scenes (each file's scene under `copies` scenario ids), numpy weights, a reward-free PolicySpec."""
    base = [load_scene(f) for f in scene_files]
    torch.manual_seed(0)
    model = BehaviorModel(ModelConfig.named("micro", agent_layers=1), grid_vocab())
    scenes = [dataclasses.replace(s, scenario_id=f"{s.scenario_id}-{i}") for i in range(copies) for s in base]
    return scenes, state_dict_to_numpy(model), dataclasses.replace(PolicySpec.from_model(model), rewards=False)


def reference(spec: PolicySpec, weights: dict[str, np.ndarray], scenes: list[Scene], version: int = 1
              ) -> dict[str, RolloutBatch]:
    """One scene per call, like the pool's tasks (same batch shapes, so the same float arithmetic)."""
    worker = RolloutWorker(spec)
    worker.set_weights(weights, version)
    return {s.scenario_id: worker.generate([s], GROUP, SAMPLER, SEED)[0] for s in scenes}


def assert_same_groups(got: list[RolloutBatch], ref: dict[str, RolloutBatch], version: int = 1) -> None:
    """Every group exactly once, from `version`, bit-identical to the reference."""
    assert sorted(b.scenario_id for b in got) == sorted(ref)
    for b in got:
        assert b.policy_version == version, (b.scenario_id, b.policy_version)
        for name in COMPARED:
            assert np.array_equal(getattr(b, name), getattr(ref[b.scenario_id], name)), (b.scenario_id, name)


def shifted(weights: dict[str, np.ndarray], delta: float = 0.05) -> dict[str, np.ndarray]:
    """Another policy version: every float array moved by `delta`."""
    return {k: (v + np.float32(delta) if v.dtype == np.float32 else v) for k, v in weights.items()}


def rft_data(root: Path) -> Path:
    """Six synthetic scenes in shards and a random micro BC checkpoint (`root/shards`, `root/bc`) for RL-loop tests."""
    from drivetune.checkpoint import save_checkpoint
    from drivetune.shards import write_shards
    from drivetune.synth.files import generate
    from drivetune.tokenizer import build_vocab

    scenes = [generate(11, i) for i in range(6)]
    write_shards(root / "shards", scenes, shard_size=3)
    torch.manual_seed(0)
    model = BehaviorModel(ModelConfig.named("micro", agent_layers=1), build_vocab(scenes, sizes=(48, 24, 24)))
    save_checkpoint(root / "bc", model, {"step": 0, "stage": "pretrain"})
    return root
