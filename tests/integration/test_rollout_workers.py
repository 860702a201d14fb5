"""Rollout workers and pool: RolloutBatch contents, weight versions, streaming, restart after a killed worker."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from drivetune.checkpoint import CheckpointError, state_dict_to_numpy
from drivetune.model import BehaviorModel, ModelConfig
from drivetune.samplers import SamplerConfig
from drivetune.tokenizer import build_vocab
from drivetune.womd import load_scene
from rollout_workers import PolicySpec, PoolConfig, RolloutPool, RolloutWorker, StaleWeightsError

SAMPLER = SamplerConfig(kind="topk", k=8)


@pytest.fixture(scope="module")
def setup(womd_637, womd_ee5):
    base = [load_scene(womd_637), load_scene(womd_ee5)]
    vocab = build_vocab(base, sizes=(64, 32, 32))
    torch.manual_seed(0)
    model = BehaviorModel(ModelConfig.named("micro", agent_layers=1), vocab)
    # Six groups: the two real scenes under three scenario ids each (rollout seeds differ by scenario id).
    scenes = [dataclasses.replace(s, scenario_id=f"{s.scenario_id}-{i}") for i in range(3) for s in base]
    return scenes, model, PolicySpec.from_model(model)


def test_worker_batch_contents_and_versions(setup):
    scenes, model, spec = setup
    worker = RolloutWorker(spec)
    with pytest.raises(StaleWeightsError, match="no weights"):
        worker.generate(scenes[:1], 2, SAMPLER, 0)
    worker.set_weights(state_dict_to_numpy(model), 5)
    with pytest.raises(StaleWeightsError, match="version 5"):
        worker.generate(scenes[:1], 2, SAMPLER, 0, expected_version=6)
    (batch,) = worker.generate(scenes[:1], 3, SAMPLER, 11, expected_version=5)
    scene = scenes[0]
    A = int(scene.valid[:, scene.current_time_index].sum())
    assert batch.key() == (scene.scenario_id, 11, 5) and batch.group_size == 3 and batch.num_agents == A
    assert batch.tokens.shape == batch.logp.shape == batch.token_mask.shape == (3, A, 16)
    assert batch.trajectories()["x"].shape == (3, A, 80) and batch.sampler == dataclasses.asdict(SAMPLER)
    assert 0.0 < batch.group_rewards["metametric"] < 1.0
    r = batch.rewards  # per rollout, leading dim G: indicators per scored agent and leave-one-out contributions
    E = len(scene.evaluated_agent_ids())
    assert r["collision"].shape == r["collision_at_fault"].shape == r["offroad"].shape == r["red_light"].shape == (3, E)
    assert not (r["collision_at_fault"] & ~r["collision"]).any()
    assert np.array_equal(r["scored_object_ids"][0], scene.evaluated_agent_ids())
    assert r["loo_contribution"].shape == (3,) and abs(r["loo_contribution"].sum()) < 1e-9
    assert np.allclose(r["loo_contribution"], r["meta_without"].mean() - r["meta_without"])
    assert len(set(batch.seeds.tolist())) == 3 and np.array_equal(batch.rollout_indices, [0, 1, 2])


@pytest.fixture(scope="module")
def reference(setup):
    """Groups generated in-process, one scene per call like the pool's tasks (same batch shapes, so the float
    arithmetic is the same): what the pool must return, whatever happens to its workers."""
    scenes, model, spec = setup
    worker = RolloutWorker(dataclasses.replace(spec, rewards=False))
    worker.set_weights(state_dict_to_numpy(model), 1)
    return {s.scenario_id: worker.generate([s], 2, SAMPLER, 4)[0] for s in scenes}


def test_pool_streams_every_group_once_and_survives_killed_workers(ray_local, setup, reference):
    scenes, model, spec = setup
    pool = RolloutPool(dataclasses.replace(spec, rewards=False),
                       PoolConfig(num_workers=2, num_cpus=0.5, max_restarts=2))
    try:
        weights = state_dict_to_numpy(model)
        assert pool.set_weights(weights, 1) > 0
        stream = pool.generate(scenes, 2, SAMPLER, seed=4)
        got = [next(stream)]
        for w in pool.workers:  # one is busy with a group, one is idle: both paths must recover
            ray_local.kill(w, no_restart=False)
        got += list(stream)
        ids = [b.scenario_id for b in got]
        assert sorted(ids) == sorted(s.scenario_id for s in scenes)  # every group, exactly once
        assert pool.restarts_seen >= 1
        for b in got:  # restarted workers got the current weights back: identical rollouts
            ref = reference[b.scenario_id]
            assert b.policy_version == 1
            for name in ("tokens", "logp", "x", "y", "heading"):
                assert np.array_equal(getattr(b, name), getattr(ref, name)), (b.scenario_id, name)
        # A new weight version reaches every (restarted) worker; its rollouts carry the new version.
        changed = {k: (v + 0.05 if v.dtype == np.float32 else v) for k, v in weights.items()}
        pool.set_weights(changed, 2, wait=False)  # acknowledgements collected by the next generate
        again = list(pool.generate(scenes[:2], 2, SAMPLER, seed=4))
        assert {b.policy_version for b in again} == {2}
        assert any(not np.array_equal(b.tokens, reference[b.scenario_id].tokens) for b in again)
        with pytest.raises(CheckpointError, match="missing"):  # weights that do not fit: a clear error
            pool.set_weights({"head.0.weight": np.zeros(3, np.float32)}, 3)
    finally:
        pool.shutdown()


def test_worker_rejects_mismatched_weights(setup):
    _, model, spec = setup
    worker = RolloutWorker(spec)
    state = state_dict_to_numpy(model)
    name = next(iter(state))
    with pytest.raises(CheckpointError, match="missing"):
        worker.set_weights({k: v for k, v in state.items() if k != name}, 1)
    with pytest.raises(CheckpointError, match="mis-shaped"):
        worker.set_weights({**state, name: np.zeros((3, 3), np.float32)}, 1)
    assert worker.get_version() == -1


def test_packed_weights_round_trip_zero_copy(setup):
    from rollout_workers.weights import pack_state

    _, model, spec = setup
    state = state_dict_to_numpy(model)
    packed = pack_state(state)
    assert set(packed.buffers) == {np.dtype(np.float32).str}
    views = packed.arrays()
    assert all(np.array_equal(views[k], v) for k, v in state.items())
    worker = RolloutWorker(spec)
    worker.set_weights(packed, 7)
    buf = packed.buffers[np.dtype(np.float32).str]
    lo, hi = buf.ctypes.data, buf.ctypes.data + buf.nbytes
    params = dict(worker.model.named_parameters())
    assert all(lo <= p.data_ptr() < hi for p in params.values())  # the weights are views, not copies
    assert all(np.array_equal(params[k].detach().numpy(), state[k]) for k in params)
    with pytest.raises(TypeError, match="numpy"):
        pack_state({"w": torch.zeros(2)})
