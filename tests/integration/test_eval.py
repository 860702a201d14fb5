"""`drivetune eval` / drivetune.evaluation on a toy case: two random-weight micro checkpoints, 3 scenes, 2 rollouts."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from drivetune.checkpoint import checkpoint_dir, load_checkpoint, save_checkpoint
from drivetune.cli import main as cli_main
from drivetune.evaluation import (EVAL_FORMAT, METRICS, BootstrapConfig, bootstrap_ci, evaluate_checkpoints,
                                  evaluate_policy, load_eval_scenes, parse_sampler_grid)
from drivetune.model import BehaviorModel, ModelConfig
from drivetune.realism.metrics import METRIC_FIELDS
from drivetune.samplers import SamplerConfig
from drivetune.tokenizer import build_vocab
from drivetune.womd import load_scene

SAMPLER = SamplerConfig(kind="warmk", k=8, warm_lambda=3.0)
BOOT = BootstrapConfig(resamples=500, level=0.9, seed=7)


@pytest.fixture(scope="module")
def toy(tmp_path_factory, womd_637, womd_ee5):
    base = [load_scene(womd_637), load_scene(womd_ee5)]
    vocab = build_vocab(base, sizes=(64, 32, 32))
    root = tmp_path_factory.mktemp("eval")
    paths = []
    for i, where in enumerate((root / "bc", checkpoint_dir(root / "run", 5))):  # a checkpoint and a run directory
        torch.manual_seed(i)
        save_checkpoint(where, BehaviorModel(ModelConfig.named("micro", agent_layers=1), vocab), {"step": 5 * i})
        paths.append(str(where if i == 0 else root / "run"))
    # A third scene: scene 637 under another id (other rollout seeds, so other rollouts and scores).
    scenes = base + [dataclasses.replace(base[0], scenario_id="637-copy")]
    return scenes, paths, root


@pytest.fixture(scope="module")
def pair(toy):
    scenes, paths, _ = toy
    grid = parse_sampler_grid("warm_lambda=0", SAMPLER)
    return evaluate_checkpoints(paths, scenes, 2, SAMPLER, seed=1, boot=BOOT, grid=grid,
                                keep_rollouts=["637-copy"])


def test_schema(toy, pair):
    scenes, paths, _ = toy
    assert pair["format"] == EVAL_FORMAT and pair["metrics"] == list(METRICS)
    assert set(METRIC_FIELDS) <= set(METRICS) and {"kinematic_metrics", "map_based_metrics"} <= set(METRICS)
    st = pair["settings"]
    assert st["scenario_ids"] == [s.scenario_id for s in scenes] and st["rollouts"] == 2 and st["seed"] == 1
    assert st["sampler"] == SAMPLER.to_dict() and st["config"] == "2025" and st["sdc"] == "policy"
    assert st["bootstrap"] == {"method": "percentile", "resamples": 500, "level": 0.9, "seed": 7}
    assert [e["name"] for e in pair["checkpoints"]] == paths and [e["step"] for e in pair["checkpoints"]] == [0, 5]
    assert pair["checkpoints"][1]["path"].endswith("run/checkpoints/step_00000005")  # the run's latest checkpoint
    for e in pair["checkpoints"]:
        assert [r["scenario_id"] for r in e["scenes"]] == st["scenario_ids"]
        for r in e["scenes"]:
            assert set(r) == {"scenario_id", *METRICS} and all(np.isfinite(r[m]) for m in METRICS)
            assert 0.0 < r["metametric"] < 1.0 and r["min_average_displacement_error"] > 0
        assert set(e["mean"]) == set(e["ci"]) == set(METRICS)
        assert set(e["seconds"]) == {"simulate", "score", "cpu"}
        xy = e["rollouts_xy"]["637-copy"]  # kept for the rendering, [R, A_sim, 80, 2]
        assert list(e["rollouts_xy"]) == ["637-copy"] and xy.shape == (2, int(scenes[0].sim_agent_mask().sum()), 80, 2)
    json.dumps({k: v for k, v in pair.items() if k != "checkpoints"})  # everything but the kept arrays is JSON
    assert [d["name"] for d in pair["differences"]] == paths[1:] and pair["differences"][0]["baseline"] == paths[0]


def test_difference_is_the_mean_of_per_scene_differences(pair):
    a, b = pair["checkpoints"]
    (diff,) = pair["differences"]
    for m in METRICS:
        per_scene = [rb[m] - ra[m] for ra, rb in zip(a["scenes"], b["scenes"])]
        assert diff["mean"][m] == pytest.approx(sum(per_scene) / len(per_scene), abs=1e-12)
        assert a["mean"][m] == pytest.approx(sum(r[m] for r in a["scenes"]) / 3, abs=1e-12)
    assert abs(diff["mean"]["metametric"]) > 1e-4  # different weights, different scores


def test_intervals_contain_the_mean_and_depend_only_on_the_seed(pair):
    for summary in [*pair["checkpoints"], *pair["differences"], *pair["sampler_grid"]]:
        for m in METRICS:
            lo, hi = summary["ci"][m]
            assert lo <= summary["mean"][m] <= hi, m
    a = pair["checkpoints"][0]
    values = np.array([[r[m] for m in METRICS] for r in a["scenes"]])
    lo, hi = bootstrap_ci(values, BOOT)
    assert np.array_equal(lo, [a["ci"][m][0] for m in METRICS]) and np.array_equal(hi, [a["ci"][m][1] for m in METRICS])


def test_bootstrap_matches_the_normal_interval_on_a_large_sample():
    rng = np.random.default_rng(3)
    values = rng.normal(2.0, 1.5, size=400)
    boot = BootstrapConfig(resamples=4000, level=0.95, seed=0)
    lo, hi = bootstrap_ci(values, boot)
    assert bootstrap_ci(values, boot) == (lo, hi)  # reproducible with the seed, another seed moves it
    assert bootstrap_ci(values, dataclasses.replace(boot, seed=1)) != (lo, hi)
    half = 1.959964 * values.std(ddof=1) / np.sqrt(len(values))
    assert lo == pytest.approx(values.mean() - half, abs=0.05 * half)
    assert hi == pytest.approx(values.mean() + half, abs=0.05 * half)
    assert bootstrap_ci(values[:1], BootstrapConfig(resamples=10)) == (values[0], values[0])  # one scene: the point


def test_sampler_grid_rows(toy, pair):
    paths = toy[1]
    rows = pair["sampler_grid"]
    assert [r["checkpoint"] for r in rows] == paths
    assert all(r["sampler"] == dict(SAMPLER.to_dict(), warm_lambda=0.0) for r in rows)
    for r, e in zip(rows, pair["checkpoints"]):  # λ = 0 is plain top-K: other rollouts than λ = 3
        assert r["mean"]["metametric"] != e["mean"]["metametric"] and set(r["mean"]) == set(METRICS)
    grid = parse_sampler_grid("k=8,32 warm-lambda=0,1,4", SAMPLER)
    assert [(g.k, g.warm_lambda) for g in grid] == [(8, 0), (8, 1), (8, 4), (32, 0), (32, 1), (32, 4)]
    for bad, msg in (("lambda=1", "unknown key 'lambda'"), ("k=8 k=4", "given twice"), ("k=x", "bad value"),
                     ("k", "KEY=V1"), ("k=0", "k must be >= 1"), ("", "empty")):
        with pytest.raises(ValueError, match=msg):
            parse_sampler_grid(bad, SAMPLER)


def test_same_weights_differ_by_exactly_zero(toy):
    scenes, paths, root = toy
    model, _ = load_checkpoint(paths[0])
    later = save_checkpoint(root / "same-weights-step-7", model, {"step": 7})  # same weights, another step
    res = evaluate_checkpoints([paths[0], paths[0], later], scenes[:2], 2, SAMPLER, seed=1, boot=BOOT)
    a, b, c = res["checkpoints"]
    assert a["name"] == paths[0] and b["name"] == f"{paths[0]} (2)" and c["step"] == 7
    assert a["scenes"] == b["scenes"] == c["scenes"]  # the same seeds for every checkpoint, whatever its step
    for diff in res["differences"]:
        assert all(diff["mean"][m] == 0.0 and diff["ci"][m] == [0.0, 0.0] for m in METRICS)
    # The in-memory API gives the same rows (what the RL driver calls), whatever mode the model is in.
    model.train()
    mem = evaluate_policy(model, None, scenes[:2], 2, SAMPLER, seed=1, batch_scenes=2, boot=BOOT)
    assert model.training and [r["scenario_id"] for r in mem["scenes"]] == [s.scenario_id for s in scenes[:2]]
    for r, ref in zip(mem["scenes"], a["scenes"]):  # batched 2 scenes at once: equal up to float blocking
        assert all(r[m] == pytest.approx(ref[m], abs=2e-3) for m in METRICS)
    with pytest.raises(ValueError, match="vocabulary"):
        evaluate_policy(model, build_vocab(scenes[:1], sizes=(16, 8, 8)).to_torch(), scenes[:1], 1, SAMPLER)


def test_load_eval_scenes(womd_637, womd_ee5, tmp_path):
    scenes = load_eval_scenes([str(womd_ee5), str(womd_637)])
    assert [s.scenario_id for s in scenes] == ["ee519cf571686d19", "637f20cafde22ff8"]  # spec order
    assert [s.scenario_id for s in load_eval_scenes([str(womd_637.parent / "*.tfrecord")], max_scenes=1)] == [
        "637f20cafde22ff8"]
    with pytest.raises(ValueError, match="not found"):
        load_eval_scenes([str(womd_637)], scenario_ids=["637f20cafde22ff8", "nope"])
    (tmp_path / "copy.tfrecord").write_bytes(womd_637.read_bytes())
    with pytest.raises(ValueError, match="appears twice"):
        load_eval_scenes([str(womd_637), str(tmp_path / "copy.tfrecord")])


def test_cli_writes_json_markdown_charts_and_rendering(toy, womd_637, womd_ee5, tmp_path, capsys):
    _, paths, _ = toy
    out = tmp_path / "eval"
    argv = ["eval", str(womd_637), str(womd_ee5), "--checkpoints", *paths, "--rollouts", "2",
            "--sampler", "topk", "--k", "8", "--scenario-id", "637f20cafde22ff8", "--bootstrap", "100",
            "--sampler-grid", "k=4,8", "--out", str(out)]
    assert cli_main(argv) == 0
    result = json.loads((out / "eval.json").read_text())
    assert result["format"] == EVAL_FORMAT and len(result["checkpoints"]) == 2 and len(result["sampler_grid"]) == 4
    assert result["settings"]["scenes"] == [str(womd_637), str(womd_ee5)]
    assert all("rollouts_xy" not in e for e in result["checkpoints"])
    grid = result["sampler_grid"]
    assert [(g["checkpoint"], g["sampler"]["k"]) for g in grid] == [(p, k) for p in paths for k in (4, 8)]
    for i, e in enumerate(result["checkpoints"]):  # k = 8 is the main sampler: the same rollouts, the same numbers
        assert grid[2 * i + 1]["mean"] == e["mean"] and grid[2 * i + 1]["ci"] == e["ci"]
        assert grid[2 * i]["mean"] != e["mean"]
    md = (out / "eval.md").read_text()
    assert "| checkpoint | meta |" in md and f"## Difference to {paths[0]}" in md and "topk k=4" in md
    assert f"{result['checkpoints'][1]['mean']['metametric']:.4f}" in md and md in capsys.readouterr().out
    pngs = ["charts/summary.png", "charts/scenes.png", "charts/differences.png", "charts/sampler_grid.png",
            "render/637f20cafde22ff8-side-by-side.png", "render/637f20cafde22ff8-checkpoint1.png"]
    for name in pngs:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    for bad, msg in ((["--checkpoints", str(tmp_path / "none")], "neither a checkpoint"),
                     (["--sampler-grid", "lambda=1"], "unknown key"), (["--render", "nope"], "not among"),
                     (["--rollouts", "0"], "must be >= 1")):
        args = ["eval", str(womd_637), "--checkpoints", paths[0], "--out", str(tmp_path / "x"), *bad]
        assert cli_main(args) == 2
        assert msg in capsys.readouterr().err
