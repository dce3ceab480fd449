"""Batch timestamping of the message log against a real TSA on 127.0.0.1: one token per batch,
proofs that verify, TSA outages and the acceptable period, the background loop and the
"timestamp immediately" option."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from certs.tsa import TimestampAuthority, TimestampError
from gateway.faults import FaultError
from gateway.globalconf import (
    ApprovedTsa,
    GlobalConf,
    GlobalSettings,
    OutdatedGlobalConf,
    SigningKey,
    build_globalconf,
)
from gateway.log_record import LogRecord, verify_chain, verify_record_timestamp
from security_server.message_log import PostgresMessageLog
from security_server.timestamper import Timestamper
from tests.clock import Clock
from tests.pki_factory import NOW, FixturePki, Issued
from tests.security_server.test_message_log import (
    NODE,
    make_entry,
    open_log_pool,
)
from trust_services.http_server import serve_app
from trust_services.tsa_server import SerialNumbers, tsa_app

pytestmark = pytest.mark.postgres

POLICY = "2.25.1234"
PERIOD = dt.timedelta(seconds=14_400)


class Conf:
    """A ConfSource whose approved TSAs and interval tests change as they go."""

    def __init__(self, pki: FixturePki, tsas: list[ApprovedTsa], interval_s: int = 60) -> None:
        self.pki = pki
        self.signing = SigningKey(pki.issue("conf signer").cert)
        self.set(tsas, interval_s)

    def set(self, tsas: list[ApprovedTsa], interval_s: int = 60) -> None:
        self.conf = build_globalconf(
            "IQ",
            1,
            NOW,
            dt.timedelta(days=3650),
            None,
            GlobalSettings(timestamping_interval_s=interval_s),
            [],
            [],
            [],
            [],
            tsas,
            [],
            [self.signing],
        )
        self.outdated = False

    def current(self, now: dt.datetime) -> GlobalConf:
        if self.outdated:
            raise OutdatedGlobalConf("the global configuration has expired")
        return self.conf


@pytest.fixture(scope="module")
def pki() -> FixturePki:
    return FixturePki.create()


@pytest.fixture(scope="module")
def tsa_issued(pki: FixturePki) -> Issued:
    return pki.tsa()


@pytest.fixture
async def tsa_url(tsa_issued: Issued, tmp_path: Path) -> AsyncIterator[str]:
    authority = TimestampAuthority(tsa_issued.cert, tsa_issued.key, policy_oid=POLICY)
    app = tsa_app(authority, SerialNumbers(tmp_path / "serial"), clock=lambda: NOW)
    async with serve_app(app) as bound:
        yield bound + "/"


@pytest.fixture
async def down_url() -> AsyncIterator[str]:
    """A TSA in trouble: it answers every request with HTTP 503."""

    async def unavailable(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=503, text="maintenance\n")

    app = web.Application()
    app.router.add_post("/", unavailable)
    async with serve_app(app) as bound:
        yield bound + "/"


@pytest.fixture
def live(tsa_url: str, tsa_issued: Issued) -> ApprovedTsa:
    return ApprovedTsa("Jisr Test TSA", tsa_url, tsa_issued.cert)


@pytest.fixture
def down(down_url: str, tsa_issued: Issued) -> ApprovedTsa:
    return ApprovedTsa("TSA in maintenance", down_url, tsa_issued.cert)


@pytest.fixture
async def pool(fresh_db_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await open_log_pool(fresh_db_url)
    try:
        yield p
    finally:
        await p.close()


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


async def _write(log: PostgresMessageLog, count: int, prefix: str = "msg") -> None:
    await asyncio.gather(*(log.record(make_entry(f"{prefix}-{i}")) for i in range(count)))


async def _write_and_stamp(
    log: PostgresMessageLog, stamper: Timestamper, count: int
) -> list[LogRecord]:
    """``count`` records written, every one of them timestamped, and the log read back."""
    await _write(log, count)
    assert await stamper.timestamp_pending() == count
    return await log.read_records()


@pytest.fixture
async def live_log(
    pool: asyncpg.Pool,
    session: aiohttp.ClientSession,
    pki: FixturePki,
    live: ApprovedTsa,
    clock: Clock,
) -> AsyncIterator[tuple[Timestamper, PostgresMessageLog]]:
    """A message log and its timestamper, the live TSA the only approved one."""
    stamper = Timestamper(pool, Conf(pki, [live]), session, clock=clock)
    async with PostgresMessageLog(pool, NODE, clock=clock, timestamper=stamper) as log:
        yield stamper, log


async def _batch_count(pool: asyncpg.Pool) -> int:
    value = await pool.fetchval("SELECT count(*) FROM timestamp_batches")
    assert isinstance(value, int)
    return value


async def test_a_batch_of_records_gets_one_token_and_every_proof_verifies(
    pool: asyncpg.Pool,
    live_log: tuple[Timestamper, PostgresMessageLog],
    live: ApprovedTsa,
    tsa_issued: Issued,
    clock: Clock,
) -> None:
    stamper, log = live_log
    records = await _write_and_stamp(log, stamper, 25)
    assert await _batch_count(pool) == 1
    verify_chain(records)
    batches = {r.timestamp.batch.batch_id for r in records if r.timestamp is not None}
    assert len(batches) == 1
    for record in records:
        assert record.timestamp is not None
        info = verify_record_timestamp(
            record.record_hash, record.timestamp, tsa_certs=[tsa_issued.cert], at=clock.now
        )
        assert info.message_imprint.digest == record.timestamp.batch.root
        assert record.timestamp.batch.tsa_url == live.url
        assert record.timestamp.batch.gen_time == NOW
    # Nothing is left to do.
    assert await stamper.timestamp_pending() == 0
    assert await _batch_count(pool) == 1


async def test_a_proof_does_not_verify_for_another_record(
    live_log: tuple[Timestamper, PostgresMessageLog],
    pki: FixturePki,
    tsa_issued: Issued,
    clock: Clock,
) -> None:
    stamper, log = live_log
    first, second, _ = await _write_and_stamp(log, stamper, 3)
    assert first.timestamp is not None
    with pytest.raises(TimestampError, match="inclusion proof"):
        verify_record_timestamp(
            second.record_hash, first.timestamp, tsa_certs=[tsa_issued.cert], at=clock.now
        )
    with pytest.raises(TimestampError):
        verify_record_timestamp(
            first.record_hash, first.timestamp, tsa_certs=[pki.issue("not a TSA").cert]
        )


async def test_a_batch_is_one_row_naming_its_records_and_changed_hashes_do_not_verify(
    pool: asyncpg.Pool,
    live_log: tuple[Timestamper, PostgresMessageLog],
    tsa_issued: Issued,
    clock: Clock,
    fresh_db_url: str,
) -> None:
    stamper, log = live_log
    records = await _write_and_stamp(log, stamper, 5)
    row = await pool.fetchrow("SELECT first_seq, size, leaves FROM timestamp_batches")
    assert row is not None
    assert (row["first_seq"], row["size"]) == (1, 5)
    assert row["leaves"] == b"".join(r.record_hash for r in records)
    # The records themselves carry nothing of the timestamp.
    assert await pool.fetchval("SELECT count(batch_id) FROM message_log") == 0
    # Someone with the database's rights swaps two record hashes in the batch: the proofs
    # computed from them lead to another root than the timestamped one, for every record.
    conn = await asyncpg.connect(fresh_db_url)
    try:
        await conn.execute("SET session_replication_role = replica")
        leaves = bytes(row["leaves"])
        swapped = leaves[32:64] + leaves[:32] + leaves[64:]
        await conn.execute("UPDATE timestamp_batches SET leaves = $1", swapped)
    finally:
        await conn.close()
    tampered = await log.read_records()
    for record in records:  # as written, every proof holds
        assert record.timestamp is not None
        verify_record_timestamp(
            record.record_hash, record.timestamp, tsa_certs=[tsa_issued.cert], at=clock.now
        )
    for record in tampered:
        assert record.timestamp is not None
        with pytest.raises(TimestampError, match="inclusion proof"):
            verify_record_timestamp(
                record.record_hash, record.timestamp, tsa_certs=[tsa_issued.cert], at=clock.now
            )


async def test_a_large_backlog_is_split_into_batches_of_the_limit(
    pool: asyncpg.Pool, session: aiohttp.ClientSession, pki: FixturePki, live: ApprovedTsa
) -> None:
    stamper = Timestamper(pool, Conf(pki, [live]), session, clock=Clock(NOW), max_batch=4)
    async with PostgresMessageLog(pool, NODE, clock=Clock(NOW), timestamper=stamper) as log:
        records = await _write_and_stamp(log, stamper, 10)
    assert await _batch_count(pool) == 3
    assert [r.timestamp.batch.size for r in records if r.timestamp] == [4] * 4 + [4] * 4 + [2] * 2


async def test_tries_the_approved_tsas_in_order(
    pool: asyncpg.Pool,
    session: aiohttp.ClientSession,
    pki: FixturePki,
    live: ApprovedTsa,
    down: ApprovedTsa,
    clock: Clock,
) -> None:
    stamper = Timestamper(pool, Conf(pki, [down, live]), session, clock=clock)
    async with PostgresMessageLog(pool, NODE, clock=clock, timestamper=stamper) as log:
        records = await _write_and_stamp(log, stamper, 2)
    assert {r.timestamp.batch.tsa_url for r in records if r.timestamp} == {live.url}


async def test_refuses_a_token_from_a_tsa_certificate_the_configuration_does_not_list(
    pool: asyncpg.Pool,
    session: aiohttp.ClientSession,
    pki: FixturePki,
    tsa_url: str,
    clock: Clock,
) -> None:
    impostor = ApprovedTsa("listed with another certificate", tsa_url, pki.tsa().cert)
    stamper = Timestamper(pool, Conf(pki, [impostor]), session, clock=clock)
    async with PostgresMessageLog(pool, NODE, clock=clock, timestamper=stamper) as log:
        await _write(log, 2)
        with pytest.raises(TimestampError, match="listed with another certificate"):
            await stamper.timestamp_pending()
        assert all(r.timestamp is None for r in await log.read_records())
    assert await _batch_count(pool) == 0


async def test_an_outage_longer_than_the_acceptable_period_stops_exchanges_until_recovery(
    pool: asyncpg.Pool,
    session: aiohttp.ClientSession,
    pki: FixturePki,
    live: ApprovedTsa,
    down: ApprovedTsa,
    clock: Clock,
) -> None:
    conf = Conf(pki, [down])
    stamper = Timestamper(pool, conf, session, clock=clock)
    async with PostgresMessageLog(pool, NODE, clock=clock, timestamper=stamper) as log:
        await _write(log, 3, "first")
        with pytest.raises(TimestampError, match="HTTP 503"):
            await stamper.timestamp_pending()
        # Records still go in while the TSA is down; the backlog grows.
        clock.now = NOW + dt.timedelta(hours=1)
        await _write(log, 3, "second")
        with pytest.raises(TimestampError):
            await stamper.timestamp_pending()
        log.check_accepting(NOW + PERIOD)

        late = NOW + PERIOD + dt.timedelta(seconds=1)
        with pytest.raises(FaultError) as caught:
            log.check_accepting(late)
        assert caught.value.fault_code == "Server.ClientProxy.TimestampingFailed"
        assert "HTTP 503" in caught.value.message
        with pytest.raises(FaultError) as caught:
            log.check_accepting(late, prefix="Server.ServerProxy")
        assert caught.value.fault_code == "Server.ServerProxy.TimestampingFailed"

        conf.set([down, live])
        clock.now = late
        assert await stamper.timestamp_pending() == 6
        log.check_accepting(late)
        records = await log.read_records()
    assert len(records) == 6
    assert all(r.timestamp is not None for r in records)


async def test_a_restarted_node_remembers_an_old_backlog(
    pool: asyncpg.Pool,
    session: aiohttp.ClientSession,
    pki: FixturePki,
    down: ApprovedTsa,
) -> None:
    async with PostgresMessageLog(pool, NODE, clock=Clock(NOW)) as log:
        await _write(log, 1)
    later = NOW + PERIOD + dt.timedelta(minutes=1)
    stamper = Timestamper(pool, Conf(pki, [down]), session, clock=Clock(later))
    async with PostgresMessageLog(pool, NODE, clock=Clock(later), timestamper=stamper) as log:
        with pytest.raises(FaultError, match="refuses exchanges"):
            log.check_accepting(later)


async def test_an_expired_global_configuration_keeps_records_queued(
    pool: asyncpg.Pool,
    session: aiohttp.ClientSession,
    pki: FixturePki,
    live: ApprovedTsa,
    clock: Clock,
) -> None:
    conf = Conf(pki, [live])
    conf.outdated = True
    stamper = Timestamper(pool, conf, session, clock=clock)
    async with PostgresMessageLog(pool, NODE, clock=clock, timestamper=stamper) as log:
        await _write(log, 1)
        with pytest.raises(TimestampError, match="global configuration"):
            await stamper.timestamp_pending()
        conf.outdated = False
        assert await stamper.timestamp_pending() == 1


async def _wait_until_timestamped(log: PostgresMessageLog, count: int) -> None:
    async def all_stamped() -> None:
        while True:
            records = await log.read_records()
            if len(records) == count and all(r.timestamp is not None for r in records):
                return
            await asyncio.sleep(0.05)

    await asyncio.wait_for(all_stamped(), timeout=30)


async def test_the_background_loop_starts_a_pass_when_the_backlog_is_full(
    pool: asyncpg.Pool,
    session: aiohttp.ClientSession,
    pki: FixturePki,
    live: ApprovedTsa,
    clock: Clock,
) -> None:
    """The interval is an hour, so only the backlog limit can have started the pass."""
    conf = Conf(pki, [live], interval_s=3600)
    async with (
        Timestamper(pool, conf, session, clock=clock, max_batch=5) as stamper,
        PostgresMessageLog(pool, NODE, clock=clock, timestamper=stamper) as log,
    ):
        await _write(log, 5)
        await _wait_until_timestamped(log, 5)
    assert stamper.batches_stored == 1


async def test_the_background_loop_retries_until_the_tsa_is_back(
    pool: asyncpg.Pool,
    session: aiohttp.ClientSession,
    pki: FixturePki,
    live: ApprovedTsa,
    down: ApprovedTsa,
    clock: Clock,
) -> None:
    conf = Conf(pki, [down], interval_s=3600)
    async with (
        Timestamper(
            pool, conf, session, clock=clock, max_batch=2, retry_min_s=0.01, retry_max_s=0.05
        ) as stamper,
        PostgresMessageLog(pool, NODE, clock=clock, timestamper=stamper) as log,
    ):
        # record() never waits for the TSA in the default mode.
        await _write(log, 2)

        for _ in range(3000):  # a bound against hanging, not a timing assertion
            if stamper.state.last_error is not None:
                break
            await asyncio.sleep(0.01)
        else:
            pytest.fail("the background loop never tried the TSA")
        conf.set([live], interval_s=3600)
        await _wait_until_timestamped(log, 2)
    assert stamper.state.last_error is None


async def test_timestamp_immediately_returns_only_timestamped_records(
    pool: asyncpg.Pool,
    session: aiohttp.ClientSession,
    pki: FixturePki,
    live: ApprovedTsa,
    tsa_issued: Issued,
    clock: Clock,
) -> None:
    stamper = Timestamper(pool, Conf(pki, [live]), session, clock=clock)
    async with PostgresMessageLog(
        pool, NODE, clock=clock, timestamper=stamper, timestamp_immediately=True
    ) as log:
        await log.record(make_entry("alone"))
        (record,) = await log.read_records()
        assert record.timestamp is not None
        verify_record_timestamp(record.record_hash, record.timestamp, tsa_certs=[tsa_issued.cert])

        await _write(log, 10, "together")
        records = await log.read_records()
    assert all(r.timestamp is not None for r in records)
    # Concurrent records share passes instead of asking the TSA once each.
    assert stamper.batches_stored < 10


async def test_timestamp_immediately_fails_the_exchange_when_no_tsa_answers(
    pool: asyncpg.Pool,
    session: aiohttp.ClientSession,
    pki: FixturePki,
    down: ApprovedTsa,
    clock: Clock,
) -> None:
    stamper = Timestamper(pool, Conf(pki, [down]), session, clock=clock)
    async with PostgresMessageLog(
        pool, NODE, clock=clock, timestamper=stamper, timestamp_immediately=True
    ) as log:
        with pytest.raises(FaultError) as caught:
            await log.record(make_entry(direction="request_in"))
        assert caught.value.fault_code == "Server.ServerProxy.TimestampingFailed"
        (record,) = await log.read_records()
    # The record stays logged and queued for the next pass.
    assert record.timestamp is None
