"""TFRecord framing: CRC-32C, round trip, corrupt and truncated records."""

from __future__ import annotations

import struct

import pytest

from drivetune.tfrecord import (
    TFRecordError,
    masked_crc32c,
    read_record_at,
    read_records,
    scan_records,
    write_records,
)


def test_crc32c_known_vector():
    # CRC-32C("123456789") = 0xE3069283 (RFC 3720 check value); TFRecord masks it.
    crc = 0xE3069283
    expected = ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF
    assert masked_crc32c(b"123456789") == expected


def _offsets_or_raise(path):
    offsets, error = scan_records(path)
    if error is not None:
        raise error
    return offsets


def test_round_trip_and_offsets(tmp_path):
    payloads = [b"", b"a", bytes(range(256)) * 100, b"last"]
    path = tmp_path / "x.tfrecord"
    assert write_records(path, payloads) == 4
    got = list(read_records(path))
    assert [p for _, p in got] == payloads
    offsets = [o for o, _ in got]
    assert offsets == _offsets_or_raise(path)
    assert offsets[0] == 0 and offsets[1] == 16  # empty record: 8 + 4 + 0 + 4 bytes
    assert read_record_at(path, offsets[2]) == payloads[2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.tfrecord"]  # no temp file left behind


def test_real_file_crcs(womd_637):
    (offset, payload), = list(read_records(womd_637))
    assert offset == 0 and len(payload) == womd_637.stat().st_size - 16


def _two_records(tmp_path):
    path = tmp_path / "two.tfrecord"
    write_records(path, [b"x" * 100, b"y" * 50])
    return path, bytearray(path.read_bytes())


def test_flipped_payload_byte(tmp_path):
    path, data = _two_records(tmp_path)
    second = 12 + 100 + 4
    data[second + 12 + 7] ^= 0x01
    path.write_bytes(bytes(data))
    reader = read_records(path)
    assert next(reader)[1] == b"x" * 100  # records before the corruption still read
    with pytest.raises(TFRecordError, match=rf"two\.tfrecord: record at byte offset {second}: payload CRC") as err:
        next(reader)
    assert err.value.offset == second and err.value.path == str(path)


def test_flipped_length_byte(tmp_path):
    path, data = _two_records(tmp_path)
    data[0] ^= 0x04
    path.write_bytes(bytes(data))
    with pytest.raises(TFRecordError, match="offset 0: length CRC"):
        list(read_records(path))
    with pytest.raises(TFRecordError, match="offset 0: length CRC"):
        _offsets_or_raise(path)


@pytest.mark.parametrize("cut", [3, 12 + 20, 50 + 12])
def test_truncated(tmp_path, cut):
    path, data = _two_records(tmp_path)
    second = 12 + 100 + 4
    path.write_bytes(bytes(data[: second + cut]))
    with pytest.raises(TFRecordError, match=rf"offset {second}: truncated"):
        list(read_records(path))
    with pytest.raises(TFRecordError, match=rf"offset {second}: truncated"):
        _offsets_or_raise(path)


def test_unverified_read_skips_crc(tmp_path):
    path, data = _two_records(tmp_path)
    data[12 + 5] ^= 0xFF
    path.write_bytes(bytes(data))
    assert len(list(read_records(path, verify=False))) == 2


def test_header_layout(tmp_path):
    path = tmp_path / "one.tfrecord"
    write_records(path, [b"hello"])
    raw = path.read_bytes()
    assert struct.unpack("<Q", raw[:8])[0] == 5
    assert struct.unpack("<I", raw[8:12])[0] == masked_crc32c(raw[:8])
    assert raw[12:17] == b"hello"
    assert struct.unpack("<I", raw[17:21])[0] == masked_crc32c(b"hello")
