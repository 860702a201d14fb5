"""Model v2: every checkpoint records its model-definition version, and every command that loads one refuses a
checkpoint of another version with exit 2 and a message naming both versions and what to do (no traceback)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))
from model_helpers import grid_vocab  # noqa: E402

from drivetune.checkpoint import (CheckpointVersionError, checkpoint_dir, load_checkpoint, read_meta,  # noqa: E402
                                  save_checkpoint)
from drivetune.cli import main  # noqa: E402
from drivetune.model import BehaviorModel, ModelConfig  # noqa: E402
from drivetune.model.model_config import MODEL_VERSION  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """(a v2 checkpoint, the same with its meta rewritten as a v1 checkpoint: no `model_version` field)."""
    root = tmp_path_factory.mktemp("versions")
    new = save_checkpoint(root / "v2", BehaviorModel(ModelConfig.named("micro"), grid_vocab()), {"step": 1})
    old = shutil.copytree(new, root / "v1")
    meta = json.loads((old / "meta.json").read_text())
    del meta["model_version"]
    (old / "meta.json").write_text(json.dumps(meta))
    return new, old


def _refused(args: list[str], capsys) -> str:
    code = main(args)
    _, err = capsys.readouterr()
    assert code == 2, err
    assert "Traceback" not in err
    assert "model definition v1" in err and f"runs v{MODEL_VERSION}" in err and "Train a new one" in err
    return err


def test_checkpoints_record_the_version_and_the_library_refuses_others(checkpoints):
    new, old = checkpoints
    assert read_meta(new)["model_version"] == MODEL_VERSION == 2
    load_checkpoint(new)
    with pytest.raises(CheckpointVersionError, match="model definition v1"):
        load_checkpoint(old)
    meta = json.loads((new / "meta.json").read_text())
    newer = shutil.copytree(new, new.parent / "v3")
    (newer / "meta.json").write_text(json.dumps({**meta, "model_version": 3}))
    with pytest.raises(CheckpointVersionError, match="model definition v3"):
        load_checkpoint(newer)


def test_simulate_refuses_an_old_checkpoint(checkpoints, womd_637, tmp_path, capsys):
    err = _refused(["simulate", str(womd_637), "--checkpoint", str(checkpoints[1]), "--out", str(tmp_path)], capsys)
    assert any(line.startswith("drivetune simulate: error:") for line in err.splitlines())  # among progress lines


def test_eval_refuses_an_old_checkpoint(checkpoints, womd_637, tmp_path, capsys):
    err = _refused(["eval", str(womd_637), "--checkpoints", str(checkpoints[0]), str(checkpoints[1]),
                    "--out", str(tmp_path / "eval")], capsys)
    assert any(line.startswith("drivetune eval: error:") for line in err.splitlines())  # among progress lines


def test_serve_refuses_an_old_checkpoint(checkpoints, capsys):
    err = _refused(["serve", "--checkpoint", str(checkpoints[1]), "--port", "0"], capsys)
    assert err.startswith("drivetune serve: error:")


@pytest.mark.parametrize("command,config", [("sft", "sft_catk_micro.yaml"), ("rft", "rft_grbo_micro.yaml")])
def test_post_training_refuses_an_old_init(checkpoints, tmp_path, command, config, capsys):
    err = _refused(["train", command, "--config", str(CONFIGS / config), f"init={checkpoints[1]}",
                    f"run_dir={tmp_path / 'run'}", f"data.shards={tmp_path}"], capsys)
    assert err.startswith(f"drivetune train {command}: error:")


def test_pretraining_refuses_to_resume_an_old_run(checkpoints, tmp_path, capsys):
    run_dir = tmp_path / "bc"
    shutil.copytree(checkpoints[1], checkpoint_dir(run_dir, 100))
    err = _refused(["train", "pretrain", "--config", str(CONFIGS / "pretrain_micro.yaml"), f"run_dir={run_dir}",
                    f"data.shards={tmp_path}", f"data.vocab={checkpoints[0] / 'vocab.safetensors'}"], capsys)
    assert "new run_dir" in err
