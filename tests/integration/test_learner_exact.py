"""The learner's optimised update (packed rollouts of several groups per forward, one map encoding per scene and
step, compact neighbour lists, no reference pass at beta = 0, the behaviour check read from the first forward) gives
the same losses, gradients and weights as the straightforward update it replaced: every group's rollouts through
`BehaviorModel.forward` on their own, the reference and the behaviour log-probs scored by separate passes."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

import drivetune.model.behavior as behavior
from drivetune.checkpoint import load_checkpoint, state_dict_to_numpy
from drivetune.model import agent_batch, map_batch
from drivetune.samplers import SamplerConfig
from drivetune.shards import ShardStore
from drivetune.tokenizer import tokenize_map, tokenize_scene
from rollout_helpers import rft_data
from rollout_workers import PolicySpec, RolloutWorker
from trainer.algorithms import AlgoConfig, policy_loss, token_advantages
from trainer.learner import Learner, LearnerConfig, LearnerOptim
from trainer.losses import human_nll
from trainer.objectives import TokenTargets
from trainer.rescoring import RescoreInputs, score_group, score_rows
from trainer.rewards import RewardConfig, agent_rewards, weighted_rewards

ITERATIONS = 3
# float64 (in float32 the reordered sums over ~10^4 tokens agree to ~1e-5 of each gradient's largest entry, and
# Adam's first steps turn rounding-level gradients into lr-sized moves). Measured in float64: gradients within
# 4e-14 of their largest entry, weights within 4e-15 after 3 iterations; the issue asks for 1e-6.
RTOL = 1e-10


@pytest.fixture(scope="module")
def groups(tmp_path_factory):
    root = rft_data(tmp_path_factory.mktemp("exact"))
    store = ShardStore(root / "shards")
    scenes = [store.get(i) for i in sorted(store.scenario_ids())[:3]]
    spec = PolicySpec.from_checkpoint(root / "bc", reward_agents="all")
    worker = RolloutWorker(spec)
    model, _ = load_checkpoint(root / "bc")
    worker.set_weights(state_dict_to_numpy(model), 0)
    # one scene per call, as the pool's tasks (scenes_per_task 1): a joint call pads the maps, whose encoding then
    # picks other neighbours among equidistant map tokens (see trainer.rescoring.encode_maps)
    return root / "bc", scenes, [worker.generate([s], 3, SamplerConfig(kind="topk", k=8), seed=2)[0] for s in scenes]


def _straightforward(policy, reference, optimizer, algo, reward, scenes, batches, gen, epochs):
    """The update before packing, one step at a time: (loss, clipped gradients) per step."""
    vocab = policy.vocab.to_torch()
    inputs = [RescoreInputs.build(s, b, vocab) for s, b in zip(scenes, batches)]
    masks = [torch.tensor(b.token_mask) for b in batches]
    advs = []
    for b in batches:
        r, _ = weighted_rewards(b, reward)
        ar, sc = agent_rewards(b, reward) if algo.advantage == "agent" else (None, None)
        advs.append(torch.as_tensor(token_advantages(algo, r, ar, sc, b.token_mask)))
    refs = [score_group(reference, x, chunk=2).logp for x in inputs]
    steps = []
    for _ in range(epochs):
        order = torch.randperm(len(batches), generator=gen).tolist()
        for lo in range(0, len(order), 2):
            mb = order[lo : lo + 2]
            optimizer.zero_grad(set_to_none=True)
            total = int(sum(masks[i].sum() for i in mb))
            loss_value = 0.0
            for i in mb:
                for rows in inputs[i].chunks(2):
                    m = masks[i][rows]
                    logp = score_rows(policy, inputs[i], rows).logp
                    out = policy_loss(algo, logp[m], torch.tensor(batches[i].logp)[rows][m], refs[i][rows][m],
                                      advs[i][rows][m])
                    loss = out.loss * (int(m.sum()) / total)
                    loss.backward()
                    loss_value += loss.item()
            logged = []  # each scene's map encoded on its own, as its rollouts were
            for i in mb:
                agents = agent_batch([tokenize_scene(scenes[i], vocab)], [np.asarray(batches[i].track_index)])
                logits = policy(map_batch([tokenize_map(scenes[i])]), agents)
                targets = TokenTargets.from_tokens(agents.tokens, agents.valid)
                lp = torch.log_softmax(logits[:, :, :-1][targets.mask], dim=-1)
                logged.append(lp.gather(1, targets.targets[targets.mask][:, None])[:, 0])
            nll = algo.human_coef * human_nll(torch.cat(logged))
            nll.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
            steps.append((loss_value + nll.item(), [p.grad.clone() for p in policy.parameters()]))
            optimizer.step()
    return steps


@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_optimised_update_equals_the_straightforward_one(groups, beta, monkeypatch):
    bc, scenes, batches = groups
    algo = AlgoConfig(name="grbo", beta=beta, clip_eps=0.2, human_coef=0.1, advantage="agent")
    reward = RewardConfig.preset("grbo")
    learner = Learner(bc, algo, reward, LearnerConfig(epochs=1, minibatch_groups=2, optim=LearnerOptim(lr=1e-3)))
    learner.policy.double(), learner.reference.double()  # float64: sums in another order agree to ~1e-15
    widest = max(b.num_agents for b in batches)
    learner.chunk_tokens = 2 * widest * 17 + 1  # two rollouts a chunk: chunks span groups, groups span chunks
    plain = copy.deepcopy(learner.policy)
    reference = copy.deepcopy(plain).requires_grad_(False)
    plain_opt = torch.optim.AdamW(plain.parameters(), lr=1e-3, weight_decay=0.0)

    got: list[tuple[float, list[torch.Tensor]]] = []
    step = learner._step

    def record(mb, check):
        grads: list[torch.Tensor] = []
        hook = learner.optimizer.register_step_pre_hook(
            lambda *_: grads.extend(p.grad.clone() for p in learner.policy.parameters()))
        stats = step(mb, check)
        hook.remove()
        loss = stats["policy_loss"] + beta * stats.get("kl_k3", 0.0) + algo.human_coef * stats.get("human_nll", 0.0)
        got.append((loss, grads))
        return stats

    monkeypatch.setattr(learner, "_step", record)
    for it in range(ITERATIONS):
        version = learner.version
        here = [dataclasses.replace(b, policy_version=version) for b in batches]
        stats = learner.update(here, scenes)
        assert stats["logp_checked_groups"] == 2  # (float64 log-probs against float32 rollouts: not compared)
        assert ("kl_k3" in stats) == (beta > 0)
        n = len(got)
        with monkeypatch.context() as m:
            m.setattr(behavior, "CPU_COMPACT_PAIRS", False)  # the plain forward: full neighbour lists
            gen = torch.Generator().manual_seed(it)  # the learner's minibatch order (seed 0)
            want = _straightforward(plain, reference, plain_opt, algo, reward, scenes, here, gen, epochs=1)
        assert len(want) == 2 and len(got) == n == 2 * (it + 1)
        for (loss, grads), (loss_ref, grads_ref) in zip(got[-2:], want):
            assert loss == pytest.approx(loss_ref, rel=RTOL, abs=1e-12)
            for g, r in zip(grads, grads_ref):
                torch.testing.assert_close(g, r, rtol=RTOL, atol=RTOL * float(r.abs().max()))
    for p, q in zip(learner.policy.parameters(), plain.parameters()):
        torch.testing.assert_close(p, q, rtol=RTOL, atol=1e-13)
    assert any((p != q).any() for p, q in zip(learner.policy.parameters(), reference.parameters()))  # it trained


def test_behaviour_check_reads_the_first_forward(groups):
    """Synchronous: the first step's forward checks the groups it scores (float32, as deployed). One-step-off (every
    group one version behind): one group is re-scored under its own weights; the same rollouts then read as the
    other policy's by more than any rounding."""
    bc, scenes, batches = groups
    algo = AlgoConfig(name="grbo", beta=0.0, clip_eps=0.2, human_coef=0.1)
    learner = Learner(bc, algo, RewardConfig.preset("grbo"), LearnerConfig(epochs=2, minibatch_groups=2,
                                                                           optim=LearnerOptim(lr=1e-2)))
    stats = learner.update(batches, scenes)
    assert stats["logp_checked_groups"] == 2 and stats["logp_diff_max"] <= 1e-4
    stale = learner.update(batches, scenes)  # version 0's groups, the learner now at version 1
    assert stale["policy_version_lag"] == 1 and stale["logp_checked_groups"] == 1
    assert stale["logp_diff_max"] <= 1e-4
    moved = learner.update([dataclasses.replace(b, policy_version=2) for b in batches], scenes)
    assert moved["logp_diff_max"] > 1e-3  # read as version 2's: the check sees the trained weights differ


def test_rl_on_the_samplers_own_distribution(groups):
    """`algo.distribution: sampler`: the learner re-scores each token under top-K's renormalised candidate set, which
    reproduces the sampler's own log-probs (not the full softmax's), in the first forward and for a stale group."""
    bc, scenes, _ = groups
    worker = RolloutWorker(PolicySpec.from_checkpoint(bc, reward_agents="all"))
    worker.set_weights(state_dict_to_numpy(load_checkpoint(bc)[0]), 0)
    batches = [worker.generate([s], 3, SamplerConfig(kind="topk", k=8, temperature=0.8), seed=2, return_topk=True)[0]
               for s in scenes]
    mask = batches[0].token_mask
    assert np.abs(batches[0].logp - batches[0].sampler_logp)[mask].max() > 1e-2  # two different distributions
    algo = AlgoConfig(name="grbo", beta=0.04, clip_eps=0.2, human_coef=0.1, distribution="sampler")
    learner = Learner(bc, algo, RewardConfig.preset("grbo"), LearnerConfig(epochs=1, minibatch_groups=3,
                                                                           optim=LearnerOptim(lr=1e-2)))
    stats = learner.update(batches, scenes)  # one step: its forward is before any update
    assert stats["logp_checked_groups"] == 3 and stats["logp_diff_max"] <= 1e-4
    assert stats["kl_k3"] < 1e-6  # the reference on the same candidate sets: the policy has not moved yet
    stale = learner.update(batches, scenes)  # one version behind: re-scored under its own weights and candidates
    assert stale["logp_checked_groups"] == 1 and stale["logp_diff_max"] <= 1e-4 and stale["kl_k3"] > 1e-6
    with pytest.raises(ValueError, match="candidate sets"):
        learner.update([dataclasses.replace(b, topk=None) for b in batches], scenes)
