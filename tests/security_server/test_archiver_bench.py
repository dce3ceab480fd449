"""``bench.archiving``'s log and pass, small: the log it fills is archived whole, and the
archives verify (the bench itself runs on demand, not in the suite)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from audit.verifier import verify_path
from bench.archiving import LARGE_BODY_BYTES, archive_pass, fill, large_body

pytestmark = pytest.mark.postgres


def test_large_bodies_are_json_of_the_size_asked() -> None:
    import random

    body = large_body(random.Random(1))
    assert LARGE_BODY_BYTES <= len(body) < LARGE_BODY_BYTES + 1024
    assert json.loads(body)["citizens"]


async def test_the_bench_log_is_archived_whole_and_verifies(
    fresh_db_url: str, tmp_path: Path
) -> None:
    filled = await fill(
        fresh_db_url, tmp_path / "history", tmp_path, exchanges=12, large_every=5, seed=3
    )
    assert filled["records"] == 24
    assert filled["body_bytes"] > 4 * LARGE_BODY_BYTES  # two exchanges, both ways
    assert filled["log_bytes"] > 24 * 1024  # a record's signature, proof and record alone
    assert filled["log_bytes_per_record"] == round(filled["log_bytes"] / 24)
    archives = tmp_path / "archives"
    archives.mkdir()
    result = await archive_pass(fresh_db_url, tmp_path / "history", archives)
    assert result["archived_through"] == 24
    assert len(result["archives"]) == 1
    assert result["cpu_seconds"] > 0
    assert result["peak_rss_bytes"] >= result["rss_before_bytes"] > 0
    report = verify_path(archives)
    assert report.ok, report.failures()
