"""TFRecord files without TensorFlow.

Each record is framed as: uint64 little-endian payload length, uint32 masked CRC-32C of those 8 length bytes, the
payload, uint32 masked CRC-32C of the payload. Masking follows the TFRecord convention: rotate the CRC right by 15
bits and add 0xA282EAD8 (mod 2^32). CRC-32C runs in C through `google-crc32c`.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Iterable, Iterator

import google_crc32c

from drivetune.atomic import atomic_write_bytes
from drivetune.errors import TFRecordError

_MASK_DELTA = 0xA282EAD8
_HEADER = struct.Struct("<QI")  # length, masked crc of length
_FOOTER = struct.Struct("<I")  # masked crc of payload


def masked_crc32c(data: bytes | memoryview) -> int:
    """The TFRecord masked CRC-32C of `data`."""
    crc = google_crc32c.value(bytes(data) if isinstance(data, memoryview) else data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


def frame_record(payload: bytes) -> bytes:
    """One framed record (header, payload, footer)."""
    length = struct.pack("<Q", len(payload))
    return length + struct.pack("<I", masked_crc32c(length)) + payload + _FOOTER.pack(masked_crc32c(payload))


def _read_length(fh, path: Path, offset: int, verify: bool) -> int | None:
    """Payload length from the header at the file position `offset` (already seeked), or None at a clean end."""
    header = fh.read(_HEADER.size)
    if not header:
        return None
    if len(header) < _HEADER.size:
        raise TFRecordError(path, offset, f"truncated header ({len(header)} of {_HEADER.size} bytes)")
    length, length_crc = _HEADER.unpack(header)
    if verify and masked_crc32c(header[:8]) != length_crc:
        raise TFRecordError(path, offset, "length CRC mismatch (corrupt header)")
    return length


def _read_one(fh, path: Path, offset: int, verify: bool) -> bytes | None:
    """The record at the file position `offset` (already seeked), or None at a clean end of file."""
    length = _read_length(fh, path, offset, verify)
    if length is None:
        return None
    payload = fh.read(length)
    if len(payload) < length:
        raise TFRecordError(path, offset, f"truncated payload ({len(payload)} of {length} bytes)")
    footer = fh.read(_FOOTER.size)
    if len(footer) < _FOOTER.size:
        raise TFRecordError(path, offset, "truncated payload CRC")
    if verify and masked_crc32c(payload) != _FOOTER.unpack(footer)[0]:
        raise TFRecordError(path, offset, "payload CRC mismatch (corrupt data)")
    return payload


def read_records(path: str | os.PathLike, verify: bool = True) -> Iterator[tuple[int, bytes]]:
    """Yield (byte offset, payload) for every record of a TFRecord file, checking both CRCs unless verify=False.

    Raises TFRecordError naming the file and offset for a truncated record or a CRC mismatch.
    """
    path = Path(path)
    with open(path, "rb") as fh:
        offset = 0
        while (payload := _read_one(fh, path, offset, verify)) is not None:
            yield offset, payload
            offset += _HEADER.size + len(payload) + _FOOTER.size


def scan_records(path: str | os.PathLike) -> tuple[list[int], TFRecordError | None]:
    """Offsets of the well-framed records (from the headers alone; length CRC checked, payloads skipped unread),
    and the framing error that stopped the scan, if any (a corrupt header or a truncated record)."""
    path = Path(path)
    size = path.stat().st_size
    offsets: list[int] = []
    with open(path, "rb") as fh:
        offset = 0
        while offset < size:
            try:
                length = _read_length(fh, path, offset, verify=True)
            except TFRecordError as error:
                return offsets, error
            end = offset + _HEADER.size + length + _FOOTER.size
            if end > size:
                return offsets, TFRecordError(path, offset, f"truncated record (needs {end - offset} bytes, file ends at {size})")
            offsets.append(offset)
            offset = end
            fh.seek(offset)
    return offsets, None


def read_record_at(path: str | os.PathLike, offset: int) -> bytes:
    """The CRC-checked payload of the record that starts at byte `offset`."""
    path = Path(path)
    with open(path, "rb") as fh:
        fh.seek(offset)
        payload = _read_one(fh, path, offset, verify=True)
    if payload is None:
        raise TFRecordError(path, offset, "no record here (offset at or past end of file)")
    return payload


def write_records(path: str | os.PathLike, payloads: Iterable[bytes]) -> int:
    """Atomically write payloads as a TFRecord file. Returns the number of records."""
    count = 0

    def framed() -> Iterator[bytes]:
        nonlocal count
        for payload in payloads:
            count += 1
            yield frame_record(bytes(payload))

    atomic_write_bytes(path, framed())
    return count
