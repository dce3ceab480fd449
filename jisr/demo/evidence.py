"""The auditor's part of the demo: archive each node's message log and verify it offline.

Both steps run the real commands an operator and an auditor would run, as processes:
``jisr node archive --now`` on each node's data directory, then ``jisr audit verify`` on the
archives with the registry's anchor.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
from pathlib import Path

from jisr.demo.network import DEMO_PASSPHRASE

COMMAND_TIMEOUT_S = 120.0


@dataclasses.dataclass(frozen=True, slots=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    output: str


async def run_jisr(*args: str) -> CommandResult:
    """Run ``jisr ARGS`` to completion with the demo's passphrase in its environment."""
    env = dict(os.environ)
    env["JISR_NODE_KEY_PASSPHRASE"] = DEMO_PASSPHRASE
    env.pop("JISR_CONFIG", None)
    argv = (sys.executable, "-m", "jisr", "--log-format", "json", *args)
    process = await asyncio.create_subprocess_exec(
        *argv,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), COMMAND_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        out, _ = await process.communicate()
        return CommandResult(argv, -1, out.decode(errors="replace") + "\n(timed out)")
    return CommandResult(argv, process.returncode or 0, out.decode(errors="replace"))


def _summary(text: str, words: tuple[str, ...]) -> str:
    """The lines of a command's output that say what it did, each once (logs left out)."""
    seen: dict[str, None] = {}
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("{") and any(w in stripped for w in words):
            seen.setdefault(stripped, None)
    return "\n".join(seen)


async def archive_and_verify(node_dirs: list[Path], anchor: Path) -> tuple[bool, str]:
    """Archive every node's log now and verify all archives; return (ok, what was seen)."""
    details: list[str] = []
    ok = True
    for directory in node_dirs:
        done = await run_jisr("node", "archive", "--now", "--data-dir", str(directory))
        if done.returncode != 0:
            ok = False
            details.append(f"jisr node archive failed for {directory.name}:")
        details.append(_summary(done.output, ("wrote", "error", "failed")))
    for directory in node_dirs:
        archives = directory / "archives"
        if not archives.is_dir() or not any(archives.rglob("*.zip")):
            ok = False
            details.append(f"no archive was written in {archives}")
            continue
        verified = await run_jisr("audit", "verify", str(archives), "--anchor", str(anchor))
        ok = ok and verified.returncode == 0
        found = _summary(verified.output, ("verified", "FAIL", "error")).splitlines()
        details.append(f"jisr audit verify {archives}: {found[-1] if found else '(no output)'}")
    return ok, "\n".join(line for line in details if line)
