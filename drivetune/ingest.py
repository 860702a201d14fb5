"""`drivetune ingest SRC... --out DIR`: WOMD Scenario TFRecords -> Parquet shards, in parallel Ray tasks, resumable.

Shard assignment is deterministic: the sources expand to a sorted, de-duplicated file list; the driver lists every
record's byte offset from the headers alone (no payload is read); the global record sequence is cut into consecutive
runs of `--shard-size` records, and run i becomes `shard-{i:05d}.parquet`. Each shard's manifest entry stores a
fingerprint of its inputs (resolved path, size and mtime of each file, record offsets). A re-run skips a shard whose
file exists, whose sha256 matches the manifest and whose input fingerprint is unchanged; every other shard is
(re)built. Shards from an earlier, larger plan are removed. A bad record (CRC mismatch, truncation, undecodable
proto) is reported with file + byte offset, the rest of its shard is still written, and the command exits 1 with a
summary; a corrupt record header makes the rest of that file unreadable, which is reported the same way.

One ingest at a time per directory: a second one into the same `--out` is refused (IngestLockedError, a `flock`
on DIR/.ingest.lock). While a run is in progress each finished shard appends its manifest entry to
DIR/.ingest-journal.jsonl (one line, so n shards cost O(n), not the O(n^2) of rewriting the manifest each time); the
manifest is written once at the start (verified shards only) and once at the end, and an interrupted run's journal
is read back by the next run. The same scenario id twice across (or within) the inputs is an error naming both
sources (DuplicateScenarioError, exit 2); the manifest is then left out so the directory is not used as it is.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from drivetune.atomic import remove_stale_temps
from drivetune.errors import DuplicateScenarioError, IngestLockedError
from drivetune.progress import progress as progress_reporter  # a bar on a terminal, lines in a log
from drivetune.ray_runtime import ray_session, set_process_env
from drivetune.shards import MANIFEST, file_sha256, read_manifest, shard_name, write_manifest, write_shard
from drivetune.sources import expand_tfrecords
from drivetune.tfrecord import TFRecordError, read_record_at, scan_records
from drivetune.womd import WomdError, scene_from_bytes

set_process_env()
LOCK_NAME = ".ingest.lock"
JOURNAL_NAME = ".ingest-journal.jsonl"  # finished shards' manifest entries, appended while a run is in progress


@dataclass
class ShardPlan:
    name: str
    inputs: list[tuple[str, int]]  # (resolved file path, record byte offset)
    fingerprint: str


@dataclass
class IngestResult:
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    scenes: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)  # {"file", "offset", "error"}


def plan_shards(files: list[Path], shard_size: int) -> tuple[list[ShardPlan], list[dict[str, Any]]]:
    """Cut the records of `files` into shards; also returns errors met while framing (bad headers, truncation)."""
    if shard_size < 1:
        raise ValueError(f"--shard-size must be >= 1, got {shard_size}")
    records: list[tuple[str, int]] = []
    stamps: dict[str, tuple[int, int]] = {}
    errors: list[dict[str, Any]] = []
    for path in files:
        resolved = str(path.resolve())
        st = path.stat()
        stamps[resolved] = (st.st_size, st.st_mtime_ns)
        offsets, exc = scan_records(path)
        if exc is not None:
            errors.append({"file": str(path), "offset": exc.offset, "error": f"{exc} (rest of file unreadable)"})
        records += [(resolved, o) for o in offsets]
    plans = []
    for i in range(0, len(records), shard_size):
        chunk = records[i : i + shard_size]
        key = [(p, *stamps[p], o) for p, o in chunk]
        digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()
        plans.append(ShardPlan(shard_name(len(plans)), chunk, digest))
    return plans, errors


def build_shard(out_dir: str, plan: ShardPlan) -> tuple[str, dict[str, Any]]:
    """Read, verify and convert one shard's records, then write the shard atomically. Runs as a Ray task."""
    scenes, errors = [], []
    for path, offset in plan.inputs:
        try:
            scenes.append(scene_from_bytes(read_record_at(path, offset), f"{path}: record at byte offset {offset}"))
        except (TFRecordError, WomdError) as exc:
            errors.append({"file": path, "offset": offset, "error": str(exc)})
    entry = write_shard(Path(out_dir) / plan.name, scenes)
    entry.update(inputs_fingerprint=plan.fingerprint, num_records=len(plan.inputs), errors=errors)
    return plan.name, entry


def _is_done(out_dir: Path, plan: ShardPlan, entry: dict[str, Any] | None) -> bool:
    path = out_dir / plan.name
    return (
        entry is not None
        and entry.get("inputs_fingerprint") == plan.fingerprint
        and path.exists()
        and file_sha256(path) == entry.get("sha256")
    )


@contextmanager
def ingest_lock(out_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on `out_dir` (a `flock` on DIR/.ingest.lock, released by the OS if the process
    dies), or raise IngestLockedError at once if another ingest holds it."""
    fh = open(out_dir / LOCK_NAME, "a+")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise IngestLockedError(f"{out_dir}: another ingest ({holder}) is writing into this directory; wait "
                                    f"for it to finish or use another --out") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}")
        fh.flush()
        yield
    finally:
        fh.close()  # closing releases the lock


def _read_journal(out_dir: Path) -> dict[str, dict[str, Any]]:
    """Entries of shards an interrupted run finished after its last manifest write (a torn last line is ignored)."""
    path = out_dir / JOURNAL_NAME
    entries: dict[str, dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                name, entry = json.loads(line)
            except (json.JSONDecodeError, ValueError):
                continue
            entries[name] = entry
    return entries


def _scene_sources(plan: ShardPlan, entry: dict[str, Any]) -> list[str]:
    """`FILE record at byte offset N` of each scenario id of a shard entry (records that failed are not in it)."""
    failed = {(e["file"], e["offset"]) for e in entry.get("errors", [])}
    return [f"{path} (record at byte offset {offset})" for path, offset in plan.inputs if (path, offset) not in failed]


def _check_duplicates(plans: list[ShardPlan], entries: dict[str, dict[str, Any]]) -> None:
    """Raise DuplicateScenarioError naming both sources of every scenario id met twice."""
    first: dict[str, str] = {}
    clashes: list[str] = []
    for plan in plans:
        entry = entries[plan.name]
        for sid, where in zip(entry["scenario_ids"], _scene_sources(plan, entry)):
            if sid in first:
                clashes.append(f"{sid!r} in {first[sid]} and in {where}")
            else:
                first[sid] = where
    if clashes:
        more = f" (and {len(clashes) - 5} more)" if len(clashes) > 5 else ""
        raise DuplicateScenarioError(f"{len(clashes)} duplicate scenario id(s) across the inputs: "
                                     + "; ".join(clashes[:5]) + more + ". Remove the duplicate inputs and re-run "
                                     "(the shard directory has no manifest until then)")


def ingest(sources: list[str], out: str | os.PathLike, shard_size: int = 64, workers: int = 2,
           progress: bool = True) -> IngestResult:  # fmt: skip
    """Convert TFRecord sources into a shard directory; see the module docstring for the resume rules."""
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    plans, framing_errors = plan_shards(expand_tfrecords(sources), shard_size)
    with ingest_lock(out_dir):
        return _ingest_locked(out_dir, plans, framing_errors, workers, progress)


def _ingest_locked(out_dir: Path, plans: list[ShardPlan], framing_errors: list[dict[str, Any]], workers: int,
                   progress: bool) -> IngestResult:
    known = read_manifest(out_dir)["shards"]
    known.update(_read_journal(out_dir))
    result = IngestResult(errors=list(framing_errors))
    entries: dict[str, dict[str, Any]] = {}
    todo: list[ShardPlan] = []
    for plan in plans:
        if _is_done(out_dir, plan, known.get(plan.name)):
            entries[plan.name] = known[plan.name]
            result.skipped.append(plan.name)
        else:
            todo.append(plan)
    for stale in set(known) - {p.name for p in plans}:
        (out_dir / stale).unlink(missing_ok=True)
    remove_stale_temps(out_dir)  # shards and manifest half-written by an interrupted run
    write_manifest(out_dir, entries)  # only shards verified above: a reader never sees a listed, stale shard
    journal_path = out_dir / JOURNAL_NAME
    journal_path.unlink(missing_ok=True)

    if todo:
        # a private local Ray of `workers` CPUs (or the one this process already runs)
        with ray_session(num_cpus=workers, log_to_driver=False, object_store_bytes=256 * 1024 * 1024) as ray, \
                open(journal_path, "a") as journal:  # fmt: skip
            task = ray.remote(num_cpus=1)(build_shard)
            pending = {task.remote(str(out_dir), plan): plan for plan in todo}
            bar = progress_reporter(sum(len(p.inputs) for p in todo), "ingest", "scene", enabled=progress)
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                plan = pending.pop(done[0])
                name, entry = ray.get(done[0])
                entries[name] = entry
                result.written.append(name)
                # progress survives an interruption: one appended line per shard, not a manifest rewrite (O(n^2))
                journal.write(json.dumps([name, entry]) + "\n")
                journal.flush()
                bar.update(len(plan.inputs))
            bar.close()

    for entry in entries.values():
        result.scenes += entry["num_rows"]
        result.errors += entry.get("errors", [])
    try:
        _check_duplicates(plans, entries)
    except DuplicateScenarioError:
        (out_dir / MANIFEST).unlink(missing_ok=True)
        raise
    write_manifest(out_dir, entries)
    journal_path.unlink(missing_ok=True)
    return result
