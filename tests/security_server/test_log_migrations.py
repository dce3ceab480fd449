"""Upgrading a message log written before migration 0004 (timestamps kept in each record) and
before migration 0005 (certificates and OCSP response kept in each record)."""

from __future__ import annotations

import datetime as dt

import asyncpg
import pytest

from gateway.hash_tree import verify_proof
from gateway.log_record import GENESIS_HASH, LogRecord, batch_tree, timestamp_leaf, verify_chain
from gateway.transport import encode_proof
from security_server.message_log import COPY_COLUMNS, PostgresMessageLog, copy_row
from storage.migrations import apply_migrations
from tests.clock import Clock
from tests.pki_factory import NOW
from tests.security_server.test_message_log import LOG_MIGRATIONS, NODE, make_entry

pytestmark = pytest.mark.postgres


async def schema_before(conn: asyncpg.Connection, version: int) -> None:
    """The log's tables as a node before migration ``version`` left them."""
    await apply_migrations(conn, LOG_MIGRATIONS, before=version)


async def _write_old_records(conn: asyncpg.Connection, count: int) -> list[LogRecord]:
    records: list[LogRecord] = []
    prev = GENESIS_HASH
    logged_at = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)
    for seq in range(1, count + 1):
        record = LogRecord.append(NODE, seq, logged_at, make_entry(f"old-{seq}"), prev)
        records.append(record)
        prev = record.record_hash
    await conn.copy_records_to_table(
        "message_log", records=[inline_row(r) for r in records], columns=INLINE_COLUMNS
    )
    return records


#: The columns a writer before migration 0005 copied: the certificates and the OCSP response
#: in the record's row instead of their digests.
INLINE_COLUMNS = tuple(
    {"certificate_digests": "certificates", "ocsp_digest": "ocsp"}.get(c, c) for c in COPY_COLUMNS
)


def inline_row(record: LogRecord) -> tuple[object, ...]:
    row = list(copy_row(record, record.canonical_bytes()))
    row[COPY_COLUMNS.index("certificate_digests")] = list(record.entry.certificates)
    row[COPY_COLUMNS.index("ocsp_digest")] = record.entry.ocsp
    return tuple(row)


async def test_a_log_stamped_record_by_record_keeps_its_proofs_after_the_upgrade(
    fresh_db_url: str,
) -> None:
    conn = await asyncpg.connect(fresh_db_url)
    try:
        await schema_before(conn, 4)
        old = await _write_old_records(conn, 4)
        # The old timestamper: one batch over records 1..3, each record given its proof.
        root, proofs = batch_tree([r.record_hash for r in old[:3]])
        batch = await conn.fetchval(
            "INSERT INTO timestamp_batches (root, size, token, tsa_url, gen_time) "
            "VALUES ($1, 3, '\\x30'::bytea, 'http://tsa', now()) RETURNING id",
            root,
        )
        for record, proof in zip(old[:3], proofs, strict=True):
            await conn.execute(
                "UPDATE message_log SET batch_id = $1, batch_proof = $2 WHERE seq = $3",
                batch,
                encode_proof(proof),
                record.seq,
            )
        assert await apply_migrations(conn, LOG_MIGRATIONS) == [
            "0004_batch_ranges.sql",
            "0005_shared_evidence.sql",
            "0006_rows_inline.sql",
        ]
        assert await conn.fetchval("SELECT message_log_timestamped_through()") == 3
        with pytest.raises(asyncpg.IntegrityConstraintViolationError):
            await conn.execute("UPDATE message_log SET batch_proof = NULL WHERE seq = 4")
    finally:
        await conn.close()

    pool = await asyncpg.create_pool(fresh_db_url, min_size=1, max_size=2)
    try:
        async with PostgresMessageLog(pool, NODE, clock=Clock(NOW)) as log:
            await log.record(make_entry("new-5"))
            records = await log.read_records()
            assert [r.seq for r in records] == [1, 2, 3, 4, 5]
            verify_chain(records)  # the new record continues the old chain
            for record, proof in zip(records[:3], proofs, strict=True):
                assert record.timestamp is not None
                assert record.timestamp.batch.batch_id == batch
                assert record.timestamp.proof == proof
            assert [r.timestamp for r in records[3:]] == [None, None]

            # The new timestamper's batch starts right after the old one: records 4 and 5.
            hashes = [r.record_hash for r in records[3:]]
            new_root, _ = batch_tree(hashes)
            await pool.execute(
                "INSERT INTO timestamp_batches (root, size, token, tsa_url, gen_time, "
                "first_seq, leaves) VALUES ($1, 2, '\\x30'::bytea, 'http://tsa', now(), 4, $2)",
                new_root,
                b"".join(hashes),
            )
            stamped = await log.read_records()
        for record in stamped[3:]:
            assert record.timestamp is not None
            assert record.timestamp.batch.root == new_root
            assert verify_proof(
                timestamp_leaf(record.record_hash), record.timestamp.proof, new_root
            )
        for record in stamped[:3]:
            assert record.timestamp is not None
            assert verify_proof(timestamp_leaf(record.record_hash), record.timestamp.proof, root)
    finally:
        await pool.close()


async def test_a_log_written_with_inline_evidence_reads_the_same_after_the_upgrade(
    fresh_db_url: str,
) -> None:
    conn = await asyncpg.connect(fresh_db_url)
    try:
        await schema_before(conn, 5)
        old = await _write_old_records(conn, 4)
        # The current timestamper's batch over records 1..3, stored before the upgrade.
        hashes = [r.record_hash for r in old[:3]]
        root, proofs = batch_tree(hashes)
        await conn.execute(
            "INSERT INTO timestamp_batches (root, size, token, tsa_url, gen_time, first_seq, "
            "leaves) VALUES ($1, 3, '\\x30'::bytea, 'http://tsa', now(), 1, $2)",
            root,
            b"".join(hashes),
        )
        assert await apply_migrations(conn, LOG_MIGRATIONS) == [
            "0005_shared_evidence.sql",
            "0006_rows_inline.sql",
        ]
        # The old rows are left as they were: inline values, no digests, nothing shared.
        forms = await conn.fetch(
            "SELECT certificates IS NOT NULL AS inline, certificate_digests IS NULL "
            "AND ocsp_digest IS NULL AS no_digests FROM message_log ORDER BY seq"
        )
        assert [(f["inline"], f["no_digests"]) for f in forms] == [(True, True)] * 4
        assert await conn.fetchval("SELECT count(*) FROM log_evidence") == 0
    finally:
        await conn.close()

    pool = await asyncpg.create_pool(fresh_db_url, min_size=1, max_size=2)
    try:
        async with PostgresMessageLog(pool, NODE, clock=Clock(NOW)) as log:
            before = await log.read_records()
            assert [r.entry for r in before] == [r.entry for r in old]
            assert [r.record_hash for r in before] == [r.record_hash for r in old]
            for record, proof in zip(before[:3], proofs, strict=True):
                assert record.timestamp is not None
                assert record.timestamp.proof == proof
            assert before[3].timestamp is None

            new = [make_entry("new-5"), make_entry("new-6")]
            for entry in new:
                await log.record(entry)
            records = await log.read_records()
            assert [r.seq for r in records] == [1, 2, 3, 4, 5, 6]
            assert [r.entry for r in records] == [*(r.entry for r in old), *new]
            verify_chain(records)  # the new records continue the old chain
            # Searches mix both forms too.
            assert [r.seq for r in await log.search(issue="case-2026/17")] == [1, 2, 3, 4, 5, 6]

        forms = await pool.fetch(
            "SELECT seq, certificates IS NULL AND ocsp IS NULL AS shared FROM message_log "
            "ORDER BY seq"
        )
        assert [f["shared"] for f in forms] == [False] * 4 + [True] * 2
        # The new records' certificates (two) and OCSP response, once.
        assert await pool.fetchval("SELECT count(*) FROM log_evidence") == 3
        # A row must have one form or the other, never both or neither.
        rows = await pool.fetch(
            f"SELECT {', '.join(COPY_COLUMNS)} FROM message_log WHERE seq = 5"  # noqa: S608
        )
        both = list(rows[0].values())
        both[0] = 7
        neither = list(both)
        neither[COPY_COLUMNS.index("ocsp_digest")] = None
        for row, columns in (
            ([*both, [b"c"], b"o"], (*COPY_COLUMNS, "certificates", "ocsp")),
            (neither, COPY_COLUMNS),
        ):
            with pytest.raises(asyncpg.CheckViolationError):
                await pool.copy_records_to_table("message_log", records=[row], columns=columns)
    finally:
        await pool.close()
