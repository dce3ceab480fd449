"""Pools from open_pool: the full session reset runs only for connections marked changed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from storage.database import open_pool
from storage.sessions import PooledConnection, session_changed

_KEY = 4_242_424


async def _advisory_locks(conn: asyncpg.pool.PoolConnectionProxy[asyncpg.Record]) -> int:
    count = await conn.fetchval(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
    )
    assert isinstance(count, int)
    return count


@pytest.fixture
async def pool(fresh_db_url: str, tmp_path: Path) -> AsyncIterator[asyncpg.Pool]:
    """A pool from open_pool of one connection, so every acquire gets the same session."""
    async with open_pool(
        configured_url=fresh_db_url,
        data_dir=tmp_path,
        database="unused",
        migrations=None,
        min_size=1,
        max_size=1,
    ) as p:
        yield p


async def test_marked_connection_is_reset_in_full(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        session_changed(conn)
        await conn.execute("SELECT pg_advisory_lock($1)", _KEY)
        await conn.execute("SET application_name = 'marked'")
        pid = await conn.fetchval("SELECT pg_backend_pid()")
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT pg_backend_pid()") == pid  # the same session
        assert await _advisory_locks(conn) == 0
        assert await conn.fetchval("SHOW application_name") != "marked"


async def test_unmarked_connection_keeps_its_session_but_not_a_transaction(
    pool: asyncpg.Pool,
) -> None:
    await pool.execute("CREATE TABLE t (x int)")
    async with pool.acquire() as conn:
        await conn.execute("SET application_name = 'unmarked'")
        # A transaction left open (not through conn.transaction()) is rolled back.
        await conn.execute("BEGIN; INSERT INTO t VALUES (1)")
    async with pool.acquire() as conn:
        assert await conn.fetchval("SHOW application_name") == "unmarked"
        assert await conn.fetchval("SELECT count(*) FROM t") == 0
        assert not conn.is_in_transaction()
        # The next use of a marked connection gets the full reset once, then not again.
        session_changed(conn)
    async with pool.acquire() as conn:
        assert await conn.fetchval("SHOW application_name") != "unmarked"
        await conn.execute("SET application_name = 'again'")
    async with pool.acquire() as conn:
        assert await conn.fetchval("SHOW application_name") == "again"


async def test_connection_of_another_pool_is_left_alone(fresh_db_url: str) -> None:
    conn = await asyncpg.connect(fresh_db_url)
    try:
        session_changed(conn)  # a plain connection: nothing to mark, no error
        assert type(conn) is not PooledConnection
        assert not hasattr(conn, "full_reset_due")
    finally:
        await conn.close()
