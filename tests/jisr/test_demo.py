"""The demo network as a user runs it: the real ``jisr`` command in its own process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

JISR = [sys.executable, "-m", "jisr"]
#: The demo's fixed client ports (8080/8443) may be taken on a test machine.
FREE_PORTS = ["--http-port", "0", "--https-port", "0"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("JISR_CONFIG", None)
    env.pop("JISR_DATABASE_URL", None)
    return env


def test_demo_once_checks_the_network_and_exits_zero(tmp_path: Path) -> None:
    data = tmp_path / "demo"
    done = subprocess.run(
        [*JISR, "demo", "--once", "--data-dir", str(data), *FREE_PORTS],
        capture_output=True,
        text=True,
        timeout=180,
        env=_env(),
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all checks passed" in done.stdout
    network = json.loads((data / "network.json").read_text("utf-8"))
    for key in ("registry", "globalconf", "ocsp", "tsa", "anchor_file"):
        assert network[key], key
    assert network["registry"].startswith("http://127.0.0.1:")
    assert Path(network["anchor_file"]).is_file()
    assert set(network["nodes"]) == {"IQ/GOV/NDC/ss1", "IQ/GOV/MOHESR/ss1", "IQ/GOV/HJC/ss1"}
    assert network["sample_national_ids"]["living"]
    for expected in (
        "REST (aiohttp)",
        "SOAP (zeep)",
        "Metaservices",
        "Server.ServerProxy.AccessDenied",
        "jisr audit verify",
    ):
        assert expected in done.stdout, expected
    assert "✘" not in done.stdout
    for node in ("ndc", "mohesr", "hjc"):
        assert list((data / "nodes" / node / "archives").glob("*.zip")), node


def test_demo_keeps_running_until_stopped(tmp_path: Path) -> None:
    data = tmp_path / "demo"
    proc = subprocess.Popen(
        [*JISR, "demo", "--data-dir", str(data), *FREE_PORTS],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=_env(),
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 180
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if "keeps running" in line or time.monotonic() > deadline:
                break
        assert any("keeps running" in line for line in seen), "".join(seen)
        assert (data / "network.json").is_file()
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == 0
