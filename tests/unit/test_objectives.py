"""RL losses, advantages and algorithm configs on small tensors against hand-computed values and gradients.

Hand values used below: ln 2 = 0.69314718; k3(δ) = exp(−δ) + δ − 1, so k3(0) = 0, k3(ln 2) = 0.19314718,
k3(−ln 2) = 0.30685282, k3(−2) = e² − 3 = 4.38905610; dk3/dδ = 1 − exp(−δ): 0, 0.5, −1, −6.38905610.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trainer.advantages import fixed_baseline, group_normalized, leave_one_out
from trainer.algorithms import AlgoConfig, calibrate_alpha, policy_loss, token_advantages
from trainer.losses import human_nll, kl_k1, kl_k3, mpo_loss, ppo_clip_loss, sft_loss

LN2 = 0.6931471805599453
T64 = dict(dtype=torch.float64)


def _leaf(values) -> torch.Tensor:
    return torch.tensor(values, **T64, requires_grad=True)


def _close(got, want, tol=1e-7):
    got = got.detach().numpy() if isinstance(got, torch.Tensor) else np.asarray(got)
    np.testing.assert_allclose(got, want, rtol=0, atol=tol)


# --- KL estimators ---------------------------------------------------------------------------------------------------

def test_k1_and_k3_values_and_gradients():
    delta = [0.0, LN2, -LN2, -2.0, 25.0, -3.0]
    logp = _leaf([-1.0, -0.5, -2.0, -1.0, 0.0, -0.1])
    ref = logp.detach() - torch.tensor(delta, **T64)
    _close(kl_k1(logp, ref), delta, 1e-12)
    k3 = kl_k3(logp, ref)
    # 25 → input clamped to 20 → 19.000000002 → output capped at 10; −3 → e³ − 4 = 16.09 → capped at 10.
    _close(k3, [0.0, 0.19314718, 0.30685282, 4.38905610, 10.0, 10.0])
    k3.sum().backward()
    _close(logp.grad, [0.0, 0.5, -1.0, -6.38905610, 0.0, 0.0])  # capped entries pass no gradient


def test_k3_input_clamp_keeps_gradients_finite():
    # δ = −1000 without the ±20 input clamp: exp(1000) = inf and the capped value's gradient becomes 0·inf = NaN.
    logp = torch.tensor([-1000.0, 1000.0], requires_grad=True)
    k3 = kl_k3(logp, torch.zeros(2))
    _close(k3, [10.0, 10.0])
    k3.sum().backward()
    _close(logp.grad, [0.0, 0.0])


# --- MPO ---------------------------------------------------------------------------------------------------------------

def test_mpo_loss_value_gradient_and_stats():
    logp = _leaf([-1.0, -2.0, -0.5])
    ref = logp.detach() - torch.tensor([0.0, LN2, -LN2], **T64)
    adv = torch.tensor([1.0, -2.0, 0.5], **T64)
    out = mpo_loss(logp, ref, adv, beta=0.1)
    # per token −A + β·k3: −1 + 0, 2 + 0.0193147, −0.5 + 0.0306853; token-mean = 0.55 / 3
    _close(out.loss, 0.18333333)
    out.loss.backward()
    # (−A + β(1 − e^−δ)) / N: (−1 + 0)/3, (2 + 0.05)/3, (−0.5 − 0.1)/3
    _close(logp.grad, [-0.33333333, 0.68333333, -0.2])
    s = out.stats
    _close([s["policy_loss"], s["kl_k1"], s["kl_k3"], s["ratio_mean"], s["clip_frac"]],
           [0.16666667, 0.0, 0.16666667, 1.0, 0.0])


def test_token_mean_weighs_scenes_by_their_tokens():
    # Scene 1 has one token with A = 4, scene 2 three tokens with A = 0: token-mean −4/4 = −1 (a per-scene mean: −2).
    logp = _leaf([-1.0, -1.0, -1.0, -1.0])
    out = mpo_loss(logp, logp.detach(), torch.tensor([4.0, 0.0, 0.0, 0.0], **T64), beta=0.0)
    _close(out.loss, -1.0)
    out.loss.backward()
    _close(logp.grad, [-1.0, 0.0, 0.0, 0.0])


# --- PPO-clip ----------------------------------------------------------------------------------------------------------

def _ppo_case():
    ratio = [1.5, 1.5, 0.5, 0.5, 1.1]
    adv = torch.tensor([1.0, -1.0, 2.0, -2.0, 3.0], **T64)
    behaviour = torch.full((5,), -1.0, **T64)
    logp = _leaf((np.log(ratio) - 1.0).tolist())
    return logp, behaviour, adv


def test_ppo_clip_both_sides_of_the_clip():
    logp, behaviour, adv = _ppo_case()
    out = ppo_clip_loss(logp, behaviour, logp.detach(), adv, clip_eps=0.2, beta=0.0)
    # −min(ρA, clip(ρ)A): 1.5·1 → −1.2 (clipped); 1.5·−1 → +1.5; 0.5·2 → −1.0; 0.5·−2 → +1.6 (clipped); 1.1·3 → −3.3
    _close(out.loss, (-1.2 + 1.5 - 1.0 + 1.6 - 3.3) / 5)
    out.loss.backward()
    # unclipped tokens: −A·ρ / N; clipped tokens: 0
    _close(logp.grad, [0.0, 0.3, -0.2, 0.0, -0.66])
    _close([out.stats["clip_frac"], out.stats["ratio_mean"], out.stats["kl_k3"]], [0.4, 1.02, 0.0])


def test_ppo_clip_with_kl_term():
    logp, behaviour, adv = _ppo_case()
    ref = logp.detach() - torch.tensor([0.0, LN2, -LN2, 0.0, 0.0], **T64)
    out = ppo_clip_loss(logp, behaviour, ref, adv, clip_eps=0.2, beta=0.1)
    _close(out.loss, -0.48 + 0.1 * 0.5 / 5)  # k3 sum = 0.19314718 + 0.30685282 = 0.5
    out.loss.backward()
    _close(logp.grad, [0.0, 0.3 + 0.01, -0.2 - 0.02, 0.0, -0.66])  # + β(1 − e^−δ)/N
    _close(out.stats["kl_k3"], 0.1)


def test_ppo_log_ratio_clamp():
    # log ρ = 100 in float32: exp(100) = inf without the ±20 clamp; with it ρ = e^20 = 4.85165195e8 and no gradient.
    logp = torch.tensor([0.0], requires_grad=True)
    out = ppo_clip_loss(logp, torch.tensor([-100.0]), torch.tensor([0.0]), torch.tensor([-1.0]), 0.2, 0.0)
    np.testing.assert_allclose(float(out.loss.detach()), 4.85165195e8, rtol=1e-6)
    out.loss.backward()
    _close(logp.grad, [0.0])


def test_loss_input_errors_and_empty_minibatch():
    x = torch.zeros(3)
    with pytest.raises(ValueError, match="differ in length"):
        mpo_loss(x, torch.zeros(2), x, 0.1)
    with pytest.raises(ValueError, match="1-D"):
        ppo_clip_loss(torch.zeros(2, 2), x, x, x, 0.2, 0.0)
    with pytest.raises(ValueError, match="adv has non-finite"):
        mpo_loss(x, x, torch.tensor([0.0, math.nan, 0.0]), 0.1)
    with pytest.raises(ValueError, match="clip_eps"):
        ppo_clip_loss(x, x, x, x, 0.0, 0.0)
    with pytest.raises(ValueError, match="beta"):
        mpo_loss(x, x, x, -0.1)
    empty = torch.zeros(0, requires_grad=True)
    out = ppo_clip_loss(empty, empty.detach(), empty.detach(), empty.detach(), 0.2, 0.1)
    out.loss.backward()
    assert float(out.loss.detach()) == 0.0 and out.stats["num_tokens"] == 0.0


def test_human_nll():
    lp = _leaf([-0.5, -1.5])
    nll = human_nll(lp)
    _close(nll, 1.0)
    nll.backward()
    _close(lp.grad, [-0.5, -0.5])
    assert float(human_nll(torch.zeros(0))) == 0.0


# --- advantages --------------------------------------------------------------------------------------------------------

def test_fixed_baseline():
    _close(fixed_baseline(torch.tensor([0.8, 0.7], **T64), 0.77), [0.03, -0.07], 1e-12)


def test_group_normalized_rollouts():
    # mean 2, population std sqrt(2/3) = 0.81649658: (r − 2)/std = ∓1.22474487
    _close(group_normalized(torch.tensor([1.0, 2.0, 3.0], **T64), eps=0.0), [-1.22474487, 0.0, 1.22474487])
    _close(group_normalized(torch.tensor([1.0, 2.0, 3.0], **T64)), [-1.22474337, 0.0, 1.22474337])  # eps 1e-6
    _close(group_normalized(torch.tensor([1.0, 2.0, 3.0], **T64), scale=False), [-1.0, 0.0, 1.0])


def test_group_normalized_std_floor_keeps_noise_small():
    noise = torch.tensor([0.500, 0.502, 0.504], **T64)  # std 0.00163: without a floor ±1.22 like a real difference
    _close(group_normalized(noise, eps=0.0), [-1.22474487, 0.0, 1.22474487])
    _close(group_normalized(noise, eps=0.0, std_floor=0.05), [-0.04, 0.0, 0.04], 1e-9)
    _close(group_normalized(torch.tensor([1.0, 2.0, 3.0], **T64), eps=0.0, std_floor=0.05),
           [-1.22474487, 0.0, 1.22474487])  # a spread above the floor is untouched
    with pytest.raises(ValueError, match="std_floor"):
        group_normalized(noise, std_floor=-1.0)


def test_leave_one_out_baseline():
    _close(leave_one_out(torch.tensor([1.0, 2.0, 6.0], **T64)), [1.0 - 4.0, 2.0 - 3.5, 6.0 - 1.5], 1e-12)
    _close(leave_one_out(torch.tensor([0.7], **T64)), [0.0])
    with pytest.raises(ValueError, match="finite"):
        leave_one_out(torch.tensor([1.0, math.nan], **T64))
    mask = np.ones((3, 2, 4), bool)
    mpo = AlgoConfig(name="mpo", baseline="loo").validate()
    adv = token_advantages(mpo, np.array([1.0, 2.0, 6.0]), None, None, mask)
    _close(adv[:, 1, 3], [-3.0, -1.5, 4.5], 1e-6)  # a scene-level baseline: independent of α


def test_group_normalized_zero_spread_and_singletons_give_zero():
    for r in ([5.0, 5.0, 5.0], [0.1, 0.1, 0.1], [0.7]):
        a = group_normalized(torch.tensor(r, **T64), eps=0.0)
        assert torch.equal(a, torch.zeros(len(r), **T64)), (r, a)


def test_group_normalized_per_agent_with_masks():
    r = torch.tensor([[1.0, 10.0], [3.0, 10.0], [2.0, 30.0]], **T64)
    # agent 0 over G: [1, 3, 2] → ∓1.22474487; agent 1: [10, 10, 30], mean 16.667, std 9.42809042 → −0.707, 1.414
    want = [[-1.22474487, -0.70710678], [1.22474487, -0.70710678], [0.0, 1.41421356]]
    _close(group_normalized(r, eps=0.0), want)
    _close(group_normalized(r.T, eps=0.0, dim=1), np.array(want).T)
    _close(group_normalized(r, eps=0.0, mask=torch.tensor([True, False])), [[-1.22474487, 0], [1.22474487, 0], [0, 0]])
    # agent 0 scored only in rollouts 0 and 1 ([1, 3]: ∓1); agent 1 scored only once → 0
    mask = torch.tensor([[True, False], [True, False], [False, True]])
    _close(group_normalized(r, eps=0.0, mask=mask), [[-1.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    with pytest.raises(ValueError, match="mask shape"):
        group_normalized(r, mask=torch.ones(5, dtype=torch.bool))


# --- algorithms --------------------------------------------------------------------------------------------------------

def test_token_advantages_mpo_and_alpha_auto():
    mask = np.ones((2, 2, 3), bool)
    mask[1, 0, 2] = False
    adv = token_advantages(AlgoConfig.preset("mpo"), np.array([0.8, 0.7]), None, None, mask)
    assert adv.dtype == np.float32 and adv.shape == (2, 2, 3)
    _close(adv[0], np.full((2, 3), 0.03), 1e-7)
    _close(adv[1], [[-0.07, -0.07, 0.0], [-0.07, -0.07, -0.07]], 1e-7)
    auto = AlgoConfig(name="mpo", alpha="auto").validate()
    with pytest.raises(ValueError, match="auto"):
        token_advantages(auto, np.array([0.8, 0.7]), None, None, mask)
    alpha = calibrate_alpha(np.array([[0.7, 0.9], [0.75, 0.75]]))  # the mean (the median would be 0.75)
    _close(alpha, 0.775, 1e-12)
    _close(token_advantages(auto, np.array([0.8, 0.7]), None, None, mask, alpha=alpha)[:, 1, 0], [0.025, -0.075], 1e-7)


def test_token_advantages_group_rollout_and_agent():
    mask = np.ones((3, 3, 2), bool)
    mask[0, 2, :] = False  # e.g. a log-replayed agent
    r = np.array([1.0, 2.0, 3.0])
    grpo = token_advantages(AlgoConfig.preset("grpo"), r, None, None, mask)
    _close(grpo[:, 0, 0], [-1.22474337, 0.0, 1.22474337], 1e-6)
    assert (grpo[0, 2] == 0).all() and (grpo[2, 2] != 0).all()
    cfg = AlgoConfig(name="grbo", advantage="agent", std_eps=1e-6).validate()
    agent_r = np.array([[0.0, 5.0, 9.0], [0.0, 5.0, 9.0], [-1.0, 5.0, 9.0]])
    adv = token_advantages(cfg, r, agent_r, np.array([True, True, False]), mask)
    # agent 0: [0, 0, −1] → mean −1/3, std 0.47140452 → 0.70710528, 0.70710528, −1.41421056 (eps 1e-6)
    _close(adv[:, 0, 1], [0.70710528, 0.70710528, -1.41421056], 1e-6)
    _close(adv[:, 1, :], np.zeros((3, 2)))  # scored, zero spread → 0
    _close(adv[:, 2, 0], [0.0, 0.0, 1.22474337], 1e-6)  # unscored: the rollout-level advantage (masked in rollout 0)
    with pytest.raises(ValueError, match="agent_reward"):
        token_advantages(cfg, r, None, None, mask)
    with pytest.raises(ValueError, match="rollout_reward shape"):
        token_advantages(cfg, r[:2], agent_r, np.ones(3, bool), mask)


def test_policy_loss_dispatch():
    logp = torch.tensor([-1.0, -1.0], **T64)
    behaviour = logp - math.log(2.0)  # ρ = 2 against the behaviour policy
    adv = torch.tensor([1.0, 1.0], **T64)
    # MPO ignores the behaviour log-probs (ρ = 1): −1; PPO-clip caps ρ at 1.2: −1.2
    _close(policy_loss(AlgoConfig.preset("mpo"), logp, behaviour, logp, adv).loss, -1.0)
    _close(policy_loss(AlgoConfig.preset("grbo"), logp, behaviour, logp, adv).loss, -1.2)


def test_algo_presets_and_validation():
    mpo, grpo, grbo = (AlgoConfig.preset(n).validate() for n in ("mpo", "grpo", "grbo"))
    assert (mpo.alpha, mpo.beta) == (0.77, 0.04)
    assert (grpo.beta, grpo.clip_eps, grpo.human_coef) == (1e-3, 0.2, 0.0)
    assert (grbo.beta, grbo.human_coef, grbo.advantage, grbo.std_floor) == (0.01, 0.1, "rollout", 0.05)
    assert (mpo.baseline, grpo.std_floor) == ("alpha", 0.05)
    bad = [({"name": "ppo"}, "algo.name"), ({"alpha": "mean"}, "algo.alpha"), ({"alpha": math.inf}, "algo.alpha"),
           ({"beta": -1.0}, "algo.beta"), ({"beta": math.nan}, "algo.beta"), ({"clip_eps": 1.0}, "algo.clip_eps"),
           ({"human_coef": -0.1}, "algo.human_coef"), ({"advantage": "token"}, "algo.advantage"),
           ({"name": "grpo", "advantage": "agent"}, "algo.advantage"), ({"name": "mpo", "human_coef": 0.1},
                                                                         "algo.human_coef"),
           ({"std_eps": 0.0}, "algo.std_eps"), ({"std_floor": -0.1}, "algo.std_floor"),
           ({"baseline": "critic"}, "algo.baseline"), ({"distribution": "topk"}, "algo.distribution")]
    for kwargs, field in bad:
        with pytest.raises(ValueError, match=field):
            AlgoConfig(**kwargs).validate()
    with pytest.raises(ValueError, match="no algorithm preset"):
        AlgoConfig.preset("dpo")


def test_sft_loss_smoothing_and_exact_kl():
    """Hand-computed on a 3-token vocabulary (the third id outside the type's vocabulary)."""
    p = torch.tensor([[0.7, 0.3, 0.0]], **T64)
    q = torch.tensor([[0.5, 0.5, 0.0]], **T64)
    logp, logq = p.log(), q.log()
    target = logp[:, 0]
    plain = sft_loss(target, None, None, 0.0, 0.0)
    _close(plain.loss, -math.log(0.7), 1e-12)
    smooth = sft_loss(target, logp, None, 0.2, 0.0)  # 0.8·CE + 0.2·mean(−log p) over the 2 real ids
    _close(smooth.loss, 0.8 * -math.log(0.7) + 0.2 * -(math.log(0.7) + math.log(0.3)) / 2, 1e-12)
    kl = 0.7 * math.log(0.7 / 0.5) + 0.3 * math.log(0.3 / 0.5)
    with_kl = sft_loss(target, logp, logq, 0.0, 2.0)
    _close(with_kl.loss, -math.log(0.7) + 2.0 * kl, 1e-12)
    assert with_kl.stats["sft_kl"] == pytest.approx(kl, rel=1e-9)
    with pytest.raises(ValueError, match="reference"):
        sft_loss(target, logp, None, 0.0, 1.0)
