"""Child processes: ready by line or by file, reported when they fail, always stopped."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from jisr import processes
from jisr.errors import ChildNotReady, ChildProcessFailed
from jisr.processes import (
    READY_PREFIX,
    ChildProcesses,
    child_environment,
    python_argv,
    stop_on_signals,
)

pytestmark = pytest.mark.e2e


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def _announcing(fields: dict[str, object], then: str = "import time; time.sleep(60)") -> list[str]:
    line = READY_PREFIX + json.dumps(fields)
    return _python(f"print({line!r}, flush=True)\n{then}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and " Z " not in stat.read_text()


async def test_children_are_stopped_when_the_block_fails(tmp_path: Path) -> None:
    pids: list[int] = []

    async def start_two_then_fail() -> None:
        async with ChildProcesses(tmp_path) as children:
            for name in ("one", "two"):
                child = await children.start(name, _announcing({"url": f"http://{name}"}))
                assert child.url == f"http://{name}"
                pids.append(child.pid)
            raise RuntimeError("on purpose")

    with pytest.raises(RuntimeError, match="on purpose"):
        await start_two_then_fail()
    assert len(pids) == 2
    assert not any(_alive(pid) for pid in pids)


async def test_a_child_that_dies_before_it_is_ready_is_reported_with_its_log(
    tmp_path: Path,
) -> None:
    async with ChildProcesses(tmp_path) as children:
        with pytest.raises(ChildNotReady, match="status 3 before it was ready") as caught:
            await children.start(
                "broken", _python("import sys; sys.stderr.write('no database here'); sys.exit(3)")
            )
        assert "no database here" in str(caught.value)
        assert str(tmp_path / "broken.log") in str(caught.value)
        assert children.started == []


async def test_a_silent_child_is_stopped_when_its_wait_ends(tmp_path: Path) -> None:
    async with ChildProcesses(tmp_path) as children:
        child = await children.spawn("silent", _python("import time; time.sleep(60)"))
        with pytest.raises(ChildNotReady, match="was not ready after"):
            await children.wait_ready(child, timeout_s=0.5)
        assert child.process.returncode is not None
        assert children.started == []


async def test_a_child_is_ready_when_it_writes_its_ready_file(tmp_path: Path) -> None:
    ready_file = tmp_path / "run" / "endpoints.json"
    code = (
        "import json, pathlib, sys, time\n"
        "print('starting', flush=True)\n"
        f"path = pathlib.Path({str(ready_file)!r})\n"
        "path.parent.mkdir()\n"
        "path.write_text(json.dumps({'server': 'https://127.0.0.1:1'}))\n"
        "time.sleep(60)\n"
    )
    async with ChildProcesses(tmp_path / "logs") as children:
        child = await children.spawn("node-a", _python(code), ready_file=ready_file)
        ready = await children.wait_ready(child, timeout_s=60)
        assert ready == {"server": "https://127.0.0.1:1"}
        assert child.log_path == tmp_path / "logs" / "node-a.log"
        assert "starting" in child.log_path.read_text("utf-8")
    assert child.process.returncode is not None


async def test_a_child_that_exits_without_its_ready_file_is_reported(tmp_path: Path) -> None:
    async with ChildProcesses(tmp_path) as children:
        with pytest.raises(ChildNotReady, match="status 0 before it was ready"):
            await children.start("quiet", _python("pass"), ready_file=tmp_path / "never.json")


async def test_run_returns_what_the_child_announced(tmp_path: Path) -> None:
    async with ChildProcesses(tmp_path) as children:
        result = await children.run("job", _announcing({"requests": 7}, then="pass"))
    assert result == {"requests": 7}


async def test_run_reports_a_child_that_fails_after_it_announced(tmp_path: Path) -> None:
    async with ChildProcesses(tmp_path) as children:
        with pytest.raises(ChildProcessFailed, match="exited with status 2"):
            await children.run("job", _announcing({}, then="import sys; sys.exit(2)"))


async def test_a_child_that_ignores_sigterm_is_killed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(processes, "STOP_GRACE_S", 0.5)
    stubborn = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        f"print({READY_PREFIX + '{}'!r}, flush=True)\n"
        "time.sleep(60)\n"
    )
    async with ChildProcesses(tmp_path) as children:
        child = await children.start("stubborn", _python(stubborn))
        await children.stop(child)
        assert child.process.returncode == -signal.SIGKILL
        assert children.started == []


def test_the_import_root_comes_first_on_the_child_path(tmp_path: Path) -> None:
    env = child_environment({"PYTHONPATH": "/opt/a"}, import_root=tmp_path)
    assert env["PYTHONPATH"].split(os.pathsep) == [str(tmp_path), "/opt/a"]
    assert env["PYTHONUNBUFFERED"] == "1"
    assert python_argv("jisr", "demo") == [sys.executable, "-m", "jisr", "demo"]


async def test_sigterm_sets_the_stop_event() -> None:
    with stop_on_signals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(stop.wait(), 10)
    assert stop.is_set()
