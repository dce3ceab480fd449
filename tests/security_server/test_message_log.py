"""The message log on a real PostgreSQL database: batched fail-closed writes, the hash chain,
the append-only trigger, privacy switches, search, archiving marks and retention."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
from collections.abc import AsyncIterator

import asyncpg
import pytest
import structlog.testing

from certs.signer import SoftwareSigner
from config.errors import ConfigError, ValidationError
from gateway.faults import FaultError
from gateway.hash_tree import InclusionProof
from gateway.identifiers import MemberId, SecurityServerId, ServiceId, SubsystemId
from gateway.log_record import (
    GENESIS_HASH,
    Direction,
    LogEntry,
    LogIntegrityError,
    LogRecord,
    batch_tree,
    chain_problems,
    verify_chain,
)
from gateway.transport import RequestPart, ResponsePart, body_digest, encode_proof, sign_one
from security_server.message_log import (
    PostgresMessageLog,
    check_server_version,
    set_body_compression,
)
from security_server.runtime import MessageLog
from storage.migrations import apply_migrations
from tests.clock import Clock
from tests.pki_factory import NOW, FixturePki

pytestmark = pytest.mark.postgres

NODE = SecurityServerId("IQ", "GOV", "HJC", "ss1")
CLIENT = SubsystemId("IQ", "GOV", "HJC", "inheritance")
OTHER_CLIENT = SubsystemId("IQ", "GOV", "NPA", "pensions")
SERVICE = ServiceId("IQ", "GOV", "MOH", "forensic", "getDeathRecord", "v1")
OTHER_SERVICE = ServiceId("IQ", "GOV", "NDC", "population", "getCitizen", None)
LOG_MIGRATIONS = "security_server.log_migrations"

_PKI = FixturePki.create()
_SIGNING = _PKI.signing("IQ/GOV/HJC")
SIGNER = SoftwareSigner(_SIGNING.key, _SIGNING.cert, [])


def make_entry(
    message_id: str = "msg-1",
    *,
    direction: Direction = "request_out",
    body: bytes = '{"citizen":"أحمد"}'.encode(),
    log_body: bool = True,
    client: SubsystemId | MemberId = CLIENT,
    service: ServiceId = SERVICE,
    user_id: str | None = "officer-7",
    issue: str | None = "case-2026/17",
) -> LogEntry:
    """A real signed message (CMS signature, proof, certificate) as a log entry."""
    request = RequestPart(
        protocol="REST",
        message_id=message_id,
        client=client,
        service=service,
        method="POST",
        path="/records",
        query=None,
        headers=(("Content-Type", "application/json"),),
        body_sha256=body_digest(body),
        created_at=NOW,
        user_id=user_id,
        issue=issue,
    )
    part: RequestPart | ResponsePart = request
    if direction in ("response_in", "response_out"):
        part = ResponsePart.answering(
            request, status=200, headers=(), body=body, created_at=NOW + dt.timedelta(seconds=1)
        )
    sealed = sign_one(part, SIGNER, now=NOW)
    return LogEntry.for_message(
        direction,
        part,
        signed_part_bytes=part.to_bytes(),
        body=body,
        log_body=log_body,
        signature=sealed.signature,
        proof=sealed.proof,
        certificates=[_SIGNING.cert, _PKI.root.cert],
        ocsp=b"0\x03\n\x01\x00",
        conf_version=7,
    )


async def open_log_pool(url: str) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(url, min_size=1, max_size=4)
    async with pool.acquire() as conn:
        await apply_migrations(conn, LOG_MIGRATIONS)
    return pool


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


@pytest.fixture
async def log(pool: asyncpg.Pool, clock: Clock) -> AsyncIterator[PostgresMessageLog]:
    async with PostgresMessageLog(pool, NODE, clock=clock) as message_log:
        yield message_log


async def superuser(url: str) -> asyncpg.Connection:
    """A connection that bypasses the append-only trigger, as an attacker with the database
    superuser's rights could."""
    conn = await asyncpg.connect(url)
    await conn.execute("SET session_replication_role = replica")
    return conn


async def write(log: PostgresMessageLog, count: int, prefix: str = "msg") -> list[LogEntry]:
    entries = [make_entry(f"{prefix}-{i}") for i in range(count)]
    for entry in entries:
        await log.record(entry)
    return entries


# --- writing and chaining -----------------------------------------------------------------------


async def test_records_are_written_in_order_and_chained(log: PostgresMessageLog) -> None:
    entries = await write(log, 3)
    records = await log.read_records()
    assert [r.seq for r in records] == [1, 2, 3]
    assert [r.entry for r in records] == entries
    assert records[0].prev_hash == GENESIS_HASH
    assert records[1].prev_hash == records[0].record_hash
    assert all(r.node == NODE and r.timestamp is None for r in records)
    summary = verify_chain(records)
    assert (summary.count, summary.last_seq) == (3, 3)
    assert await log.head() == (3, records[-1].record_hash)


async def test_satisfies_the_runtime_protocol(log: PostgresMessageLog) -> None:
    as_protocol: MessageLog = log
    await as_protocol.record(make_entry())
    as_protocol.check_accepting(NOW)
    assert log.records_written == 1


async def test_concurrent_records_share_one_database_round_trip(log: PostgresMessageLog) -> None:
    entries = [make_entry(f"concurrent-{i}") for i in range(50)]
    await asyncio.gather(*(log.record(e) for e in entries))
    assert log.write_round_trips == 1
    records = await log.read_records()
    assert sorted(r.entry.message_id for r in records) == sorted(e.message_id for e in entries)
    verify_chain(records)


async def test_a_restarted_log_continues_the_chain(pool: asyncpg.Pool, clock: Clock) -> None:
    async with PostgresMessageLog(pool, NODE, clock=clock) as first:
        await write(first, 2, "before")
    async with PostgresMessageLog(pool, NODE, clock=clock) as second:
        await write(second, 2, "after")
        records = await second.read_records()
    assert [r.seq for r in records] == [1, 2, 3, 4]
    verify_chain(records)


async def test_worker_processes_sharing_the_database_keep_one_chain(
    pool: asyncpg.Pool, fresh_db_url: str, clock: Clock
) -> None:
    """Two logs on separate pools stand for two worker processes of one node: each one's head
    goes stale whenever the other appends, and the conflict is resolved by re-reading it."""
    other_pool = await asyncpg.create_pool(fresh_db_url, min_size=1, max_size=2)
    try:
        async with (
            PostgresMessageLog(pool, NODE, clock=clock) as a,
            PostgresMessageLog(other_pool, NODE, clock=clock) as b,
        ):
            for round_no in range(3):
                await asyncio.gather(
                    *(a.record(make_entry(f"a-{round_no}-{i}")) for i in range(5)),
                    *(b.record(make_entry(f"b-{round_no}-{i}")) for i in range(5)),
                )
            records = await a.read_records()
    finally:
        await other_pool.close()
    assert [r.seq for r in records] == list(range(1, 31))
    verify_chain(records)


# --- failing closed -----------------------------------------------------------------------------


async def test_a_failed_write_fails_every_caller_of_the_batch_and_stores_nothing(
    log: PostgresMessageLog, fresh_db_url: str
) -> None:
    admin = await asyncpg.connect(fresh_db_url)
    try:
        # One record of the batch breaks a constraint only the database knows about.
        await admin.execute(
            "ALTER TABLE message_log ADD CONSTRAINT no_poison CHECK (message_id <> 'poison')"
        )
        entries = [make_entry(f"batch-{i}") for i in range(4)] + [make_entry("poison")]
        with structlog.testing.capture_logs() as logged:
            results = await asyncio.gather(
                *(log.record(e) for e in entries), return_exceptions=True
            )
        assert log.write_round_trips == 1
        faults = [r for r in results if isinstance(r, FaultError)]
        assert len(faults) == len(entries)
        assert {f.fault_code for f in faults} == {"Server.ClientProxy.LoggingFailed"}
        # The client sees no database text, only the id of the node's log line that has it.
        assert all("no_poison" not in f.message for f in faults)
        (line,) = [e for e in logged if e["event"] == "message_log_write_failed"]
        assert "no_poison" in line["error"]
        assert line["fault_details"] == [f.detail for f in faults]
        assert await admin.fetchval("SELECT count(*) FROM message_log") == 0

        await admin.execute("ALTER TABLE message_log DROP CONSTRAINT no_poison")
        await log.record(make_entry("after"))
    finally:
        await admin.close()
    records = await log.read_records()
    assert [r.seq for r in records] == [1]
    verify_chain(records)


async def test_a_lost_database_fails_closed_with_the_provider_prefix(
    pool: asyncpg.Pool, clock: Clock
) -> None:
    async with PostgresMessageLog(pool, NODE, clock=clock) as message_log:
        await pool.close()
        with pytest.raises(FaultError) as caught:
            await message_log.record(make_entry(direction="request_in"))
    assert caught.value.fault_code == "Server.ServerProxy.LoggingFailed"
    assert "stopped" in caught.value.message


async def test_a_dropped_table_fails_closed(log: PostgresMessageLog, fresh_db_url: str) -> None:
    await log.record(make_entry("first"))
    admin = await asyncpg.connect(fresh_db_url)
    try:
        await admin.execute("ALTER TABLE message_log RENAME TO message_log_gone")
        with pytest.raises(FaultError) as caught:
            await log.record(make_entry("second", direction="response_in"))
        assert caught.value.fault_code == "Server.ClientProxy.LoggingFailed"
        assert await admin.fetchval("SELECT count(*) FROM message_log_gone") == 1
    finally:
        await admin.close()


async def test_refuses_an_entry_that_contradicts_its_signed_part(log: PostgresMessageLog) -> None:
    entry = dataclasses.replace(make_entry("real-id"), message_id="other-id")
    with pytest.raises(FaultError) as caught:
        await log.record(entry)
    assert caught.value.fault_code == "Server.ClientProxy.LoggingFailed"
    assert "message_id" in caught.value.message


async def test_refuses_to_record_after_close(pool: asyncpg.Pool, clock: Clock) -> None:
    message_log = PostgresMessageLog(pool, NODE, clock=clock)
    await message_log.start()
    await message_log.close()
    with pytest.raises(FaultError, match="not running"):
        await message_log.record(make_entry())


# --- append-only --------------------------------------------------------------------------------


async def test_the_database_refuses_to_change_or_delete_records(
    log: PostgresMessageLog, fresh_db_url: str
) -> None:
    await write(log, 2)
    conn = await asyncpg.connect(fresh_db_url)
    try:
        for statement in (
            "UPDATE message_log SET message_id = 'forged' WHERE seq = 1",
            "UPDATE message_log SET body = NULL WHERE seq = 1",
            # Naming a content column is refused even when the value stays the same.
            "UPDATE message_log SET record = record WHERE seq = 1",
            "UPDATE message_log SET certificates = certificates, ocsp = ocsp WHERE seq = 2",
            # A timestamp reference together with a content column: refused as a whole.
            "UPDATE message_log SET batch_id = NULL, batch_proof = NULL, "
            "prev_hash = record_hash WHERE seq = 2",
            "DELETE FROM message_log WHERE seq = 1",
            "TRUNCATE message_log CASCADE",
        ):
            with pytest.raises(asyncpg.IntegrityConstraintViolationError):
                await conn.execute(statement)
        assert await conn.fetchval("SELECT count(*) FROM message_log") == 2
    finally:
        await conn.close()


async def test_records_are_never_updated_and_batches_never_change(
    log: PostgresMessageLog, fresh_db_url: str
) -> None:
    await write(log, 2)
    await _stamp_all(fresh_db_url)
    conn = await asyncpg.connect(fresh_db_url)
    try:
        for statement in (
            # Not even a timestamp reference: batches name their records, not the reverse.
            "UPDATE message_log SET batch_id = NULL, batch_proof = NULL",
            "UPDATE message_log SET batch_id = (SELECT max(id) FROM timestamp_batches), "
            "batch_proof = '\\x00'::bytea WHERE seq = 1",
            "UPDATE timestamp_batches SET tsa_url = 'http://other'",
            "UPDATE timestamp_batches SET first_seq = 2",
        ):
            with pytest.raises(asyncpg.IntegrityConstraintViolationError):
                await conn.execute(statement)
        # A batch must keep one 32-byte hash per record it covers, and cover a range once.
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                "INSERT INTO timestamp_batches (root, size, token, tsa_url, gen_time, "
                "first_seq, leaves) VALUES ($1, 2, '\\x30'::bytea, 'http://tsa', now(), 1, $2)",
                bytes(32),
                bytes(32),
            )
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute(
                "INSERT INTO timestamp_batches (root, size, token, tsa_url, gen_time, "
                "first_seq, leaves) VALUES ($1, 1, '\\x30'::bytea, 'http://tsa', now(), 1, $1)",
                bytes(32),
            )
        assert await conn.fetchval("SELECT message_log_timestamped_through()") == 2
    finally:
        await conn.close()


async def test_records_stamped_before_batch_ranges_are_read_with_their_own_proofs(
    log: PostgresMessageLog, fresh_db_url: str
) -> None:
    # A log timestamped before migration 0004 kept each record's batch and proof in the
    # record; such records are read as they are, and new records get range batches after them.
    await write(log, 3)
    hashes = [r.record_hash for r in await log.read_records()]
    root, proofs = batch_tree(hashes[:2])
    conn = await superuser(fresh_db_url)
    try:
        batch = await conn.fetchval(
            "INSERT INTO timestamp_batches (root, size, token, tsa_url, gen_time) "
            "VALUES ($1, 2, '\\x30'::bytea, 'http://tsa', now()) RETURNING id",
            root,
        )
        for seq, proof in ((1, proofs[0]), (2, proofs[1])):
            await conn.execute(
                "UPDATE message_log SET batch_id = $1, batch_proof = $2 WHERE seq = $3",
                batch,
                encode_proof(proof),
                seq,
            )
    finally:
        await conn.close()
    records = await log.read_records()
    assert [r.timestamp is not None for r in records] == [True, True, False]
    for record, proof in zip(records[:2], proofs, strict=True):
        assert record.timestamp is not None
        assert record.timestamp.batch.batch_id == batch
        assert record.timestamp.proof == proof
    conn = await asyncpg.connect(fresh_db_url)
    try:
        assert await conn.fetchval("SELECT message_log_timestamped_through()") == 2
    finally:
        await conn.close()
    await _stamp_all(fresh_db_url)
    third = (await log.read_records())[2]
    assert third.timestamp is not None
    assert third.timestamp.batch.batch_id != batch
    assert third.timestamp.proof == InclusionProof(0, 1, ())


# --- tampering ----------------------------------------------------------------------------------


async def _tamper_and_read(log: PostgresMessageLog, url: str, *statements: str) -> list[LogRecord]:
    conn = await superuser(url)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()
    return await log.read_records()


@pytest.mark.parametrize(
    "statement",
    [
        # a byte of the stored body
        "UPDATE message_log SET body = overlay(body placing '\\x58'::bytea from 3) WHERE seq = 3",
        # a byte of the signed part
        "UPDATE message_log SET signed_part = overlay(signed_part placing '\\x20'::bytea from 20)"
        " WHERE seq = 3",
        # a byte of the signature
        "UPDATE message_log SET signature = overlay(signature placing '\\x00'::bytea from 30)"
        " WHERE seq = 3",
        # one id in the canonical record (still valid, canonical JSON)
        "UPDATE message_log SET record = "
        "convert_to(replace(convert_from(record, 'UTF8'), 'msg-2', 'msg-9'), 'UTF8') WHERE seq = 3",
    ],
    ids=["body", "signed-part", "signature", "record"],
)
async def test_detects_a_changed_byte(
    log: PostgresMessageLog, fresh_db_url: str, statement: str
) -> None:
    await write(log, 5)
    records = await _tamper_and_read(log, fresh_db_url, statement)
    with pytest.raises(LogIntegrityError) as caught:
        verify_chain(records)
    assert caught.value.seq == 3


async def test_detects_a_removed_record(log: PostgresMessageLog, fresh_db_url: str) -> None:
    await write(log, 5)
    records = await _tamper_and_read(log, fresh_db_url, "DELETE FROM message_log WHERE seq = 3")
    with pytest.raises(LogIntegrityError, match="missing") as caught:
        verify_chain(records)
    assert caught.value.seq == 4


async def test_detects_two_swapped_records(log: PostgresMessageLog, fresh_db_url: str) -> None:
    await write(log, 5)
    records = await _tamper_and_read(
        log,
        fresh_db_url,
        "UPDATE message_log SET seq = seq + 1000 WHERE seq IN (2, 3)",
        "UPDATE message_log SET seq = 3 WHERE seq = 1002",
        "UPDATE message_log SET seq = 2 WHERE seq = 1003",
    )
    assert [r.seq for r in records] == [1, 3, 2, 4, 5]
    with pytest.raises(LogIntegrityError) as caught:
        verify_chain(records)
    assert caught.value.seq == 3
    assert any("reordered" in p.reason for p in chain_problems(records))


async def test_detects_a_rewritten_tail(log: PostgresMessageLog, fresh_db_url: str) -> None:
    """Deleting the newest record leaves a valid chain, but not the head that was published
    (an archive or a timestamp); the caller compares heads."""
    await write(log, 3)
    head_before = await log.head()
    records = await _tamper_and_read(log, fresh_db_url, "DELETE FROM message_log WHERE seq = 3")
    assert verify_chain(records).head_hash != head_before[1]


# --- bodies -------------------------------------------------------------------------------------


async def test_body_logging_off_for_the_node_keeps_only_the_digest(
    pool: asyncpg.Pool, clock: Clock
) -> None:
    entry = make_entry("private")
    async with PostgresMessageLog(pool, NODE, clock=clock, log_bodies=False) as message_log:
        await message_log.record(entry)
        (record,) = await message_log.read_records()
    assert record.entry.body is None
    assert record.entry.body_digest == hashlib.sha256(entry.body or b"").hexdigest()
    verify_chain([record])


async def test_body_logging_off_for_a_subsystem_keeps_only_the_digest(
    log: PostgresMessageLog,
) -> None:
    await log.record(make_entry("a", log_body=False))
    await log.record(make_entry("b"))
    records = await log.read_records()
    assert [r.entry.body is None for r in records] == [True, False]
    verify_chain(records)


async def test_a_body_over_the_limit_keeps_only_the_digest(
    pool: asyncpg.Pool, clock: Clock
) -> None:
    async with PostgresMessageLog(pool, NODE, clock=clock, max_body_bytes=10) as message_log:
        await message_log.record(make_entry("small", body=b"tiny"))
        await message_log.record(make_entry("large", body=b"x" * 11))
        records = await message_log.read_records()
    assert [r.entry.body for r in records] == [b"tiny", None]
    verify_chain(records)


async def test_logs_responses_with_their_request_hash(log: PostgresMessageLog) -> None:
    await log.record(make_entry("exchange", direction="request_out"))
    await log.record(make_entry("exchange", direction="response_in"))
    request, response = await log.read_records()
    assert request.entry.request_hash is None
    assert response.entry.request_hash is not None
    verify_chain([request, response])


# --- search -------------------------------------------------------------------------------------


async def test_searches_by_ids_and_time(log: PostgresMessageLog, clock: Clock) -> None:
    await log.record(make_entry("one"))
    clock.now = NOW + dt.timedelta(minutes=5)
    await log.record(make_entry("two", client=OTHER_CLIENT, user_id="clerk-1", issue=None))
    clock.now = NOW + dt.timedelta(minutes=10)
    await log.record(make_entry("three", service=OTHER_SERVICE))

    async def ids(**criteria: object) -> list[str]:
        return [r.entry.message_id for r in await log.search(**criteria)]  # type: ignore[arg-type]

    assert await ids(message_id="two") == ["two"]
    assert await ids(client=OTHER_CLIENT) == ["two"]
    assert await ids(client=str(CLIENT)) == ["one", "three"]
    assert await ids(service=OTHER_SERVICE) == ["three"]
    assert await ids(user_id="clerk-1") == ["two"]
    assert await ids(issue="case-2026/17") == ["one", "three"]
    assert await ids(since=NOW + dt.timedelta(minutes=5)) == ["two", "three"]
    assert await ids(until=NOW + dt.timedelta(minutes=5)) == ["one"]
    assert await ids(client=CLIENT, since=NOW + dt.timedelta(minutes=1)) == ["three"]
    assert await ids(limit=2, newest_first=True) == ["three", "two"]
    assert await ids(message_id="none") == []


async def test_search_refuses_unbounded_limits(log: PostgresMessageLog) -> None:
    with pytest.raises(ValidationError, match="limit"):
        await log.search(limit=100_000)


# --- archiving and retention --------------------------------------------------------------------


async def _stamp_all(url: str) -> None:
    """Cover every record waiting for a timestamp with one batch (a fake token), as the
    timestamper would."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT seq, record_hash FROM message_log "
            "WHERE seq > (SELECT message_log_timestamped_through()) ORDER BY seq"
        )
        hashes = [bytes(r["record_hash"]) for r in rows]
        root, _ = batch_tree(hashes)
        await conn.execute(
            "INSERT INTO timestamp_batches (root, size, token, tsa_url, gen_time, first_seq, "
            "leaves) VALUES ($1, $2, '\\x30'::bytea, 'http://tsa', now(), $3, $4)",
            root,
            len(rows),
            rows[0]["seq"],
            b"".join(hashes),
        )
    finally:
        await conn.close()


async def test_only_timestamped_records_are_archived(
    log: PostgresMessageLog, fresh_db_url: str
) -> None:
    await write(log, 3)
    assert await log.fetch_for_archive() == []
    with pytest.raises(ValidationError, match="not timestamped"):
        await log.mark_archived(3, "archive-1")
    await _stamp_all(fresh_db_url)
    await write(log, 1, "late")
    ready = await log.fetch_for_archive()
    assert [r.seq for r in ready] == [1, 2, 3]
    assert all(r.timestamp is not None for r in ready)
    await log.mark_archived(2, "archive-1")
    assert await log.archived_through() == 2
    assert [r.seq for r in await log.fetch_for_archive()] == [3]
    with pytest.raises(ValidationError, match="already archived"):
        await log.mark_archived(2, "archive-2")
    with pytest.raises(ValidationError, match="already recorded"):
        await log.mark_archived(3, "archive-1")


async def test_retention_deletes_only_archived_records_after_the_period(
    log: PostgresMessageLog, fresh_db_url: str, clock: Clock
) -> None:
    await write(log, 4)
    await _stamp_all(fresh_db_url)
    await log.mark_archived(4, "archive-1", now=NOW)
    await write(log, 1, "new")

    assert await log.purge_expired(NOW + dt.timedelta(days=29)) == 0
    assert await log.purge_expired(NOW + dt.timedelta(days=31)) == 4
    remaining = await log.read_records()
    assert [r.seq for r in remaining] == [5]
    # The rest of the chain still verifies, starting from the last archived record's hash.
    verify_chain(remaining)
    conn = await asyncpg.connect(fresh_db_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM timestamp_batches") == 0
    finally:
        await conn.close()


async def test_retention_keeps_the_newest_record(
    log: PostgresMessageLog, fresh_db_url: str
) -> None:
    await write(log, 2)
    await _stamp_all(fresh_db_url)
    await log.mark_archived(2, "archive-1", now=NOW)
    assert await log.purge_expired(NOW + dt.timedelta(days=60)) == 1
    await log.record(make_entry("next"))
    records = await log.read_records()
    assert [r.seq for r in records] == [2, 3]
    verify_chain(records)


def test_entries_refuse_a_missing_request_hash() -> None:
    entry = make_entry(direction="response_in")
    with pytest.raises(ValueError, match="request_hash"):
        dataclasses.replace(entry, request_hash=None)


# --- body storage -------------------------------------------------------------------------------


async def _body_column(pool: asyncpg.Pool) -> tuple[str, str]:
    row = await pool.fetchrow(
        "SELECT attstorage::text AS attstorage, attcompression::text AS attcompression "
        "FROM pg_attribute "
        "WHERE attrelid = 'message_log'::regclass AND attname = 'body'"
    )
    assert row is not None
    return row["attstorage"], row["attcompression"]


async def test_bodies_are_stored_as_the_setting_says(
    log: PostgresMessageLog, pool: asyncpg.Pool
) -> None:
    lz4 = await pool.fetchval(
        "SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'"
    )
    assert await set_body_compression(pool, "none") == "none"
    assert (await _body_column(pool))[0] == "e"
    assert await set_body_compression(pool, "pglz") == "pglz"
    assert await _body_column(pool) == ("x", "p")
    assert await set_body_compression(pool, "auto") == ("lz4" if lz4 else "pglz")
    assert await _body_column(pool) == ("x", "l" if lz4 else "p")
    if lz4:
        assert await set_body_compression(pool, "lz4") == "lz4"
    else:
        with pytest.raises(ConfigError, match="without lz4"):
            await set_body_compression(pool, "lz4")
    # Records written under any of them read back the same.
    body = b'{"records": "' + b"0123456789abcdef" * 8192 + b'"}'
    for choice in ("none", "pglz", "auto"):
        await set_body_compression(pool, choice)
        await log.record(make_entry(f"big-{choice}", body=body))
    bodies = [r.entry.body for r in await log.read_records()]
    assert bodies == [body] * 3


def test_a_server_older_than_postgresql_14_is_refused_with_what_to_do() -> None:
    check_server_version(140000)
    check_server_version(170002)
    with pytest.raises(ConfigError, match="version 13; a node needs PostgreSQL 14 or newer"):
        check_server_version(130012)


async def test_a_record_is_stored_whole_in_its_row_and_only_a_large_body_goes_out_of_line(
    log: PostgresMessageLog, pool: asyncpg.Pool
) -> None:
    for i in range(3):
        await log.record(make_entry(f"inline-{i}"))
    logical = await pool.fetch(
        "SELECT octet_length(record) + octet_length(signed_part) + octet_length(signature) "
        "+ octet_length(proof) AS size FROM message_log"
    )
    # Over PostgreSQL's default toasting threshold (about 2 KB): by default these rows would be
    # cut into TOAST pieces; migration 0006 keeps them whole.
    assert min(r["size"] for r in logical) > 2100
    toast_size = (
        "SELECT pg_relation_size(reltoastrelid) FROM pg_class WHERE oid = 'message_log'::regclass"
    )
    assert await pool.fetchval(toast_size) == 0

    # A body too large for a page still goes to the TOAST table, alone: the signature and the
    # record beside it stay in the row (one value out of line, not several).
    body = hashlib.shake_256(b"incompressible").digest(20_000)
    await log.record(make_entry("large-body", body=body))
    toast_table = await pool.fetchval(
        "SELECT reltoastrelid::regclass::text FROM pg_class WHERE oid = 'message_log'::regclass"
    )
    values_out_of_line = await pool.fetchval(
        f"SELECT count(DISTINCT chunk_id) FROM {toast_table}"  # noqa: S608 (a catalogue name)
    )
    assert values_out_of_line == 1
    records = await log.read_records()
    assert [r.entry.body for r in records][-1] == body
