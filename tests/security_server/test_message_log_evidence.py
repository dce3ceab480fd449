"""Certificates and OCSP responses stored once by digest (migration 0005): records read back
as written, values shared by many records, a changed or missing value detected, pruning of
values no record names any more, and the writer's failures."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib

import asyncpg
import pytest

from gateway.faults import FaultError
from gateway.log_record import LogEntry, LogIntegrityError, verify_chain
from security_server.log_evidence import StoredEvidence, resolve
from security_server.message_log import PostgresMessageLog
from tests.databases import table_held, until_a_session_waits_for
from tests.pki_factory import NOW
from tests.security_server.test_message_log import (
    NODE,
    Clock,
    _stamp_all,
    clock,
    log,
    make_entry,
    pool,
    superuser,
)

__all__ = ["clock", "log", "pool"]  # the fixtures, imported to be used here

pytestmark = pytest.mark.postgres

#: A renewed OCSP response (the log takes its bytes as given).
RENEWED_OCSP = b"0\x03\n\x01\x01"


def renewed(entry: LogEntry) -> LogEntry:
    return dataclasses.replace(entry, ocsp=RENEWED_OCSP)


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


async def _evidence_rows(pool: asyncpg.Pool) -> dict[bytes, int]:
    rows = await pool.fetch("SELECT digest, last_seq FROM log_evidence")
    return {bytes(r["digest"]): int(r["last_seq"]) for r in rows}


# --- storing and reading ------------------------------------------------------------------------


async def test_records_name_their_evidence_by_digest_and_read_back_as_written(
    log: PostgresMessageLog, pool: asyncpg.Pool
) -> None:
    entries = [make_entry(f"m-{i}") for i in range(3)]
    for entry in entries:
        await log.record(entry)
    records = await log.read_records()
    assert [r.entry for r in records] == entries
    verify_chain(records)
    row = await pool.fetchrow(
        "SELECT certificates, ocsp, certificate_digests, ocsp_digest FROM message_log WHERE seq = 2"
    )
    assert row is not None
    assert row["certificates"] is None
    assert row["ocsp"] is None
    entry = entries[1]
    assert [bytes(d) for d in row["certificate_digests"]] == [sha256(c) for c in entry.certificates]
    assert bytes(row["ocsp_digest"]) == sha256(entry.ocsp)
    stored = {
        bytes(r["digest"]): bytes(r["value"])
        for r in await pool.fetch("SELECT digest, value FROM log_evidence")
    }
    assert stored == {sha256(v): v for v in (*entry.certificates, entry.ocsp)}


async def test_many_records_share_one_copy_of_each_value(
    log: PostgresMessageLog, pool: asyncpg.Pool, clock: Clock
) -> None:
    for round_no in range(4):
        await asyncio.gather(*(log.record(make_entry(f"r{round_no}-{i}")) for i in range(50)))
    # The first batch stored the two certificates and the OCSP response; the others named
    # them without a statement of their own.
    assert log.write_round_trips == 4
    assert log.evidence_round_trips == 1
    assert len(await _evidence_rows(pool)) == 3

    # A renewed OCSP response: stored once, by the first batch naming it.
    await asyncio.gather(*(log.record(renewed(make_entry(f"n-{i}"))) for i in range(20)))
    await log.record(renewed(make_entry("n-last")))
    assert log.evidence_round_trips == 2
    assert len(await _evidence_rows(pool)) == 4
    records = await log.read_records()
    assert len(records) == 221
    assert {r.entry.ocsp for r in records[200:]} == {RENEWED_OCSP}
    verify_chain(records)

    # Another process (or a restart) knows nothing: its first batch stores again (a no-op
    # for the values, already there), then names them freely.
    async with PostgresMessageLog(pool, NODE, clock=clock) as other:
        await other.record(make_entry("other-1"))
        await other.record(make_entry("other-2"))
        assert other.evidence_round_trips == 1
    assert len(await _evidence_rows(pool)) == 4


async def test_a_page_of_records_reads_its_values_in_one_statement(
    log: PostgresMessageLog, pool: asyncpg.Pool
) -> None:
    await log.record(make_entry("a"))
    await log.record(renewed(make_entry("b")))
    await log.record(make_entry("c"))
    statements: list[str] = []

    class Counting:
        async def fetch(self, query: str, *args: object) -> list[asyncpg.Record]:
            statements.append(query)
            return await pool.fetch(query, *args)

    rows = await pool.fetch(
        "SELECT m.seq, m.certificates, m.ocsp, m.certificate_digests, m.ocsp_digest "
        "FROM message_log AS m ORDER BY seq"
    )
    resolved = await resolve(Counting(), rows)  # type: ignore[arg-type]
    assert len(statements) == 1
    assert [ocsp for _, ocsp in resolved] == [b"0\x03\n\x01\x00", RENEWED_OCSP, b"0\x03\n\x01\x00"]
    assert await resolve(Counting(), []) == []  # type: ignore[arg-type]
    assert len(statements) == 1  # no statement when no row names a value


# --- tampering ----------------------------------------------------------------------------------


async def test_a_changed_value_is_reported_as_tampering(
    log: PostgresMessageLog, fresh_db_url: str
) -> None:
    entry = make_entry("m-1")
    await log.record(entry)
    await log.record(make_entry("m-2"))
    conn = await superuser(fresh_db_url)
    try:
        # An intruder with the database owner's rights: the check of the digest is theirs to
        # drop, the append-only triggers theirs to bypass.
        await conn.execute("ALTER TABLE log_evidence DROP CONSTRAINT log_evidence_check")
        await conn.execute(
            "UPDATE log_evidence SET value = overlay(value placing '\\x00'::bytea from 40) "
            "WHERE digest = $1",
            sha256(entry.certificates[0]),
        )
    finally:
        await conn.close()
    with pytest.raises(LogIntegrityError, match="hashes to") as caught:
        await log.read_records()
    assert caught.value.seq == 1
    with pytest.raises(LogIntegrityError, match="hashes to"):
        await log.search(message_id="m-2")


async def test_a_missing_value_is_reported_as_tampering(
    log: PostgresMessageLog, fresh_db_url: str
) -> None:
    entry = make_entry("m-1")
    await log.record(entry)
    conn = await superuser(fresh_db_url)
    try:
        await conn.execute("DELETE FROM log_evidence WHERE digest = $1", sha256(entry.ocsp))
    finally:
        await conn.close()
    with pytest.raises(LogIntegrityError, match="does not hold") as caught:
        await log.read_records()
    assert caught.value.seq == 1


async def test_a_value_that_does_not_match_its_digest_is_refused_when_stored(
    pool: asyncpg.Pool,
) -> None:
    with pytest.raises(asyncpg.CheckViolationError):
        await pool.execute(
            "INSERT INTO log_evidence (digest, value, last_seq) VALUES ($1, 'x', 1)", bytes(32)
        )


async def test_stored_values_never_change(log: PostgresMessageLog, pool: asyncpg.Pool) -> None:
    entry = make_entry("m-1")
    await log.record(entry)
    digest = sha256(entry.ocsp)
    for statement in (
        "UPDATE log_evidence SET value = value WHERE digest = $1",
        "UPDATE log_evidence SET digest = digest WHERE digest = $1",
        "UPDATE log_evidence SET last_seq = last_seq - 1 WHERE digest = $1",
        # Named by record 1, the only (and so the oldest) record left.
        "DELETE FROM log_evidence WHERE digest = $1",
    ):
        with pytest.raises(asyncpg.IntegrityConstraintViolationError):
            await pool.execute(statement, digest)
    with pytest.raises(asyncpg.IntegrityConstraintViolationError):
        await pool.execute("TRUNCATE log_evidence")
    # Moving last_seq forward is what the writer does.
    await pool.execute("UPDATE log_evidence SET last_seq = last_seq + 1 WHERE digest = $1", digest)
    assert [r.entry for r in await log.read_records()] == [entry]


# --- pruning ------------------------------------------------------------------------------------


async def test_retention_deletes_only_values_no_record_left_names(
    pool: asyncpg.Pool, fresh_db_url: str, clock: Clock
) -> None:
    # No margin: last_seq is exactly the last record naming each value (and each batch
    # naming a stored value again moves it).
    async with PostgresMessageLog(pool, NODE, clock=clock, evidence_margin=0) as log:
        first = [make_entry(f"old-{i}") for i in range(4)]  # records 1..4: the first response
        for entry in first:
            await log.record(entry)
        for i in range(3):  # records 5..7: a renewed one
            await log.record(renewed(make_entry(f"new-{i}")))
        old_ocsp, new_ocsp = sha256(first[0].ocsp), sha256(RENEWED_OCSP)
        certificates = [sha256(c) for c in first[0].certificates]
        assert await _evidence_rows(pool) == {
            **dict.fromkeys(certificates, 7),
            old_ocsp: 4,
            new_ocsp: 7,
        }
        await _stamp_all(fresh_db_url)

        # Records 1..3 go: record 4 still names the first response, which stays.
        await log.mark_archived(3, "archive-1", now=NOW)
        assert await log.purge_expired(NOW + dt.timedelta(days=31)) == 3
        assert set(await _evidence_rows(pool)) == {*certificates, old_ocsp, new_ocsp}
        # Records 4..6 go: nothing left names the first response.
        await log.mark_archived(6, "archive-2", now=NOW)
        assert await log.purge_expired(NOW + dt.timedelta(days=31)) == 3
        assert set(await _evidence_rows(pool)) == {*certificates, new_ocsp}
        (last,) = await log.read_records()
        assert last.seq == 7
        assert last.entry.ocsp == RENEWED_OCSP

        # The writer's memory does not outlive what retention deleted: the first response,
        # named again, is stored again.
        back = make_entry("back")
        await log.record(back)
        records = await log.read_records()
        assert [r.seq for r in records] == [7, 8]
        assert records[1].entry == back
        verify_chain(records)


async def test_with_the_default_margin_retention_keeps_values_named_recently(
    log: PostgresMessageLog, pool: asyncpg.Pool, fresh_db_url: str
) -> None:
    for i in range(3):
        await log.record(make_entry(f"m-{i}"))
    await log.record(renewed(make_entry("m-3")))
    await _stamp_all(fresh_db_url)
    await log.mark_archived(3, "archive-1", now=NOW)
    assert await log.purge_expired(NOW + dt.timedelta(days=31)) == 3
    # Records 1..3 named the first response last; its last_seq is past them by the margin.
    assert len(await _evidence_rows(pool)) == 4
    (record,) = await log.read_records()
    assert record.entry.ocsp == RENEWED_OCSP


def test_the_writers_memory_is_bounded_and_keeps_what_is_used() -> None:
    stored = StoredEvidence(kept=2, margin=10)
    a, b, c = b"a" * 32, b"b" * 32, b"c" * 32
    assert stored.to_store([(1, [a, b], [b"A", b"B"])]) == ([a, b], [b"A", b"B"], [11, 11])
    stored.stored([a, b], [11, 11])
    assert stored.to_store([(11, [a, b], [b"A", b"B"])]) == ([], [], [])
    # Past the margin, the value is stored again (its last_seq moved forward).
    assert stored.to_store([(12, [a], [b"A"]), (13, [a], [b"A"])]) == ([a], [b"A"], [23])
    stored.stored([a], [23])
    stored.stored([c], [20])  # b, the least recently used, is forgotten
    assert b not in stored
    assert a in stored
    assert c in stored
    stored.forget()
    assert len(stored) == 0


# --- the writer's failures ----------------------------------------------------------------------


async def _kill_others(holder: asyncpg.Connection) -> None:
    await holder.execute(
        "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )


async def test_refused_evidence_fails_the_batch_and_stores_no_record(
    log: PostgresMessageLog, pool: asyncpg.Pool
) -> None:
    await pool.execute("ALTER TABLE log_evidence ADD CONSTRAINT refuse CHECK (false) NOT VALID")
    with pytest.raises(FaultError) as caught:
        await log.record(make_entry("m-1"))
    assert caught.value.fault_code == "Server.ClientProxy.LoggingFailed"
    assert await pool.fetchval("SELECT count(*) FROM message_log") == 0
    await pool.execute("ALTER TABLE log_evidence DROP CONSTRAINT refuse")
    await log.record(make_entry("m-2"))
    assert log.evidence_round_trips == 2
    (record,) = await log.read_records()
    assert record.entry.message_id == "m-2"


async def test_evidence_whose_connection_was_lost_is_stored_again_with_its_batch(
    log: PostgresMessageLog, pool: asyncpg.Pool, fresh_db_url: str
) -> None:
    """No record was sent: the batch goes once more on a new connection, values first."""
    entry = make_entry("m-1")
    async with table_held(fresh_db_url, "log_evidence") as holder:
        write = asyncio.create_task(log.record(entry))
        await until_a_session_waits_for(holder, "log_evidence")
        await _kill_others(holder)
    await write
    assert log.write_round_trips == 2
    assert log.evidence_round_trips == 2
    (record,) = await log.read_records()
    assert record.entry == entry
    assert len(await _evidence_rows(pool)) == 3


async def test_evidence_that_may_not_be_stored_is_not_assumed_stored(
    pool: asyncpg.Pool, fresh_db_url: str, clock: Clock
) -> None:
    """The statement storing the renewed response ran out of time: stored or not, nobody
    knows, so the next batch naming it stores it again (and the others too: after a failed
    write nothing is assumed)."""
    async with PostgresMessageLog(pool, NODE, clock=clock, write_timeout_s=0.5) as log:
        await log.record(make_entry("m-1"))
        assert log.evidence_round_trips == 1
        async with table_held(fresh_db_url, "log_evidence"):
            with pytest.raises(FaultError):
                await log.record(renewed(make_entry("m-2")))
        assert log.evidence_round_trips == 2
        await log.record(make_entry("m-3"))  # its values were stored, but that is forgotten
        assert log.evidence_round_trips == 3
        await log.record(renewed(make_entry("m-4")))
        assert log.evidence_round_trips == 4
        await log.record(renewed(make_entry("m-5")))
        assert log.evidence_round_trips == 4
        records = await log.read_records()
    assert [r.entry.message_id for r in records] == ["m-1", "m-3", "m-4", "m-5"]
    verify_chain(records)


async def test_a_cut_off_record_write_leaves_stored_evidence_and_forgets_it(
    log: PostgresMessageLog, pool: asyncpg.Pool, fresh_db_url: str
) -> None:
    """The values were stored, the ``COPY`` naming them was cut off: the values stay (the
    retention job removes them if nothing names them), and the next batch stores them again
    rather than trust a memory kept across a failure."""
    async with table_held(fresh_db_url, "message_log") as holder:
        cut = asyncio.create_task(log.record(make_entry("m-1")))
        await until_a_session_waits_for(holder, "message_log")
        assert log.evidence_round_trips == 1
        await _kill_others(holder)
    with pytest.raises(FaultError):
        await cut
    assert len(await _evidence_rows(pool)) == 3
    await log.record(make_entry("m-2"))
    assert log.evidence_round_trips == 2
    records = await log.read_records()
    assert [r.entry.message_id for r in records] == ["m-2"]
