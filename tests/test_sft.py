"""CAT-K closed-loop SFT: the learner's loss is the cross-entropy of exactly the sampler's `sft_target`s (checked
against the incremental decoder's own log-probs), and SFT updates raise the targets' likelihood."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from drivetune.checkpoint import save_checkpoint, state_dict_to_numpy
from drivetune.model import BehaviorModel, ModelConfig
from drivetune.samplers import SamplerConfig
from drivetune.synth.cli import generate
from drivetune.tokenizer import build_vocab
from rollout_workers import PolicySpec, RolloutWorker
from trainer.algorithms import AlgoConfig
from trainer.learner import Learner, LearnerConfig, LearnerOptim
from trainer.rescoring import RescoreInputs, score_group, score_rows
from trainer.rewards import RewardConfig

CATK = SamplerConfig(kind="catk", k=4)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    scene = generate(5, 0)
    torch.manual_seed(0)
    model = BehaviorModel(ModelConfig.named("micro", agent_layers=1), build_vocab([scene], sizes=(48, 24, 24)))
    ckpt = save_checkpoint(tmp_path_factory.mktemp("sft") / "bc", model, {"step": 0})
    worker = RolloutWorker(PolicySpec.from_model(model))
    worker.set_weights(state_dict_to_numpy(model), 0)
    (batch,) = worker.generate([scene], 3, CATK, seed=1)
    return scene, ckpt, batch


def _learner(ckpt, lr: float = 1e-3) -> Learner:
    cfg = LearnerConfig(epochs=1, minibatch_groups=1, forward_mb=64, optim=LearnerOptim(lr=lr))
    return Learner(ckpt, AlgoConfig(name="sft"), RewardConfig(), cfg)


def test_sft_loss_is_the_cross_entropy_of_the_targets(setup):
    scene, ckpt, batch = setup
    valid = batch.sft_target >= 0
    assert valid.any()
    # Targets := the rollout's own tokens, on a subset: the loss must be minus the mean behaviour log-prob the
    # incremental decoder recorded for exactly those entries (an independent code path).
    pick = valid & (np.random.default_rng(0).random(valid.shape) < 0.5)
    probe = dataclasses.replace(batch, sft_target=np.where(pick, batch.tokens, -1))
    stats = _learner(ckpt).update([probe], [scene])
    assert stats["sft_nll"] == pytest.approx(-batch.logp[pick].mean(), abs=1e-4)
    # The real targets differ from the sampled tokens somewhere, and the loss follows them, not the tokens.
    assert (batch.sft_target[valid] != batch.tokens[valid]).any()
    real = _learner(ckpt).update([batch], [scene])
    assert abs(real["sft_nll"] - (-batch.logp[valid].mean())) > 1e-3


def test_sft_updates_raise_the_target_likelihood(setup):
    scene, ckpt, batch = setup
    learner = _learner(ckpt, lr=3e-3)
    inputs = RescoreInputs.build(scene, batch, learner.vocab)
    target = torch.tensor(batch.sft_target)

    def nll() -> float:
        with torch.no_grad():
            logp = score_rows(learner.policy, inputs, torch.arange(3), targets=target).logp
        return float(-logp[target >= 0].mean())

    before = nll()
    for _ in range(3):  # the same group again each time, labelled as the current version's
        stats = learner.update([dataclasses.replace(batch, policy_version=learner.version)], [scene])
    assert stats["policy_version"] == 3 and "reward" not in stats
    assert nll() < before - 0.05
    assert score_group(learner.policy, inputs).logp.shape == batch.logp.shape

