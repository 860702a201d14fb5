"""Vectorised decoding of many small protobuf messages made only of fixed-width fields (doubles, floats, bools).

WOMD scenarios hold ~30k `ObjectState` and ~20k `MapPoint` messages; reading them field by field through the
Python proto API dominates ingest time. Here the sub-message byte spans are found in lockstep over all parents (one
element per numpy pass), then all messages are decoded together with numpy, one field slot per pass. Anything unexpected (an unknown
tag, a multi-byte varint, a span that does not end on a field boundary) returns None, and the caller falls back to
the proto API, so results are always those of the official parser.
"""

from __future__ import annotations

import numpy as np
from google.protobuf.descriptor import Descriptor, FieldDescriptor

_UNKNOWN, _F8, _F4, _BOOL = 0, 1, 2, 3
_WIDTH = {_F8: 9, _F4: 5, _BOOL: 2}  # tag byte + payload


class FixedLayout:
    """Tag byte -> (column, kind) for the named fields of a message type (field numbers < 16: one-byte tags)."""

    def __init__(self, descriptor: Descriptor, names: tuple[str, ...]):
        self.columns = len(names)
        self.kind = np.zeros(256, np.int8)
        self.column = np.zeros(256, np.int64)
        wire = {FieldDescriptor.TYPE_DOUBLE: (1, _F8), FieldDescriptor.TYPE_FLOAT: (5, _F4), FieldDescriptor.TYPE_BOOL: (0, _BOOL)}
        for col, name in enumerate(names):
            field = descriptor.fields_by_name[name]
            if field.number >= 16 or field.type not in wire:
                raise ValueError(f"{descriptor.name}.{name} is not a one-byte-tag fixed-width field")
            wire_type, kind = wire[field.type]
            tag = (field.number << 3) | wire_type
            self.kind[tag], self.column[tag] = kind, col
        self.width = np.array([_WIDTH.get(int(k), 0) for k in self.kind], np.int64)


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def first_field_offset(buf: bytes, field_number: int) -> int | None:
    """Byte offset of the first occurrence of a field in a serialized message (None: absent or unparsable)."""
    pos, n = 0, len(buf)
    while pos < n:
        start = pos
        key, pos = _varint(buf, pos)
        if key >> 3 == field_number:
            return start
        wire_type = key & 7
        if wire_type == 0:
            _, pos = _varint(buf, pos)
        elif wire_type in (1, 5):
            pos += 8 if wire_type == 1 else 4
        elif wire_type == 2:
            length, pos = _varint(buf, pos)
            pos += length
        else:
            return None
    return None


def repeated_spans(buf: np.ndarray, starts: np.ndarray, counts: np.ndarray, tag: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Spans of the elements of a repeated sub-message field, `counts[i]` consecutive elements from `starts[i]`.

    Tries equal-sized elements per message first (one numpy pass), else walks all messages in lockstep, one element
    per pass. Needs one-byte tags and element lengths < 128; otherwise, or when the elements are not consecutive,
    returns None.
    """
    size = len(buf)
    counts = counts.astype(np.int64)
    if (counts > 0).any() and (starts[counts > 0] + 1 >= size).any():
        return None
    first = np.zeros(len(counts), np.int64)
    first[counts > 0] = buf[starts[counts > 0] + 1]
    owner = np.repeat(np.arange(len(counts)), counts)
    k = np.arange(len(owner)) - np.repeat(np.cumsum(counts) - counts, counts)
    tags = starts[owner] + (first[owner] + 2) * k  # positions if every element had its message's first length
    if not (tags + 1 < size).all() or not _chain_ok(buf, tags, owner, starts, tag):
        tags = np.zeros(len(owner), np.int64)
        order = np.argsort(-counts, kind="stable")  # active messages form a prefix of `order` at every pass
        neg_sorted = -counts[order]
        pos = starts[order].astype(np.int64)
        slot = (np.cumsum(counts) - counts)[order]
        for step in range(int(counts.max()) if len(counts) else 0):
            n = int(np.searchsorted(neg_sorted, -step, side="left"))  # messages with more than `step` elements
            p = np.minimum(pos[:n], size - 2)
            tags[slot[:n] + step] = p
            pos[:n] = p + 2 + buf[p + 1]
        if not _chain_ok(buf, tags, owner, starts, tag):
            return None
    begin = tags + 2
    return begin, begin + buf[tags + 1].astype(np.int64)


def _chain_ok(buf: np.ndarray, tags: np.ndarray, owner: np.ndarray, starts: np.ndarray, tag: int) -> bool:
    """True when `tags` are exactly the positions a wire-format parser would visit, element after element."""
    if len(tags) == 0:
        return True
    if (buf[tags] != tag).any() or (buf[tags + 1] >= 0x80).any():
        return False
    nxt = tags + 2 + buf[tags + 1]
    same = owner[1:] == owner[:-1]
    first = np.ones(len(tags), bool)
    first[1:] = ~same
    return bool(np.array_equal(nxt[:-1][same], tags[1:][same]) and np.array_equal(tags[first], starts[owner[first]])
                and nxt.max() <= len(buf))  # fmt: skip


def decode_fixed(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray, layout: FixedLayout) -> np.ndarray | None:
    """float64 [n, columns] values of n messages at buf[starts[i]:ends[i]] (absent fields read as 0), or None."""
    n = len(starts)
    out = np.zeros((n, layout.columns), np.float64)
    pos = starts.astype(np.int64).copy()
    ends = ends.astype(np.int64)
    while True:
        idx = np.flatnonzero(pos < ends)
        if idx.size == 0:
            break
        p = pos[idx]
        tag = buf[p]
        kind = layout.kind[tag]
        if (kind == _UNKNOWN).any():
            return None
        if (p + layout.width[tag] > ends[idx]).any():
            return None
        cols = layout.column[tag]
        for k, dtype, size in ((_F8, "<f8", 8), (_F4, "<f4", 4)):
            sel = np.flatnonzero(kind == k)
            if sel.size:
                raw = buf[(p[sel] + 1)[:, None] + np.arange(size)]
                out[idx[sel], cols[sel]] = np.ascontiguousarray(raw).view(dtype)[:, 0]
        sel = np.flatnonzero(kind == _BOOL)
        if sel.size:
            value = buf[p[sel] + 1]
            if (value > 1).any():
                return None
            out[idx[sel], cols[sel]] = value
        pos[idx] = p + layout.width[tag]
    return out if np.array_equal(pos, ends) else None
