"""The replay store under concurrent load: one statement for many message ids, same answers."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator

import asyncpg
import pytest

from gateway.faults import FaultError
from security_server.replay_store import PostgresReplayStore
from storage.migrations import apply_migrations
from tests.security_server.fakes import CONSUMER

pytestmark = pytest.mark.postgres

NOW = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)
WINDOW = dt.timedelta(seconds=600)


@pytest.fixture
async def store(fresh_db_url: str) -> AsyncIterator[PostgresReplayStore]:
    conn = await asyncpg.connect(fresh_db_url)
    try:
        await apply_migrations(conn, "security_server.migrations")
    finally:
        await conn.close()
    pool = await asyncpg.create_pool(fresh_db_url, min_size=1, max_size=4)
    try:
        yield PostgresReplayStore(pool)
    finally:
        await pool.close()


async def _check_all(store: PostgresReplayStore, ids: list[str], now: dt.datetime) -> list[object]:
    return await asyncio.gather(
        *(store.check_and_remember(CONSUMER, message_id, now) for message_id in ids),
        return_exceptions=True,
    )


async def test_concurrent_checks_share_statements_and_accept_every_new_id(
    store: PostgresReplayStore,
) -> None:
    ids = [f"m-{i}" for i in range(200)]
    assert await _check_all(store, ids, NOW) == [None] * 200
    assert store.round_trips < 200
    again = await _check_all(store, ids, NOW + dt.timedelta(seconds=1))
    assert all(
        isinstance(r, FaultError) and r.fault_code == "Server.ServerProxy.DuplicateMessageId"
        for r in again
    )


async def test_an_id_twice_in_one_batch_is_accepted_once(store: PostgresReplayStore) -> None:
    results = await _check_all(store, ["twice", "other", "twice", "third"], NOW)
    assert results[1] is None
    assert results[3] is None
    assert sorted(r is None for r in (results[0], results[2])) == [False, True]


async def test_a_batch_refuses_only_the_ids_seen_before(store: PostgresReplayStore) -> None:
    await store.check_and_remember(CONSUMER, "seen", NOW)
    results = await _check_all(store, ["new-1", "seen", "new-2"], NOW + dt.timedelta(seconds=1))
    assert results[0] is None
    assert results[2] is None
    assert isinstance(results[1], FaultError)
    assert "'seen'" in results[1].message


async def test_a_batch_renews_ids_whose_window_has_passed(store: PostgresReplayStore) -> None:
    await store.check_and_remember(CONSUMER, "old", NOW)
    later = NOW + WINDOW
    assert await _check_all(store, ["old", "fresh"], later) == [None, None]
    refused = await _check_all(store, ["old"], later + dt.timedelta(seconds=1))
    assert isinstance(refused[0], FaultError)


async def test_a_caller_that_gives_up_does_not_stop_the_others(
    store: PostgresReplayStore,
) -> None:
    gives_up = asyncio.ensure_future(store.check_and_remember(CONSUMER, "abandoned", NOW))
    waits = asyncio.ensure_future(store.check_and_remember(CONSUMER, "kept", NOW))
    gives_up.cancel()
    await waits
    with pytest.raises(asyncio.CancelledError):
        await gives_up
    await store.check_and_remember(CONSUMER, "after", NOW)
