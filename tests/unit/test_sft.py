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
from drivetune.synth.files import generate
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


def _learner(ckpt, lr: float = 1e-3, algo: AlgoConfig | None = None, **cfg) -> Learner:
    cfg = LearnerConfig(epochs=1, minibatch_groups=1, forward_mb=64, optim=LearnerOptim(lr=lr), **cfg)
    return Learner(ckpt, algo or AlgoConfig(name="sft", beta=0.0), RewardConfig(), cfg)


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



def test_sft_kl_to_the_reference_and_decoder_only_training(setup):
    """With β > 0 the SFT loss adds the exact KL(π_θ‖π_ref) over the vocabulary: 0 while the policy is the reference,
    positive once it moved; `trainable: decoder` (CAT-K's fine-tune) leaves the map encoder and embeddings as they were."""
    scene, ckpt, batch = setup
    learner = _learner(ckpt, lr=3e-3, algo=AlgoConfig(name="sft", beta=0.5, label_smoothing=0.1),
                       trainable="decoder")
    frozen = {n: p.detach().clone() for n, p in learner.policy.named_parameters() if n.split(".")[0] == "map_blocks"}
    head = learner.policy.head[-1].weight.detach().clone()
    first = learner.update([batch], [scene])
    assert first["sft_kl"] == pytest.approx(0.0, abs=1e-7)
    second = learner.update([dataclasses.replace(batch, policy_version=learner.version)], [scene])
    assert second["sft_kl"] > 1e-6
    assert frozen and all(torch.equal(p, frozen[n]) for n, p in learner.policy.named_parameters() if n in frozen)
    assert not torch.equal(learner.policy.head[-1].weight, head)
    assert not learner.policy.training  # RL and the behaviour check see the model without dropout
    noisy = _learner(ckpt, algo=AlgoConfig(name="sft", beta=0.5, dropout=True)).update([batch], [scene])
    assert noisy["sft_kl"] > 1e-6  # BC's dropout is on in the SFT step: the policy is not the reference there


def test_learning_rate_warms_up_then_decays():
    optim = LearnerOptim(lr=1e-3, schedule="cosine", warmup_iters=2, min_lr_ratio=0.1, horizon_iters=6)
    assert [optim.lr_at(p) for p in (0.25, 1.0, 2.0)] == pytest.approx([1.25e-4, 5e-4, 1e-3])  # per optimizer step
    assert optim.lr_at(4.0) == pytest.approx(1e-4 + 9e-4 * 0.5)  # half way through the decay
    assert optim.lr_at(6.0) == pytest.approx(1e-4) and optim.lr_at(7.0) == pytest.approx(1e-4)
    assert LearnerOptim(lr=1e-3, warmup_iters=3).lr_at(10) == 1e-3  # constant after warm-up
    with pytest.raises(ValueError, match="optim.schedule"):
        LearnerConfig(optim=LearnerOptim(schedule="step")).validate()


def test_carry_optimizer_starts_from_the_previous_stage_moments(setup, tmp_path):
    scene, ckpt, batch = setup
    first = _learner(ckpt)
    first.update([batch], [scene])
    saved = first.save(str(tmp_path / "stage1"), "sft")
    carried = _learner(saved, lr=5e-4, carry_optimizer=True)
    fresh = _learner(saved)
    moments = [s["exp_avg"] for s in first.optimizer.state_dict()["state"].values()]
    got = [s["exp_avg"] for s in carried.optimizer.state_dict()["state"].values()]
    assert len(got) == len(moments) and all(torch.equal(a, b) for a, b in zip(got, moments))
    assert carried.optimizer.param_groups[0]["lr"] == 5e-4  # the stage's own learning rate
    assert not fresh.optimizer.state_dict()["state"]
    with pytest.raises(ValueError, match="does not fit"):  # the moments of all parameters, for the decoder only
        _learner(saved, carry_optimizer=True, trainable="decoder")
    with pytest.raises(Exception, match="not a resumable training checkpoint"):  # a BC export has no optimizer
        _learner(ckpt, carry_optimizer=True)
