"""Offline verification of archives: intact evidence passes, every kind of tampering is named."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from audit.report import Report
from audit.verifier import verify_path
from tests.audit.archives import write_test_archive
from tests.audit.evidence import Federation, NodeLog
from tests.pki_factory import NOW

START = NOW.replace(minute=0)


def _failures(report: Report) -> list[str]:
    return [f"{where} [{check.name}] {check.detail}" for where, check in report.failures()]


@pytest.fixture(scope="module")
def federation() -> Federation:
    return Federation()


def _log(federation: Federation, exchanges: int = 3) -> NodeLog:
    log = NodeLog(federation)
    batch = log.exchanges(exchanges, START + dt.timedelta(minutes=10))
    log.log_exchanges(batch, START + dt.timedelta(minutes=10, seconds=1))
    log.timestamp_pending(START + dt.timedelta(minutes=11))
    return log


def test_intact_archive_verifies(tmp_path: Path, federation: Federation) -> None:
    log = _log(federation)
    path, linking = write_test_archive(tmp_path, federation, log.records, period_start=START)
    report = verify_path(path)
    assert report.ok, _failures(report)
    assert len(linking.containers) == 3
    # One archive item and two messages per exchange.
    assert len(report.items) == 1 + 6
    names = {c.name for item in report.items for c in item.checks}
    assert {"signature", "certificate path", "OCSP", "timestamp", "record chain"} <= names
