"""``jisr audit``: verify, search, show and export from the command line."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from jisr.cli import cli
from tests.audit.archives import flip_byte, rewrite_container, write_test_archive
from tests.audit.evidence import Federation, NodeLog
from tests.pki_factory import NOW

START = NOW.replace(minute=0)


@pytest.fixture(scope="module")
def federation() -> Federation:
    return Federation()


@pytest.fixture
def archives(tmp_path: Path, federation: Federation) -> tuple[Path, NodeLog]:
    """Two hourly archives; the second exchange of hour one is cut between them."""
    directory = tmp_path / "archives"
    directory.mkdir()
    log = NodeLog(federation)
    first_hour = log.exchanges(2, START + dt.timedelta(minutes=10))
    log.append(
        [first_hour[0].request, first_hour[1].request, first_hour[0].response],
        START + dt.timedelta(minutes=10, seconds=1),
    )
    log.timestamp_pending(START + dt.timedelta(minutes=11))
    first = write_test_archive(directory, federation, log.records, period_start=START)
    log.append([first_hour[1].response], START + dt.timedelta(hours=1, minutes=1))
    log.timestamp_pending(START + dt.timedelta(hours=1, minutes=2))
    write_test_archive(
        directory,
        federation,
        log.records[3:],
        sequence=2,
        previous=first,
        period_start=START + dt.timedelta(hours=1),
    )
    (tmp_path / "anchor.json").write_bytes(federation.anchor_bytes())
    return directory, log


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def test_verify_prints_items_and_exits_zero(archives: tuple[Path, NodeLog]) -> None:
    directory, _ = archives
    code, output = _run(
        "audit", "verify", "--anchor", str(directory.parent / "anchor.json"), str(directory)
    )
    assert code == 0, output
    assert output.splitlines()[0].startswith("OK    archive-00000001-20261101T120000Z.zip  (")
    assert output.rstrip().endswith("checks passed)")
    assert "FAIL" not in output


def test_verify_names_failures_and_exits_one(archives: tuple[Path, NodeLog]) -> None:
    directory, _ = archives
    rewrite_container(
        directory / "archive-00000001-20261101T120000Z.zip",
        "containers/000000000001.asice",
        lambda n, d: flip_byte(d, 3) if n == "response/body.bin" else d,
    )
    code, output = _run("audit", "verify", str(directory))
    assert code == 1
    assert (
        "FAIL  archive-00000001-20261101T120000Z.zip:containers/000000000001.asice:response"
        in output
    )
    assert (
        "        FAILED body: response/body.bin does not match the signed body_sha256 (the body "
        "was changed)" in output
    )
    assert "items FAILED" in output.splitlines()[-1]


def test_verify_json_report(archives: tuple[Path, NodeLog]) -> None:
    directory, _ = archives
    code, output = _run("audit", "verify", "--json", str(directory))
    assert code == 0
    report = json.loads(output)
    assert report["ok"] is True
    assert report["items"][0]["checks"][0] == {
        "check": "linking file",
        "ok": True,
        "detail": report["items"][0]["checks"][0]["detail"],
    }


def test_verify_of_a_missing_path_exits_two(tmp_path: Path) -> None:
    code, output = _run("audit", "verify", str(tmp_path / "nothing"))
    assert code == 2
    assert "does not exist" in output


def test_search_by_client_user_and_time(archives: tuple[Path, NodeLog]) -> None:
    directory, log = archives
    code, output = _run(
        "audit",
        "search",
        str(directory),
        "--client",
        "IQ/GOV/HJC/inheritance",
        "--user-id",
        "IQ1234567890",
        "--since",
        "2026-11-01T12:00:00Z",
        "--until",
        "2026-11-01T13:00:00Z",
        "--json",
    )
    assert code == 0, output
    found = json.loads(output[: output.rindex("]") + 1])
    second_id = log.records[1].entry.message_id
    # The cut exchange has one container in each archive.
    assert [f["where"] for f in found if f["message_id"] == second_id] == [
        "archive-00000001-20261101T120000Z.zip:containers/000000000002.asice",
        "archive-00000002-20261101T130000Z.zip:containers/000000000004.asice",
    ]
    code, output = _run("audit", "search", str(directory), "--issue", "case-1", "--json")
    assert {f["issue"] for f in json.loads(output[: output.rindex("]") + 1])} == {"case-1"}
    code, output = _run("audit", "search", str(directory), "--since", "2026-11-02")
    assert code == 0
    assert "0 exchange container(s) found" in output


def test_show_prints_the_exchange(archives: tuple[Path, NodeLog]) -> None:
    directory, log = archives
    message_id = log.records[0].entry.message_id
    code, output = _run("audit", "show", str(directory), "--message-id", message_id)
    assert code == 0, output
    assert f"message id  {message_id}" in output
    assert "protocol    REST GET /citizens/1000?lang=ar" in output
    assert '  body        {"citizen":1000,"name":"علي"}' in output


def test_export_gathers_a_cut_exchange_into_one_verifiable_container(
    archives: tuple[Path, NodeLog], tmp_path: Path
) -> None:
    directory, log = archives
    message_id = log.records[1].entry.message_id
    out = tmp_path / "exchange.asice"
    code, output = _run(
        "audit", "export", str(directory), "--message-id", message_id, "-o", str(out)
    )
    assert code == 0, output
    assert "containers/000000000002.asice" in output
    assert "containers/000000000004.asice" in output
    assert out.stat().st_mode & 0o777 == 0o600  # the evidence is for its owner to hand on
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file
    code, output = _run(
        "audit", "verify", "--anchor", str(directory.parent / "anchor.json"), "-v", str(out)
    )
    assert code == 0, output
    assert "ok response binding: answers this request" in output


def test_export_of_an_unknown_message_fails(archives: tuple[Path, NodeLog], tmp_path: Path) -> None:
    directory, _ = archives
    code, output = _run(
        "audit", "export", str(directory), "--message-id", "nope", "-o", str(tmp_path / "x.asice")
    )
    assert code == 2
    assert "no exchange with message id 'nope'" in output
    assert not (tmp_path / "x.asice").exists()


def test_export_into_a_missing_directory_fails_and_creates_nothing(
    archives: tuple[Path, NodeLog], tmp_path: Path
) -> None:
    directory, log = archives
    message_id = log.records[1].entry.message_id
    out = tmp_path / "missing" / "exchange.asice"
    code, output = _run(
        "audit", "export", str(directory), "--message-id", message_id, "-o", str(out)
    )
    assert code == 2
    assert f"cannot write {out}" in output
    assert not out.parent.exists()


@pytest.mark.e2e
def test_the_installed_command_exits_with_the_verdict(archives: tuple[Path, NodeLog]) -> None:
    directory, _ = archives
    command = [sys.executable, "-m", "jisr", "audit", "verify", str(directory)]
    ok = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    rewrite_container(
        directory / "archive-00000002-20261101T130000Z.zip",
        "containers/000000000004.asice",
        lambda n, d: flip_byte(d, -4) if n == "META-INF/timestamp-response.tst" else d,
    )
    failed = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
    assert failed.returncode == 1
    assert "FAILED timestamp: META-INF/timestamp-response.tst over the batch root" in failed.stdout
