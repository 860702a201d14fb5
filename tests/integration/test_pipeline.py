"""`drivetune train pipeline`: pretrain -> CAT-K SFT -> GRBO -> SFT end to end on a local Ray; a pipeline interrupted
mid-stage and rerun skips finished stages, resumes the running one and keeps its lineage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster.lineage import lineage
from cluster.pipeline import PipelineConfig
from drivetune.checkpoint import read_meta
from drivetune.config import ConfigError, load_config
from drivetune.shards import write_shards
from drivetune.synth.files import generate
from drivetune.tokenizer import build_vocab

REPO = Path(__file__).resolve().parents[2]
STAGES = ["00-bc", "01-sft", "02-grbo", "03-sft2"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pipeline")
    scenes = [generate(13, i) for i in range(6)]
    write_shards(root / "shards", scenes, shard_size=3)
    build_vocab(scenes, sizes=(48, 24, 24)).save(root / "vocab.safetensors")
    return root


def _overrides(data: Path, run_dir: Path) -> list[str]:
    small = ["pool.num_workers=1", "pool.num_cpus=0.5", "learner.num_cpus=0.5", "scenes_per_iter=1",
             "checkpoint_every=1", "data.eval_fraction=0.0"]
    stages = {
        "stages": [
            {"name": "bc", "kind": "pretrain", "config": str(REPO / "configs/pretrain_micro.yaml"),
             "overrides": ["max_steps=2", "batch_size=1", "log_every=1", "checkpoint_every=1", "num_workers=1",
                           "cpus_per_worker=0.5", "data.eval_fraction=0.0", "eval_scenes=1", "eval_rollouts=1",
                           "model.agent_layers=1"]},
            {"name": "sft", "kind": "sft", "config": str(REPO / "configs/sft_catk_micro.yaml"),
             "overrides": ["max_iters=1", *small]},
            {"name": "grbo", "kind": "rft", "config": str(REPO / "configs/rft_grbo_micro.yaml"),
             "overrides": ["max_iters=3", "learner.epochs=1", "group_size=2", *small]},
            {"name": "sft2", "kind": "sft", "config": str(REPO / "configs/sft_catk_micro.yaml"),
             "overrides": ["max_iters=1", *small]},
        ]
    }
    return [f"run_dir={run_dir}", f"shards={data / 'shards'}", f"vocab={data / 'vocab.safetensors'}",
            "stages=" + json.dumps(stages["stages"])]


def _launch(data: Path, run_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "drivetune.cli", "train", "pipeline", "--no-progress", "--config",
                             str(REPO / "configs/pipeline_micro.yaml"), *_overrides(data, run_dir)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # not a shell's ignore


@pytest.mark.slow
def test_pipeline_interrupted_mid_stage_resumes(data, tmp_path):
    run_dir = tmp_path / "run"
    grbo_metrics = run_dir / "02-grbo" / "metrics.jsonl"
    proc = _launch(data, run_dir)
    deadline = time.monotonic() + 900
    while not (grbo_metrics.is_file() and grbo_metrics.read_text().strip()) and proc.poll() is None:
        assert time.monotonic() < deadline, "the pipeline did not reach its RFT stage"
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)  # Ctrl-C in the middle of the GRBO stage
    first_out = proc.communicate(timeout=300)[0]
    assert proc.returncode != 0, first_out[-2000:]
    assert (run_dir / "01-sft" / "stage.json").is_file() and not (run_dir / "02-grbo" / "stage.json").exists()
    done_before = {s: (run_dir / s / "stage.json").stat().st_mtime_ns for s in STAGES[:2]}

    proc = _launch(data, run_dir)
    out = proc.communicate(timeout=900)[0]
    assert proc.returncode == 0, out[-3000:]
    assert "finished earlier" in out
    assert {s: (run_dir / s / "stage.json").stat().st_mtime_ns for s in STAGES[:2]} == done_before  # not re-run
    iterations = [json.loads(line)["iteration"] for line in grbo_metrics.read_text().splitlines()]
    assert iterations == sorted(set(iterations)) == [1, 2, 3]  # resumed, no iteration twice

    rows = lineage(run_dir)
    assert [r["stage"] for r in rows] == STAGES and all(r["status"] == "finished" for r in rows)
    versions = [r["policy_version"] for r in rows]
    assert versions == [0, 1, 4, 5]  # versions only grow across stages
    for prev, row in zip(rows, rows[1:]):
        assert row["init"] == prev["checkpoint"]  # each stage starts from the previous one's final checkpoint
    grbo = rows[2]
    assert grbo["reference"] == rows[1]["checkpoint"] and grbo["reference_version"] == 1
    assert read_meta(grbo["checkpoint"])["stage"] == "grbo"


def test_pipeline_config_errors(data, tmp_path):
    def load(*extra: str) -> PipelineConfig:
        return load_config(PipelineConfig, REPO / "configs/pipeline_micro.yaml", list(extra)).validate()

    assert [s.kind for s in load().stages] == ["pretrain", "sft", "rft", "sft"]
    with pytest.raises(ConfigError, match="unique"):
        load('stages=[{name: a, kind: sft, config: configs/sft_catk_micro.yaml}, '
             '{name: a, kind: sft, config: configs/sft_catk_micro.yaml}]', "init=x")
    with pytest.raises(ConfigError, match="kind"):
        load('stages=[{name: a, kind: dpo, config: configs/sft_catk_micro.yaml}]', "init=x")
    with pytest.raises(ConfigError, match="init"):
        load('stages=[{name: a, kind: sft, config: configs/sft_catk_micro.yaml}]')
    with pytest.raises(ConfigError, match="unknown keys"):
        load("stages=[{name: a, kind: sft, config: configs/sft_catk_micro.yaml, epochs: 3}]", "init=x")
    assert load().stages[1].optimizer == "fresh"  # a stage says whether it carries the previous AdamW moments
    with pytest.raises(ConfigError, match="optimizer 'keep'"):
        load("stages=[{name: a, kind: sft, config: configs/sft_catk_micro.yaml, optimizer: keep}]", "init=x")
    with pytest.raises(ConfigError, match="optimizer 'carry'"):
        load("stages=[{name: a, kind: pretrain, config: configs/pretrain_micro.yaml, optimizer: carry}]")
