"""Starting and stopping the benchmark's processes, and the protocol between them.

Rules:

- A child announces that it is ready with one line on its standard output,
  ``bench-ready {json}`` (for servers: ``{"url": ..., "pid": ...}``), or by writing a file the
  parent waits for; the parent waits a bounded time and reports the child's log if it exits or
  stays silent.
- Each child runs in its own session, so Ctrl+C in the terminal reaches only the benchmark,
  which then stops the children in reverse order of start: SIGTERM, a grace period, SIGKILL of
  the child's whole process group. On Linux a child also receives SIGTERM if the benchmark
  dies without cleaning up (``PR_SET_PDEATHSIG``).
- A child's standard error and any further output go to ``<log dir>/<name>.log``.
- Child programs run their event loop with uvloop when it is installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import json
import os
import signal
import sys
from collections.abc import Awaitable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from bench.errors import BenchError

READY_PREFIX = "bench-ready "
#: How long a stopped child may take to exit after SIGTERM before it is killed.
STOP_GRACE_S = 10.0
#: Longest ready line read from a child.
_MAX_READY_LINE = 64 * 1024
_PR_SET_PDEATHSIG = 1

T = TypeVar("T")


def announce_ready(**fields: Any) -> None:
    """Tell the parent this process is ready (the one line it waits for)."""
    sys.stdout.write(READY_PREFIX + json.dumps(fields) + "\n")
    sys.stdout.flush()


def run_event_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on uvloop when it is installed, else on asyncio's default loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


async def wait_for_stop_signal() -> None:
    """Return on SIGTERM or SIGINT: how every server of the benchmark waits for its end."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


#: The directory holding the ``bench`` package, so that ``python -m bench.x`` works anywhere.
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def child_environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: ours) with the project importable and output unbuffered."""
    child_env = dict(os.environ if env is None else env)
    paths = [str(PROJECT_ROOT), *filter(None, child_env.get("PYTHONPATH", "").split(os.pathsep))]
    child_env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    return child_env


def python_argv(module: str, *args: str) -> list[str]:
    """Command line running ``python -m module args`` with this interpreter."""
    return [sys.executable, "-m", module, *args]


@dataclasses.dataclass
class Child:
    """A started process and what it announced."""

    name: str
    process: asyncio.subprocess.Process
    log_path: Path
    ready: dict[str, Any] = dataclasses.field(default_factory=dict)
    drain: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        url = self.ready.get("url")
        if not isinstance(url, str):
            raise BenchError(f"{self.name} announced no URL; see {self.log_path}")
        return url

    def log_tail(self, lines: int = 15) -> str:
        return _tail(self.log_path, lines)


class Children:
    """The processes of one benchmark run; all stopped when the block ends, last first."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[Child] = []

    async def __aenter__(self) -> Children:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop_all()

    async def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        ready_timeout_s: float = 60.0,
        ready_file: Path | None = None,
    ) -> Child:
        """Start ``argv`` and wait until it announces readiness (a line, or ``ready_file``)."""
        log_path = self.log_dir / f"{name}.log"
        child_env = child_environment(env)
        with log_path.open("ab") as log_file:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=log_file,
                env=child_env,
                start_new_session=True,
                preexec_fn=_die_with_parent,
                limit=_MAX_READY_LINE,
            )
        child = Child(name, process, log_path)
        self.started.append(child)
        loop = asyncio.get_running_loop()
        announced: asyncio.Future[dict[str, Any]] = loop.create_future()
        child.drain = asyncio.create_task(_drain_stdout(child, announced))
        try:
            if ready_file is None:
                waiting: Awaitable[dict[str, Any]] = announced
            else:
                waiting = _wait_for_file(ready_file, process)
            child.ready = await _until_ready(child, waiting, ready_timeout_s)
        except BaseException:
            await self.stop(child)
            raise
        return child

    async def run(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        timeout_s: float = 300.0,
    ) -> dict[str, Any]:
        """Run a child to completion and return the JSON object its ready line carried."""
        child = await self.start(name, argv, env=env, ready_timeout_s=timeout_s)
        try:
            code = await asyncio.wait_for(child.process.wait(), timeout_s)
        except TimeoutError as exc:
            raise BenchError(
                f"{name} did not finish in {timeout_s:.0f} s; see {child.log_path}"
            ) from exc
        finally:
            await self.stop(child)
        if code != 0:
            raise BenchError(
                f"{name} exited with status {code}; its log {child.log_path} ends with:\n"
                + child.log_tail()
            )
        return child.ready

    async def stop(self, child: Child) -> None:
        """Stop one child: SIGTERM, then SIGKILL of its process group after the grace period."""
        process = child.process
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(process.wait()), STOP_GRACE_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
        # Leftovers in the child's session (workers that outlived their parent).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        if child.drain is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(child.drain, 5.0)
        if child in self.started:
            self.started.remove(child)

    async def stop_all(self) -> None:
        """Stop every child still known, last started first.

        An interruption while stopping one (a second Ctrl+C) kills that one at once and goes on
        with the others; it is raised again once all are gone.
        """
        interrupted: BaseException | None = None
        while self.started:
            child = self.started[-1]
            try:
                await self.stop(child)
            except BaseException as exc:  # the remaining children must still be stopped
                interrupted = interrupted or exc
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.pid, signal.SIGKILL)
                if child in self.started:
                    self.started.remove(child)
        if interrupted is not None:
            raise interrupted


async def _until_ready(
    child: Child, waiting: Awaitable[dict[str, Any]], timeout_s: float
) -> dict[str, Any]:
    exited = asyncio.create_task(child.process.wait())
    ready = asyncio.ensure_future(waiting)
    try:
        done, _pending = await asyncio.wait(
            {exited, ready}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
        if ready in done and not ready.cancelled():
            return ready.result()
        if ready in done:  # output closed without a ready line: wait for the exit status
            await asyncio.wait({exited}, timeout=STOP_GRACE_S)
        if exited.done():
            if child.drain is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(child.drain, 5.0)
            raise BenchError(
                f"{child.name} exited with status {exited.result()} before it was ready; "
                f"its log {child.log_path} ends with:\n{child.log_tail()}"
            )
        raise BenchError(
            f"{child.name} was not ready after {timeout_s:.0f} s; its log {child.log_path} "
            f"ends with:\n{child.log_tail()}"
        )
    finally:
        for task in (exited, ready):
            task.cancel()
        await asyncio.gather(exited, ready, return_exceptions=True)


async def _drain_stdout(child: Child, announced: asyncio.Future[dict[str, Any]]) -> None:
    """Read the child's output: the ready line resolves ``announced``, the rest goes to its log."""
    stream = child.process.stdout
    assert stream is not None
    with child.log_path.open("ab") as log_file:
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # a line longer than the limit: keep what fits in the log
                line = b"[output line too long]\n"
            if not line:
                break
            text = line.decode("utf-8", errors="replace")
            if text.startswith(READY_PREFIX) and not announced.done():
                try:
                    fields = json.loads(text[len(READY_PREFIX) :])
                except json.JSONDecodeError:
                    fields = None
                if isinstance(fields, dict):
                    announced.set_result(fields)
                    continue
            log_file.write(line)
            log_file.flush()
    if not announced.done():
        announced.cancel()


def _read_json_object(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, json.JSONDecodeError):  # absent, or being written
        return None
    return data if isinstance(data, dict) else None


async def _wait_for_file(path: Path, process: asyncio.subprocess.Process) -> dict[str, Any]:
    while True:
        data = _read_json_object(path)
        if data is not None:
            return data
        if process.returncode is not None:
            raise BenchError(f"the process exited without writing {path}")
        await asyncio.sleep(0.1)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text("utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
