"""How a benchmark command runs: its result, its failure message and its exit status."""

from __future__ import annotations

import pytest

from bench.errors import BenchError
from bench.processes import run_command


async def _answer() -> int:
    return 42


async def _fail() -> int:
    raise BenchError("the service did not start; see logs/service.log")


def test_a_command_returns_what_its_coroutine_returns() -> None:
    assert run_command("bench.x", _answer()) == 42


def test_a_failing_command_names_itself_and_the_failure(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        run_command("bench.x", _fail())
    assert exited.value.code == 1
    assert capsys.readouterr().err == (
        "bench.x: failed: the service did not start; see logs/service.log\n"
    )
