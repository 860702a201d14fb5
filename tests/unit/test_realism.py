"""drivetune.realism: per-rollout rewards, scene batching, configs, bad inputs, CLI and submission I/O."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from drivetune.cli import main as cli_main
from drivetune.realism import CONFIG_2024, RolloutError, Rollouts, realism_metrics
from drivetune.realism.challenge import FEATURE_NAMES
from drivetune.realism.metrics import METRIC_FIELDS, evaluate
from drivetune.realism.rewards import rollout_rewards
from drivetune.realism.submission import (SubmissionError, read_submission, to_scenario_rollouts,
                                          validate_scenario_rollouts, write_submission)
from drivetune.scene import HEADING, LENGTH, VX, VY, X, Y, Z, AgentType
from drivetune.womd import load_scene


def logged_rollouts(scene, num_rollouts: int, noise: float = 0.0, seed: int = 0) -> Rollouts:
    """The logged future of every sim agent (invalid steps hold the last valid state), plus optional noise."""
    cur = scene.current_time_index
    idx = np.flatnonzero(scene.sim_agent_mask())
    steps = np.where(scene.valid[idx], np.arange(scene.num_steps), -1)
    last = np.maximum.accumulate(steps, axis=1)[:, cur + 1 :]
    held = scene.states[idx[:, None], last]  # [A, 80, 9]
    rng = np.random.default_rng(seed)
    arr = lambda c, s: (held[None, :, :, c] + rng.normal(0, s, (num_rollouts, *held.shape[:2]))).astype(np.float32)  # noqa: E731
    return Rollouts(scene.track_ids[idx].astype(np.int64), arr(X, noise), arr(Y, noise), arr(Z, noise / 4),
                    arr(HEADING, noise / 10))


def subset(ro: Rollouts, keep) -> Rollouts:
    return Rollouts(ro.object_id.copy(), *(getattr(ro, k)[keep].copy() for k in ("x", "y", "z", "heading")))


@pytest.fixture(scope="module")
def scene(womd_637):
    return load_scene(womd_637)


@pytest.fixture(scope="module")
def scene_ee5(womd_ee5):
    return load_scene(womd_ee5)


@pytest.fixture(scope="module")
def noisy(oracle_dir):
    return Rollouts.load(oracle_dir / "case_test_submission.npz")


def test_leave_one_out_matches_recomputation(scene, noisy):
    small = subset(noisy, slice(0, 4))
    rw = rollout_rewards(scene, small)
    group = realism_metrics(scene, small)[0]
    assert rw.metrics[0]["metametric"] == pytest.approx(group["metametric"], abs=1e-12)
    for i in range(4):
        without = realism_metrics(scene, subset(small, [j for j in range(4) if j != i]))[0]["metametric"]
        alone = realism_metrics(scene, subset(small, [i]))[0]["metametric"]
        assert float(rw.meta_without[0, i]) == pytest.approx(without, abs=1e-9)
        assert float(rw.meta_single[0, i]) == pytest.approx(alone, abs=1e-9)
    assert float(rw.loo_contribution.sum()) == pytest.approx(0.0, abs=1e-12)
    m = rw.meta_without[0]
    assert torch.allclose(rw.loo_contribution[0], m.mean() - m)


def test_indicators_and_all_agents_scoring(scene, noisy):
    small = subset(noisy, slice(0, 3))
    rw = rollout_rewards(scene, small)
    assert rw.collision.shape == (1, 3, 4) and rw.collision.dtype == torch.bool
    rate = rw.collision.double().mean().item()
    assert rate == pytest.approx(rw.metrics[0]["simulated_collision_rate"])
    dense = rollout_rewards(scene, small, scored="all")
    assert list(dense.scored_ids[0]) == list(small.object_id)
    assert dense.offroad.shape == (1, 3, 50)
    # the evaluated agents' indicators are the same whichever set is scored
    pos = [list(small.object_id).index(i) for i in rw.scored_ids[0]]
    assert torch.equal(dense.collision[0][:, pos], rw.collision[0])
    assert torch.equal(dense.offroad[0][:, pos], rw.offroad[0])


def test_batch_of_scenes_equals_one_by_one(scene, scene_ee5, noisy):
    other = logged_rollouts(scene_ee5, 32, noise=0.3, seed=1)
    together = realism_metrics([scene, scene_ee5], [noisy, other])
    alone = [realism_metrics(scene, noisy)[0], realism_metrics(scene_ee5, other)[0]]
    for t, a in zip(together, alone):
        assert t["scenario_id"] == a["scenario_id"]
        for k in METRIC_FIELDS:
            assert t[k] == pytest.approx(a[k], abs=1e-9), k
    assert together[1]["traffic_light_violation_likelihood"] > 0.99  # ee5 has no signals
    # every sim agent scored: 50 and 84 agents padded into one batch
    few = [subset(noisy, slice(0, 4)), subset(other, slice(0, 4))]
    together = realism_metrics([scene, scene_ee5], few, scored="all")
    for t, (sc, ro) in zip(together, zip([scene, scene_ee5], few)):
        a = realism_metrics(sc, ro, scored="all")[0]
        for k in METRIC_FIELDS:  # float32 sums over a padded agent axis may round differently
            assert t[k] == pytest.approx(a[k], rel=1e-6, abs=1e-9), k


def test_config_2024_weights(scene, noisy):
    r25 = realism_metrics(scene, noisy, config="2025")[0]
    r24 = realism_metrics(scene, noisy, config="2024")[0]
    for n in FEATURE_NAMES:
        assert r24[f"{n}_likelihood"] == pytest.approx(r25[f"{n}_likelihood"], abs=1e-12)
    expect = sum(float(np.float32(CONFIG_2024.weight(n))) * r24[f"{n}_likelihood"] for n in FEATURE_NAMES)
    assert r24["metametric"] == pytest.approx(expect, abs=1e-9)
    assert r24["metametric"] != pytest.approx(r25["metametric"], abs=1e-4)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: Rollouts(r.object_id[1:], r.x[:, 1:], r.y[:, 1:], r.z[:, 1:], r.heading[:, 1:]), "missing"),
        (lambda r: Rollouts(np.append(r.object_id[:-1], 99999), r.x, r.y, r.z, r.heading), "not sim agents"),
        (lambda r: Rollouts(r.object_id, r.x[:, :, :79], r.y, r.z, r.heading), "shape"),
        (lambda r: Rollouts(r.object_id, np.where(np.arange(80) == 5, np.nan, r.x).astype(np.float32), r.y, r.z,
                            r.heading), "non-finite x"),
        (lambda r: Rollouts(np.append(r.object_id[:-1], r.object_id[0]), r.x, r.y, r.z, r.heading), "duplicate"),
    ],
)
def test_bad_rollouts_are_named(scene, noisy, mutate, message):
    with pytest.raises(RolloutError, match=message):
        realism_metrics(scene, mutate(subset(noisy, slice(0, 2))))


def test_cli_json_fields_and_errors(tmp_path, womd_637, scene, noisy, capsys):
    path = tmp_path / "ro.npz"
    subset(noisy, slice(0, 8)).save(path)
    assert cli_main(["realism", str(womd_637), str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out) == [*METRIC_FIELDS, "seconds"]
    assert all(np.isfinite(v) for v in out.values())
    bad = subset(noisy, slice(0, 2))
    bad.x[0, 3, 7] = np.inf
    bad.save(path)
    assert cli_main(["realism", str(womd_637), str(path), "--json"]) == 2
    assert "non-finite x" in capsys.readouterr().err


def test_cli_scores_the_official_submission(womd_637, test_submission_path, oracle_dir, capsys):
    assert cli_main(["realism", str(womd_637), str(test_submission_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    official = json.loads((oracle_dir / "case_test_submission.official.json").read_text())["metrics"]
    assert out["metametric"] == pytest.approx(official["metametric"], abs=1e-4)


def test_submission_round_trip_and_rules(tmp_path, scene, noisy, test_submission_path):
    paths = write_submission(tmp_path, [(scene.scenario_id, noisy)], num_shards=2, pack=True)
    assert [p.name for p in paths] == ["submission.binproto-00000-of-00002", "submission.binproto-00001-of-00002",
                                       "submission.tar.gz"]
    subs = read_submission(tmp_path)
    back = validate_scenario_rollouts(subs[scene.scenario_id], scene)
    for k in ("object_id", "x", "y", "z", "heading"):
        np.testing.assert_array_equal(getattr(back, k), getattr(noisy, k))
    with pytest.raises(SubmissionError, match="31 joint scenes"):
        validate_scenario_rollouts(to_scenario_rollouts(scene.scenario_id, subset(noisy, slice(0, 31))), scene)
    short = Rollouts(noisy.object_id[1:], noisy.x[:, 1:], noisy.y[:, 1:], noisy.z[:, 1:], noisy.heading[:, 1:])
    with pytest.raises(SubmissionError, match="missing"):
        validate_scenario_rollouts(to_scenario_rollouts(scene.scenario_id, short), scene)
    official = read_submission(test_submission_path)
    assert list(official) == [scene.scenario_id]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(scene, noisy):
    cpu = realism_metrics(scene, noisy, device="cpu")[0]
    gpu = realism_metrics(scene, noisy, device="cuda")[0]
    for k in METRIC_FIELDS:
        assert gpu[k] == pytest.approx(cpu[k], abs=1e-4), k


def extrapolated_log(scene) -> Rollouts:
    """One rollout: the logged future; after an agent's log ends it keeps its last velocity (it drives on)."""
    cur = scene.current_time_index
    idx = np.flatnonzero(scene.sim_agent_mask())
    steps = np.where(scene.valid[idx], np.arange(scene.num_steps), -1)
    last = np.maximum.accumulate(steps, axis=1)[:, cur + 1 :]
    st = scene.states[idx[:, None], last]
    dt = (np.arange(cur + 1, scene.num_steps)[None] - last) * 0.1
    f = lambda a: np.repeat(a[None].astype(np.float32), 2, axis=0)  # noqa: E731
    return Rollouts(scene.track_ids[idx].astype(np.int64), f(st[..., X] + st[..., VX] * dt),
                    f(st[..., Y] + st[..., VY] * dt), f(st[..., Z]), f(st[..., HEADING]))


def test_logged_synthetic_traffic_is_clean():
    synth = pytest.importorskip("drivetune.synth.world")
    scenes = [synth.generate_scene(seed) for seed in range(3)]
    rw = rollout_rewards(scenes, [extrapolated_log(s) for s in scenes], scored="all")
    for s, scene in enumerate(scenes):
        n = len(rw.scored_ids[s])
        vehicle = scene.track_types[scene.track_index(rw.scored_ids[s])] == int(AgentType.VEHICLE)
        assert rw.collision[s, :, :n].double().mean() <= 0.02, scene.scenario_id
        assert rw.offroad[s, :, :n][:, vehicle].double().mean() <= 0.02, scene.scenario_id  # sidewalks are offroad
        assert not rw.red_light[s].any(), scene.scenario_id
        assert rw.metrics[s]["collision_indication_likelihood"] > 0.9


def test_running_a_red_light_is_detected(scene):
    """Drive the SDC along signalled lane 443 through its stop point while the signal is STOP.

    Official quirk kept here: just past a stop line the upstream lane (its padding segment towards the map origin)
    can still be the "current" lane, so a slow crossing may go unflagged; this one crosses at 15 m/s.
    """
    lane = int(np.flatnonzero(scene.map_ids == 443)[0])
    pts = scene.polyline(lane)[:, :2]
    j = list(scene.signal_lane_ids).index(443)
    assert (scene.signal_states[11:, j] == 4).sum() >= 60
    seg = np.diff(pts, axis=0)
    arc = np.concatenate([[0], np.cumsum(np.linalg.norm(seg, axis=1))])
    assert np.allclose(scene.signal_stop_points[40, j, :2], pts[0])  # the stop point is where the lane starts
    s = 1.5 * (np.arange(80) - 20) - 0.3  # arc length; crosses the stop point at future step 21 (signal STOP)
    d0 = seg[0] / np.linalg.norm(seg[0])
    x = np.where(s < 0, pts[0, 0] + s * d0[0], np.interp(s, arc, pts[:, 0]))
    y = np.where(s < 0, pts[0, 1] + s * d0[1], np.interp(s, arc, pts[:, 1]))
    heading = np.interp(np.clip(s, 0, None), arc[:-1], np.arctan2(seg[:, 1], seg[:, 0]))
    x, y, heading = x[:30], y[:30], heading[:30]  # then stay 13 m past the line, inside the intersection
    x, y, heading = (np.concatenate([v, np.full(50, v[-1])]) for v in (x, y, heading))
    ro = logged_rollouts(scene, 2)
    a = list(ro.object_id).index(scene.sdc_id)
    ro.x[:, a], ro.y[:, a], ro.heading[:, a] = x, y, heading
    rw = rollout_rewards(scene, ro)
    e = list(rw.scored_ids[0]).index(scene.sdc_id)
    assert rw.red_light[0, :, e].all()
    assert rw.red_light[0].sum() == 2  # only the SDC
    assert rw.metrics[0]["traffic_light_violation_likelihood"] < 0.9
    assert rw.metrics[0]["simulated_traffic_light_violation_rate"] == pytest.approx(2 / 8)


@pytest.mark.parametrize("metric", ["edge", "lane"])
def test_pruned_nearest_segment_equals_brute_force(metric):
    from drivetune.realism.spatial import SegmentIndex, build_index, nearest_segment

    g = torch.Generator().manual_seed(0)
    polys = [torch.cumsum(torch.randn(n, 3, generator=g) * torch.tensor([2.0, 2.0, 0.2]), 0) + torch.randn(3, generator=g) * 30
             for n in (3, 40, 17, 90)]
    start = torch.cat([p[:-1] for p in polys]).double()
    vec = torch.cat([p[1:] - p[:-1] for p in polys]).double()
    poly = torch.cat([torch.full((len(p) - 1,), i) for i, p in enumerate(polys)])
    scene = (poly >= 2).long()  # two scenes of two polylines each
    idx: SegmentIndex = build_index(poly, scene, start, vec, metric, 3.0 if metric == "edge" else 0.0)
    pts = (torch.rand(3000, 3, generator=g).double() - 0.5) * torch.tensor([120.0, 120.0, 4.0])
    pscene = torch.randint(0, 2, (3000,), generator=g)
    got = nearest_segment(pts if metric == "edge" else pts[:, :2], pscene, idx)

    def metric_value(p, k):
        q = p[:, None, :2] - start[k, :2]
        v = vec[k]
        t = ((q * v[..., :2]).sum(-1) / (v[..., :2] ** 2).sum(-1)).clamp(0, 1)
        if metric == "lane":
            return (q + t[..., None] * v[..., :2]).norm(dim=-1)
        w = torch.cat([q - t[..., None] * v[..., :2], (p[:, None, 2:] - start[k, 2:] - t[..., None] * v[..., 2:]) * 3], -1)
        return w.norm(dim=-1)

    allk = torch.arange(len(start))
    brute = metric_value(pts, allk[None].expand(len(pts), -1))
    brute = torch.where(scene[None] == pscene[:, None], brute, torch.full_like(brute, float("inf"))).amin(1)
    assert (scene[got] == pscene).all()
    torch.testing.assert_close(metric_value(pts, got[:, None])[:, 0], brute)


def test_mean_metrics_averages_scenes(scene, noisy):
    from drivetune.realism import mean_metrics

    rows = [realism_metrics(scene, subset(noisy, slice(i, i + 2)))[0] for i in (0, 2)]
    mean = mean_metrics(rows)
    assert mean["metametric"] == pytest.approx((rows[0]["metametric"] + rows[1]["metametric"]) / 2)
    assert "scenario_id" not in mean


def test_collision_at_fault_charges_the_car_that_drives_into_the_other(scene):
    """Two logged vehicles moved 3 km away from everything: in rollout 0 car A runs into stationary car B from behind
    (A at fault, B not), in rollout 1 they meet head-on (both at fault). The first collision is the step the gap
    between their centres drops below the two half-lengths (aligned boxes: corner rounding leaves the length)."""
    cur = scene.current_time_index
    ro = logged_rollouts(scene, 2)
    vehicle = scene.track_types[scene.track_index(ro.object_id)] == int(AgentType.VEHICLE)
    a_id, b_id = ro.object_id[vehicle][:2]
    a, b = list(ro.object_id).index(a_id), list(ro.object_id).index(b_id)
    half = [float(scene.states[scene.track_index([i])[0], cur, LENGTH]) / 2 for i in (a_id, b_id)]
    far = np.array([scene.states[:, cur, X].max() + 3000.0, scene.states[:, cur, Y].max() + 3000.0])
    t = np.arange(80)
    for r, b_heading in enumerate([0.0, np.pi]):  # B still, facing along +x (rear-end) / towards A (head-on)
        ro.x[r, b], ro.y[r, b], ro.heading[r, b] = far[0], far[1], b_heading
        ro.x[r, a], ro.y[r, a], ro.heading[r, a] = far[0] - 40.0 + 1.0 * t, far[1], 0.0  # A drives +x at 10 m/s
    gap = 40.0 - 1.0 * t
    want_first = int(np.flatnonzero(gap < sum(half))[0])
    rw = rollout_rewards(scene, ro, scored="all")
    ea, eb = (list(rw.scored_ids[0]).index(i) for i in (a_id, b_id))
    assert rw.collision[0, :, ea].all() and rw.collision[0, :, eb].all()
    assert rw.collision_at_fault[0, 0, ea] and not rw.collision_at_fault[0, 0, eb]  # rear-end: the follower only
    assert rw.collision_at_fault[0, 1, ea] and rw.collision_at_fault[0, 1, eb]  # head-on: both
    assert not (rw.collision_at_fault & ~rw.collision).any()  # at fault only in a collision
    _, terms, _ = evaluate([scene], [ro], scored="all")
    assert abs(int(terms.first_collision[0, 0, ea]) - want_first) <= 1, (int(terms.first_collision[0, 0, ea]), want_first)
