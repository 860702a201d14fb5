"""RL rewards from a hand-built RolloutBatch: weighted terms, eligible agent types, agent mapping, validation.

The group: G = 2 rollouts, sim agents object_ids [30, 20, 10, 40] (not sorted) of types [cyclist, pedestrian, vehicle, vehicle];
scored ids [40, 20, 30] (another order than object_ids; agent 10 unscored). Events per rollout (scored order):
  collision  r0 [T, F, F]  r1 [F, F, F]
  offroad    r0 [F, T, T]  r1 [T, T, F]   (the pedestrian's offroad never counts)
  red_light  r0 [F, F, T]  r1 [T, F, F]   (only vehicles count: the cyclist's is ignored)
meta_single [0.6, 0.5], loo_contribution [0.01, −0.01], group metametric 0.55.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from rollout_workers.batch import RolloutBatch
from trainer.rewards import RewardConfig, agent_rewards, weighted_rewards

WEIGHTS = RewardConfig(meta_single=1.0, loo_contribution=2.0, group_meta=0.5, collision=1.0, offroad=0.5,
                       red_light=3.0, agent_realism_share=0.5)


def _batch(**reward_overrides) -> RolloutBatch:
    G, A = 2, 4
    f = np.zeros((G, A, 80), np.float32)
    rewards = {
        "scored_object_ids": np.array([[40, 20, 30], [40, 20, 30]], np.int64),
        "collision": np.array([[1, 0, 0], [0, 0, 0]], bool),
        "offroad": np.array([[0, 1, 1], [1, 1, 0]], bool),
        "red_light": np.array([[0, 0, 1], [1, 0, 0]], bool),
        "meta_single": np.array([0.6, 0.5]),
        "meta_without": np.array([0.54, 0.56]),
        "loo_contribution": np.array([0.01, -0.01]),
    }
    rewards.update(reward_overrides)
    rewards = {k: v for k, v in rewards.items() if v is not None}
    return RolloutBatch(
        scenario_id="hand", object_ids=np.array([30, 20, 10, 40], np.int64), track_index=np.arange(A),
        agent_type=np.array([2, 1, 0, 0], np.int64), sdc="policy", policy_version=1, base_seed=0,
        rollout_indices=np.arange(G), seeds=np.arange(G), sampler={}, tokens=np.zeros((G, A, 16), np.int64),
        logp=np.zeros((G, A, 16), np.float32), sampler_logp=np.zeros((G, A, 16), np.float32),
        token_mask=np.ones((G, A, 16), bool), boundary_poses=np.zeros((G, A, 17, 3), np.float32),
        x=f, y=f, z=f, heading=f, rewards=rewards, group_rewards={"metametric": 0.55},
    )


def test_rollout_rewards_terms_and_weighted_sum():
    reward, terms = weighted_rewards(_batch(), WEIGHTS.validate())
    np.testing.assert_allclose(terms["collision"], [1 / 3, 0.0], atol=1e-12)
    np.testing.assert_allclose(terms["offroad"], [1 / 3, 1 / 3], atol=1e-12)  # cyclist in r0, vehicle 40 in r1
    np.testing.assert_allclose(terms["red_light"], [0.0, 1 / 3], atol=1e-12)
    np.testing.assert_allclose(terms["group_meta"], [0.55, 0.55], atol=1e-12)
    np.testing.assert_allclose(terms["loo_contribution"], [0.01, -0.01], atol=1e-12)
    # realism 0.6 + 0.02 + 0.275 = 0.895 and 0.5 − 0.02 + 0.275 = 0.755; penalty 1/3 + 0.5/3 = 0.5 and 0.5/3 + 1
    np.testing.assert_allclose(reward, [0.395, -0.41166667], atol=1e-8)


def test_agent_rewards_map_scored_ids_and_ignore_ineligible_types():
    reward, scored = agent_rewards(_batch(), WEIGHTS.validate())
    assert scored.tolist() == [True, True, False, True]
    # share 0.5 of the realism rewards: 0.4475 and 0.3775; then each agent's own penalties (object_ids order)
    want = [[0.4475 - 0.5, 0.4475, 0.0, 0.4475 - 1.0],  # cyclist offroad; ped offroad ignored; vehicle 40 collided
            [0.3775, 0.3775, 0.0, 0.3775 - 0.5 - 3.0]]  # vehicle 40: offroad and red light
    np.testing.assert_allclose(reward, want, atol=1e-12)
    # the rollout's safety penalty is the mean of its scored agents' penalties
    roll, _ = weighted_rewards(_batch(), WEIGHTS)
    realism = np.array([0.895, 0.755])
    np.testing.assert_allclose(realism - roll, -(reward[:, scored] - 0.5 * realism[:, None]).mean(1), atol=1e-12)


def test_red_light_counts_vehicles_only_and_pedestrian_offroad_never():
    # Every scored agent has every event: the pedestrian's offroad and the cyclist's red light must not count.
    full = np.ones((2, 3), bool)
    b = _batch(collision=np.zeros((2, 3), bool), offroad=full, red_light=full)
    _, terms = weighted_rewards(b, RewardConfig(offroad=1.0, red_light=1.0))
    np.testing.assert_allclose(terms["offroad"], [2 / 3, 2 / 3], atol=1e-12)  # vehicle 40 and cyclist 30
    np.testing.assert_allclose(terms["red_light"], [1 / 3, 1 / 3], atol=1e-12)  # vehicle 40 only
    reward, _ = agent_rewards(b, RewardConfig(offroad=1.0, red_light=1.0))
    np.testing.assert_allclose(reward[0], [-1.0, 0.0, 0.0, -2.0], atol=1e-12)


def test_missing_terms_and_bad_ids():
    b = _batch(meta_single=None)
    with pytest.raises(ValueError, match="meta_single"):
        weighted_rewards(b, RewardConfig(meta_single=1.0))
    reward, terms = weighted_rewards(b, RewardConfig(collision=1.0))  # an unweighted missing term is just not logged
    assert "meta_single" not in terms and np.allclose(reward, [-1 / 3, 0.0])
    with pytest.raises(ValueError, match=r"\[77\]"):
        agent_rewards(_batch(scored_object_ids=np.array([[40, 77, 30]] * 2)), RewardConfig(collision=1.0))
    with pytest.raises(ValueError, match="scored_object_ids"):
        agent_rewards(_batch(scored_object_ids=None), RewardConfig(collision=1.0))


def test_reward_config_validation_and_presets():
    for field, value in (("collision", math.nan), ("meta_single", math.inf), ("offroad", -1.0),
                         ("agent_realism_share", -0.5)):
        with pytest.raises(ValueError, match=f"reward.{field}"):
            RewardConfig(**{field: value, "group_meta": 1.0}).validate()
    with pytest.raises(ValueError, match="all zero"):
        RewardConfig().validate()
    assert RewardConfig.preset("mpo").validate().group_meta == 1.0
    grbo = RewardConfig.preset("grbo").validate()
    assert (grbo.meta_single, grbo.collision, grbo.offroad, grbo.red_light) == (1.0, 1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="no reward preset"):
        RewardConfig.preset("ppo")


def test_collision_at_fault_is_its_own_term_and_a_weighted_missing_term_is_named():
    # r0: vehicle 40 and the cyclist 30 collided; only vehicle 40 drove into the other
    b = _batch(collision=np.array([[1, 0, 1], [0, 0, 0]], bool),
               collision_at_fault=np.array([[1, 0, 0], [0, 0, 0]], bool))
    cfg = RewardConfig(collision_at_fault=2.0).validate()
    reward, terms = weighted_rewards(b, cfg)
    np.testing.assert_allclose(terms["collision"], [2 / 3, 0.0], atol=1e-12)
    np.testing.assert_allclose(terms["collision_at_fault"], [1 / 3, 0.0], atol=1e-12)
    np.testing.assert_allclose(reward, [-2 / 3, 0.0], atol=1e-12)
    per_agent, _ = agent_rewards(b, cfg)
    np.testing.assert_allclose(per_agent, [[0.0, 0.0, 0.0, -2.0], [0.0, 0.0, 0.0, 0.0]], atol=1e-12)
    with pytest.raises(ValueError, match="collision_at_fault"):
        weighted_rewards(_batch(), cfg)  # the hand-built group carries no at-fault indicators
    with pytest.raises(ValueError, match="collision_at_fault"):
        agent_rewards(_batch(), cfg)
