"""The benchmark's processes: the product's child-process manager, with bench's modules importable.

Rules:

- Children are started, watched and stopped by :mod:`jisr.processes` (their own session,
  SIGTERM then SIGKILL of the process group, last started first; ready line or ready file;
  logs in ``<log dir>/<name>.log``). Servers of the benchmark announce
  ``{"url": ..., "pid": ...}`` on their ready line.
- The ``bench`` package is not installed: every child gets the project's root on its
  ``PYTHONPATH`` so that ``python -m bench.x`` works from any directory.
- Child programs run their event loop with uvloop when it is installed.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from config.errors import JisrError
from config.logging import configure_logging
from jisr.processes import ChildProcesses, stop_on_signals

T = TypeVar("T")

#: The directory holding the ``bench`` package, so that ``python -m bench.x`` works anywhere.
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Children(ChildProcesses):
    """The processes of one benchmark run; all stopped when the block ends, last first."""

    def __init__(self, log_dir: Path) -> None:
        super().__init__(log_dir, import_root=PROJECT_ROOT)


def run_event_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on uvloop when it is installed, else on asyncio's default loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def run_command(name: str, main: Coroutine[Any, Any, T]) -> T:
    """Run a benchmark command's ``main`` with console logging at ``warning``.

    SIGTERM cancels it (every process it started is stopped on the way out). A Jisr error
    prints ``<name>: failed: <message>`` and exits with status 1; an interruption says that
    everything was stopped and exits with status 130.
    """
    configure_logging("console", "warning")

    async def cancelled_by_sigterm() -> T:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await main

    try:
        return run_event_loop(cancelled_by_sigterm())
    except JisrError as exc:
        print(f"{name}: failed: {exc}", file=sys.stderr)
        sys.exit(1)
    except (KeyboardInterrupt, asyncio.CancelledError):
        print(f"{name}: interrupted; every process it started has been stopped", file=sys.stderr)
        sys.exit(130)


async def wait_for_stop_signal() -> None:
    """Return on SIGTERM or SIGINT: how every server of the benchmark waits for its end."""
    with stop_on_signals() as stop:
        await stop.wait()
