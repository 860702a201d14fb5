"""Parquet shard store: one Arrow row per Scene, N scenes per zstd Parquet file, a JSON manifest beside them.

Row layout (schema version 1): `scenario_id` (string), scalar ints `current_time_index`/`sdc_index`, and one flat
list column per Scene array (C order). Multi-dimensional arrays get their shape back from the lengths of
`timestamps` (T), `track_ids` (A) and `signal_lane_ids` (L). Each scene is its own row group, so reading one scene
by id touches one row group. The Parquet key-value metadata holds `drivetune.schema_version`.

`manifest.json`: {"schema_version": 1, "shards": {file name: {"scenario_ids", "num_rows", "sha256", ...}}}; extra
keys per shard (ingest's input fingerprint and errors) are kept as given. Every read through a `ShardStore` (and of
a shard file beside its manifest) first checks the file's sha256 against the manifest (`verify_shard`, once per
process while the file is unchanged): a corrupted shard raises ShardError naming the file instead of reading back
altered data.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from drivetune.errors import ShardError
from drivetune.scene import STATE_FIELDS, Scene
from drivetune.atomic import atomic_write_bytes

SCHEMA_VERSION = 1
VERSION_KEY = b"drivetune.schema_version"
MANIFEST = "manifest.json"
_SCALARS = {"current_time_index", "sdc_index"}
_NON_INT64 = {
    "timestamps": "f8", "states": "f8", "map_points": "f8", "signal_stop_points": "f8", "lane_speed_limit_mph": "f4",
    "track_types": "i1", "predict_difficulty": "i1", "map_types": "i1", "map_subtypes": "i1", "signal_states": "i1",
    "valid": "?", "lane_interpolating": "?",
}  # fmt: skip
# every array field of Scene -> the numpy dtype stored (the Scene contract's dtypes; ids and offsets are int64)
_ARRAYS: dict[str, np.dtype] = {
    f.name: np.dtype(_NON_INT64.get(f.name, "i8")) for f in fields(Scene) if f.name not in _SCALARS | {"scenario_id"}
}


def _arrow_type(dtype: np.dtype) -> pa.DataType:
    return pa.from_numpy_dtype(dtype)


SCHEMA = pa.schema(
    [pa.field("scenario_id", pa.string(), nullable=False)]
    + [pa.field(name, pa.int64(), nullable=False) for name in sorted(_SCALARS)]
    + [pa.field(name, pa.list_(_arrow_type(dt)), nullable=False) for name, dt in _ARRAYS.items()]
).with_metadata({VERSION_KEY: str(SCHEMA_VERSION).encode()})


def scene_to_row(scene: Scene) -> dict[str, Any]:
    """A dict of flat numpy arrays and scalars: one Arrow row."""
    row: dict[str, Any] = {"scenario_id": scene.scenario_id}
    row.update({name: int(getattr(scene, name)) for name in _SCALARS})
    row.update({name: np.ascontiguousarray(getattr(scene, name), dt).ravel() for name, dt in _ARRAYS.items()})
    return row


def _shape(name: str, T: int, A: int, L: int) -> tuple[int, ...]:
    return {
        "states": (A, T, len(STATE_FIELDS)),
        "valid": (A, T),
        "map_points": (-1, 3),
        "signal_states": (T, L),
        "signal_stop_points": (T, L, 3),
    }.get(name, (-1,))


def scene_from_row(row: dict[str, Any]) -> Scene:
    """Inverse of `scene_to_row`; list values may be numpy arrays or Python lists (Ray Data rows give either)."""
    arrays = {name: np.asarray(row[name], dtype=dt) for name, dt in _ARRAYS.items()}
    T, A, L = len(arrays["timestamps"]), len(arrays["track_ids"]), len(arrays["signal_lane_ids"])
    try:
        arrays = {name: a.reshape(_shape(name, T, A, L)) for name, a in arrays.items()}
    except ValueError as exc:
        raise ShardError(f"scenario {row['scenario_id']!r}: inconsistent row ({exc})") from exc
    scalars = {name: int(row[name]) for name in _SCALARS}
    return Scene(scenario_id=str(row["scenario_id"]), **scalars, **arrays)


def scenes_to_table(scenes: Iterable[Scene]) -> pa.Table:
    """Scenes as an Arrow table with the versioned shard schema (list columns built from concatenated arrays)."""
    rows = [scene_to_row(s) for s in scenes]
    columns: list[pa.Array] = [pa.array([r["scenario_id"] for r in rows], pa.string())]
    columns += [pa.array([r[name] for r in rows], pa.int64()) for name in sorted(_SCALARS)]
    for name, dt in _ARRAYS.items():
        parts = [r[name] for r in rows]
        offsets = np.zeros(len(parts) + 1, np.int32)
        offsets[1:] = np.cumsum([len(p) for p in parts])
        values = np.concatenate(parts) if parts else np.zeros(0, dt)
        columns.append(pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, _arrow_type(dt))))
    return pa.Table.from_arrays(columns, schema=SCHEMA)


def scenes_from_table(table: pa.Table, source: str = "<table>") -> list[Scene]:
    """Scenes from an Arrow table with the shard schema (the version is checked against the schema metadata)."""
    check_version(table.schema, source)
    out: list[Scene] = []
    cols = {name: table.column(name).combine_chunks() for name in table.column_names}
    for i in range(table.num_rows):
        row: dict[str, Any] = {"scenario_id": cols["scenario_id"][i].as_py()}
        row.update({name: cols[name][i].as_py() for name in _SCALARS})
        for name in _ARRAYS:
            col = cols[name]
            start, stop = col.offsets[i].as_py(), col.offsets[i + 1].as_py()
            row[name] = col.values.slice(start, stop - start).to_numpy(zero_copy_only=False)
        out.append(scene_from_row(row))
    return out


def check_version(schema: pa.Schema, source: str) -> None:
    """Raise ShardError unless the schema's metadata carries the schema version this code reads."""
    meta = schema.metadata or {}
    found = meta.get(VERSION_KEY)
    if found is None:
        raise ShardError(f"{source}: no {VERSION_KEY.decode()} in Parquet metadata: not a drivetune shard")
    if found.decode() != str(SCHEMA_VERSION):
        raise ShardError(
            f"{source}: shard schema version {found.decode()!r} is unknown (this drivetune reads version "
            f"{SCHEMA_VERSION}); re-ingest the data with this version"
        )


def write_shard(path: str | os.PathLike, scenes: Iterable[Scene]) -> dict[str, Any]:
    """Atomically write one zstd Parquet shard (one row group per scene). Returns its manifest entry."""
    table = scenes_to_table(scenes)
    buf = io.BytesIO()
    # no dictionary encoding: float arrays gain nothing from it, and writes are 3x faster and smaller without
    pq.write_table(table, buf, compression="zstd", row_group_size=1, use_dictionary=False)
    data = buf.getvalue()
    atomic_write_bytes(path, [data])
    return {
        "scenario_ids": table.column("scenario_id").to_pylist(),
        "num_rows": table.num_rows,
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def read_shard(path: str | os.PathLike, scenario_ids: Iterable[str] | None = None,
               sha256: str | None = None) -> list[Scene]:
    """Scenes of one shard file (optionally only the given scenario ids). With `sha256` (the manifest's) the file
    is verified first (`verify_shard`), so a corrupted shard raises instead of reading back altered data."""
    path = Path(path)
    if sha256 is not None:
        verify_shard(path, sha256)
    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise ShardError(f"{path}: not a readable Parquet shard ({exc})") from exc
    check_version(pf.schema_arrow, str(path))
    if scenario_ids is None:
        return scenes_from_table(pf.read(), str(path))
    wanted = set(scenario_ids)
    ids = pf.read(columns=["scenario_id"]).column("scenario_id").to_pylist()
    rows = [i for i, sid in enumerate(ids) if sid in wanted]
    if not rows:
        return []
    if pf.metadata.num_row_groups == len(ids):  # our layout: one row group per scene, read only those
        return scenes_from_table(pf.read_row_groups(rows), str(path))
    return scenes_from_table(pf.read().take(rows), str(path))


# (resolved path, size, mtime_ns) -> sha256 of files this process has verified; a rewrite changes the key
_VERIFIED: dict[tuple[str, int, int], str] = {}


def verify_shard(path: str | os.PathLike, sha256: str) -> None:
    """Raise ShardError unless the file's sha256 is `sha256` (hashed once per process while size and mtime stay)."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError as exc:
        raise ShardError(f"{path}: shard listed in the manifest cannot be read ({exc})") from exc
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if _VERIFIED.get(key) == sha256:
        return
    found = file_sha256(path)
    if found != sha256:
        raise ShardError(f"{path}: shard is corrupted or was changed after ingest (sha256 {found[:12]}... differs "
                         f"from the manifest's {sha256[:12]}...); re-run `drivetune ingest` to rebuild it")
    _VERIFIED[key] = sha256


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a shard directory ({"schema_version", "shards"}); an empty one if there is none yet."""
    path = Path(directory) / MANIFEST
    if not path.exists():
        return {"schema_version": SCHEMA_VERSION, "shards": {}}
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ShardError(f"{path}: corrupt manifest ({exc})") from exc
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise ShardError(
            f"{path}: shard schema version {manifest.get('schema_version')!r} is unknown (this drivetune reads "
            f"version {SCHEMA_VERSION}); re-ingest the data with this version"
        )
    return manifest


def listed_sha256(path: str | os.PathLike) -> str | None:
    """The sha256 the manifest beside a shard file records for it (None when no manifest lists the file)."""
    path = Path(path)
    if not (path.parent / MANIFEST).exists():
        return None
    entry = read_manifest(path.parent)["shards"].get(path.name)
    return None if entry is None else entry["sha256"]


def write_manifest(directory: str | os.PathLike, shards: dict[str, dict[str, Any]]) -> None:
    manifest = {"schema_version": SCHEMA_VERSION, "shards": dict(sorted(shards.items()))}
    atomic_write_bytes(Path(directory) / MANIFEST, [json.dumps(manifest, indent=1).encode()])


def write_shards(directory: str | os.PathLike, scenes: Iterable[Scene], shard_size: int = 64) -> "ShardStore":
    """Write scenes into `shard-NNNNN.parquet` files of `shard_size` scenes each, plus the manifest."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    directory = Path(directory)
    entries: dict[str, dict[str, Any]] = {}
    batch: list[Scene] = []

    def flush() -> None:
        name = shard_name(len(entries))
        entries[name] = write_shard(directory / name, batch)
        batch.clear()

    for scene in scenes:
        batch.append(scene)
        if len(batch) == shard_size:
            flush()
    if batch:
        flush()
    write_manifest(directory, entries)
    return ShardStore(directory)


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.parquet"


class ShardStore:
    """A directory of shards and its manifest: iteration, random access by scenario id, a Ray Dataset."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        if not (self.directory / MANIFEST).exists():
            raise ShardError(f"{self.directory}: no {MANIFEST}: not a drivetune shard directory")
        self.manifest = read_manifest(self.directory)
        self.shards: dict[str, dict[str, Any]] = self.manifest["shards"]
        self._index = {sid: name for name, e in self.shards.items() for sid in e["scenario_ids"]}

    def __len__(self) -> int:
        return sum(e["num_rows"] for e in self.shards.values())

    def paths(self) -> list[Path]:
        return [self.directory / name for name in self.shards]

    def scenario_ids(self) -> list[str]:
        return [sid for e in self.shards.values() for sid in e["scenario_ids"]]

    def __iter__(self) -> Iterator[Scene]:
        for path, entry in zip(self.paths(), self.shards.values()):
            yield from read_shard(path, sha256=entry["sha256"])

    def __contains__(self, scenario_id: str) -> bool:
        return scenario_id in self._index

    def shard_of(self, scenario_id: str) -> str:
        """The name of the shard file holding this scenario id."""
        name = self._index.get(scenario_id)
        if name is None:
            raise ShardError(f"{self.directory}: scenario {scenario_id!r} not in the manifest")
        return name

    def get(self, scenario_id: str) -> Scene:
        """The scene with this id (reads one row group of one shard)."""
        name = self.shard_of(scenario_id)
        found = read_shard(self.directory / name, [scenario_id], sha256=self.shards[name]["sha256"])
        if not found:
            raise ShardError(f"{self.directory / name}: scenario {scenario_id!r} listed in the manifest but missing")
        return found[0]

    def verify(self) -> list[str]:
        """Problems found checking every shard's existence, sha256 and schema version (empty when all is well)."""
        problems = []
        for path, entry in zip(self.paths(), self.shards.values()):
            if not path.exists():
                problems.append(f"{path}: missing")
            elif file_sha256(path) != entry["sha256"]:
                problems.append(f"{path}: sha256 differs from the manifest")
            else:
                try:
                    check_version(pq.read_schema(path), str(path))
                except ShardError as exc:
                    problems.append(str(exc))
        return problems

    def to_ray_dataset(self, keep: Callable[[str], bool] | None = None):
        """The scenes as a Ray Dataset, one row per scene in the shard schema (`scene_from_row` turns a row back into
        a Scene). Each shard is read by a Ray task that first checks its sha256 against the manifest; `keep` (a
        picklable predicate on scenario ids, e.g. a train/eval split) drops rows in that task."""
        import ray.data

        items = [{"path": str(p), "sha256": e["sha256"]} for p, e in zip(self.paths(), self.shards.values())]
        if not items:
            raise ShardError(f"{self.directory}: the manifest lists no shards")
        return ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            _read_shard_table, batch_size=1, batch_format="pyarrow", fn_kwargs={"keep": keep})


def _read_shard_table(batch: pa.Table, keep: Callable[[str], bool] | None) -> pa.Table:
    """Ray Data task: the verified shard(s) named in `batch` as one Arrow table (rows failing `keep` dropped)."""
    tables = []
    for path, sha in zip(batch.column("path").to_pylist(), batch.column("sha256").to_pylist()):
        verify_shard(path, sha)
        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowInvalid) as exc:
            raise ShardError(f"{path}: not a readable Parquet shard ({exc})") from exc
        check_version(table.schema, path)
        if keep is not None:
            table = table.filter(pa.array([keep(i) for i in table.column("scenario_id").to_pylist()], pa.bool_()))
        tables.append(table.cast(SCHEMA))
    return pa.concat_tables(tables)
