"""Rollout engine: the same tokens / log-probs as a full recomputation, an exact map grid, folded layer maths equal to
the per-pair arithmetic."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1]))
from model_helpers import grid_vocab  # noqa: E402
from reference_engine import RecomputeEngine, naive_attention, naive_fourier  # noqa: E402

from drivetune.closed_loop import simulate  # noqa: E402
from drivetune.model import BehaviorModel, ModelConfig  # noqa: E402
from drivetune.model.layers import FourierEmbedding, RelAttention, nearest, normalize_pairs  # noqa: E402
from drivetune.model.map_grid import build_map_grid  # noqa: E402
from drivetune.samplers import SamplerConfig  # noqa: E402
from drivetune.womd import load_scene  # noqa: E402


@pytest.fixture(scope="module")
def setup(womd_637):
    vocab = grid_vocab()
    torch.manual_seed(0)
    return load_scene(womd_637), vocab.to_torch(), BehaviorModel(ModelConfig.named("micro"), vocab).eval()


@pytest.mark.parametrize("kind,sdc", [("topk", "policy"), ("catk", "log"), ("warmk", "policy"), ("warmk", "log")])
def test_rollouts_match_full_recomputation(setup, kind, sdc):
    scene, tv, model = setup
    cfg = SamplerConfig(kind=kind, k=8, warm_lambda=1.0)
    new = simulate(model, tv, [scene], 3, cfg, base_seed=4, sdc=sdc)[0]
    ref = simulate(RecomputeEngine(model), tv, [scene], 3, cfg, base_seed=4, sdc=sdc)[0]
    assert np.array_equal(new.tokens, ref.tokens)
    if kind != "catk":  # CAT-K picks the candidate nearest the log: deterministic
        assert (new.tokens[0] != new.tokens[1]).any()  # sampled, not degenerate
    assert np.abs(new.logp - ref.logp).max() < 1e-4
    assert np.abs(new.sampler_logp - ref.sampler_logp).max() < 1e-4
    assert np.array_equal(new.x, ref.x) and np.array_equal(new.y, ref.y)


def test_folded_layers_equal_the_per_pair_arithmetic_in_value_and_gradient():
    torch.manual_seed(1)
    n, k, h = 40, 7, 24
    emb = FourierEmbedding(3, h, 6).double()
    blk = RelAttention(h, 4, 2, 0.0, bipartite=True).double()
    with torch.no_grad():  # affines away from 1 / 0, so that their folding is exercised
        for p in blk.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x, rel_in = torch.randn(n, h, dtype=torch.float64), torch.randn(n, k, 3, dtype=torch.float64)
    src = torch.randn(n, k, h, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(n, k) > 0.3
    mask[0] = False  # a query with no valid key

    def run(folded: bool):
        params = [*emb.parameters(), *blk.parameters(), src]
        for p in params:
            p.grad = None
        if folded:
            out = blk(x, blk.project(src), normalize_pairs(emb(rel_in)), mask)
        else:
            out = naive_attention(blk, x, src, naive_fourier(emb, rel_in), mask)
        (out ** 2).sum().backward()
        return out.detach(), [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in params]

    new, new_grads = run(True)
    ref, ref_grads = run(False)
    assert (new - ref).abs().max() < 1e-10
    assert max(float((a - b).abs().max()) for a, b in zip(new_grads, ref_grads)) < 1e-9
    assert sum(bool(g.abs().sum() > 0) for g in new_grads) == len(new_grads)  # every parameter and input trains
    # the dense per-group agent path equals the gathered one
    g, a = 3, 9
    self_blk = RelAttention(h, 4, 2, 0.0).double()
    xs, proj = torch.randn(g, a, h, dtype=torch.float64), torch.randn(g, a, 2 * h, dtype=torch.float64)
    idx = torch.stack([torch.randperm(a)[:k] for _ in range(g * a)]).view(g, a, k)
    rel = normalize_pairs(emb(torch.randn(g * a, k, 3, dtype=torch.float64)))
    m = torch.rand(g, a, k) > 0.3
    gathered = proj[torch.arange(g)[:, None, None], idx].flatten(0, 1)
    with torch.no_grad():
        dense = self_blk.forward_groups(xs, proj, idx, rel, m)
        ref = self_blk(xs.flatten(0, 1), gathered, rel, m.flatten(0, 1))
    assert (dense - ref).abs().max() < 1e-10


def test_map_grid_finds_exactly_the_brute_force_neighbours():
    gen = torch.Generator().manual_seed(2)
    m, radius, k = 3000, 30.0, 32
    pts = torch.rand(2, m, 2, generator=gen) * torch.tensor([900.0, 300.0]) + torch.tensor([5000.0, -7000.0])
    pts[:, :400] = pts[:, :1, :] + torch.randn(2, 400, 2, generator=gen) * 8  # a dense junction (> k within radius)
    valid = torch.rand(2, m, generator=gen) > 0.1
    grid = build_map_grid(pts, valid, radius)
    scene = torch.tensor([0, 1, 1])
    q = pts[scene, :500] + torch.randn(3, 500, 2, generator=gen) * 40  # near tokens, on and off the map
    q[:, :20] += 400.0  # far outside the grid
    cand, dist = grid.candidates(scene, q)
    brute = torch.cdist(q, pts[scene], compute_mode="donot_use_mm_for_euclid_dist")
    brute = brute.masked_fill(~valid[scene][:, None], float("inf"))
    (i_g, m_g), (i_b, m_b) = nearest(dist, k, radius ** 2), nearest(brute, k, radius)  # the grid's are squared
    got = torch.gather(cand, 2, i_g).masked_fill(~m_g, -1).sort(-1).values
    want = (scene[:, None, None] * m + i_b).masked_fill(~m_b, -1).sort(-1).values
    assert torch.equal(got, want)
    assert m_b.sum(-1).max() == k and (m_b.sum(-1) == 0).any()  # both regimes are exercised
    assert grid.table.shape[1] < m / 3  # and the candidate lists are much shorter than the map


def test_short_neighbour_rows_by_sort_equal_topk():
    gen = torch.Generator().manual_seed(3)
    dist = torch.rand(40, 50, 64, generator=gen) * 100
    dist[torch.rand(dist.shape, generator=gen) < 0.2] = float("inf")  # excluded (self, invalid, padding)
    dist[:, :, 10] = dist[:, :, 3]  # equal distances: the sort keeps index order
    for n in (50, 64):  # both short: the stable sort path
        row = dist[..., :n]
        idx, mask = nearest(row, 32, 60.0)
        want_d, want_i = torch.topk(row, 32, dim=-1, largest=False, sorted=True)
        assert torch.equal(torch.gather(row, -1, idx), want_d)  # the same distances, nearest first
        assert torch.equal(mask, want_d < 60.0)
        finite = torch.isfinite(want_d) & (want_d != row[..., 3:4])  # away from ties, the same indices
        assert torch.equal(idx[finite], want_i[finite])
        tie = (idx == 3).float().argmax(-1) < (idx == 10).float().argmax(-1)
        assert tie[(idx == 3).any(-1) & (idx == 10).any(-1)].all()
    assert nearest(dist[:, :, :3], 32, 60.0)[0].shape == (40, 50, 3)  # fewer entries than k


def test_ring_buffer_state_reports_last_pose(setup):
    scene, tv, model = setup
    from drivetune.model import AgentBatch, collate

    mb, ab, _ = collate([scene], model.vocab)
    ab = AgentBatch(ab.tokens[:, :6], ab.poses[:, :6], ab.valid[:, :6], ab.type_idx[:, :6], ab.size[:, :6])  # 6 suffice
    with torch.no_grad():
        state, _ = model.start(model.encode_map(mb), ab.slice_time(0, 2), 2)
        for i in range(2, 10):  # past the 6-token window
            model.step(state, ab.tokens[:, :, i].repeat(2, 1), ab.poses[:, :, i].repeat(2, 1, 1),
                       ab.valid[:, :, i].repeat(2, 1))
            fed = ab.poses[:, :, i].masked_fill(~ab.valid[:, :, i, None], 0.0).repeat(2, 1, 1)
            assert torch.equal(state.last_pose, fed) and torch.equal(state.last_valid, ab.valid[:, :, i].repeat(2, 1))
    assert state.num_steps == 10 and sorted(state.lags().tolist()) == [1, 2, 3, 4, 5, 6]


def test_cpu_row_chunks_and_sparse_pairs_change_nothing(setup, monkeypatch):
    """The CPU step in one-row chunks, embedding only in-radius pairs in blocks, equals the one-chunk dense step."""
    import drivetune.model.behavior as behavior
    import drivetune.model.layers as layers

    scene, tv, model = setup
    cfg = SamplerConfig(kind="topk", k=8)
    monkeypatch.setattr(behavior, "CPU_SPARSE_PAIRS", False)
    monkeypatch.setattr(behavior, "CPU_CHUNK_FLOATS", 2**40)
    monkeypatch.setattr(layers, "CPU_BLOCK_FLOATS", 2**40)
    dense = simulate(model, tv, [scene], 3, cfg, base_seed=5)[0]
    monkeypatch.setattr(behavior, "CPU_SPARSE_PAIRS", True)
    monkeypatch.setattr(behavior, "CPU_CHUNK_FLOATS", 1)  # one rollout row per chunk
    monkeypatch.setattr(layers, "CPU_BLOCK_FLOATS", 5 * 16 * 100)  # Fourier features in blocks of 100 pairs
    monkeypatch.setattr(behavior, "SPARSE_MAX_SHARE", 1.0)  # always the sparse path
    chunked = simulate(model, tv, [scene], 3, cfg, base_seed=5)[0]
    assert np.array_equal(dense.tokens, chunked.tokens)
    # other block sizes may round differently in BLAS: one float32 ulp at |logp| ~ 10 is 1e-6 (measured 1.2e-6)
    assert np.abs(dense.logp - chunked.logp).max() < 3e-6
    assert np.array_equal(dense.x, chunked.x)
