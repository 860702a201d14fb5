"""Parquet shard store: rows, shards, manifest, schema version, random access, Ray Dataset, sources."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from drivetune.shards import (
    MANIFEST,
    VERSION_KEY,
    ShardError,
    ShardStore,
    file_sha256,
    read_shard,
    scene_from_row,
    scene_to_row,
    scenes_to_table,
    write_shards,
)
from drivetune import sources
from drivetune.scene_sampling import in_fraction, is_eval_id, sample_scenes, split_ids
from drivetune.sources import SourceError, expand_sources, iter_scenes
from drivetune.womd import load_scene


@pytest.fixture(scope="module")
def scenes(womd_637, womd_ee5):
    return [load_scene(womd_637), load_scene(womd_ee5)]


@pytest.fixture()
def store(tmp_path, scenes):
    return write_shards(tmp_path / "shards", scenes + scenes[:1], shard_size=2)


def test_row_round_trip(scenes):
    for scene in scenes:
        row = scene_to_row(scene)
        assert row["states"].ndim == 1 and row["scenario_id"] == scene.scenario_id
        assert scene_from_row(row).equals(scene)
        as_lists = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in row.items()}
        assert scene_from_row(as_lists).equals(scene)


def test_store_iteration_manifest_and_get(store, scenes):
    assert [p.name for p in store.paths()] == ["shard-00000.parquet", "shard-00001.parquet"]
    manifest = json.loads((store.directory / MANIFEST).read_text())
    assert manifest["schema_version"] == 1
    first = manifest["shards"]["shard-00000.parquet"]
    assert first["scenario_ids"] == ["637f20cafde22ff8", "ee519cf571686d19"] and first["num_rows"] == 2
    assert first["sha256"] == file_sha256(store.directory / "shard-00000.parquet")
    assert len(store) == 3 and store.verify() == []
    back = list(store)
    assert [s.scenario_id for s in back] == ["637f20cafde22ff8", "ee519cf571686d19", "637f20cafde22ff8"]
    assert all(b.equals(s) for b, s in zip(back, scenes + scenes[:1]))
    assert store.get("ee519cf571686d19").equals(scenes[1])
    assert "ee519cf571686d19" in store and "nope" not in store
    with pytest.raises(ShardError, match="scenario 'nope' not in the manifest"):
        store.get("nope")
    assert pq.ParquetFile(store.paths()[0]).metadata.row_group(0).column(0).compression == "ZSTD"


def test_get_from_shard_with_other_row_groups(tmp_path, scenes):
    path = tmp_path / "shard-00000.parquet"
    pq.write_table(scenes_to_table(scenes), path, row_group_size=2)  # e.g. written by another tool
    (found,) = read_shard(path, ["ee519cf571686d19"])
    assert found.equals(scenes[1])


def test_verify_detects_tampering(store):
    path = store.paths()[1]
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    assert store.verify() == [f"{path}: sha256 differs from the manifest"]


def test_flipped_byte_is_an_error_not_altered_data(ray_local, store, scenes):
    assert store.get("ee519cf571686d19").equals(scenes[1])  # verified once, then cached for this process
    path = store.paths()[0]
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x04  # inside a data page of the first scene's row group
    path.write_bytes(bytes(data))
    corrupt = f"{path}: shard is corrupted or was changed after ingest"
    with pytest.raises(ShardError, match=corrupt):
        store.get("ee519cf571686d19")
    with pytest.raises(ShardError, match=corrupt):
        list(ShardStore(store.directory))
    with pytest.raises(ShardError, match=corrupt):
        list(iter_scenes(path))  # a shard file named on its own is checked against the manifest beside it
    with pytest.raises(Exception, match="shard is corrupted"):
        store.to_ray_dataset().take_all()
    assert read_shard(store.paths()[1], sha256=store.shards["shard-00001.parquet"]["sha256"])  # others still read


def test_unknown_schema_version(tmp_path, scenes):
    table = scenes_to_table(scenes[:1])
    table = table.replace_schema_metadata({VERSION_KEY: b"99"})
    path = tmp_path / "future.parquet"
    pq.write_table(table, path)
    with pytest.raises(ShardError, match=r"future\.parquet: shard schema version '99' is unknown .*reads version 1"):
        read_shard(path)
    pq.write_table(table.replace_schema_metadata({}), path)
    with pytest.raises(ShardError, match="not a drivetune shard"):
        read_shard(path)


def test_unknown_manifest_version(store):
    manifest = json.loads((store.directory / MANIFEST).read_text())
    manifest["schema_version"] = 7
    (store.directory / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match="shard schema version 7 is unknown"):
        ShardStore(store.directory)


def test_sources(store, womd_637, womd_ee5, tmp_path):
    ids = [s.scenario_id for s in iter_scenes([str(womd_637), store.directory, store.paths()[1]])]
    assert ids == ["637f20cafde22ff8", "637f20cafde22ff8", "ee519cf571686d19", "637f20cafde22ff8", "637f20cafde22ff8"]
    pattern = str(womd_637.parent / "*.tfrecord")
    assert [p.name for p in expand_sources([pattern, str(womd_ee5)])] == [womd_637.name, womd_ee5.name]
    assert [p.name for p in expand_sources(womd_637.parent)] == [womd_637.name, womd_ee5.name]
    with pytest.raises(SourceError, match="glob matches nothing"):
        expand_sources(str(tmp_path / "*.tfrecord"))
    with pytest.raises(SourceError, match="no such file"):
        expand_sources(tmp_path / "missing.tfrecord")


def test_load_scene_from_any_source(store, scenes, womd_637):
    ee5 = scenes[1].scenario_id
    assert sources.load_scene(store.directory, ee5).equals(scenes[1])  # one row of one shard
    assert sources.load_scene(womd_637.parent, ee5).equals(scenes[1])  # a directory of TFRecords
    assert sources.load_scene(str(womd_637)).equals(scenes[0])  # the first scene
    with pytest.raises(SourceError, match="scenario 'nope' not found in"):
        sources.load_scene([store.directory, str(womd_637)], "nope")


def test_ray_dataset(ray_local, store, scenes):
    ds = store.to_ray_dataset()
    assert ds.count() == 3
    rows = sorted(ds.take_all(), key=lambda r: r["scenario_id"])
    assert scene_from_row(rows[-1]).equals(scenes[1])
    assert scene_from_row(rows[0]).equals(scenes[0])


def test_split_and_sample_scenes(tmp_path, scenes):
    ids = [f"{i:016x}" for i in np.random.default_rng(0).integers(0, 2**62, 10_000)]
    train, held = split_ids(ids, 0.1)
    assert sorted(train + held) == sorted(ids) and not set(train) & set(held)
    assert held == [i for i in ids if is_eval_id(i, 0.1)] and abs(len(held) / len(ids) - 0.1) < 0.01
    assert split_ids(ids, 0.0) == (ids, [])

    copies = [dataclasses.replace(scenes[0], scenario_id=f"s{i:03d}") for i in range(40)]
    store = write_shards(tmp_path / "many", copies, shard_size=8)
    train_ids, eval_ids = split_ids(store.scenario_ids(), 0.25)
    got = sample_scenes(store, 5, seed=3, split="train", eval_fraction=0.25)
    assert len({s.scenario_id for s in got}) == 5 and {s.scenario_id for s in got} <= set(train_ids)
    assert got[0].equals(dataclasses.replace(scenes[0], scenario_id=got[0].scenario_id))
    assert [s.scenario_id for s in sample_scenes(store, 5, 3, split="train", eval_fraction=0.25)] == \
        [s.scenario_id for s in got]  # seeded
    assert [s.scenario_id for s in sample_scenes(store, 5, 4, eval_fraction=0.25)] != [s.scenario_id for s in got]
    held = sample_scenes(store, len(eval_ids), 0, split="eval", eval_fraction=0.25)
    assert sorted(s.scenario_id for s in held) == sorted(eval_ids)
    part = [sid for sid in train_ids if in_fraction(sid, 0.3)]
    assert 0 < len(part) < len(train_ids)
    assert sorted(s.scenario_id for s in sample_scenes(store, len(part), 1, fraction=0.3, eval_fraction=0.25)) == \
        sorted(part)
    with pytest.raises(ValueError, match="cannot sample"):
        sample_scenes(store, len(part) + 1, 1, fraction=0.3, eval_fraction=0.25)
