"""Samplers: top-K / Warm-K / CAT-K / greedy definitions, seeding, and CAT-K tracking the log in closed loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from drivetune.closed_loop import simulate
from drivetune.model.batch import select_agents
from drivetune.model import BehaviorModel, ModelConfig
from drivetune.samplers import SamplerConfig, StepInputs, candidate_log_probs, rollout_seed, rollout_uniforms, sample
from drivetune.tokenizer import MotionVocab, build_vocab, tokenize_scene
from drivetune.tokenizer.layout import box_corners, compose, mean_corner_distance, relative
from drivetune.tokenizer.matching import boundary_poses
from drivetune.womd import load_scene


def arc_vocab(speeds=(0.5, 2.0, 5.0, 10.0), yaw_rates=(-0.4, -0.1, 0.0, 0.1, 0.4)) -> MotionVocab:
    """Token 0 = no motion, then constant-speed, constant-yaw-rate arcs over 0.5 s (same for all types)."""
    toks = [np.zeros((6, 3))]
    for v in speeds:
        for w in yaw_rates:
            t = np.arange(6) * 0.1
            h = w * t
            x = np.where(abs(w) > 1e-9, v * np.sin(h) / (w if w else 1), v * t)
            y = np.where(abs(w) > 1e-9, v * (1 - np.cos(h)) / (w if w else 1), 0.0)
            toks.append(np.stack([x, y, h], -1))
    poses = np.broadcast_to(np.stack(toks)[None], (3, len(toks), 6, 3)).copy()
    return MotionVocab(poses=poses, sizes=np.array([len(toks)] * 3))


def step_inputs(vocab, n: int, logits: torch.Tensor, uniforms: torch.Tensor, prev: torch.Tensor) -> StepInputs:
    pose = torch.tensor([[3.0, -2.0, 0.3]]).expand(n, 3)
    return StepInputs(logits=logits, uniforms=uniforms, pose=pose, type_idx=torch.zeros(n, dtype=torch.long),
                      vocab=vocab, prev_pose=prev.expand(n, 3))


@pytest.fixture(scope="module")
def tv():
    return arc_vocab().to_torch()


def test_config_validation():
    SamplerConfig(kind="warmk", k=4, temperature=0.5, warm_lambda=3.0).validate()
    for bad in (dict(kind="beam"), dict(k=0), dict(temperature=0.0), dict(warm_lambda=-1.0),
                dict(target_guard=-0.5)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            SamplerConfig(**bad).validate()


def test_rollout_seeds_are_pure_and_distinct():
    a = [rollout_seed("scene-a", r, 7, 3) for r in range(64)]
    assert a == [rollout_seed("scene-a", r, 7, 3) for r in range(64)]
    assert len(set(a)) == 64
    assert rollout_seed("scene-a", 0, 7, 3) not in {rollout_seed("scene-b", 0, 7, 3), rollout_seed("scene-a", 0, 8, 3),
                                                    rollout_seed("scene-a", 0, 7, 4)}
    assert torch.equal(rollout_uniforms(a[0], 16, 5), rollout_uniforms(a[0], 16, 5))
    assert not torch.equal(rollout_uniforms(a[0], 16, 5), rollout_uniforms(a[1], 16, 5))


def continuation(prev_pose: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
    """Warm-K's warm start computed independently of the sampler, in world frame: repeat the last 0.5 s rigid
    motion (constant speed and yaw rate). The sampler works in the current pose's frame instead."""
    return compose(pose, relative(prev_pose, pose))


def test_warmk_continues_an_arc_and_a_stop(tv):
    """Through `sample`: with every token a candidate, flat logits and a huge λ, Warm-K picks the token that repeats
    the last motion: the same arc (constant speed and yaw rate), or no motion for a stopped agent."""
    arc_id = 1 + 2 * 5 + 4  # speed 5 m/s, yaw rate 0.4 rad/s
    arc = tv.poses[0, arc_id]
    p0 = torch.tensor([1.0, 2.0, 0.7])
    p1 = compose(p0, arc[-1])
    assert torch.allclose(continuation(p0, p1), compose(p1, arc[-1]), atol=1e-5)
    n, V = 3, tv.num_tokens
    cfg = SamplerConfig(kind="warmk", k=V, warm_lambda=1e6)
    inp = StepInputs(logits=torch.zeros(n, V), uniforms=torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64),
                     pose=p1.expand(n, 3), type_idx=torch.zeros(n, dtype=torch.long), vocab=tv,
                     prev_pose=p0.expand(n, 3))
    assert sample(cfg, inp).token.tolist() == [arc_id] * n
    inp.prev_pose = p1.expand(n, 3)  # stopped: prev == pose
    assert sample(cfg, inp).token.tolist() == [0] * n
    inp.prev_pose = None
    with pytest.raises(ValueError, match="prev_pose"):
        sample(cfg, inp)


def test_greedy_and_topk_support(tv):
    n, V = 4000, tv.num_tokens
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(1, V, generator=gen).expand(n, V)
    u = torch.rand(n, generator=gen, dtype=torch.float64)
    inp = step_inputs(tv, n, logits, u, torch.zeros(1, 3))
    greedy = sample(SamplerConfig(kind="greedy", k=5), inp)
    assert (greedy.token == logits[0].argmax()).all()
    top = sample(SamplerConfig(kind="topk", k=5), inp)
    assert set(top.token.tolist()) == set(logits[0].topk(5).indices.tolist())
    # behaviour log-prob is the full-softmax log-prob of the chosen token
    assert torch.allclose(top.logp, torch.log_softmax(logits, -1).gather(-1, top.token[:, None])[:, 0])


def test_warmk_lambda_zero_equals_topk_in_distribution(tv):
    n, V, k, tau = 20000, tv.num_tokens, 6, 0.7
    gen = torch.Generator().manual_seed(1)
    logits = (2 * torch.randn(1, V, generator=gen)).expand(n, V)
    prev = torch.tensor([[2.0, -2.5, 0.25]])
    u1, u2 = (torch.rand(n, generator=gen, dtype=torch.float64) for _ in range(2))
    top = sample(SamplerConfig(kind="topk", k=k, temperature=tau), step_inputs(tv, n, logits, u1, prev))
    warm = sample(SamplerConfig(kind="warmk", k=k, temperature=tau, warm_lambda=0.0),
                  step_inputs(tv, n, logits, u2, prev))
    ids = logits[0].topk(k).indices
    expected = torch.softmax(logits[0, ids] / tau, -1).double()
    freq = lambda t: torch.stack([(t == i).double().mean() for i in ids])  # noqa: E731
    f_top, f_warm = freq(top.token), freq(warm.token)
    assert float(f_top.sum()) == 1.0 and float(f_warm.sum()) == 1.0
    # Two-sample chi-square over the K cells (df = K - 1 = 5; 99.9 % quantile is 20.5).
    counts = torch.stack([f_top, f_warm]) * n
    expect = counts.sum(0, keepdim=True) * 0.5
    chi2 = float(((counts - expect) ** 2 / expect.clamp(min=1e-9)).sum())
    assert chi2 < 20.5, chi2
    assert float((f_warm - expected).abs().sum()) / 2 < 0.015  # total variation to the exact top-K law
    # With the same random numbers the two samplers are the same function.
    same = sample(SamplerConfig(kind="warmk", k=k, temperature=tau, warm_lambda=0.0),
                  step_inputs(tv, n, logits, u1, prev))
    assert torch.equal(same.token, top.token)


def test_warmk_huge_lambda_is_deterministic_and_picks_the_continuation(tv):
    n, V, k = 500, tv.num_tokens, 12
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(1, V, generator=gen).expand(n, V)
    u = torch.rand(n, generator=gen, dtype=torch.float64)
    pose = torch.tensor([3.0, -2.0, 0.3])
    arc = tv.poses[0, 1 + 3 * 5 + 1, -1]  # the last motion: 10 m/s, yaw rate -0.1 rad/s
    prev = compose(pose, relative(arc, torch.zeros(3)))[None]  # prev ⊕ arc = pose
    out = sample(SamplerConfig(kind="warmk", k=k, warm_lambda=1e6), step_inputs(tv, n, logits, u, prev))
    assert out.token.unique().numel() == 1
    cand = logits[0].topk(k).indices
    ends = compose(pose.expand(k, 3), tv.poses[0, cand, -1])
    box = tv.boxes[0].expand(k, 2)
    dist = mean_corner_distance(box_corners(ends, box), box_corners(continuation(prev, pose[None]).expand(k, 3), box))
    assert int(out.token[0]) == int(cand[dist.argmin()])
    if 1 + 3 * 5 + 1 in cand.tolist():  # the exact continuation is a candidate: it must be chosen
        assert int(out.token[0]) == 1 + 3 * 5 + 1


def test_catk_target_guard_drops_labels_of_drifted_states(tv):
    """A state whose best token still ends more than `target_guard` box lengths from the log gets no SFT target; a
    state the vocabulary can reach keeps its target, and the rollout's own choice is unchanged by the guard."""
    pose = torch.tensor([[0.0, 0.0, 0.0]]).expand(3, 3)
    reachable = compose(pose[:1], torch.tensor([[1.0, 0.0, 0.0]]))[0]  # 2 m/s straight: token 1 + 5 + 2 ends there
    log_next = torch.stack([reachable, reachable + torch.tensor([0.0, 3.0, 0.0]),  # 3 m aside: < one 4.8 m length
                            reachable + torch.tensor([0.0, 12.0, 0.0])])  # 12 m aside: beyond 2 lengths
    inp = StepInputs(logits=torch.zeros(3, tv.num_tokens), uniforms=torch.zeros(3, dtype=torch.float64), pose=pose,
                     type_idx=torch.zeros(3, dtype=torch.long), vocab=tv, log_next=log_next,
                     log_next_valid=torch.tensor([True, True, True]))
    free = sample(SamplerConfig(kind="catk", k=8, target_guard=0.0), inp)
    guarded = sample(SamplerConfig(kind="catk", k=8, target_guard=2.0), inp)
    assert (free.sft_target >= 0).all()
    assert guarded.sft_target.tolist() == [free.sft_target[0].item(), free.sft_target[1].item(), -1]
    assert torch.equal(free.token, guarded.token)
    tight = sample(SamplerConfig(kind="catk", k=8, target_guard=0.5), inp)  # 2.4 m: the 3 m-aside state drifts too
    assert tight.sft_target.tolist() == [free.sft_target[0].item(), -1, -1]


# ------------------------------------------------------------------------------- CAT-K in closed loop (real scene)
@pytest.fixture(scope="module")
def real(womd_637):
    scene = load_scene(womd_637)
    vocab = build_vocab([scene], sizes=(256, 64, 64))
    torch.manual_seed(0)
    return scene, vocab, BehaviorModel(ModelConfig.named("micro"), vocab)


def test_catk_full_vocabulary_tracks_the_log(real):
    scene, vocab, model = real
    tv = vocab.to_torch()
    out = simulate(model, tv, [scene], 2, SamplerConfig(kind="catk", k=vocab.num_tokens))[0]
    agents = select_agents(scene)
    log, avail = boundary_poses(scene)
    log, avail = log[agents, 3:], avail[agents, 3:]
    full = avail.all(axis=1)  # agents logged over the whole future: CAT-K never falls back to greedy
    err = np.linalg.norm(out.boundary_poses[0, :, 1:, :2] - log[..., :2], axis=-1)[full]
    tok = tokenize_scene(scene, vocab)  # the tokenizer's own rolling-matching error on the same agents
    tok_err = np.linalg.norm(tok.poses[agents][:, 3:, :2] - log[..., :2], axis=-1)[full]
    assert full.sum() >= 20
    assert err.mean() <= 1.2 * tok_err.mean() + 0.01, (err.mean(), tok_err.mean())
    assert err.max() <= 1.5 * tok_err.max() + 0.05, (err.max(), tok_err.max())
    # With K = |V| the chosen token is the SFT target wherever the log is valid; CAT-K is not random.
    assert (out.sft_target[0][avail] == out.tokens[0][avail]).all()
    assert (out.sft_target[0][~avail] == -1).all()
    assert np.array_equal(out.tokens[0], out.tokens[1])


def test_catk_small_k_stays_in_policy_top_k(real):
    scene, vocab, model = real
    out = simulate(model, vocab.to_torch(), [scene], 1, SamplerConfig(kind="catk", k=3), return_topk=True)[0]
    chosen = out.tokens[0][..., None]
    assert (out.topk[0] == chosen).any(-1).all()
    assert out.topk.shape[-1] == 3


def test_candidate_log_probs_are_the_distribution_topk_draws_from(tv):
    """The restricted softmax over the sampler's own candidate set gives back the sampled token's `sampler_logp`."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(64, tv.num_tokens, generator=gen)
    uniforms = torch.rand(64, generator=gen, dtype=torch.float64)
    inp = step_inputs(tv, 64, logits, uniforms, torch.tensor([[2.0, -2.0, 0.3]]))
    for temperature in (1.0, 0.7):
        res = sample(SamplerConfig(kind="topk", k=5, temperature=temperature), inp)
        logq = candidate_log_probs(logits, res.topk, temperature)
        col = (res.topk == res.token[:, None]).float().argmax(-1)
        assert torch.allclose(logq.gather(-1, col[:, None])[:, 0], res.sampler_logp, atol=1e-6)
        assert torch.allclose(logq.exp().sum(-1), torch.ones(64), atol=1e-6)
        assert not torch.allclose(res.sampler_logp, res.logp, atol=1e-3)  # not the full softmax
