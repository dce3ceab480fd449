"""The archiver when the database loses its connections (a PostgreSQL restart, a failover,
``pg_terminate_backend``): the pool is told to replace them at once, the failed pass leaves
everything unarchived, and the next pass archives on a new connection.

The tests that terminate real backends read through :class:`DatabaseRelay`: asyncpg replaces a
pooled connection by itself once it has seen the database close it, so only connections whose
end the client has not seen yet (as after a failover, or a database host that went away) show
what the archiver must do about the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import pytest
import structlog.testing

from audit.verifier import verify_path
from config.errors import StorageError
from security_server.archiver import Archiver, ArchiverError, PostgresArchiveRows
from security_server.node import archive_lock
from storage.database import open_pool
from tests.security_server.test_archiver import HOUR, START, Node, node
from tests.security_server.test_message_log_connection_loss import FlakyPool

__all__ = ["node"]  # the archiver tests' fixture, used here

pytestmark = pytest.mark.postgres

FIRST_ARCHIVE = "archive-00000001-20261101T120000Z.zip"


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
    with pytest.raises(ArchiverError, match="cannot read the message log") as failed:
        await archiver.archive_once()
    assert "the database connection was lost" in failed.value.message
    assert flaky.expired == 1
    assert await node.log.archived_through() == 0
    assert _archives(node.archive_dir) == []

    assert await archiver.archive_once() == [FIRST_ARCHIVE]
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
        with pytest.raises(ArchiverError, match="cannot read the message log") as failed:
            await archiver.archive_once()
    finally:
        async with node.pool.acquire() as conn:
            await conn.execute("ALTER TABLE message_log_away RENAME TO message_log")
    assert "connection was lost" not in failed.value.message
    assert flaky.expired == 0
    assert await archiver.archive_once() == [FIRST_ARCHIVE]


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


# --- real backends terminated ---------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class _Link:
    client: asyncio.StreamWriter
    database: asyncio.StreamWriter
    cut: bool = False


class DatabaseRelay:
    """A TCP relay on 127.0.0.1 (a port the OS chooses) in front of the test's PostgreSQL.

    :meth:`cut` does to the connections open now what a failover or a database host that went
    away does to a client that is not told: whatever the database sends on them from then on
    (its notice that it terminated them, the closing of its socket) is dropped, so the client
    finds such a connection dead only when it next sends something on it; the relay then drops
    the client's side. Connections opened later are relayed as usual.
    """

    def __init__(self, database_url: str) -> None:
        self._database_url = database_url
        self._links: list[_Link] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self.port = 0

    @property
    def url(self) -> str:
        """The database's URL, through the relay."""
        parts = urlsplit(self._database_url)
        query = [(k, v) for k, v in parse_qsl(parts.query) if k not in {"host", "port"}]
        credentials, _, _ = parts.netloc.rpartition("@")
        address = f"127.0.0.1:{self.port}"
        netloc = f"{credentials}@{address}" if credentials else address
        return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query), parts.fragment))

    def cut(self) -> int:
        """Cut the connections open now off from the database's side; return how many."""
        links = [link for link in self._links if not link.cut]
        for link in links:
            link.cut = True
        return len(links)

    async def _open_database(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        parts = urlsplit(self._database_url)
        query = dict(parse_qsl(parts.query))
        host = query.get("host") or parts.hostname or "localhost"
        port = int(query.get("port") or parts.port or 5432)
        if host.startswith("/"):  # a Unix socket directory (the embedded server)
            return await asyncio.open_unix_connection(f"{host}/.s.PGSQL.{port}")
        return await asyncio.open_connection(host, port)

    async def accept(self, client_in: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        try:
            database_in, database = await self._open_database()
        except OSError:
            client.transport.abort()
            return
        link = _Link(client, database)
        self._links.append(link)
        await asyncio.gather(self._to_database(client_in, link), self._to_client(database_in, link))

    @staticmethod
    async def _to_database(client_in: asyncio.StreamReader, link: _Link) -> None:
        with contextlib.suppress(OSError):
            while data := await client_in.read(65536):
                if link.cut:
                    break  # the client learns now that its connection is gone
                link.database.write(data)
                await link.database.drain()
        link.client.transport.abort()
        link.database.transport.abort()

    @staticmethod
    async def _to_client(database_in: asyncio.StreamReader, link: _Link) -> None:
        with contextlib.suppress(OSError):
            while data := await database_in.read(65536):
                if not link.cut:
                    link.client.write(data)
                    await link.client.drain()
        if not link.cut:
            link.client.transport.abort()

    async def close(self) -> None:
        for link in self._links:
            link.client.transport.abort()
            link.database.transport.abort()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@contextlib.asynccontextmanager
async def _relayed_pool(
    database_url: str, data_dir: Path
) -> AsyncIterator[tuple[DatabaseRelay, asyncpg.Pool]]:
    """A pool as the node opens it (:func:`storage.database.open_pool`), through a relay."""
    relay = DatabaseRelay(database_url)
    server = await asyncio.start_server(relay.accept, "127.0.0.1", 0)
    relay.port = server.sockets[0].getsockname()[1]
    try:
        async with open_pool(
            configured_url=relay.url, data_dir=data_dir, database="unused", migrations=None
        ) as pool:
            yield relay, pool
    finally:
        server.close()
        await relay.close()
        await server.wait_closed()


async def _open_connections(pool: asyncpg.Pool, count: int) -> list[int]:
    """Have ``pool`` hold ``count`` open connections (idle again on return); their backends."""
    async with contextlib.AsyncExitStack() as stack:
        held = [await stack.enter_async_context(pool.acquire()) for _ in range(count)]
        return [conn.get_server_pid() for conn in held]


async def _database_drops(relay: DatabaseRelay, backends: list[int], admin: asyncpg.Pool) -> None:
    """The database terminates ``backends`` (and waits until they are gone); the relay keeps
    their clients from seeing it."""
    assert relay.cut() == len(backends)
    terminated = await admin.fetchval(
        "SELECT count(*) FROM unnest($1::int[]) AS pid WHERE pg_terminate_backend(pid, 10000)",
        backends,
    )
    assert terminated == len(backends)


async def test_the_pass_after_one_that_met_a_dead_connection_archives(
    node: Node, fresh_db_url: str, tmp_path: Path
) -> None:
    """Every backend of the pool the archiver reads through is terminated between two passes:
    the pass that meets one fails with nothing stored or marked, and the very next pass
    archives (had the pool not been told to replace its connections, it would meet the next
    dead one)."""
    await _closed_period(node, 3)
    async with _relayed_pool(fresh_db_url, tmp_path) as (relay, pool):
        backends = await _open_connections(pool, 3)
        archiver = node.archiver(rows=PostgresArchiveRows(pool))
        await _database_drops(relay, backends, node.pool)

        with pytest.raises(ArchiverError, match="the database connection was lost"):
            await archiver.archive_once()
        assert list(node.archive_dir.iterdir()) == []  # not even a partial file
        assert await node.log.archived_through() == 0

        assert await archiver.archive_once() == [FIRST_ARCHIVE]
    assert await node.log.archived_through() == 6
    report = verify_path(node.archive_dir, anchor=node.federation.anchor)
    assert report.ok, report.failures()


async def _until_archived_through(node: Node, archiver: Archiver, seq: int) -> None:
    for _ in range(500):
        if await node.log.archived_through() >= seq:
            return
        archiver.wake()
        await asyncio.sleep(0.02)
    raise AssertionError(f"the background archiver never archived through record {seq}")


async def test_a_background_pass_that_met_a_dead_connection_is_logged_once(
    node: Node, fresh_db_url: str, tmp_path: Path
) -> None:
    await _closed_period(node, 2)
    async with _relayed_pool(fresh_db_url, tmp_path) as (relay, pool):
        backends = await _open_connections(pool, 3)
        archiver = node.archiver(rows=PostgresArchiveRows(pool), interval_s=3600)
        await _database_drops(relay, backends, node.pool)
        with structlog.testing.capture_logs() as logged:
            await archiver.start()
            try:
                await _until_archived_through(node, archiver, 4)
            finally:
                await archiver.close()
    failures = [e for e in logged if e["event"] in {"archive_pass_failed", "archive_pass_crashed"}]
    assert [(e["event"], e["log_level"], e["tries"]) for e in failures] == [
        ("archive_pass_failed", "warning", 1)
    ]
    assert "the database connection was lost" in failures[0]["error"]
    assert "new connections for the next pass" in failures[0]["error"]
    assert [e["archive"] for e in logged if e["event"] == "archive_written"] == [FIRST_ARCHIVE]
