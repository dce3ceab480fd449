"""The message log when the database loses its connections: the pool is told to replace them,
a batch none of which was sent is sent once more on a new connection, and a batch whose write
was cut off is never sent again (it may have been committed)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import asyncpg
import pytest
import structlog.testing
from asyncpg import exceptions as pg

from gateway.faults import FaultError
from gateway.log_record import verify_chain
from security_server.message_log import PostgresMessageLog
from tests.clock import Clock
from tests.databases import table_held, until_a_session_waits_for
from tests.pki_factory import NOW
from tests.security_server.test_message_log import NODE, make_entry, open_log_pool

pytestmark = pytest.mark.postgres


class FlakyPool:
    """The real pool, with lost connections injected where a test asks for them."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.lost_acquires = 0
        self.lost_head_reads = 0
        self.lost_releases = 0
        self.expired = 0

    @staticmethod
    def _lost() -> pg.ConnectionDoesNotExistError:
        return pg.ConnectionDoesNotExistError("connection was closed in the middle of operation")

    async def acquire(self, *, timeout: float | None = None) -> Any:  # noqa: ASYNC109 (asyncpg.Pool.acquire's signature)
        if self.lost_acquires:
            self.lost_acquires -= 1
            raise self._lost()
        return await self.pool.acquire(timeout=timeout)

    async def release(self, conn: Any, *, timeout: float | None = None) -> None:  # noqa: ASYNC109 (as Pool.release)
        await self.pool.release(conn, timeout=timeout)
        if self.lost_releases:
            self.lost_releases -= 1
            raise self._lost()

    async def fetchrow(self, query: str, *args: object) -> Any:
        if self.lost_head_reads and "ORDER BY seq DESC" in query:
            self.lost_head_reads -= 1
            raise self._lost()
        return await self.pool.fetchrow(query, *args)

    async def fetchval(self, query: str, *args: object) -> Any:
        return await self.pool.fetchval(query, *args)

    async def fetch(self, query: str, *args: object) -> Any:
        return await self.pool.fetch(query, *args)

    async def expire_connections(self) -> None:
        self.expired += 1
        await self.pool.expire_connections()


@pytest.fixture
async def pool(fresh_db_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await open_log_pool(fresh_db_url)
    try:
        yield p
    finally:
        await p.close()


@pytest.fixture
def flaky(pool: asyncpg.Pool) -> FlakyPool:
    return FlakyPool(pool)


@pytest.fixture
async def log(flaky: FlakyPool) -> AsyncIterator[PostgresMessageLog]:
    async with PostgresMessageLog(cast(asyncpg.Pool, flaky), NODE, clock=Clock(NOW)) as message_log:
        yield message_log


async def _stored(pool: asyncpg.Pool) -> list[str]:
    rows = await pool.fetch("SELECT message_id FROM message_log ORDER BY seq")
    return [r["message_id"] for r in rows]


async def test_a_batch_whose_connection_was_lost_before_the_write_is_sent_once_more(
    log: PostgresMessageLog, flaky: FlakyPool, pool: asyncpg.Pool
) -> None:
    flaky.lost_acquires = 1
    await log.record(make_entry("m-1"))
    assert flaky.expired == 1
    assert log.write_round_trips == 2
    assert await _stored(pool) == ["m-1"]


async def test_a_chain_head_read_on_a_lost_connection_is_read_again(
    log: PostgresMessageLog, flaky: FlakyPool, pool: asyncpg.Pool
) -> None:
    # A write whose connection dies makes the log re-read the chain head before the next one.
    flaky.lost_acquires = 1
    flaky.lost_head_reads = 1
    await log.record(make_entry("m-1"))
    assert await _stored(pool) == ["m-1"]


async def test_gives_up_when_the_new_connection_is_lost_too(
    log: PostgresMessageLog, flaky: FlakyPool, pool: asyncpg.Pool
) -> None:
    flaky.lost_acquires = 2
    with structlog.testing.capture_logs() as logged, pytest.raises(FaultError) as caught:
        await log.record(make_entry("m-1"))
    assert caught.value.fault_code == "Server.ClientProxy.LoggingFailed"
    assert log.write_round_trips == 2  # the first try and one more, no third
    (line,) = [e for e in logged if e["event"] == "message_log_write_failed"]
    assert "no database connection" in line["error"]
    assert await _stored(pool) == []
    await log.record(make_entry("m-2"))
    assert await _stored(pool) == ["m-2"]


async def test_a_write_committed_before_its_connection_was_lost_is_a_success(
    log: PostgresMessageLog, flaky: FlakyPool, pool: asyncpg.Pool
) -> None:
    """The ``COPY`` answered: the records are stored, whatever happens to the connection when
    it goes back to the pool."""
    flaky.lost_releases = 1
    await log.record(make_entry("m-1"))
    assert flaky.expired == 1
    await log.record(make_entry("m-2"))
    assert await _stored(pool) == ["m-1", "m-2"]


async def test_a_write_cut_off_by_a_lost_connection_is_not_sent_again(
    log: PostgresMessageLog, flaky: FlakyPool, pool: asyncpg.Pool, fresh_db_url: str
) -> None:
    await log.record(make_entry("m-1"))
    async with table_held(fresh_db_url, "message_log") as holder:
        cut = asyncio.create_task(log.record(make_entry("m-2", direction="request_in")))
        await until_a_session_waits_for(holder, "message_log")
        round_trips = log.write_round_trips
        await holder.execute(
            "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    with pytest.raises(FaultError) as caught:
        await cut
    assert caught.value.fault_code == "Server.ServerProxy.LoggingFailed"
    assert log.write_round_trips == round_trips  # not sent again
    assert flaky.expired == 1
    # The next write gets a new connection, re-reads the head and continues the chain.
    await log.record(make_entry("m-3"))
    assert await _stored(pool) == ["m-1", "m-3"]
    verify_chain(await log.read_records())
