"""The shipped base (base/micro, `make base`): it loads by its recorded hash, is a trained v2 model, and the export
picks the checkpoint with the lowest held-out NLL."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1]))
from model_helpers import grid_vocab  # noqa: E402

from cluster.base_export import export_base  # noqa: E402
from drivetune.checkpoint import checkpoint_dir, load_checkpoint, read_meta, save_checkpoint  # noqa: E402
from drivetune.model import BehaviorModel, ModelConfig, collate  # noqa: E402
from drivetune.model.model_config import MODEL_VERSION  # noqa: E402
from drivetune.womd import load_scene  # noqa: E402
from trainer.run_directory import RunDirectory  # noqa: E402
from trainer.objectives import TokenTargets, next_token_loss, token_accuracy  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
BASE = REPO / "base" / "micro"


def test_the_shipped_base_loads_by_its_recorded_hash():
    lineage = json.loads((REPO / "base" / "micro.json").read_text())
    meta = read_meta(BASE)
    assert meta["weights_sha256"] == lineage["weights_sha256"] and meta["model_version"] == MODEL_VERSION
    assert lineage["remake"] == "make base" and lineage["model_config"] == meta["model_config"]
    model, _ = load_checkpoint(BASE)  # checks the weights file against the hash
    assert model.cfg.size == "micro"


def test_the_shipped_base_is_trained(womd_637, womd_ee5):
    """Teacher-forced on the two real WOMD scenes (never trained on), the base predicts tokens far better than the
    same network untrained."""
    base, _ = load_checkpoint(BASE)
    torch.manual_seed(0)
    fresh = BehaviorModel(base.cfg, base.vocab).eval()
    mb, ab, _ = collate([load_scene(womd_637), load_scene(womd_ee5)], base.vocab)
    targets = TokenTargets.from_tokens(ab.tokens, ab.valid)
    with torch.no_grad():
        scores = {}
        for name, model in (("base", base), ("fresh", fresh)):
            logits = model(mb, ab)
            hits, total = token_accuracy(logits, targets)
            scores[name] = (float(next_token_loss(logits, targets)), hits / total)
    assert scores["base"][0] < scores["fresh"][0] - 1.0  # at least 1 nat lower NLL
    assert scores["base"][1] > scores["fresh"][1] + 0.2


def test_export_picks_the_lowest_heldout_nll(tmp_path):
    run_dir = tmp_path / "bc"
    run = RunDirectory(run_dir)
    model = BehaviorModel(ModelConfig.named("micro"), grid_vocab())
    for step, loss in ((100, 2.5), (200, 2.1), (300, 2.3)):
        save_checkpoint(checkpoint_dir(run_dir, step), model, {"step": step})
        run.append_metrics({"step": step, "loss": loss + 0.2, "eval_loss": loss, "eval_token_acc": 0.5})
    lineage = export_base(run_dir, tmp_path / "out" / "micro")
    assert lineage["step"] == 200 and lineage["heldout"]["eval_loss"] == 2.1
    assert read_meta(tmp_path / "out" / "micro")["step"] == 200
    written = json.loads((tmp_path / "out" / "micro.json").read_text())
    assert written["weights_sha256"] == read_meta(tmp_path / "out" / "micro")["weights_sha256"]
