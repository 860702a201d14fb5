"""Model v2: drivetune's layers reproduce SMART's own layer outputs (../shared/oracle-smart/) within 1e-5, in every
form the engine computes attention (gathered keys, dense per-group keys, keys projected one source at a time as the
incremental step caches them)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import SHARED
from drivetune.model import layers
from drivetune.model.layers import FourierEmbedding, RelAttention, mlp, normalize_pairs
from drivetune.model.smart_names import attention_from_smart, fourier_from_smart, mlp_from_smart

ORACLE = SHARED / "oracle-smart"
TOL = 1e-5


def _case(name: str):
    if not (ORACLE / f"{name}.npz").is_file():
        pytest.fail(f"shared reference case missing: {ORACLE / name}.npz")
    spec = json.loads((ORACLE / f"{name}.json").read_text())
    arrays = dict(np.load(ORACLE / f"{name}.npz"))
    return spec, load_file(str(ORACLE / f"{name}.weights.safetensors")), arrays


def _max_error(out: torch.Tensor, arrays: dict) -> float:
    return float(np.abs(out.detach().double().numpy() - arrays["out_float64"]).max())


def _neighbour_lists(edge_index: np.ndarray, num_dst: int, num_src: int):
    """SMART's edges [2, E] (row 0 source, row 1 destination) as per-destination lists: idx [N, K], the edge of
    each entry [N, K] (-1: padding), mask [N, K]. Padding points at sources the row does not use (distinct per row,
    as the engine's neighbour lists are)."""
    per = [np.flatnonzero(edge_index[1] == i) for i in range(num_dst)]
    k = max(len(p) for p in per)
    idx = np.zeros((num_dst, k), np.int64)
    edge = np.full((num_dst, k), -1, np.int64)
    for i, p in enumerate(per):
        used = edge_index[0, p]
        spare = [j for j in range(num_src) if j not in set(used.tolist())]
        idx[i] = np.r_[used, spare[: k - len(p)]]
        edge[i, : len(p)] = p
    return torch.as_tensor(idx), torch.as_tensor(edge), torch.as_tensor(edge >= 0)


def _attention(name: str):
    spec, weights, arrays = _case(name)
    c = spec["constructor"]
    layer = RelAttention(c["hidden_dim"], c["num_heads"], 4, 0.0, bipartite=c["bipartite"],
                         has_rel=c["has_pos_emb"]).eval()
    layer.load_state_dict(attention_from_smart(weights, c["bipartite"]), strict=True)
    x_src = torch.as_tensor(arrays["in_x_src"])
    x_dst = torch.as_tensor(arrays["in_x_dst"]) if c["bipartite"] else x_src
    idx, edge, mask = _neighbour_lists(arrays["in_edge_index"], x_dst.shape[0], x_src.shape[0])
    rel = None
    if c["has_pos_emb"]:
        r = normalize_pairs(torch.as_tensor(arrays["in_r"]))
        rel = torch.where(mask[..., None], r[edge.clamp_min(0)], torch.zeros(()))
    return layer, x_src, x_dst, idx, rel, mask, arrays


@pytest.mark.parametrize("name", ["attn_bipartite_pos", "attn_self_pos", "attn_self_nopos"])
def test_attention_gathered_keys(name):
    layer, x_src, x_dst, idx, rel, mask, arrays = _attention(name)
    with torch.no_grad():
        out = layer(x_dst, layer.project(x_src)[idx], rel, mask)
    assert _max_error(out, arrays) < TOL
    assert (mask.sum(1) == 0).any()  # the case has a destination without edges, and it is reproduced too


@pytest.mark.parametrize("name", ["attn_self_pos", "attn_self_nopos"])
def test_attention_dense_groups(name):
    layer, x_src, _, idx, rel, mask, arrays = _attention(name)
    with torch.no_grad():
        out = layer.forward_groups(x_src[None], layer.project(x_src)[None], idx[None], rel, mask[None])
    assert _max_error(out, arrays) < TOL


@pytest.mark.parametrize("name", ["attn_bipartite_pos", "attn_self_pos"])
def test_attention_cached_projections_in_row_chunks(name):
    """As the incremental step runs: sources projected one at a time into a cache, queries answered in chunks."""
    layer, x_src, x_dst, idx, rel, mask, arrays = _attention(name)
    with torch.no_grad():
        cache = torch.cat([layer.project(x_src[i:i + 1]) for i in range(x_src.shape[0])])
        out = torch.cat([layer(x_dst[i:i + 5], cache[idx[i:i + 5]], rel[i:i + 5], mask[i:i + 5])
                         for i in range(0, x_dst.shape[0], 5)])
    assert _max_error(out, arrays) < TOL


def test_attention_gradient_flows_through_every_parameter():
    layer, x_src, x_dst, idx, rel, mask, _ = _attention("attn_bipartite_pos")
    layer(x_dst, layer.project(x_src)[idx], rel, mask).square().sum().backward()
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in layer.parameters())


def _fourier():
    spec, weights, arrays = _case("fourier_embedding")
    c = spec["constructor"]
    emb = FourierEmbedding(c["input_dim"], c["hidden_dim"], c["num_freq_bands"]).eval()
    emb.load_state_dict(fourier_from_smart(weights), strict=True)
    cat = torch.as_tensor(arrays["in_categorical_0"]) + torch.as_tensor(arrays["in_categorical_1"])
    return emb, torch.as_tensor(arrays["in_continuous"]), cat, arrays


def test_fourier_embedding():
    emb, x, cat, arrays = _fourier()
    assert _max_error(emb(x, cat), arrays) < TOL  # the training path (autograd on)


def test_fourier_embedding_cpu_row_blocks(monkeypatch):
    emb, x, cat, arrays = _fourier()
    monkeypatch.setattr(layers, "CPU_BLOCK_FLOATS", 7 * 129 * 3)  # 7-row blocks: 50 rows in 8 blocks
    with torch.no_grad():
        assert _max_error(emb(x, cat), arrays) < TOL


def test_token_head_mlp():
    spec, weights, arrays = _case("mlp_layer")
    c = spec["constructor"]
    head = mlp(c["input_dim"], c["hidden_dim"], c["output_dim"])
    head.load_state_dict(mlp_from_smart(weights), strict=True)
    assert _max_error(head(torch.as_tensor(arrays["in_x"])), arrays) < TOL


def test_parity_check_fails_on_a_perturbed_reference():
    """The 1e-5 check is tight enough to catch a reference output moved by 1e-4 (and a layer normalising over heads)."""
    layer, x_src, x_dst, idx, rel, mask, arrays = _attention("attn_self_pos")
    with torch.no_grad():
        out = layer(x_dst, layer.project(x_src)[idx], rel, mask)
    moved = dict(arrays, out_float64=arrays["out_float64"].copy())
    moved["out_float64"][3, 7] += 1e-4
    assert _max_error(out, arrays) < TOL <= _max_error(out, moved)
    over_heads = lambda s, m: torch.softmax(s, -1) * m[..., None]  # noqa: E731  (v1's definition)
    with torch.no_grad(), pytest.MonkeyPatch.context() as mp:
        mp.setattr(layers, "_key_weights", over_heads)
        assert _max_error(layer(x_dst, layer.project(x_src)[idx], rel, mask), arrays) > 1e-2
