"""Teacher-forced re-scoring reproduces the behaviour log-probs of closed-loop rollouts (every sampler and SDC mode),
carries gradients, and does not depend on how rollouts are chunked."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from drivetune.checkpoint import state_dict_to_numpy
from drivetune.model import BehaviorModel, ModelConfig
from drivetune.samplers import SamplerConfig
from drivetune.tokenizer import build_vocab
from drivetune.womd import load_scene
from rollout_workers import PolicySpec, RolloutWorker
from trainer.rescoring import RescoreInputs, score_group, score_rows


@pytest.fixture(scope="module")
def setup(womd_637):
    scene = load_scene(womd_637)
    vocab = build_vocab([scene], sizes=(64, 32, 32))
    torch.manual_seed(0)
    model = BehaviorModel(ModelConfig.named("micro"), vocab).eval()
    with torch.no_grad():  # a peaked policy (random heads are near uniform): log-probs spread over tens of nats
        model.head[-1].weight.mul_(3.0)
    worker = RolloutWorker(PolicySpec.from_model(model, rewards=False))
    worker.set_weights(state_dict_to_numpy(model), 0)
    return scene, model, worker, model.vocab.to_torch()


@pytest.mark.parametrize("kind,sdc", [("topk", "policy"), ("warmk", "policy"), ("catk", "policy"), ("topk", "log")])
def test_rescoring_returns_the_behaviour_logp(setup, kind, sdc):
    scene, model, worker, vocab = setup
    (batch,) = worker.generate([scene], 4, SamplerConfig(kind=kind, k=8, warm_lambda=1.0), seed=3, sdc=sdc)
    mask = batch.token_mask
    if sdc == "log":  # the replayed SDC's tokens are not the policy's: masked out of the identity (and of RL)
        sdc_row = int(np.flatnonzero(batch.track_index == scene.sdc_index)[0])
        assert not mask[:, sdc_row].any() and mask.sum() == mask.size - 4 * 16
    scores = score_group(model, RescoreInputs.build(scene, batch, vocab), chunk=3)
    assert scores.logp.shape == batch.logp.shape == (4, batch.num_agents, 16)
    assert batch.logp[mask].std() > 0.5  # a meaningful check: the log-probs differ a lot between tokens
    assert np.abs(scores.logp.numpy()[mask] - batch.logp[mask]).max() <= 1e-4
    assert torch.isfinite(scores.entropy).all() and (scores.entropy >= 0).all()


def test_rescoring_detects_a_different_context(setup):
    scene, model, worker, vocab = setup
    (batch,) = worker.generate([scene], 2, SamplerConfig(kind="topk", k=8), seed=5)
    # The same tokens with the boundary poses of the other rollout: the context differs, so must the log-probs.
    batch.boundary_poses = batch.boundary_poses[::-1].copy()
    scores = score_group(model, RescoreInputs.build(scene, batch, vocab))
    assert np.abs(scores.logp.numpy() - batch.logp).max() > 1e-2
    batch.track_index = batch.track_index[::-1].copy()
    with pytest.raises(ValueError, match="track_index"):
        RescoreInputs.build(scene, batch, vocab)


def test_rescoring_has_gradients_and_chunks_agree(setup):
    scene, model, worker, vocab = setup
    (batch,) = worker.generate([scene], 3, SamplerConfig(kind="topk", k=8), seed=7)
    inputs = RescoreInputs.build(scene, batch, vocab)
    whole = score_group(model, inputs, chunk=3).logp
    pieces = score_group(model, inputs, chunk=1).logp
    assert torch.allclose(whole, pieces, atol=1e-5)
    model.zero_grad()
    scores = score_rows(model, inputs, torch.tensor([1]))
    scores.logp[torch.tensor(batch.token_mask[1:2])].sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert grads["head.3.weight"] is not None and grads["head.3.weight"].abs().sum() > 0
    map_grads = [g for n, g in grads.items() if n.startswith("map_blocks") and g is not None]
    assert map_grads and sum(float(g.abs().sum()) for g in map_grads) > 0  # the map encoder is trained too
