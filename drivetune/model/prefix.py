"""`SharedPrefix`: the token rows a full-context decode computes when several rows begin with the same tokens.

Rollouts of one scene share their logged history. In a teacher-forced decode of such rows ([B, A, T], token row
n = (b * A + a) * T + t), the first `prefix_len` tokens of a row b are the same as those of its prefix row
`prefix_rows[b]`, and causal attention never lets a later token change them: they are decoded once, on the prefix
row, and every row reads them from there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SharedPrefix:
    """Decoded token rows `keep` (full row indices, ascending), the decoded row of every full row `remap`, and the
    (row, time) slices holding decoded tokens `slice_ids`; `keep` and `remap` are None when nothing is shared."""

    keep: torch.Tensor | None
    remap: torch.Tensor | None
    slice_ids: torch.Tensor  # [Q] indices b * T + t of the slices with a decoded token
    query: torch.Tensor  # [N'] each decoded token's row q * A + a among the [Q * A] per-slice agent queries

    @classmethod
    def build(cls, b: int, a: int, t: int, prefix_rows: torch.Tensor | None, prefix_len: int,
              device: torch.device) -> "SharedPrefix":
        rb, tt, aa = (torch.arange(n, device=device) for n in (b, t, a))
        elsewhere = None  # [B, T] tokens decoded on another row
        if prefix_rows is None or prefix_len <= 0:  # every token decoded on its own row (no host read)
            slice_ids = position = torch.arange(b * t, device=device)
        else:
            prefix_rows = prefix_rows.to(device)
            if prefix_rows.shape != (b,) or not torch.equal(prefix_rows[prefix_rows], prefix_rows):
                raise ValueError(f"prefix_rows must give each of the {b} rows a row that is its own prefix row, "
                                 f"got {prefix_rows.tolist()}")
            elsewhere = (prefix_rows != rb)[:, None] & (tt < prefix_len)
            slice_ids = (~elsewhere).flatten().nonzero().squeeze(-1)
            position = torch.full((b * t,), -1, dtype=torch.long, device=device)
            position[slice_ids] = torch.arange(len(slice_ids), device=device)
        query = (position.view(b, 1, t) * a + aa.view(1, a, 1)).flatten()  # [B * A * T] in token-row order
        if elsewhere is None or not bool(elsewhere.any()):
            return cls(None, None, slice_ids, query)
        kept = (~elsewhere)[:, None, :].expand(b, a, t).flatten()
        keep = kept.nonzero().squeeze(-1)
        decoded = torch.cumsum(kept, 0) - 1  # decoded index of each kept row
        src_b = torch.where(elsewhere, prefix_rows[:, None], rb[:, None])  # [B, T] the row a token is decoded on
        remap = decoded[((src_b[:, None, :] * a + aa.view(1, a, 1)) * t + tt).flatten()]
        return cls(keep, remap, slice_ids, query[keep])

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """Per-token-row values [B*A*T, ...] -> those of the decoded rows [N', ...]."""
        return x if self.keep is None else torch.index_select(x, 0, self.keep)

    def index(self, rows: torch.Tensor) -> torch.Tensor:
        """Full token-row indices (any shape) -> the decoded rows holding their values."""
        return rows if self.remap is None else self.remap[rows]

    def expand(self, x: torch.Tensor) -> torch.Tensor:
        """Decoded rows [N', ...] -> every token row [B*A*T, ...]."""
        return x if self.remap is None else torch.index_select(x, 0, self.remap)
