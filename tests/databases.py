"""Temporary PostgreSQL databases for tests and benches: created empty, dropped afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import asyncpg


@contextlib.asynccontextmanager
async def temporary_database(server_url: str, prefix: str) -> AsyncIterator[str]:
    """A new, empty database on the server whose maintenance database is ``server_url``, named
    ``prefix`` and 16 random hex digits; yields its name and drops it when the block ends (even
    with connections still open)."""
    name = prefix + uuid.uuid4().hex[:16]
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    try:
        yield name
    finally:
        conn = await asyncpg.connect(server_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


async def until_a_session_waits_for(conn: asyncpg.Connection, table: str) -> None:
    """Return once some session of ``conn``'s database waits for a lock on ``table`` (which
    a test holds); fail after about 12 s of polling if none ever does."""
    for _ in range(600):
        if await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = $1::regclass "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            table,
        ):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"no session ever waited for the held lock on {table}")


@contextlib.asynccontextmanager
async def table_held(url: str, table: str) -> AsyncIterator[asyncpg.Connection]:
    """Hold a lock on ``table`` of the database at ``url`` that makes every write to it wait,
    for as long as the block runs; yields the holding connection."""
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            await conn.execute(f"LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE")
            yield conn
    finally:
        await conn.close()
