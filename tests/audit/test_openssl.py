"""The auditor's openssl commands and standard-library script, run exactly as the docs print
them, on a real archive."""

from __future__ import annotations

import datetime as dt
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.audit.archives import flip_byte, rewrite_container, write_test_archive
from tests.audit.evidence import Federation, NodeLog
from tests.pki_factory import NOW

pytestmark = pytest.mark.openssl

DOC = Path(__file__).resolve().parents[2] / "docs" / "archives-and-audit.md"
START = NOW.replace(minute=0)


def _block(marker: str, language: str) -> str:
    text = DOC.read_text(encoding="utf-8")
    match = re.search(rf"<!-- {marker}:[^>]*-->\n```{language}\n(.*?)```", text, re.DOTALL)
    assert match is not None, f"the {marker} block is missing from {DOC.name}"
    return match.group(1)


@pytest.fixture
def archive_dir(tmp_path: Path) -> Path:
    federation = Federation()
    log = NodeLog(federation)
    # Batches of three, so proofs have sibling hashes.
    log.log_exchanges(
        log.exchanges(3, START + dt.timedelta(minutes=10)),
        START + dt.timedelta(minutes=10, seconds=1),
    )
    log.timestamp_pending(START + dt.timedelta(minutes=11))
    path, _ = write_test_archive(tmp_path, federation, log.records, period_start=START)
    assert path.name == "archive-00000001-20261101T120000Z.zip"
    return tmp_path


def _run_shell(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", _block("openssl-check", "sh")],
        cwd=directory,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
@pytest.mark.skipif(shutil.which("unzip") is None, reason="unzip is not installed")
def test_documented_openssl_commands_verify_a_real_archive(archive_dir: Path) -> None:
    result = _run_shell(archive_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "CMS Verification successful" in result.stderr + result.stdout
    assert "Verification: OK" in result.stdout
    assert "Cert Status: good" in result.stdout


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
@pytest.mark.skipif(shutil.which("unzip") is None, reason="unzip is not installed")
def test_documented_openssl_commands_refuse_a_tampered_signature_and_token(
    archive_dir: Path,
) -> None:
    archive = archive_dir / "archive-00000001-20261101T120000Z.zip"
    rewrite_container(
        archive,
        "containers/000000000001.asice",
        lambda n, d: flip_byte(d, -2) if n == "META-INF/signature-request.p7s" else d,
    )
    result = _run_shell(archive_dir)
    assert result.returncode != 0
    assert "CMS Verification successful" not in result.stderr + result.stdout

    shutil.rmtree(archive_dir / "archive")
    shutil.rmtree(archive_dir / "exchange")
    rewrite_container(
        archive,
        "containers/000000000001.asice",
        lambda n, d: flip_byte(d, -2) if n == "META-INF/timestamp-request.tst" else d,
    )
    result = _run_shell(archive_dir)
    assert result.returncode != 0
    assert "Verification: OK" not in result.stdout


@pytest.mark.skipif(shutil.which("unzip") is None, reason="unzip is not installed")
def test_documented_script_checks_the_hashes_of_a_real_container(archive_dir: Path) -> None:
    subprocess.run(
        ["unzip", "-q", "archive-00000001-20261101T120000Z.zip", "-d", "archive"],
        cwd=archive_dir,
        check=True,
    )
    exchange = archive_dir / "exchange"
    exchange.mkdir()
    subprocess.run(
        ["unzip", "-q", "../archive/containers/000000000002.asice", "-d", "."],
        cwd=exchange,
        check=True,
    )
    script = _block("python-check", "python")
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=exchange, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "request record 2 consistent; signed batch of 3",
        "response record 5 consistent; signed batch of 3",
    ]
    # The same script notices a changed record.
    record = exchange / "response" / "record.json"
    record.write_bytes(record.read_bytes().replace(b'"seq":5', b'"seq":6'))
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=exchange, capture_output=True, text=True, check=False
    )
    assert result.returncode != 0
    assert "record hash" in result.stderr
