"""The per-subsystem body logging switch in the node catalogue, and the catalogue's answer
when its database connections are killed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg
import pytest

from config.errors import StorageError
from gateway.identifiers import parse_client
from security_server.catalogue_store import CatalogueError, CatalogueStore, NotFound
from storage.embedded import database_url
from tests.security_server.test_catalogue_store import CONSUMER, PROVIDER, pool

__all__ = ["pool"]  # the fixture, imported to be used here

pytestmark = pytest.mark.postgres


@pytest.fixture
async def store(pool: asyncpg.Pool) -> CatalogueStore:
    s = CatalogueStore(pool)
    await s.load()
    await s.add_client("test", PROVIDER)
    return s


async def _body_logging_column(pool: asyncpg.Pool, client: str) -> object:
    return await pool.fetchval(
        "SELECT body_logging FROM local_clients WHERE client_id = $1", client
    )


async def test_body_logging_is_on_for_a_new_client(store: CatalogueStore) -> None:
    found = store.client(parse_client(PROVIDER))
    assert found is not None
    assert found.body_logging is True
    assert [c["body_logging"] for c in store.list_clients()] == [True]


async def test_switching_body_logging_off_and_on_writes_the_column_audit_and_snapshot(
    store: CatalogueStore, pool: asyncpg.Pool
) -> None:
    off = await store.set_body_logging("cli:op", PROVIDER, False)
    assert off.body_logging is False
    assert await _body_logging_column(pool, PROVIDER) is False
    # The snapshot the proxies read changed with it, without waiting for a reload.
    snapshot_client = store.client(parse_client(PROVIDER))
    assert snapshot_client is not None
    assert snapshot_client.body_logging is False
    assert store.list_clients()[0]["body_logging"] is False

    on = await store.set_body_logging("api:ops", PROVIDER, True)
    assert on.body_logging is True
    assert await _body_logging_column(pool, PROVIDER) is True

    audit = await store.audit(limit=2)
    assert [(a["actor"], a["action"], a["details"]) for a in audit] == [
        ("api:ops", "client.body_logging", {"client": PROVIDER, "body_logging": True}),
        ("cli:op", "client.body_logging", {"client": PROVIDER, "body_logging": False}),
    ]


async def test_another_process_sees_the_switch_at_its_next_refresh(
    store: CatalogueStore, pool: asyncpg.Pool
) -> None:
    running_node = CatalogueStore(pool)
    await running_node.load()
    await store.set_body_logging("cli:op", PROVIDER, False)
    assert await running_node.refresh_if_changed()
    found = running_node.client(parse_client(PROVIDER))
    assert found is not None
    assert found.body_logging is False


async def test_a_client_can_be_added_with_body_logging_off(
    store: CatalogueStore, pool: asyncpg.Pool
) -> None:
    added = await store.add_client("cli:op", CONSUMER, body_logging=False)
    assert added.body_logging is False
    assert await _body_logging_column(pool, CONSUMER) is False
    assert (await store.audit(limit=1))[0]["details"]["body_logging"] is False


async def test_refuses_the_switch_for_an_unknown_client_or_a_non_boolean(
    store: CatalogueStore, pool: asyncpg.Pool
) -> None:
    audit_rows = len(await store.audit())
    with pytest.raises(NotFound, match="not a client of this node"):
        await store.set_body_logging("cli:op", CONSUMER, False)
    with pytest.raises(CatalogueError, match="true or false"):
        await store.set_body_logging("cli:op", PROVIDER, "off")  # type: ignore[arg-type]  # a caller's mistake, refused
    assert len(await store.audit()) == audit_rows
    assert await _body_logging_column(pool, PROVIDER) is True


@contextlib.asynccontextmanager
async def _killed_while_waiting(pool: asyncpg.Pool, server_url: str) -> AsyncIterator[None]:
    """Run the block's database call into a lock on ``local_clients``, then kill every other
    connection to the database: the call surely fails in the middle of its statement."""
    database = await pool.fetchval("SELECT current_database()")
    assert isinstance(database, str)
    holder = await asyncpg.connect(database_url(server_url, database))
    try:
        async with holder.transaction():
            await holder.execute("LOCK TABLE local_clients IN ACCESS EXCLUSIVE MODE")
            yield
            for _ in range(500):
                if await holder.fetchval(
                    "SELECT count(*) FROM pg_locks WHERE NOT granted "
                    "AND relation = 'local_clients'::regclass"
                ):
                    break
                await asyncio.sleep(0.02)
            else:
                raise AssertionError("the catalogue never waited for the locked table")
            await holder.execute(
                "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> pg_backend_pid()",
                database,
            )
    finally:
        await holder.close()


async def test_killed_connections_are_a_storage_error_then_replaced(
    store: CatalogueStore, pool: asyncpg.Pool, pg_server_url: str
) -> None:
    """A read or a change cut off by the database is a StorageError naming what failed (the
    asyncpg error as its cause, never raised itself); the next call works."""
    async with _killed_while_waiting(pool, pg_server_url):
        loading = asyncio.create_task(store.load())
    with pytest.raises(
        StorageError, match="cannot read the catalogue from the node database"
    ) as lost:
        await loading
    assert isinstance(lost.value.__cause__, asyncpg.PostgresError | asyncpg.InterfaceError)
    await store.load()

    async with _killed_while_waiting(pool, pg_server_url):
        changing = asyncio.create_task(store.set_body_logging("cli:op", PROVIDER, False))
    with pytest.raises(StorageError) as failed:
        await changing
    assert "client.body_logging failed in the node database" in failed.value.message
    assert "may have been committed or not; check the audit log" in failed.value.message
    assert await _body_logging_column(pool, PROVIDER) is True
    assert (await store.set_body_logging("cli:op", PROVIDER, False)).body_logging is False
