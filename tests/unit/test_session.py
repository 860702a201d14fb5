"""The closed-loop session engine: consistency with `simulate`, sessions of different scenes batched together,
long sessions, bad use."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from drivetune.closed_loop import simulate
from drivetune.engine import Engine, SessionSpec
from drivetune.model import BehaviorModel, ModelConfig
from drivetune.samplers import SamplerConfig, rollout_seed
from drivetune.scene import HEADING, X, Y
from drivetune.tokenizer import build_vocab
from drivetune.womd import load_scene

WARMK = SamplerConfig(kind="warmk", k=8, warm_lambda=2.0)


@pytest.fixture(scope="module")
def setup(womd_637, womd_ee5):
    scenes = [load_scene(womd_637), load_scene(womd_ee5)]
    vocab = build_vocab(scenes, sizes=(128, 32, 32))
    torch.manual_seed(0)
    model = BehaviorModel(ModelConfig.named("micro"), vocab).eval()
    return scenes, vocab.to_torch(), model


def logged_sdc(scene) -> np.ndarray:
    """The SDC's logged future [80, 3] (x, y, heading)."""
    cur = scene.current_time_index
    st = scene.states[scene.sdc_index, cur + 1: cur + 81]
    return np.stack([st[:, X], st[:, Y], st[:, HEADING]], -1).astype(np.float64)


def drive(engine, sessions, tracks, steps, external_rows=None):
    """Step sessions `steps` intervals feeding each one's SDC track; returns per session (tokens, poses) stacked."""
    out = [([], []) for _ in sessions]
    for t in range(steps):
        engine.act(sessions)
        ext = []
        for s, track in zip(sessions, tracks):
            poses = np.zeros((s.num_rows, s.num_agents, 5, 3))
            poses[:, s.external] = track[t * 5:(t + 1) * 5]
            ext.append((torch.as_tensor(poses), torch.as_tensor(np.broadcast_to(s.external, poses.shape[:2]).copy())))
        for (toks, ps), rec in zip(out, engine.observe(sessions, ext)):
            toks.append(rec.tokens.clone())
            ps.append(rec.poses.clone())
    return [(torch.stack(t, 2).numpy(), torch.cat(p, 2).numpy()) for t, p in out]


def test_external_session_matches_simulate(setup):
    """A session whose SDC the caller drives with the logged poses gives simulate(sdc="external")'s rollout exactly."""
    scenes, tv, model = setup
    scene = scenes[0]
    track = logged_sdc(scene)
    ref = simulate(model, tv, [scene], 1, WARMK, base_seed=7, sdc="external", sdc_poses=[track])[0]
    engine = Engine(model, tv)
    (s,) = engine.start([SessionSpec(scene, [rollout_seed(scene.scenario_id, 0, 7, 0)], WARMK, [scene.sdc_id])])
    assert s.external.sum() == 1 and s.object_ids[s.external][0] == scene.sdc_id
    ((tokens, poses),) = drive(engine, [s], [track], 16)
    assert np.array_equal(tokens, ref.tokens)
    assert np.array_equal(poses[..., 0].astype(np.float32), ref.x)
    assert np.array_equal(poses[..., 2].astype(np.float32), ref.heading)
    assert (tokens[0, ~s.external] != tokens[0, ~s.external][:, :1]).any()  # the policy agents move


def test_sessions_of_different_scenes_step_together(setup, monkeypatch):
    """Two scenes (50 and 84 agents) and two samplers in one batched forward per step: each session's tokens are
    those it gets alone; regrouping the sessions mid-run (alone, together, in the other order) changes nothing."""
    scenes, tv, model = setup
    tracks = [logged_sdc(s) for s in scenes]
    specs = [SessionSpec(scenes[0], [11, 12], WARMK, [scenes[0].sdc_id]),
             SessionSpec(scenes[1], [13], SamplerConfig(kind="topk", k=16), [scenes[1].sdc_id])]
    alone = []
    for spec, track in zip(specs, tracks):
        engine = Engine(model, tv)
        alone += drive(engine, engine.start([spec]), [track], 6)
    engine = Engine(model, tv)
    a = engine.start(specs[:1])[0]
    b = engine.start(specs[1:])[0]  # started apart: the map pool grows and pads
    calls = []
    step = model.step
    monkeypatch.setattr(model, "step", lambda st, *x: calls.append(st.num_rows) or step(st, *x))
    first = drive(engine, [a, b], tracks, 2)
    monkeypatch.setattr(model, "step", step)
    assert calls == [3, 3]  # one batched forward of all 3 rows per step
    mid = drive(engine, [a], [tracks[0][10:]], 1)  # a alone (b waits), then both in the other order
    tail = drive(engine, [b, a], [tracks[1][10:], tracks[0][15:]], 3)
    joined_a = np.concatenate([first[0][0], mid[0][0], tail[1][0]], 2)
    b_tokens = np.concatenate([first[1][0], tail[0][0]], 2)
    assert np.array_equal(joined_a, alone[0][0])
    assert np.array_equal(b_tokens, alone[1][0][..., :5])
    assert np.allclose(first[0][1], alone[0][1][:, :, :10], atol=1e-4)


def test_long_session_and_slot_reuse(setup):
    """Sessions run past the 8 s log (CAT-K falls back to greedy there); closed sessions free their map slot."""
    scenes, tv, model = setup
    engine = Engine(model, tv)
    (s,) = engine.start([SessionSpec(scenes[0], [1], SamplerConfig(kind="catk", k=4))])
    for _ in range(20):
        engine.act([s])
        (rec,) = engine.observe([s], [None])
    assert s.steps == 20 and torch.isfinite(rec.poses).all()
    assert (rec.sft_target == -1).all()  # no log beyond 16 intervals
    slots = len(engine._maps.refs)
    assert engine.maps_held() == 1
    engine.close(s)
    assert engine.maps_held() == 0
    (t,) = engine.start([SessionSpec(scenes[1], [2])])
    assert len(engine._maps.refs) == slots and t._slot == s._slot  # the freed slot is reused
    with pytest.raises(ValueError, match="closed"):
        engine.act([s])


def test_bad_use(setup):
    scenes, tv, model = setup
    engine = Engine(model, tv)
    with pytest.raises(ValueError, match=r"external ids \[12345\]"):
        engine.start([SessionSpec(scenes[0], [1], external_ids=[12345])])
    (s,) = engine.start([SessionSpec(scenes[0], [1], external_ids=[scenes[0].sdc_id])])
    with pytest.raises(ValueError, match="call act first"):
        engine.observe([s], [None])
    engine.act([s])
    with pytest.raises(ValueError, match="act called twice"):
        engine.act([s])
    with pytest.raises(ValueError, match="external agents' poses are missing"):
        engine.observe([s], [None])
    with pytest.raises(ValueError, match="twice in one step"):
        engine.observe([s, s], [None, None])
