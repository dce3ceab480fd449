"""Where an exchange touches the database besides the log writer — the timestamper (when the
node timestamps immediately) and the replay store — a lost connection is the fault of that
part (``TimestampingFailed``, ``DatabaseError``), never an asyncpg exception that the proxies
would answer as ``InternalError``; and the pool is told to replace its connections.

asyncpg raises ``InternalClientError`` (not a ``PostgresError``) when it meets a connection
whose protocol state a kill left half-way; these tests hand the parts exactly that."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any, cast

import aiohttp
import asyncpg
import pytest
from asyncpg import exceptions as pg

from config.errors import StorageError
from gateway.faults import FaultError
from gateway.identifiers import SubsystemId
from security_server.message_log import PostgresMessageLog
from security_server.replay_store import PostgresReplayStore
from security_server.timestamper import Timestamper
from storage.migrations import apply_migrations
from tests.clock import Clock
from tests.security_server.test_message_log import NODE, make_entry, open_log_pool
from tests.security_server.test_timestamper import Conf, live, pki, tsa_issued, tsa_url

__all__ = ["live", "pki", "tsa_issued", "tsa_url"]  # the fixtures, imported to be used here

pytestmark = pytest.mark.postgres

CLIENT = SubsystemId("IQ", "GOV", "HJC", "inheritance")
NOW = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)
BROKEN = "cannot switch to state 15; another operation (2) is in progress"


class BrokenConnections:
    """The real pool, except that the next ``broken`` connections handed out have a protocol
    state broken by a kill; counts the calls to replace the pool's connections."""

    def __init__(self, pool: asyncpg.Pool, broken: int = 1) -> None:
        self.pool = pool
        self.broken = broken
        self.expired = 0

    def acquire(
        self, *, timeout: float | None = None
    ) -> contextlib.AbstractAsyncContextManager[Any]:
        return self._acquire(timeout)

    @contextlib.asynccontextmanager
    async def _acquire(self, wait_s: float | None) -> AsyncIterator[Any]:
        if self.broken:
            self.broken -= 1
            raise pg.InternalClientError(BROKEN)
        async with self.pool.acquire(timeout=wait_s) as conn:
            yield conn

    async def fetchval(self, query: str, *args: object) -> Any:
        return await self.pool.fetchval(query, *args)

    async def expire_connections(self) -> None:
        self.expired += 1
        await self.pool.expire_connections()


@pytest.fixture
async def log_pool(fresh_db_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await open_log_pool(fresh_db_url)
    try:
        yield p
    finally:
        await p.close()


async def test_timestamping_immediately_on_a_broken_connection_is_timestamping_failed(
    log_pool: asyncpg.Pool, pki: Any, live: Any
) -> None:
    broken = BrokenConnections(log_pool)
    clock = Clock(NOW)
    async with aiohttp.ClientSession() as session:
        stamper = Timestamper(cast(asyncpg.Pool, broken), Conf(pki, [live]), session, clock=clock)
        async with PostgresMessageLog(
            log_pool, NODE, clock=clock, timestamper=stamper, timestamp_immediately=True
        ) as log:
            with pytest.raises(FaultError) as caught:
                await log.record(make_entry("m-1", direction="request_in"))
            assert caught.value.fault_code == "Server.ServerProxy.TimestampingFailed"
            # The database's words are in the node's state and log, not in the fault.
            assert BROKEN not in caught.value.message
            assert stamper.state.last_error is not None
            assert BROKEN in stamper.state.last_error
            assert broken.expired == 1
            # The record stays logged; the next exchange is timestamped with it.
            await log.record(make_entry("m-2"))
            records = await log.read_records()
    assert [r.entry.message_id for r in records] == ["m-1", "m-2"]
    assert all(r.timestamp is not None for r in records)


async def test_a_timestamping_pass_on_a_broken_connection_is_a_storage_error(
    log_pool: asyncpg.Pool, pki: Any, live: Any
) -> None:
    broken = BrokenConnections(log_pool)
    async with aiohttp.ClientSession() as session:
        stamper = Timestamper(cast(asyncpg.Pool, broken), Conf(pki, [live]), session)
        with pytest.raises(StorageError, match="cannot timestamp the message log") as caught:
            await stamper.timestamp_pending()
    assert isinstance(caught.value.__cause__, pg.InternalClientError)


@pytest.fixture
async def node_pool(fresh_db_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(fresh_db_url, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            await apply_migrations(conn, "security_server.migrations")
        yield pool
    finally:
        await pool.close()


async def test_a_replay_check_on_a_broken_connection_is_database_error_and_the_next_works(
    node_pool: asyncpg.Pool,
) -> None:
    broken = BrokenConnections(node_pool)
    store = PostgresReplayStore(cast(asyncpg.Pool, broken))
    with pytest.raises(FaultError) as caught:
        await store.check_and_remember(CLIENT, "m-1", NOW)
    assert caught.value.fault_code == "Server.ServerProxy.DatabaseError"
    assert BROKEN not in caught.value.message
    assert broken.expired == 1
    # Not taken as seen, and the store goes on: the same id is accepted once, then refused.
    await store.check_and_remember(CLIENT, "m-1", NOW)
    with pytest.raises(FaultError, match="already received"):
        await store.check_and_remember(CLIENT, "m-1", NOW)


async def test_a_purge_on_a_broken_connection_is_retried_by_the_next_pass(
    node_pool: asyncpg.Pool,
) -> None:
    broken = BrokenConnections(node_pool)
    store = PostgresReplayStore(
        cast(asyncpg.Pool, broken), purge_interval=dt.timedelta(milliseconds=10)
    )
    await node_pool.execute(
        "INSERT INTO seen_message_ids (client_id, message_id, expires_at) VALUES ($1, $2, $3)",
        str(CLIENT),
        "old",
        NOW - dt.timedelta(seconds=1),
    )
    async with store.purging(lambda: NOW):
        for _ in range(500):
            if not await node_pool.fetchval("SELECT count(*) FROM seen_message_ids"):
                break
            await asyncio.sleep(0.01)
    # The failed pass neither stopped the purging task nor made leaving the block fail.
    assert await node_pool.fetchval("SELECT count(*) FROM seen_message_ids") == 0
    assert broken.expired == 1
