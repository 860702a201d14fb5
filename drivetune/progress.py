"""Progress of long commands: a tqdm bar on a terminal, plain timestamped lines (no `\\r`) in a log file or pipe."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO, TypeVar

T = TypeVar("T")


class LineProgress:
    """tqdm's `update` / `close` for non-terminals: one line every `every_s` seconds and one at the end."""

    def __init__(self, total: int | None, desc: str, unit: str, file: TextIO, every_s: float) -> None:
        self.total, self.desc, self.unit, self.file, self.every_s = total, desc, unit, file, every_s
        self.n = 0
        self._t0 = self._last = time.monotonic()
        self._closed = False
        self._shown = -1  # the count of the last line written

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            self._line(now)

    def _line(self, now: float) -> None:
        self._shown = self.n
        dt = max(now - self._t0, 1e-9)
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        pct = f" ({100.0 * self.n / self.total:.0f}%)" if self.total else ""
        print(f"{time.strftime('%H:%M:%S')} {self.desc}: {done} {self.unit}s{pct}, {self.n / dt:.1f} {self.unit}/s, "
              f"{dt:.0f} s", file=self.file, flush=True)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._shown != self.n:  # the last update's line already says where it ended
                self._line(time.monotonic())

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress(total: int | None, desc: str, unit: str = "it", file: TextIO | None = None, every_s: float = 30.0,
             enabled: bool = True) -> Any:
    """A progress reporter with `update(n)` and `close()`: tqdm when `file` (default stderr) is a terminal, else
    `LineProgress`; a silent one when not `enabled`."""
    from tqdm import tqdm

    file = sys.stderr if file is None else file
    if not enabled:
        return tqdm(total=total, disable=True)
    if file.isatty():
        return tqdm(total=total, desc=desc, unit=unit, file=file)
    return LineProgress(total, desc, unit, file, every_s)


def tracked(items: Iterable[T], total: int | None, desc: str, unit: str = "it") -> Iterator[T]:
    """Yield `items`, reporting progress through `progress` (stderr)."""
    bar = progress(total, desc, unit)
    try:
        for item in items:
            yield item
            bar.update(1)
    finally:
        bar.close()
