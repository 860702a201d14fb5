"""Atomic file writes: write beside the target, fsync, rename over it. A reader sees the old file or the new one,
never a half-written one, and a failed write leaves nothing behind."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

_UMASK = os.umask(0o022)
os.umask(_UMASK)
_TEMP_MARK = ".tmp"  # temp files are named `.{target name}.{random}.tmp{target suffix}`


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path` for a writer that wants a file name (savefig, safetensors, np.savez);
    on success it is fsynced and renamed over `path` with the usual permissions, on error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TEMP_MARK + path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale_temps(directory: str | os.PathLike, target_glob: str = "*") -> int:
    """Delete temp files that an interrupted `atomic_path` left in `directory` for targets matching `target_glob`.
    Returns how many were removed. Only for directories no other writer is using at the same time."""
    removed = 0
    for leftover in Path(directory).glob(f".{target_glob}.*{_TEMP_MARK}*"):
        leftover.unlink(missing_ok=True)
        removed += 1
    return removed


def atomic_write_bytes(path: str | os.PathLike, chunks: Iterable[bytes]) -> int:
    """Atomically write the concatenated chunks to `path`. Returns bytes written."""
    written = 0
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        for chunk in chunks:
            fh.write(chunk)
            written += len(chunk)
    return written
