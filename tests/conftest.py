"""Shared fixtures.

PostgreSQL: tests marked ``postgres`` get a fresh, empty database. By default the suite starts
one embedded server (the same ``pgserver`` binaries as the product's embedded default) in a
temporary directory; set ``JISR_TEST_DATABASE_URL`` (e.g.
``postgresql://postgres@127.0.0.1:5432/postgres``) to use an existing server instead.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from storage.embedded import EmbeddedPostgres, database_url
from tests.databases import temporary_database


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """URL of a PostgreSQL server's maintenance database, for the whole test session."""
    configured = os.environ.get("JISR_TEST_DATABASE_URL")
    if configured:
        yield configured
        return
    # Not under pytest's own temporary root: pytest prunes old roots when another run starts,
    # which would delete a running server's files.
    directory = Path(tempfile.mkdtemp(prefix="jisr-test-pg-"))
    embedded = EmbeddedPostgres(directory)
    url = embedded.start()
    try:
        yield url
    finally:
        embedded.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
async def fresh_db_url(pg_server_url: str) -> AsyncIterator[str]:
    """URL of a new, empty database, dropped after the test."""
    async with temporary_database(pg_server_url, "t_") as name:
        yield database_url(pg_server_url, name)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    return d
