"""BC pretraining on Ray Train: a 2-worker DDP run on CPU, then a resume that continues the same run."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1]))
from model_helpers import grid_vocab  # noqa: E402

from cluster.pretrain import fit  # noqa: E402
from cluster.pretrain_config import PretrainConfig, check_resources  # noqa: E402
from cluster.pretrain_loop import lr_lambda, min_ade  # noqa: E402
from drivetune.closed_loop import SceneRollouts  # noqa: E402
from drivetune.model.batch import select_agents  # noqa: E402
from drivetune.checkpoint import load_checkpoint  # noqa: E402
from drivetune.config import ConfigError, load_config  # noqa: E402
from drivetune.shards import write_shards  # noqa: E402
from drivetune.synth import generate_scene  # noqa: E402
from drivetune.womd import load_scene  # noqa: E402
from trainer.run_directory import RunDirectory  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, womd_637, womd_ee5) -> Path:
    root = tmp_path_factory.mktemp("pretrain_data")
    write_shards(root / "shards", [load_scene(womd_637), load_scene(womd_ee5)], shard_size=1)
    grid_vocab().save(root / "vocab.safetensors")
    return root


def _config(data_dir: Path, run_dir: Path, *overrides: str) -> PretrainConfig:
    base = [f"run_dir={run_dir}", f"data.shards={data_dir / 'shards'}", f"data.vocab={data_dir / 'vocab.safetensors'}",
            "num_workers=2", "cpus_per_worker=0.5", "batch_size=1", "log_every=2", "checkpoint_every=2",
            "data.eval_fraction=0.0", "eval_scenes=1", "eval_rollouts=2", "token_noise_k=3",
            "token_noise_prob=0.2"]
    return load_config(PretrainConfig, REPO / "configs" / "pretrain_micro.yaml", base + list(overrides)).validate()


@pytest.mark.slow
def test_ddp_pretrain_then_resume_continues_the_run(ray_local, data_dir, tmp_path):
    run_dir = tmp_path / "run"
    result = fit(_config(data_dir, run_dir, "max_steps=4"))
    assert result.error is None
    assert result.metrics["step"] == 4 and np.isfinite(result.metrics["loss"])
    for key in ("token_acc", "repeat_last_acc", "eval_token_acc", "eval_repeat_last_acc", "eval_min_ade"):
        assert 0.0 <= result.metrics[key] < float("inf"), key
    run = RunDirectory(run_dir)
    assert [s for s, _ in run.checkpoints()] == [2, 4]
    first = RunDirectory.load_trainer_state(run.latest())
    adam_steps = {int(v["step"]) for v in first["optimizer"]["state"].values()}
    assert adam_steps == {4}

    result = fit(_config(data_dir, run_dir, "max_steps=6", "keep_checkpoints=2"))
    assert result.error is None and result.metrics["step"] == 6
    assert [s for s, _ in run.checkpoints()] == [4, 6]
    state = RunDirectory.load_trainer_state(run.latest())
    assert state["step"] == 6 and state["scheduler"]["last_epoch"] == 6
    assert {int(v["step"]) for v in state["optimizer"]["state"].values()} == {6}  # AdamW moments continued
    model, meta = load_checkpoint(run.latest())
    assert meta["parent"] == str(run.checkpoint_path(4)) and meta["stage"] == "pretrain"
    assert [m["step"] for m in run.read_metrics()] == [2, 4, 6]
    assert isinstance(model, torch.nn.Module)


@pytest.mark.slow
def test_pretraining_learns_beyond_repeat_last_on_held_out_scenes(ray_local, tmp_path):
    """24 synthetic scenes (17 train / 7 held out by scenario-id hash), 80 steps streamed through Ray Data: the
    held-out next-token accuracy must beat predicting the previous motion token again (it starts at 0)."""
    write_shards(tmp_path / "shards", [generate_scene(i) for i in range(24)], shard_size=6)
    grid_vocab().save(tmp_path / "vocab.safetensors")
    cfg = load_config(PretrainConfig, REPO / "configs" / "pretrain_micro.yaml", [
        f"run_dir={tmp_path / 'run'}", f"data.shards={tmp_path / 'shards'}",
        f"data.vocab={tmp_path / 'vocab.safetensors'}", "num_workers=1", "cpus_per_worker=1", "batch_size=4",
        "max_steps=80", "log_every=40", "checkpoint_every=80", "data.eval_fraction=0.25", "eval_scenes=8",
        "eval_rollouts=1", "optim.lr=0.003", "optim.warmup_steps=5", "data.shuffle_buffer=8"]).validate()
    result = fit(cfg)
    assert result.error is None
    m = result.metrics
    assert m["eval_tokens"] > 500 and m["eval_agents"] > 50  # 7 held-out scenes, every sim agent
    assert m["eval_token_acc"] > m["eval_repeat_last_acc"] + 0.03, m
    assert 0 < m["eval_min_ade"] < 20 and m["worker_peak_rss_mb"] > 0


def test_resource_request_larger_than_cluster_is_refused(data_dir, tmp_path):
    cfg = _config(data_dir, tmp_path / "run", "num_workers=4", "cpus_per_worker=1")
    with pytest.raises(ConfigError, match="CPUs"):
        check_resources(cfg, {"CPU": 2.0})
    with pytest.raises(ConfigError, match="GPU"):
        check_resources(_config(data_dir, tmp_path / "run", "use_gpu=true", "num_workers=1"), {"CPU": 8.0})
    with pytest.raises(ConfigError, match="unknown keys"):
        _config(data_dir, tmp_path / "run", "optim.learning_rate=1")
    with pytest.raises(ConfigError, match="data.vocab"):
        _config(data_dir, tmp_path / "run", "data.vocab=/nonexistent")


def test_lr_schedule():
    f = lr_lambda(warmup=2, max_steps=10, min_ratio=0.1)
    assert f(0) == 0.5 and f(2) == pytest.approx(1.0) and f(10) == pytest.approx(0.1)


def test_min_ade_against_the_log(womd_637):
    scene = load_scene(womd_637)
    agents = select_agents(scene)
    cur, G, A = scene.current_time_index, 3, len(agents)
    logged = scene.states[agents, cur + 1:cur + 81]
    x = np.repeat(logged[None, ..., 0], G, 0) + np.array([2.0, 1.0, 3.0])[:, None, None]  # rollout 1 is 1 m off
    z = np.zeros((G, A, 16))
    out = SceneRollouts(scene.scenario_id, scene.track_ids[agents], agents, np.arange(G), np.arange(G), z, z, z,
                        z > 0, np.zeros((G, A, 17, 3)), x, np.repeat(logged[None, ..., 1], G, 0), x * 0, x * 0)
    total, n = min_ade(out, scene)
    assert n == int(scene.valid[agents, cur + 1:cur + 81].any(1).sum()) and n > 0
    assert total / n == pytest.approx(1.0)


def test_driver_follows_pretraining_steps_from_the_run_directory(tmp_path, caplog):
    """The driver's step progress comes from the records rank 0 appends: earlier records (a resumed run) and a line
    still being written are not reported; every new complete record is."""
    import json
    import logging

    from cluster.pretrain import follow_steps

    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 10, "loss": 9.0}) + "\n")
    with caplog.at_level(logging.INFO, logger="drivetune.pretrain"):
        with follow_steps(path, total=40, enabled=False, poll_s=0.01):
            with path.open("a") as fh:
                fh.write(json.dumps({"step": 20, "loss": 4.5}) + "\n" + json.dumps({"step": 40, "loss": 3.25}) + "\n")
                fh.write('{"step": 6')  # partial: not yet a record
    steps = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert steps == ["step 20/40 loss=4.5", "step 40/40 loss=3.25"]
