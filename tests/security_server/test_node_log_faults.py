"""Faults under a running pair of nodes: the database's connections killed in the middle of a
load, and the TSA stopped. What the information system was told must match what the logs hold:
no answered exchange is missing from a log, no refused one is fully logged, and every record
ends up timestamped once the TSA is back."""

from __future__ import annotations

import asyncio
import datetime as dt

import asyncpg
import pytest
import structlog.testing

from certs.tsa import TimestampError
from gateway.faults import SERVER_PROXY, FaultError
from gateway.log_record import verify_chain
from security_server.message_log import PostgresMessageLog
from security_server.node import RunningNode
from tests.databases import table_held, until_a_session_waits_for
from tests.security_server.test_node_log_network import (
    Answer,
    LogNetwork,
    NodeDatabase,
    log_network,
    records_of,
    sha256_hex,
    untimestamped,
)

__all__ = ["log_network"]  # the fixture, imported to be used here

pytestmark = [pytest.mark.postgres, pytest.mark.e2e]

CONCURRENT = 24
#: What an exchange may be refused with while a node's database connections are being killed.
DATABASE_FAULTS = frozenset(
    {
        "Server.ClientProxy.LoggingFailed",
        "Server.ServerProxy.LoggingFailed",
        "Server.ServerProxy.DatabaseError",  # the provider's replay store
    }
)


async def _terminate_connections(db: NodeDatabase, conn: asyncpg.Connection) -> int:
    """Kill every connection to the node's database except ``conn`` (the server side), and
    wait until their server processes are gone."""
    killed = await conn.fetchval(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity "
        "WHERE datname = $1 AND pid <> pg_backend_pid()) AS t",
        db.name,
    )
    assert isinstance(killed, int)
    return killed


async def _until_queued(node: RunningNode, records: int) -> None:
    for _ in range(600):
        if node.message_log.queued >= records:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{records} records never queued behind the waiting write")


async def _check_chain(db: NodeDatabase, node: RunningNode) -> None:
    records = await PostgresMessageLog(db.pool, node.runtime.server_id).read_records()
    assert [r.seq for r in records] == list(range(1, len(records) + 1))
    verify_chain(records)


async def _check_answered_are_logged(net: LogNetwork, answers: list[Answer]) -> None:
    """Every exchange the client got an answer for is in both logs, as answered."""
    for answer in answers:
        if not answer.ok:
            continue
        mine = await records_of(net.consumer_db.pool, answer.exchange)
        theirs = await records_of(net.provider_db.pool, answer.exchange)
        assert set(mine) == {"request_out", "response_in"}, answer
        assert set(theirs) == {"request_in", "response_out"}, answer
        assert sha256_hex(bytes(mine["response_in"]["body"])) == sha256_hex(answer.body)
        assert answer.exchange in net.served


@pytest.mark.parametrize("side", ["consumer", "provider"])
async def test_killing_a_nodes_database_connections_mid_load_loses_no_answered_exchange(
    log_network: LogNetwork, side: str
) -> None:
    net = log_network
    db = net.consumer_db if side == "consumer" else net.provider_db
    async with net.running() as (consumer, provider):
        node = consumer if side == "consumer" else provider
        answers = [await net.call(consumer) for _ in range(3)]
        assert all(a.ok for a in answers)

        # Round 1: one write is surely under way when the connections die, and the records of
        # the other exchanges wait behind it for the next batch.
        async with table_held(db.url, "message_log") as holder:
            first = asyncio.create_task(net.call(consumer))
            await until_a_session_waits_for(holder, "message_log")
            calls = [asyncio.create_task(net.call(consumer)) for _ in range(CONCURRENT - 1)]
            await _until_queued(node, CONCURRENT - 1)
            assert await _terminate_connections(db, holder) >= 1
        round_one = [await first, *await asyncio.gather(*calls)]
        failed = [a for a in round_one if not a.ok]
        assert failed == round_one[:1], "only the write under way when the connections died fails"
        # The failure made the pool replace its connections: the batch queued behind it was
        # written on a new one, and its exchanges went through.
        assert all(a.ok for a in round_one[1:]), round_one
        for answer in failed:
            assert "LoggingFailed" in (answer.error or ""), answer
            # The request was never logged on the side that failed, so it went no further:
            # the provider's service never ran it.
            direction = "request_out" if side == "consumer" else "request_in"
            logged = await records_of(db.pool, answer.exchange)
            assert direction not in logged, answer
            assert answer.exchange not in net.served
            if side == "consumer":
                assert await records_of(net.provider_db.pool, answer.exchange) == {}
        answers += round_one

        # Round 2: connections killed again and again while a load runs.
        calls = [asyncio.create_task(net.call(consumer)) for _ in range(CONCURRENT)]
        killer = await asyncpg.connect(db.url)
        try:
            while not all(call.done() for call in calls):
                await _terminate_connections(db, killer)
                await asyncio.sleep(0.02)
        finally:
            await killer.close()
        answers += await asyncio.gather(*calls)

        # Whatever failed was refused with the fault of the part that failed, never as an
        # internal error of the node.
        for answer in answers[-CONCURRENT:]:
            assert answer.ok or answer.error in DATABASE_FAULTS, answer

        # The node recovers by itself, at once: the connections that died were replaced.
        after = await net.call(consumer)
        answers.append(after)
        assert after.ok, after
        await _check_answered_are_logged(net, answers)
        await _check_chain(db, node)
        # Everything logged is timestamped by the next passes, the failures included.
        for each in (consumer, provider):
            await each.timestamper.timestamp_pending()
        assert await untimestamped(db.pool) == 0


@pytest.mark.parametrize("side", ["consumer", "provider"])
async def test_database_connections_killed_again_and_again_never_make_a_node_answer_internal_error(
    log_network: LogNetwork, side: str
) -> None:
    """Every place an exchange touches the database — the log writer, the timestamper of a node
    that timestamps immediately, the provider's replay store — answers a lost connection with
    its own fault; neither proxy ever meets an exception it has to call an internal error."""
    net = log_network
    db = net.consumer_db if side == "consumer" else net.provider_db
    prefix = "Server.ClientProxy" if side == "consumer" else "Server.ServerProxy"
    allowed = DATABASE_FAULTS | {f"{prefix}.TimestampingFailed"}
    immediately = {"timestamp_immediately": True}
    settings = {side: immediately}
    answers: list[Answer] = []
    with structlog.testing.capture_logs() as logged:
        async with net.running(**settings) as (consumer, _provider):
            assert (await net.call(consumer)).ok
            killer = await asyncpg.connect(db.url)
            try:
                for _ in range(4):
                    calls = [asyncio.create_task(net.call(consumer)) for _ in range(CONCURRENT)]
                    while not all(call.done() for call in calls):
                        await _terminate_connections(db, killer)
                        await asyncio.sleep(0.01)
                    answers += await asyncio.gather(*calls)
            finally:
                await killer.close()
            after = await net.call(consumer)
            assert after.ok, after
    refused = [a for a in answers if not a.ok]
    assert all(a.error in allowed for a in refused), refused
    crashed = [e for e in logged if e["event"] in ("server proxy failed", "client proxy failed")]
    assert crashed == []


async def test_tsa_outage_is_tolerated_for_the_acceptable_period_then_refused_until_it_returns(
    log_network: LogNetwork,
) -> None:
    net = log_network
    period = {"timestamp_failure_period_s": 120}
    async with net.running(consumer=period, provider=period) as (consumer, provider):
        assert (await net.call(consumer)).ok
        for node in (consumer, provider):
            await node.timestamper.timestamp_pending()

        await net.tsa.stop()
        during = [await net.call(consumer) for _ in range(3)]
        assert all(a.ok for a in during), during
        with pytest.raises(TimestampError, match="no approved TSA"):
            await consumer.timestamper.timestamp_pending()
        assert await untimestamped(net.consumer_db.pool) == 6  # queued, never dropped
        status = consumer.status()["message_log"]
        assert status["oldest_untimestamped"] is not None
        assert "no approved TSA" in status["timestamping_last_error"]

        # Past the acceptable period, both nodes refuse; the consumer's refusal comes first.
        net.clock.offset += dt.timedelta(seconds=180)
        refused = await net.call(consumer)
        assert refused.status != 200
        assert refused.error == "Server.ClientProxy.TimestampingFailed", refused
        assert await records_of(net.consumer_db.pool, refused.exchange) == {}
        assert refused.exchange not in net.served
        with pytest.raises(FaultError) as fault:
            provider.message_log.check_accepting(net.clock(), prefix=SERVER_PROXY)
        assert fault.value.fault_code == "Server.ServerProxy.TimestampingFailed"

        # The TSA is back: the next pass timestamps the backlog and exchanges resume.
        await net.tsa.start()
        for node in (consumer, provider):
            assert await node.timestamper.timestamp_pending() == 6
        resumed = await net.call(consumer)
        assert resumed.ok, resumed
        for node, db in ((consumer, net.consumer_db), (provider, net.provider_db)):
            await node.timestamper.timestamp_pending()
            assert await untimestamped(db.pool) == 0
            assert node.status()["message_log"]["timestamping_last_error"] is None


async def test_timestamp_immediately_refuses_an_exchange_it_cannot_timestamp(
    log_network: LogNetwork,
) -> None:
    net = log_network
    async with net.running(consumer={"timestamp_immediately": True}) as (consumer, _provider):
        answer = await net.call(consumer)
        assert answer.ok, answer
        logged = await records_of(net.consumer_db.pool, answer.exchange)
        assert all(row["timestamped"] for row in logged.values())

        await net.tsa.stop()
        refused = await net.call(consumer)
        assert refused.error == "Server.ClientProxy.TimestampingFailed", refused
        # Logged before the TSA was asked; it waits for the next pass, and was never sent.
        assert set(await records_of(net.consumer_db.pool, refused.exchange)) == {"request_out"}
        assert refused.exchange not in net.served

        await net.tsa.start()
        again = await net.call(consumer)
        assert again.ok, again
        assert await untimestamped(net.consumer_db.pool) == 0


async def test_the_node_stores_bodies_as_log_body_compression_says(
    log_network: LogNetwork,
) -> None:
    net = log_network
    query = (
        "SELECT attstorage::text FROM pg_attribute "
        "WHERE attrelid = 'message_log'::regclass AND attname = 'body'"
    )
    async with net.running(consumer={"log_body_compression": "none"}) as (consumer, _provider):
        assert await net.consumer_db.pool.fetchval(query) == "e"
        assert await net.provider_db.pool.fetchval(query) == "x"  # auto: compressed
        answer = await net.call(consumer)
        assert answer.ok, answer
        logged = await records_of(net.consumer_db.pool, answer.exchange)
        assert logged["request_out"]["body"] is not None
