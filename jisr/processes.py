"""Processes of the ``jisr`` tools: this one's end on a signal, and the children it starts.

Rules:

- A child says that it is ready in one of two ways: one line ``jisr-ready {json}`` on its
  standard output (:func:`announce_ready`), or a JSON object in a file the parent names (``jisr
  node serve`` writes ``run/endpoints.json``). The parent waits a bounded time; a child that
  exits or stays silent until then is reported as :class:`ChildNotReady`, with the end of its
  log, and stopped.
- Each child runs in its own session, so Ctrl+C in the terminal reaches only the parent, which
  stops the children last started first: SIGTERM, a grace period, then SIGKILL of the child's
  whole process group (workers that outlived it included). On Linux a child also receives
  SIGTERM when the parent dies without cleaning up (``PR_SET_PDEATHSIG``).
- Everything a child writes, apart from its ready line, is appended to ``<log dir>/<name>.log``.
- A server run from the command line serves until SIGINT or SIGTERM (:func:`stop_on_signals`).
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
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

from jisr.errors import ChildNotReady, ChildProcessFailed

READY_PREFIX = "jisr-ready "
#: How long a stopped child may take to exit after SIGTERM before it is killed.
STOP_GRACE_S = 10.0
#: Longest ready line read from a child.
_MAX_READY_LINE = 64 * 1024
#: How many lines of a child's log an error message quotes.
_TAIL_LINES = 20
_PR_SET_PDEATHSIG = 1


@contextlib.contextmanager
def stop_on_signals() -> Iterator[asyncio.Event]:
    """An event set by SIGINT or SIGTERM while the block runs (the handlers go with the block).

    Servers started from the command line wait on it, so that Ctrl+C and a service manager's
    SIGTERM both end in the same clean shutdown.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # not available on every platform
            loop.add_signal_handler(signum, stop.set)
            installed.append(signum)
    try:
        yield stop
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)


def announce_ready(**fields: Any) -> None:
    """Tell the parent that this process is ready: the one line it waits for."""
    sys.stdout.write(READY_PREFIX + json.dumps(fields) + "\n")
    sys.stdout.flush()


def child_environment(
    env: Mapping[str, str] | None = None, *, import_root: Path | None = None
) -> dict[str, str]:
    """``env`` (default: ours) with output unbuffered and ``import_root`` first on the path."""
    child_env = dict(os.environ if env is None else env)
    if import_root is not None:
        paths = [str(import_root), *filter(None, child_env.get("PYTHONPATH", "").split(os.pathsep))]
        child_env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    return child_env


def python_argv(module: str, *args: str) -> list[str]:
    """Command line running ``python -m module args`` with this interpreter."""
    return [sys.executable, "-m", module, *args]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclasses.dataclass
class ChildProcess:
    """A started process, how it says it is ready, and what it announced."""

    name: str
    process: asyncio.subprocess.Process
    log_path: Path
    #: The file whose JSON object means "ready"; None: the ready line on standard output.
    ready_file: Path | None = None
    ready: dict[str, Any] = dataclasses.field(default_factory=dict)
    announced: asyncio.Future[dict[str, Any]] | None = None
    drain: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        url = self.ready.get("url")
        if not isinstance(url, str):
            raise ChildProcessFailed(f"{self.name} announced no URL; see {self.log_path}")
        return url

    def log_tail(self, lines: int = _TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text("utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


class ChildProcesses:
    """The children of one run; all stopped when the block ends, last started first."""

    def __init__(self, log_dir: Path, *, import_root: Path | None = None) -> None:
        self.log_dir = log_dir
        #: Put first on each child's ``PYTHONPATH`` (for modules that are not installed).
        self.import_root = import_root
        self.started: list[ChildProcess] = []

    async def __aenter__(self) -> Self:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop_all()

    async def spawn(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        ready_file: Path | None = None,
    ) -> ChildProcess:
        """Start ``argv`` without waiting for it; :meth:`wait_ready` waits.

        Several children started this way come up side by side.
        """
        log_path = self.log_dir / f"{name}.log"
        child_env = child_environment(env, import_root=self.import_root)
        with log_path.open("ab") as log_file:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                # A child that writes a ready file has no ready line to pick out.
                stdout=log_file if ready_file is not None else asyncio.subprocess.PIPE,
                stderr=log_file,
                env=child_env,
                start_new_session=True,
                preexec_fn=_die_with_parent,
                limit=_MAX_READY_LINE,
            )
        child = ChildProcess(name, process, log_path, ready_file)
        self.started.append(child)
        if ready_file is None:
            child.announced = asyncio.get_running_loop().create_future()
            child.drain = asyncio.create_task(_drain_stdout(child, child.announced))
        return child

    async def wait_ready(self, child: ChildProcess, timeout_s: float = 60.0) -> dict[str, Any]:
        """Wait until ``child`` is ready and return what it announced; stop it if it never is."""
        try:
            child.ready = await _until_ready(child, timeout_s)
        except BaseException:
            await self.stop(child)
            raise
        return child.ready

    async def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        ready_timeout_s: float = 60.0,
        ready_file: Path | None = None,
    ) -> ChildProcess:
        """Start ``argv`` and wait until it announces readiness (a line, or ``ready_file``)."""
        child = await self.spawn(name, argv, env=env, ready_file=ready_file)
        await self.wait_ready(child, ready_timeout_s)
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
            raise ChildProcessFailed(
                f"{name} did not finish in {timeout_s:.0f} s; see {child.log_path}"
            ) from exc
        finally:
            await self.stop(child)
        if code != 0:
            raise ChildProcessFailed(
                f"{name} exited with status {code}; its log {child.log_path} ends with:\n"
                + child.log_tail()
            )
        return child.ready

    async def stop(self, child: ChildProcess) -> None:
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


async def _until_ready(child: ChildProcess, timeout_s: float) -> dict[str, Any]:
    exited = asyncio.create_task(child.process.wait())
    if child.ready_file is not None:
        ready: asyncio.Future[dict[str, Any]] = asyncio.create_task(
            _wait_for_file(child.ready_file)
        )
    else:
        assert child.announced is not None  # spawn() sets it for every ready-line child
        ready = child.announced
    either: set[asyncio.Future[Any]] = {exited, ready}
    try:
        done, _pending = await asyncio.wait(
            either, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
        if ready in done and not ready.cancelled():
            return ready.result()
        if ready in done:  # output closed without a ready line: wait for the exit status
            await asyncio.wait({exited}, timeout=STOP_GRACE_S)
        if exited.done():
            if child.drain is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(child.drain, 5.0)
            raise ChildNotReady(
                f"{child.name} exited with status {exited.result()} before it was ready; "
                f"its log {child.log_path} ends with:\n{child.log_tail()}"
            )
        raise ChildNotReady(
            f"{child.name} was not ready after {timeout_s:.0f} s; its log {child.log_path} "
            f"ends with:\n{child.log_tail()}"
        )
    finally:
        for task in (exited, ready):
            task.cancel()
        await asyncio.gather(exited, ready, return_exceptions=True)


async def _drain_stdout(child: ChildProcess, announced: asyncio.Future[dict[str, Any]]) -> None:
    """Read the child's output: the ready line resolves ``announced``, the rest goes to its log."""
    stream = child.process.stdout
    assert stream is not None  # spawn() pipes standard output for ready-line children
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
    except (OSError, ValueError):  # absent, or being written
        return None
    return data if isinstance(data, dict) and data else None


async def _wait_for_file(path: Path) -> dict[str, Any]:
    while True:
        data = _read_json_object(path)
        if data is not None:
            return data
        await asyncio.sleep(0.1)
