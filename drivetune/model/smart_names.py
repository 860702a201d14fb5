"""SMART's parameter names -> drivetune's: load weights saved by SMART's layer code into `RelAttention`,
`FourierEmbedding` and `mlp` (the token head).

| SMART (AttentionLayer) | drivetune (RelAttention) |
|---|---|
| `to_q`, `to_k`, `to_v`, `to_s`, `to_g`, `to_out` | `q`, `k`, `v`, `self_proj`, `gate`, `out` |
| `to_k_r`, `to_v_r` | `k_rel`, `v_rel` |
| `attn_prenorm_x_src`, `attn_prenorm_x_dst`, `attn_prenorm_r` | `norm_src`, `norm_q` (bipartite only), `norm_rel` |
| `attn_postnorm`, `ff_prenorm`, `ff_mlp.{0,3}`, `ff_postnorm` | `post_norm`, `ff_norm`, `ff.{0,3}`, `ff_post_norm` |

| SMART (FourierEmbedding) | drivetune (FourierEmbedding) |
|---|---|
| `freqs.weight` [D, B] | `freqs` |
| `mlps.{d}.0.weight` [H, 2B+1], `.bias` | `w_in[d]` (transposed), `b_in[d, 0]` |
| `mlps.{d}.1.weight`, `.bias` (LayerNorm) | `ln_weight[d, 0]`, `ln_bias[d, 0]` |
| `mlps.{d}.3.weight` [H, H], `.bias` | `w_out[d]` (transposed), `b_out[d]` |
| `to_out.0`, `to_out.2` | `out.0`, `out.2` |

SMART's `MLPLayer` `mlp.{i}` is drivetune's `mlp()` Sequential `{i}`.
"""

from __future__ import annotations

import re
from typing import Mapping

import torch

ATTENTION_NAMES = {
    "to_q": "q", "to_k": "k", "to_v": "v", "to_s": "self_proj", "to_g": "gate", "to_out": "out",
    "to_k_r": "k_rel", "to_v_r": "v_rel", "attn_prenorm_x_src": "norm_src", "attn_prenorm_x_dst": "norm_q",
    "attn_prenorm_r": "norm_rel", "attn_postnorm": "post_norm", "ff_prenorm": "ff_norm", "ff_mlp": "ff",
    "ff_postnorm": "ff_post_norm",
}


def attention_from_smart(state: Mapping[str, torch.Tensor], bipartite: bool) -> dict[str, torch.Tensor]:
    """A SMART AttentionLayer state dict under RelAttention's names. In the self form SMART's destination norm is
    its source norm (the two entries must be equal) and RelAttention has only `norm_src`."""
    out = {}
    for name, value in state.items():
        module, _, rest = name.partition(".")
        if module not in ATTENTION_NAMES:
            raise KeyError(f"unknown SMART attention parameter {name!r}")
        if module == "attn_prenorm_x_dst" and not bipartite:
            if not torch.equal(value, state[f"attn_prenorm_x_src.{rest}"]):
                raise ValueError(f"{name} differs from attn_prenorm_x_src.{rest} in a self-attention layer")
            continue
        out[f"{ATTENTION_NAMES[module]}.{rest}"] = value
    return out


def fourier_from_smart(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A SMART FourierEmbedding state dict under drivetune's FourierEmbedding names (per-input MLPs stacked)."""
    dims = 1 + max(int(m.group(1)) for m in map(re.compile(r"^mlps\.(\d+)\.").match, state) if m)
    per = lambda part: [state[f"mlps.{d}.{part}"] for d in range(dims)]  # noqa: E731
    return {
        "freqs": state["freqs.weight"],
        "w_in": torch.stack([w.T for w in per("0.weight")]),
        "b_in": torch.stack(per("0.bias"))[:, None],
        "ln_weight": torch.stack(per("1.weight"))[:, None],
        "ln_bias": torch.stack(per("1.bias"))[:, None],
        "w_out": torch.stack([w.T for w in per("3.weight")]),
        "b_out": torch.stack(per("3.bias")),
        "out.0.weight": state["to_out.0.weight"], "out.0.bias": state["to_out.0.bias"],
        "out.2.weight": state["to_out.2.weight"], "out.2.bias": state["to_out.2.bias"],
    }


def mlp_from_smart(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A SMART MLPLayer state dict under the names of drivetune's `mlp()` Sequential."""
    return {name.removeprefix("mlp."): value for name, value in state.items()}
