"""Stop exactly one Ray head's processes on a shared machine (where `ray stop` would kill every Ray there).

A head is named by its `--temp-dir`. Its processes are those whose command line names that directory (GCS, raylet,
dashboard, monitors), Ray processes holding a file open under it (the Ray client server, the dashboard's modules,
`ray::DashboardAgent`, `ray::RuntimeEnvAgent`: their command lines do not name it), and every descendant of those
(workers, actors, the dashboard's forkserver). Nothing else is touched.

    python -m cluster.head_stop /tmp/my_head [--grace 10] [--list]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    start: int  # start time in clock ticks since boot: (pid, start) names one process even if the pid is reused
    name: str  # the command line, shortened


def _read(pid: int) -> tuple[Proc, bytes, list[str]] | None:
    """(Proc, raw command line, open file paths) of a process, or None when it is gone or unreadable."""
    base = PROC / str(pid)
    try:
        stat = (base / "stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        cmdline = (base / "cmdline").read_bytes()
        files = []
        for fd in (base / "fd").iterdir():
            try:
                files.append(os.readlink(fd))
            except OSError:
                continue
    except (OSError, ValueError):
        return None
    name = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()[:120]
    return Proc(pid, int(fields[1]), int(fields[19]), name), cmdline, files


def head_processes(temp_dir: str | os.PathLike) -> list[Proc]:
    """Every process of the Ray head started with this --temp-dir (never this process itself)."""
    mark = str(Path(temp_dir).resolve())
    table: dict[int, Proc] = {}
    roots: set[int] = set()
    for entry in PROC.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        got = _read(int(entry.name))
        if got is None:
            continue
        proc, cmdline, files = got
        table[proc.pid] = proc
        holds = b"ray" in cmdline and any(f == mark or f.startswith(mark + "/") for f in files)  # not a `tail -f`
        if mark.encode() in cmdline or holds:
            roots.add(proc.pid)
    children: dict[int, list[int]] = {}
    for proc in table.values():
        children.setdefault(proc.ppid, []).append(proc.pid)
    found, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, []))
    found.discard(os.getpid())
    return sorted((table[p] for p in found), key=lambda p: p.pid)


def alive(proc: Proc) -> bool:
    """The same process (pid and start time) still runs and is not a zombie."""
    got = _read(proc.pid)
    if got is None or got[0].start != proc.start:
        return False
    try:
        return (PROC / str(proc.pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def stop_head(temp_dir: str | os.PathLike, grace_s: float = 10.0) -> list[Proc]:
    """SIGTERM every process of the head, SIGKILL what is left after `grace_s`; processes found on the way (a worker
    started meanwhile) join in. Returns the processes stopped."""
    seen: dict[tuple[int, int], Proc] = {}
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for proc in head_processes(temp_dir):
            seen[(proc.pid, proc.start)] = proc
        for proc in seen.values():
            if alive(proc):
                try:
                    os.kill(proc.pid, sig)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(alive(p) for p in seen.values()):
            time.sleep(0.2)
    return sorted(seen.values(), key=lambda p: p.pid)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.head_stop", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("temp_dir", help="the head's --temp-dir")
    parser.add_argument("--grace", type=float, default=10.0, help="seconds between SIGTERM and SIGKILL")
    parser.add_argument("--list", action="store_true", help="only list the head's processes")
    args = parser.parse_args(argv)
    if not Path(args.temp_dir).is_dir():
        print(f"no such directory: {args.temp_dir} (give the head's --temp-dir)", file=sys.stderr)
        return 2
    procs = head_processes(args.temp_dir) if args.list else stop_head(args.temp_dir, args.grace)
    for proc in procs:
        print(f"{proc.pid:>8} {proc.name}")
    left = [] if args.list else [p for p in procs if alive(p)]
    print(f"{len(procs)} processes of the head at {args.temp_dir}" + ("" if args.list else f"; {len(left)} left"))
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main())
