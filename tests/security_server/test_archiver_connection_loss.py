"""The archiver when the database loses its connections (a PostgreSQL restart): the pool is
told to replace them at once, the failed pass leaves everything unarchived, and the next pass
archives on a new connection."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import asyncpg
import pytest

from config.errors import StorageError
from security_server.archiver import Archiver, ArchiverError, PostgresArchiveRows
from security_server.node import archive_lock
from tests.security_server.test_archiver import HOUR, START, Node, node
from tests.security_server.test_message_log_connection_loss import FlakyPool

__all__ = ["node"]  # the archiver tests' fixture, used here

pytestmark = pytest.mark.postgres


class FlakyReads(FlakyPool):
    """:class:`FlakyPool`, also losing the connection under the next ``lost_reads`` reads."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        super().__init__(pool)
        self.lost_reads = 0

    def _read(self) -> None:
        if self.lost_reads:
            self.lost_reads -= 1
            raise self._lost()

    async def fetch(self, query: str, *args: object) -> Any:
        self._read()
        return await super().fetch(query, *args)

    async def fetchrow(self, query: str, *args: object) -> Any:
        self._read()
        return await super().fetchrow(query, *args)


def _archives(directory: Path) -> list[Path]:
    return sorted(directory.glob("archive-*"))


async def _closed_period(node: Node, exchanges: int) -> None:
    """``exchanges`` logged and timestamped in the first hour, which has then ended."""
    await node.exchanges(exchanges, START + dt.timedelta(minutes=10))
    node.clock.now = START + HOUR + dt.timedelta(minutes=30)


def _flaky_archiver(node: Node) -> tuple[FlakyReads, Archiver]:
    flaky = FlakyReads(node.pool)
    return flaky, node.archiver(rows=PostgresArchiveRows(cast(asyncpg.Pool, flaky)))


async def test_a_read_on_a_lost_connection_renews_the_pool_and_the_next_pass_archives(
    node: Node,
) -> None:
    await _closed_period(node, 3)
    flaky, archiver = _flaky_archiver(node)

    flaky.lost_reads = 1
    with pytest.raises(ArchiverError, match="cannot read the message log"):
        await archiver.archive_once()
    assert flaky.expired == 1
    assert await node.log.archived_through() == 0
    assert _archives(node.archive_dir) == []

    assert await archiver.archive_once() == ["archive-00000001-20261101T120000Z.zip"]
    assert await node.log.archived_through() == 6
    assert flaky.expired == 1


async def test_a_read_that_fails_without_losing_the_connection_keeps_the_pool(
    node: Node,
) -> None:
    await _closed_period(node, 1)
    flaky, archiver = _flaky_archiver(node)
    async with node.pool.acquire() as conn:
        await conn.execute("ALTER TABLE message_log RENAME TO message_log_away")
    try:
        with pytest.raises(ArchiverError, match="cannot read the message log"):
            await archiver.archive_once()
    finally:
        async with node.pool.acquire() as conn:
            await conn.execute("ALTER TABLE message_log_away RENAME TO message_log")
    assert flaky.expired == 0
    assert await archiver.archive_once() == ["archive-00000001-20261101T120000Z.zip"]


class LostLockConnection:
    """The real pool, whose next ``lost`` connections die when the lock is asked for."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.lost = 0
        self.expired = 0

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[Any]:
        async with self.pool.acquire() as conn:
            if self.lost:
                self.lost -= 1
                yield _DeadConnection()
            else:
                yield conn

    async def expire_connections(self) -> None:
        self.expired += 1
        await self.pool.expire_connections()


class _DeadConnection:
    async def execute(self, *_args: object) -> str:
        raise FlakyPool._lost()

    async def fetchval(self, *_args: object) -> object:
        raise FlakyPool._lost()


async def test_the_archiving_turn_on_a_lost_connection_renews_the_pool(node: Node) -> None:
    pool = LostLockConnection(node.pool)
    lock = archive_lock(cast(asyncpg.Pool, pool))
    for wait in (True, False):
        pool.lost = 1
        with pytest.raises(StorageError, match="cannot take the message log's archiving turn"):
            async with lock(wait):
                pytest.fail("the turn was given on a lost connection")
    assert pool.expired == 2
    async with lock(False) as held:
        assert held
    assert pool.expired == 2


async def test_the_next_pass_archives_after_the_database_dropped_every_connection(
    node: Node,
) -> None:
    """The real thing: every backend of the node's pool terminated between two passes."""
    await _closed_period(node, 2)
    archiver = node.archiver(rows=PostgresArchiveRows(node.pool), lock=archive_lock(node.pool))
    async with node.pool.acquire() as conn:
        await conn.execute(
            "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    names: list[str] = []
    for _attempt in range(2):  # the first pass may still meet a dead connection
        try:
            names = await archiver.archive_once()
            break
        except StorageError:
            continue
    assert names == ["archive-00000001-20261101T120000Z.zip"]
    assert await node.log.archived_through() == 4
