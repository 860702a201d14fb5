"""Where scenes come from: TFRecord files, directories of them, globs, shard directories and Parquet shard files.

A spec is a path or glob string (or a list of them). Expansion is deterministic: glob matches and directory contents
are sorted, a file reached twice is used once, and hidden files (an interrupted atomic write's `.NAME.*.tmp*`) are
never read from a directory or a glob.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Iterator, Sequence, Union

from drivetune.errors import SourceError
from drivetune.scene import Scene
from drivetune.shards import MANIFEST, ShardStore, listed_sha256, read_shard
from drivetune.womd import read_scenes

Spec = Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]
_GLOB_CHARS = set("*?[")


def _is_tfrecord_name(path: Path) -> bool:
    """A visible TFRecord file name. Hidden files are skipped: `drivetune.atomic` writes `.NAME.*.tmp*` beside its
    target, and a killed writer leaves one behind that must not count as input."""
    return not path.name.startswith(".") and (".tfrecord" in path.name or path.suffix == ".tfrec")


def expand_sources(spec: Spec) -> list[Path]:
    """Resolve a spec into an ordered list of TFRecord files, shard directories and Parquet shard files."""
    items = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    if not items:
        raise SourceError("no sources given")
    out: list[Path] = []
    seen: set[Path] = set()

    def add(path: Path) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            out.append(path)

    for item in items:
        text = os.fspath(item)
        if _GLOB_CHARS & set(text):
            matches = sorted(glob.glob(text, recursive=True))
            if not matches:
                raise SourceError(f"{text}: glob matches nothing")
            paths = [Path(m) for m in matches if not Path(m).name.startswith(".")]
            if not paths:
                raise SourceError(f"{text}: glob matches only hidden (temporary) files")
        else:
            paths = [Path(text)]
        for path in paths:
            if path.is_dir():
                if (path / MANIFEST).exists():
                    add(path)
                    continue
                files = sorted(p for p in path.iterdir() if p.is_file() and _is_tfrecord_name(p))
                if not files:
                    raise SourceError(f"{path}: directory holds no *.tfrecord* files and no {MANIFEST}")
                for f in files:
                    add(f)
            elif path.is_file():
                add(path)
            else:
                raise SourceError(f"{path}: no such file or directory")
    return out


def expand_tfrecords(spec: Spec) -> list[Path]:
    """Like `expand_sources`, but only TFRecord files are acceptable (ingest's input)."""
    paths = expand_sources(spec)
    bad = [str(p) for p in paths if p.is_dir() or p.suffix == ".parquet"]
    if bad:
        raise SourceError(f"expected TFRecord files, got shard data: {bad[:3]}")
    return paths


def load_scene(spec: Spec, scenario_id: str | None = None) -> Scene:
    """One scene from any source: the first, or the one with `scenario_id` (from a shard directory only its row is
    read; from a TFRecord file only up to it)."""
    paths = expand_sources(spec)
    if scenario_id is not None:
        for path in paths:
            if path.is_dir() and scenario_id in (store := ShardStore(path)):
                return store.get(scenario_id)
    for scene in iter_scenes(paths):
        if scenario_id is None or scene.scenario_id == scenario_id:
            return scene
    wanted = "any scenario" if scenario_id is None else f"scenario {scenario_id!r}"
    raise SourceError(f"{wanted} not found in {', '.join(str(p) for p in paths)}")


def iter_scenes(spec: Spec) -> Iterator[Scene]:
    """Every Scene of every source in the spec, in spec order."""
    for path in expand_sources(spec):
        if path.is_dir():
            yield from ShardStore(path)
        elif path.suffix == ".parquet":
            yield from read_shard(path, sha256=listed_sha256(path))
        else:
            yield from read_scenes(path)
