"""BehaviorModel: cached incremental decoding vs full recomputation, invariance, sizes, checkpoints, objectives."""

from __future__ import annotations

import math
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1]))
from model_helpers import grid_vocab  # noqa: E402

from drivetune.checkpoint import (  # noqa: E402
    CheckpointError,
    load_checkpoint,
    load_numpy_state_dict,
    save_checkpoint,
    state_dict_to_numpy,
)
from drivetune.model import AgentBatch, BehaviorModel, ModelConfig, collate  # noqa: E402
from drivetune.model.prefix import SharedPrefix  # noqa: E402
from drivetune.tokenizer import MotionVocab  # noqa: E402
from drivetune.womd import load_scene  # noqa: E402
from trainer.run_directory import RunDirectory  # noqa: E402
from trainer.objectives import TokenTargets, next_token_loss, repeat_last_accuracy, token_accuracy  # noqa: E402


@pytest.fixture(scope="module")
def vocab() -> MotionVocab:
    return grid_vocab()


@pytest.fixture(scope="module")
def batch(vocab, womd_637, womd_ee5):
    scenes = [load_scene(womd_637), load_scene(womd_ee5)]
    mb, ab, _ = collate(scenes, vocab)
    return mb, type(ab)(ab.tokens[:, :24], ab.poses[:, :24], ab.valid[:, :24], ab.type_idx[:, :24],
                        ab.size[:, :24])  # keep it quick


@pytest.fixture(scope="module")
def model(vocab) -> BehaviorModel:
    torch.manual_seed(0)
    return BehaviorModel(ModelConfig.named("micro", time_span=3), vocab).eval()


def _close_where_valid(a: torch.Tensor, b: torch.Tensor, valid: torch.Tensor, atol: float) -> float:
    finite = torch.isfinite(b)
    assert torch.equal(torch.isfinite(a), finite)
    diff = (a - b).abs().masked_fill(~finite, 0.0)[valid]
    assert diff.numel() > 0
    err = float(diff.max())
    assert err < atol, err
    return err


def test_incremental_decoding_matches_full_context(model, batch):
    mb, ab = batch
    rollouts = 3
    with torch.no_grad():
        full = model(mb, ab)  # [2, A, 18, V]
        state, logits = model.start(model.encode_map(mb), ab.slice_time(0, 2), rollouts)
        assert state.num_rows == 2 * rollouts and state.scene_index.tolist() == [0, 0, 0, 1, 1, 1]
        rep = lambda x: x.repeat_interleave(rollouts, 0)  # noqa: E731
        _close_where_valid(logits, rep(full[:, :, 1]), rep(ab.valid[:, :, 1]), 1e-4)
        for i in range(2, 18):  # more steps than the temporal window: exercises the cache roll-over
            logits = model.step(state, rep(ab.tokens[:, :, i]), rep(ab.poses[:, :, i]), rep(ab.valid[:, :, i]))
            _close_where_valid(logits, rep(full[:, :, i]), rep(ab.valid[:, :, i]), 1e-4)
        assert state.num_steps == 18
        # the history is actually used: another early token changes later logits
        changed = ab.tokens.clone()
        changed[:, :, 3] = (changed[:, :, 3] + 7) % 40
        other = model(mb, replace(ab, tokens=changed))
        assert (other[:, :, 5] - full[:, :, 5]).abs()[ab.valid[:, :, 5]].nan_to_num(0.0).max() > 1e-3
        # ... and the earlier steps are causal (unchanged)
        _close_where_valid(other[:, :, :3], full[:, :, :3], ab.valid[:, :, :3], 1e-5)


def test_shared_history_is_decoded_once_with_the_same_logits(model, batch):
    mb, ab = batch
    gen = torch.Generator().manual_seed(1)
    rows = torch.tensor([0, 0, 0, 1, 1, 1])  # 3 rollouts per scene: the same history (tokens 0, 1), then their own
    rep = AgentBatch(*(getattr(ab, f)[rows].clone() for f in ("tokens", "poses", "valid", "type_idx", "size")))
    rep.tokens[:, :, 2:] = torch.randint(0, 40, rep.tokens[:, :, 2:].shape, generator=gen)
    rep.poses[:, :, 2:, :2] += torch.randn(rep.poses[:, :, 2:, :2].shape, generator=gen)
    ctx, prefix = model.encode_map(mb), torch.tensor([0, 0, 0, 3, 3, 3])
    shared = SharedPrefix.build(6, rep.tokens.shape[1], rep.tokens.shape[2], prefix, 2, torch.device("cpu"))
    assert len(shared.keep) == rep.valid.numel() - 4 * 2 * rep.tokens.shape[1]  # 4 rows read 2 tokens elsewhere
    with torch.no_grad():
        plain = model.decode(ctx, rep, rows)
        once = model.decode(ctx, rep, rows, prefix, 2)
        _close_where_valid(once, plain, rep.valid, 1e-5)
        # rows whose histories differ must not share one: the test sees the difference
        other = replace(rep, poses=rep.poses.clone())
        other.poses[1, :, :2, :2] += 3.0
        wrong = model.decode(ctx, other, rows, prefix, 2)
        right = model.decode(ctx, other, rows)
        assert (wrong[1, :, 2] - right[1, :, 2]).abs()[other.valid[1, :, 2]].nan_to_num(0.0).max() > 1e-3
    with pytest.raises(ValueError, match="prefix_rows"):
        model.decode(ctx, rep, rows, torch.tensor([1, 0, 0, 3, 3, 3]), 2)


def test_state_select_keeps_rows(model, batch):
    mb, ab = batch
    with torch.no_grad():
        state, _ = model.start(model.encode_map(mb), ab.slice_time(0, 2), 2)
        picked = state.select(torch.tensor([3, 0]))
        a = model.step(picked, ab.tokens[[1, 0], :, 2], ab.poses[[1, 0], :, 2], ab.valid[[1, 0], :, 2])
        b = model.step(state, ab.tokens[:, :, 2].repeat_interleave(2, 0), ab.poses[:, :, 2].repeat_interleave(2, 0),
                       ab.valid[:, :, 2].repeat_interleave(2, 0))
    _close_where_valid(a, b[[3, 0]], ab.valid[[1, 0], :, 2], 1e-5)


def _rigid(mb, ab, angle: float, shift: tuple[float, float]):
    c, s = math.cos(angle), math.sin(angle)
    rot = torch.tensor([[c, -s], [s, c]])
    t = torch.tensor(shift)
    mb2 = replace(mb, pos=mb.pos @ rot.T + t, heading=mb.heading + angle)
    poses = ab.poses.clone()
    poses[..., :2] = ab.poses[..., :2] @ rot.T + t
    poses[..., 2] = torch.remainder(ab.poses[..., 2] + angle + math.pi, 2 * math.pi) - math.pi
    return mb2, replace(ab, poses=poses)


def test_logits_invariant_to_rotation_and_translation(model, batch):
    mb, ab = batch
    # centre the scene first so float32 resolution at large WOMD coordinates does not dominate
    centre = ab.poses[0, 0, 1, :2].clone()
    mb0, ab0 = _rigid(mb, ab, 0.0, (-float(centre[0]), -float(centre[1])))
    with torch.no_grad():
        ref = model(mb0, ab0)
        moved = model(*_rigid(mb0, ab0, 1.1, (250.0, -420.0)))
    # SMART's inputs are raw angles: a pair exactly at ±π (opposite lanes, a token right behind) may land on either
    # side of the branch cut after the move, which shifts logits by up to ~1e-2 here (measured 0.008); a feature that
    # is not invariant (v2's motion angle taken against the world frame, tried once) moves them by 0.7
    _close_where_valid(moved, ref, ab.valid, 2e-2)


def test_padding_tokens_are_masked_per_type(model, batch, vocab):
    mb, ab = batch
    with torch.no_grad():
        logits = model(mb, ab)
    mask = model.token_mask[ab.type_idx]  # [B, A, V]
    assert torch.isinf(logits).eq(~mask[:, :, None]).all()
    assert torch.equal(model.token_mask.sum(-1), torch.as_tensor(vocab.sizes))


def test_nearest_breaks_ties_by_id_whatever_the_row_length_or_order():
    """Equidistant entries (common on synthetic maps: evenly spaced tokens) are chosen by id, so the neighbours do not
    depend on how long the row is (sort for short rows, topk for long ones: padded batches, other grids) or on the
    order of the entries. Before, topk picked among ties by position and the learner's padded forward disagreed with
    the rollout engine (logp_diff_max up to 1.8e-3)."""
    from drivetune.model.layers import SORT_MAX_ROW, nearest

    gen = torch.Generator().manual_seed(4)
    dist = torch.randint(0, 6, (50, 40), generator=gen).float()  # 6 distinct values over 40 entries: many ties
    dist[torch.rand(dist.shape, generator=gen) < 0.1] = float("inf")
    ids = torch.randperm(1000, generator=gen)[:40].expand(50, 40)  # e.g. token indices in the scene
    idx, mask = nearest(dist, 12, 4.5, ids)
    chosen = torch.gather(ids, 1, idx)
    perm = torch.randperm(40, generator=gen)  # another order of the same entries
    idx_p, mask_p = nearest(dist[:, perm], 12, 4.5, ids[:, perm])
    assert torch.equal(torch.gather(ids[:, perm], 1, idx_p), chosen) and torch.equal(mask_p, mask)
    width = SORT_MAX_ROW + 30  # padded past the sort path: topk
    padded = torch.cat([dist, torch.full((50, width - 40), float("inf"))], 1)
    pad_ids = torch.cat([ids, torch.arange(1000, 1000 + width - 40).expand(50, -1)], 1)
    idx_t, mask_t = nearest(padded, 12, 4.5, pad_ids)
    assert torch.equal(torch.gather(pad_ids, 1, idx_t), chosen) and torch.equal(mask_t, mask)
    d = torch.gather(dist, 1, idx)  # nearest first; among equal distances the smaller id first
    later = (d[:, 1:] > d[:, :-1]) | ((d[:, 1:] == d[:, :-1]) & (chosen[:, 1:] > chosen[:, :-1]))
    assert later[mask[:, 1:]].all()


def test_named_sizes_parameter_counts():
    big = grid_vocab(num_speeds=31, num_yaw_rates=64, vocab_size=2048)  # SMART-sized 2048-token head
    counts = {size: BehaviorModel(ModelConfig.named(size), big).num_parameters() for size in ("micro", "nano", "tiny")}
    assert counts["micro"] <= 500_000
    assert 0.8e6 <= counts["nano"] <= 1.3e6
    assert 6.0e6 <= counts["tiny"] <= 8.0e6
    cfg = ModelConfig.named("tiny")
    assert (cfg.hidden, cfg.agent_layers, cfg.map_layers) == (128, 6, 3)
    with pytest.raises(ValueError, match="unknown model size"):
        ModelConfig.named("huge")


def test_checkpoint_round_trip(tmp_path, model, batch):
    mb, ab = batch
    path = save_checkpoint(tmp_path / "ckpt", model, {"step": 7, "metrics": {"loss": 1.5}, "parent": None})
    loaded, meta = load_checkpoint(path)
    assert meta["step"] == 7 and meta["metrics"] == {"loss": 1.5} and meta["vocab_hash"] == model.vocab_hash
    assert meta["model_config"]["time_span"] == 3
    with torch.no_grad():
        assert torch.equal(loaded(mb, ab), model(mb, ab))
    # overwrite in place, atomically (no temp dirs left behind)
    save_checkpoint(path, model, {"step": 8})
    assert load_checkpoint(path)[1]["step"] == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    # numpy weights (as shipped through the object store, read-only) load into a fresh model
    arrays = state_dict_to_numpy(model)
    for a in arrays.values():
        a.setflags(write=False)
    fresh = BehaviorModel(model.cfg, model.vocab).eval()
    load_numpy_state_dict(fresh, arrays)
    with torch.no_grad():
        assert torch.equal(fresh(mb, ab), model(mb, ab))
    bad = dict(arrays)
    bad.pop(next(iter(bad)))
    with pytest.raises(CheckpointError, match="missing"):
        load_numpy_state_dict(fresh, bad)
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_checkpoint(tmp_path)


def test_objectives_on_hand_made_logits():
    tokens = torch.tensor([[[1, 1, 2, 2]]])
    valid = torch.tensor([[[True, True, True, False]]])
    targets = TokenTargets.from_tokens(tokens, valid)
    assert targets.mask.tolist() == [[[True, True, False]]]
    logits = torch.full((1, 1, 4, 4), -5.0)
    logits[..., 3] = float("-inf")  # a padding id
    logits[0, 0, 0, 1] = 5.0  # predicts token 1 correctly
    logits[0, 0, 1, 1] = 5.0  # predicts 1, target is 2
    assert token_accuracy(logits, targets) == (1, 2)
    assert repeat_last_accuracy(tokens, targets) == (1, 2)
    loss = next_token_loss(logits, targets)
    expected = -(torch.log_softmax(logits[0, 0, 0, :3], -1)[1] + torch.log_softmax(logits[0, 0, 1, :3], -1)[2]) / 2
    assert torch.isclose(loss, expected)
    smoothed = next_token_loss(logits, targets, label_smoothing=0.1)
    assert torch.isfinite(smoothed) and smoothed != loss


def test_run_directory_latest_and_retention(tmp_path, model):
    run = RunDirectory(tmp_path / "run")
    assert run.latest() is None
    for step in (1, 2, 3):
        run.save(model, step, {"step": step, "optimizer": {"x": torch.tensor([float(step)])}}, keep_last=2)
    assert [s for s, _ in run.checkpoints()] == [2, 3]
    assert run.latest() == run.checkpoint_path(3)
    assert RunDirectory.load_trainer_state(run.latest())["optimizer"]["x"].item() == 3.0
    assert load_checkpoint(run.latest())[1]["parent"] == str(run.checkpoint_path(2))
    run.append_metrics({"step": 3, "loss": 1.0})
    assert run.read_metrics() == [{"step": 3, "loss": 1.0}]
