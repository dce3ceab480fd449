"""CPU time and resident memory of running processes, read from Linux's ``/proc``.

Rules:

- A process is measured together with its descendants (a node may run worker processes), found
  through ``/proc/<pid>/task/<tid>/children``; a process that exits between two readings simply
  stops contributing.
- CPU time is user plus system time of each live process (not ``cutime``: the descendants are
  counted while they live); a window's CPU is the difference of two snapshots.
- Linux only: on another system the readings are empty and the benchmark reports ``null``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

_PROC = Path("/proc")
_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
#: Bound on the process tree walked, so that a fork storm cannot stall the sampler.
_MAX_TREE = 1024


def available() -> bool:
    return (_PROC / "self" / "stat").exists()


def _read(path: Path) -> str | None:
    try:
        return path.read_text("ascii", errors="replace")
    except OSError:  # the process exited meanwhile
        return None


def process_tree(pid: int) -> list[int]:
    """``pid`` and every live descendant of it."""
    found = [pid]
    index = 0
    while index < len(found) and len(found) < _MAX_TREE:
        current = found[index]
        index += 1
        tasks = _PROC / str(current) / "task"
        with contextlib.suppress(OSError):
            for task in tasks.iterdir():
                text = _read(task / "children")
                if text:
                    found.extend(int(child) for child in text.split())
    return found[:_MAX_TREE]


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU seconds of one process, or None if it is gone."""
    text = _read(_PROC / str(pid) / "stat")
    if text is None:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = text[text.rfind(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / _TICKS_PER_SECOND


def rss_bytes(pid: int) -> int | None:
    """Resident set size of one process, or None if it is gone."""
    text = _read(_PROC / str(pid) / "statm")
    if text is None:
        return None
    return int(text.split()[1]) * _PAGE_SIZE


def cpu_snapshot(roots: Iterable[int]) -> dict[int, float]:
    """CPU seconds of every process in the trees of ``roots``, by pid."""
    snapshot: dict[int, float] = {}
    for root in roots:
        for pid in process_tree(root):
            seconds = cpu_seconds(pid)
            if seconds is not None:
                snapshot[pid] = seconds
    return snapshot


def cpu_between(before: Mapping[int, float], after: Mapping[int, float]) -> float:
    """CPU seconds spent between two snapshots (a process born in between counts from 0)."""
    return sum(max(0.0, seconds - before.get(pid, 0.0)) for pid, seconds in after.items())


def tree_rss_bytes(root: int) -> int:
    return sum(rss_bytes(pid) or 0 for pid in process_tree(root))


class PeakRss:
    """Samples the resident memory of named process trees while open; keeps each one's peak."""

    def __init__(self, roots: Mapping[str, int], interval_s: float = 0.25) -> None:
        self.roots = dict(roots)
        self.interval_s = interval_s
        self.peak_bytes: dict[str, int] = dict.fromkeys(self.roots, 0)
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        for name, root in self.roots.items():
            self.peak_bytes[name] = max(self.peak_bytes[name], tree_rss_bytes(root))

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval_s)

    async def __aenter__(self) -> PeakRss:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.sample()

    def peak_mb(self) -> dict[str, float]:
        return {name: round(value / (1024 * 1024), 1) for name, value in self.peak_bytes.items()}
