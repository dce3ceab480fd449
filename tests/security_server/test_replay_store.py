"""Replay protection shared by the processes of one node, on a real PostgreSQL database.

Each "process" is its own connection pool (and, for the server proxy tests, its own provider
node application with its own TLS listener), as separate node processes sharing the node
database would have.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from gateway.faults import FaultError
from gateway.identifiers import SubsystemId
from gateway.transport import (
    CONTENT_TYPE,
    ResponsePart,
    decode_message,
)
from security_server.replay_store import PostgresReplayStore
from security_server.server_proxy import server_proxy_app
from security_server.tls import server_context
from security_server.transport_client import TransportClient
from storage.migrations import apply_migrations
from tests.security_server.fakes import (
    CONSUMER,
    PASSPHRASE,
    Network,
    post_exchange,
    signed_envelope,
    two_nodes,
)
from trust_services.http_server import serve_app

pytestmark = pytest.mark.postgres

NOW = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)
WINDOW = dt.timedelta(seconds=600)
OTHER_CLIENT = SubsystemId("IQ", "GOV", "HJC", "courts")


@contextlib.asynccontextmanager
async def process_pool(url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(url, min_size=1, max_size=4)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
async def node_db(fresh_db_url: str) -> str:
    """The node database with the node's migrations applied, as a started node leaves it."""
    conn = await asyncpg.connect(fresh_db_url)
    try:
        await apply_migrations(conn, "security_server.migrations")
    finally:
        await conn.close()
    return fresh_db_url


@pytest.fixture
async def two_processes(node_db: str) -> AsyncIterator[tuple[PostgresReplayStore, ...]]:
    async with process_pool(node_db) as first, process_pool(node_db) as second:
        yield PostgresReplayStore(first), PostgresReplayStore(second)


async def rows(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        count: int = await conn.fetchval("SELECT count(*) FROM seen_message_ids")
        return count
    finally:
        await conn.close()


# ---- the store ------------------------------------------------------------------------------


async def test_refuses_a_message_id_another_process_accepted(
    two_processes: tuple[PostgresReplayStore, ...],
) -> None:
    first, second = two_processes
    await first.check_and_remember(CONSUMER, "m-1", NOW)
    with pytest.raises(FaultError) as refused:
        await second.check_and_remember(CONSUMER, "m-1", NOW + dt.timedelta(seconds=1))
    assert refused.value.fault_code == "Server.ServerProxy.DuplicateMessageId"
    assert "'m-1'" in refused.value.message
    assert str(CONSUMER) in refused.value.message


async def test_the_same_message_id_from_another_client_is_a_different_message(
    two_processes: tuple[PostgresReplayStore, ...],
) -> None:
    first, second = two_processes
    await first.check_and_remember(CONSUMER, "m-1", NOW)
    await second.check_and_remember(OTHER_CLIENT, "m-1", NOW)


async def test_concurrent_deliveries_of_one_message_id_are_accepted_exactly_once(
    two_processes: tuple[PostgresReplayStore, ...],
) -> None:
    results = await asyncio.gather(
        *(two_processes[i % 2].check_and_remember(CONSUMER, "raced", NOW) for i in range(16)),
        return_exceptions=True,
    )
    accepted = [r for r in results if r is None]
    refused = [r for r in results if isinstance(r, FaultError)]
    assert len(accepted) == 1
    assert len(refused) == 15
    assert {r.fault_code for r in refused} == {"Server.ServerProxy.DuplicateMessageId"}


async def test_accepts_a_message_id_again_once_its_window_has_passed(
    two_processes: tuple[PostgresReplayStore, ...],
) -> None:
    first, second = two_processes
    await first.check_and_remember(CONSUMER, "m-1", NOW)
    with pytest.raises(FaultError):
        await second.check_and_remember(CONSUMER, "m-1", NOW + WINDOW - dt.timedelta(seconds=1))
    # expired but not purged yet: the row is renewed for the new request
    await second.check_and_remember(CONSUMER, "m-1", NOW + WINDOW)
    with pytest.raises(FaultError):
        await first.check_and_remember(CONSUMER, "m-1", NOW + WINDOW + dt.timedelta(seconds=1))


async def test_purge_deletes_only_expired_message_ids(
    node_db: str, two_processes: tuple[PostgresReplayStore, ...]
) -> None:
    first, second = two_processes
    await first.check_and_remember(CONSUMER, "old", NOW)
    await first.check_and_remember(CONSUMER, "new", NOW + dt.timedelta(seconds=300))
    assert await second.purge_expired(NOW + WINDOW) == 1
    assert await rows(node_db) == 1
    with pytest.raises(FaultError):
        await second.check_and_remember(CONSUMER, "new", NOW + WINDOW)


async def test_refuses_with_database_error_when_the_database_is_unavailable(
    node_db: str,
) -> None:
    async with process_pool(node_db) as pool:
        store = PostgresReplayStore(pool)
    with pytest.raises(FaultError) as refused:
        await store.check_and_remember(CONSUMER, "m-1", NOW)
    assert refused.value.fault_code == "Server.ServerProxy.DatabaseError"
    assert "replay store" in refused.value.message
    assert refused.value.detail


# ---- two provider node processes sharing one database ----------------------------------------


@pytest.fixture
async def net(tmp_path: Path) -> AsyncIterator[Network]:
    async with two_nodes(tmp_path) as network:
        yield network


@contextlib.asynccontextmanager
async def provider_process(net: Network, url: str) -> AsyncIterator[str]:
    """One more process of the provider node: its own pool, transport and TLS listener."""
    tls = net.provider_runtime.tls
    ctx = server_context(
        tls.cert_file,
        tls.key_file,
        password=PASSPHRASE,
        client_roots=[net.pki.root.cert],
        require_client_cert=True,
    )
    transport = TransportClient(net.provider_runtime)
    try:
        async with (
            process_pool(url) as pool,
            serve_app(
                server_proxy_app(net.provider_runtime, transport=transport, database=pool),
                ssl_context=ctx,
            ) as node_url,
        ):
            yield node_url
    finally:
        await transport.close()


def signed_request(net: Network, message_id: str) -> bytes:
    return signed_envelope(net, message_id=message_id, headers=())[1]


async def post(net: Network, node_url: str, data: bytes) -> tuple[ResponsePart, bytes]:
    reply = await post_exchange(net, data, node_url=node_url)
    assert reply.status == 200, reply
    message = decode_message(CONTENT_TYPE, reply.body, prefix="Server.ClientProxy")
    assert isinstance(message.signed_part, ResponsePart)
    return message.signed_part, message.body


async def test_provider_processes_sharing_a_database_refuse_a_replay_seen_by_the_other(
    net: Network, node_db: str
) -> None:
    data = signed_request(net, str(uuid.uuid4()))
    async with provider_process(net, node_db) as first, provider_process(net, node_db) as second:
        answered, _ = await post(net, first, data)
        assert answered.status == 200
        # a signed fault of the provider member: the request itself was trusted
        replayed, body = await post(net, second, data)
        assert replayed.status == 500
        assert ("X-Road-Error", "Server.ServerProxy.DuplicateMessageId") in replayed.headers
        assert json.loads(body)["type"] == "Server.ServerProxy.DuplicateMessageId"
        assert len(net.seen) == 1  # the provider's information system was called once
        fresh, _ = await post(net, second, signed_request(net, str(uuid.uuid4())))
        assert fresh.status == 200


async def test_provider_process_purges_expired_message_ids_while_it_runs(
    net: Network, node_db: str
) -> None:
    async with process_pool(node_db) as pool:
        await PostgresReplayStore(pool).check_and_remember(
            CONSUMER, "long-ago", net.clock.now - dt.timedelta(hours=1)
        )
    assert await rows(node_db) == 1
    async with provider_process(net, node_db):
        for _ in range(500):  # the first purge pass runs as the application starts
            if await rows(node_db) == 0:
                break
            await asyncio.sleep(0.01)
        assert await rows(node_db) == 0
