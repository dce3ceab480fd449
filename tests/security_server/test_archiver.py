"""The archiver on a real message log (PostgreSQL) timestamped by a real TSA over HTTP: closed
periods become archives that the offline auditor verifies, records are marked only once their
archive is durable, and a crash in between is recovered."""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from audit.archive_format import ArchiveBuilder, ArchiveRecord, LinkingFile
from audit.verifier import verify_path
from gateway.log_record import LogRecord
from security_server.archiver import (
    Archiver,
    ArchiverError,
    ConfHistory,
    DirectoryStore,
    PostgresArchiveRows,
)
from security_server.message_log import PostgresMessageLog
from security_server.timestamper import Timestamper
from storage.embedded import database_url
from storage.migrations import apply_migrations
from tests.audit.evidence import HJC_SS1, Federation, NodeLog, logging_node
from tests.clock import Clock
from tests.databases import temporary_database
from tests.pki_factory import NOW
from tests.security_server.test_log_migrations import INLINE_COLUMNS, inline_row, schema_before

pytestmark = pytest.mark.postgres

START = NOW.replace(minute=0)
HOUR = dt.timedelta(hours=1)


@dataclasses.dataclass
class Node:
    """A node's message log, timestamper and archiver sharing one clock."""

    federation: Federation
    log: PostgresMessageLog
    timestamper: Timestamper
    history: ConfHistory
    clock: Clock
    archive_dir: Path
    entries: NodeLog
    pool: asyncpg.Pool

    def archiver(self, **options: object) -> Archiver:
        return Archiver(
            self.log,
            DirectoryStore(self.archive_dir),
            self.history,
            clock=self.clock,
            **options,  # type: ignore[arg-type]
        )

    async def exchanges(self, count: int, at: dt.datetime, *, stamp: bool = True) -> None:
        self.clock.now = at
        for exchange in self.entries.exchanges(count, at - dt.timedelta(seconds=1)):
            await self.log.record(exchange.request)
            await self.log.record(exchange.response)
        if stamp:
            await self.timestamper.timestamp_pending()


@pytest.fixture
async def node(fresh_db_url: str, tmp_path: Path) -> AsyncIterator[Node]:
    async with logging_node(fresh_db_url, tmp_path, Clock(START), Federation()) as logging:
        archive_dir = tmp_path / "archives"
        archive_dir.mkdir()
        yield Node(
            logging.federation,
            logging.log,
            logging.timestamper,
            logging.history,
            logging.clock,
            archive_dir,
            NodeLog(logging.federation),
            logging.pool,
        )


def _archives(directory: Path) -> list[Path]:
    return sorted(directory.glob("archive-*.zip"))


async def test_closed_periods_become_archives_the_auditor_verifies(node: Node) -> None:
    await node.exchanges(3, START + dt.timedelta(minutes=10))
    await node.exchanges(1, START + HOUR + dt.timedelta(minutes=10))
    archiver = node.archiver()

    node.clock.now = START + HOUR + dt.timedelta(minutes=30)
    assert await archiver.archive_once() == ["archive-00000001-20261101T120000Z.zip"]
    assert await node.log.archived_through() == 6  # three exchanges: six records
    first = verify_path(node.archive_dir, anchor=node.federation.anchor)
    assert first.ok, first.failures()

    node.clock.now = START + 2 * HOUR + dt.timedelta(minutes=5)
    assert await archiver.archive_once() == ["archive-00000002-20261101T130000Z.zip"]
    assert await node.log.archived_through() == 8
    report = verify_path(node.archive_dir, anchor=node.federation.anchor)
    assert report.ok, report.failures()
    chain = report.find("archive chain of node IQ/GOV/HJC/ss1")
    assert chain is not None
    assert chain.ok
    # Nothing is left to archive, and nothing is written twice.
    assert await archiver.archive_once() == []
    assert len(_archives(node.archive_dir)) == 2


async def test_an_open_period_is_not_archived(node: Node) -> None:
    await node.exchanges(1, START + dt.timedelta(minutes=10))
    node.clock.now = START + HOUR + dt.timedelta(minutes=1)  # inside the grace period
    assert await node.archiver().archive_once() == []
    assert await node.log.archived_through() == 0


async def test_records_waiting_for_a_timestamp_hold_back_their_period(node: Node) -> None:
    await node.exchanges(1, START + dt.timedelta(minutes=10))
    await node.exchanges(1, START + dt.timedelta(minutes=20), stamp=False)
    node.clock.now = START + 3 * HOUR
    archiver = node.archiver()
    assert await archiver.archive_once() == []
    await node.timestamper.timestamp_pending()
    assert await archiver.archive_once() == ["archive-00000001-20261101T120000Z.zip"]
    assert await node.log.archived_through() == 4


async def test_a_big_period_is_cut_into_chained_archives(node: Node) -> None:
    await node.exchanges(4, START + dt.timedelta(minutes=10))
    node.clock.now = START + 2 * HOUR
    names = await node.archiver(max_records=3).archive_once()
    assert len(names) == 3  # 8 records: 3 + 3 + 2
    report = verify_path(node.archive_dir, anchor=node.federation.anchor)
    assert report.ok, report.failures()
    # An exchange cut between two archives has one container in each.
    assert len(report.items) == 3 + 8 + 1


async def test_archive_stored_but_not_marked_is_marked_after_a_crash(node: Node) -> None:
    await node.exchanges(2, START + dt.timedelta(minutes=10))
    node.clock.now = START + 2 * HOUR

    class CrashingLog:
        """The log as seen by an archiver that dies right after storing its archive."""

        async def archived_through(self) -> int:
            return await node.log.archived_through()

        async def read_records(self, *, after_seq: int = 0, limit: int = 1000) -> list[LogRecord]:
            return await node.log.read_records(after_seq=after_seq, limit=limit)

        async def mark_archived(
            self, up_to_seq: int, archive_name: str, *, now: dt.datetime | None = None
        ) -> None:
            raise ConnectionResetError("the node stopped")

    crashing = Archiver(
        CrashingLog(), DirectoryStore(node.archive_dir), node.history, clock=node.clock
    )
    with pytest.raises(ConnectionResetError):
        await crashing.archive_once()
    assert len(_archives(node.archive_dir)) == 1
    assert await node.log.archived_through() == 0

    assert await node.archiver().archive_once() == []
    assert await node.log.archived_through() == 4
    assert len(_archives(node.archive_dir)) == 1


async def test_a_failed_write_leaves_records_in_the_log_and_no_partial_file(
    node: Node, tmp_path: Path
) -> None:
    await node.exchanges(1, START + dt.timedelta(minutes=10))
    node.clock.now = START + 2 * HOUR
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the archive directory should be")
    archiver = Archiver(node.log, DirectoryStore(blocked), node.history, clock=node.clock)
    with pytest.raises(ArchiverError, match="the records stay in the log"):
        await archiver.archive_once()
    assert await node.log.archived_through() == 0
    # Retention cannot delete what was never archived.
    assert await node.log.purge_expired(START + dt.timedelta(days=365)) == 0
    assert await node.archiver().archive_once() == ["archive-00000001-20261101T120000Z.zip"]
    assert not list(node.archive_dir.glob(".archive-*"))


async def test_archives_chain_on_across_archiver_restarts(node: Node) -> None:
    await node.exchanges(1, START + dt.timedelta(minutes=10))
    node.clock.now = START + 2 * HOUR
    await node.archiver().archive_once()
    await node.exchanges(1, START + 2 * HOUR + dt.timedelta(minutes=10))
    node.clock.now = START + 4 * HOUR
    assert await node.archiver().archive_once() == ["archive-00000002-20261101T140000Z.zip"]
    first, second = _archives(node.archive_dir)
    report = verify_path(node.archive_dir, anchor=node.federation.anchor)
    assert report.ok, report.failures()
    with zipfile.ZipFile(second) as zf:
        linking = LinkingFile.from_bytes(zf.read("linking.json"))
    assert linking.previous is not None
    assert linking.previous.name == first.name


async def test_archives_carry_the_configuration_version_each_record_names(node: Node) -> None:
    """A new version with the same trust content is not kept; the earlier one stands for it."""
    second = node.federation.publish(2, START + dt.timedelta(minutes=5))
    assert not node.history.remember(*second)
    assert node.history.versions() == [1]
    node.entries = NodeLog(node.federation)
    node.clock.now = START + dt.timedelta(minutes=10)
    for exchange in node.entries.exchanges(1, node.clock.now, conf_version=2):
        await node.log.record(exchange.request)
        await node.log.record(exchange.response)
    await node.timestamper.timestamp_pending()
    node.clock.now = START + 2 * HOUR
    await node.archiver().archive_once()
    report = verify_path(node.archive_dir, anchor=node.federation.anchor)
    assert report.ok, report.failures()
    details = [c.detail for i in report.items for c in i.checks if c.name == "configuration"]
    assert details
    assert all(d.startswith("configuration version 1 (the record names 2;") for d in details)


# -- reading the log as stored columns, and streaming ---------------------------------------------


class _Unmarked:
    """The log, read but never marked: the same records can be archived twice."""

    def __init__(self, log: PostgresMessageLog) -> None:
        self.log = log

    async def archived_through(self) -> int:
        return 0

    async def read_records(self, *, after_seq: int = 0, limit: int = 1000) -> list[LogRecord]:
        return await self.log.read_records(after_seq=after_seq, limit=limit)

    async def mark_archived(
        self, up_to_seq: int, archive_name: str, *, now: dt.datetime | None = None
    ) -> None:
        pass


async def test_stored_columns_give_the_same_archives_as_parsed_records(
    node: Node, tmp_path: Path
) -> None:
    await node.exchanges(5, START + dt.timedelta(minutes=10))
    await node.exchanges(2, START + HOUR + dt.timedelta(minutes=10))
    node.clock.now = START + 3 * HOUR
    parsed_dir, rows_dir = tmp_path / "parsed", tmp_path / "rows"
    parsed_dir.mkdir()
    rows_dir.mkdir()
    pool = node.pool  # the log's database
    parsed = Archiver(
        _Unmarked(node.log), DirectoryStore(parsed_dir), node.history, clock=node.clock,
        max_records=6, page=4,
    )  # fmt: skip
    rows = Archiver(
        node.log, DirectoryStore(rows_dir), node.history, clock=node.clock,
        max_records=6, page=4, rows=PostgresArchiveRows(pool),
    )  # fmt: skip
    names = await parsed.archive_once()
    assert await rows.archive_once() == names
    assert len(names) == 3  # 10 records in the first hour (6 + 4), 4 in the second
    for name in names:
        assert (parsed_dir / name).read_bytes() == (rows_dir / name).read_bytes()
    assert await node.log.archived_through() == 14
    report = verify_path(rows_dir, anchor=node.federation.anchor)
    assert report.ok, report.failures()


async def test_records_stored_inline_or_by_digest_give_the_same_archives(
    node: Node, tmp_path: Path, pg_server_url: str
) -> None:
    """The same records, timestamped by the same batches, in a log written before migration
    0005 (certificates and OCSP responses in every row) and upgraded, archive to the same
    bytes as in the log that names them by digest."""
    await node.exchanges(4, START + dt.timedelta(minutes=10))
    await node.exchanges(2, START + HOUR + dt.timedelta(minutes=10))
    records = await node.log.read_records()
    batches = await node.pool.fetch("SELECT * FROM timestamp_batches ORDER BY id")
    node.clock.now = START + 3 * HOUR
    async with temporary_database(pg_server_url, "t_") as name:
        url = database_url(pg_server_url, name)
        conn = await asyncpg.connect(url)
        try:
            await schema_before(conn, 5)
            await conn.copy_records_to_table(
                "message_log", records=[inline_row(r) for r in records], columns=INLINE_COLUMNS
            )
            await conn.copy_records_to_table(
                "timestamp_batches",
                records=[tuple(b.values()) for b in batches],
                columns=list(batches[0].keys()),
            )
            await apply_migrations(conn, "security_server.log_migrations")
            assert await conn.fetchval(
                "SELECT count(*) FROM message_log WHERE certificates IS NOT NULL"
            ) == len(records)
        finally:
            await conn.close()
        inline_pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
        try:
            inline_log = PostgresMessageLog(inline_pool, HJC_SS1, clock=node.clock)
            assert [r.entry for r in await inline_log.read_records()] == [r.entry for r in records]
            written: list[list[str]] = []
            for log, pool, directory in (
                (node.log, node.pool, tmp_path / "by-digest"),
                (inline_log, inline_pool, tmp_path / "inline"),
            ):
                directory.mkdir()
                archiver = Archiver(
                    log, DirectoryStore(directory), node.history, clock=node.clock,
                    max_records=5, page=3, rows=PostgresArchiveRows(pool),
                )  # fmt: skip
                written.append(await archiver.archive_once())
        finally:
            await inline_pool.close()
    names, inline_names = written
    assert names == inline_names
    assert len(names) == 3  # 8 records in the first hour (5 + 3), 4 in the second
    for name in names:
        assert (tmp_path / "by-digest" / name).read_bytes() == (
            tmp_path / "inline" / name
        ).read_bytes()
    report = verify_path(tmp_path / "inline", anchor=node.federation.anchor)
    assert report.ok, report.failures()


async def _pass_stops(node: Node, match: str) -> None:
    """A pass over the stored columns of a changed log, once its period is closed, fails with
    ``match`` and leaves nothing: no record marked archived, no file in the archive directory."""
    node.clock.now = START + 3 * HOUR
    archiver = node.archiver(rows=PostgresArchiveRows(node.pool))
    with pytest.raises(ArchiverError, match=match):
        await archiver.archive_once()
    assert await node.log.archived_through() == 0
    assert not list(node.archive_dir.glob("*"))


async def test_a_changed_certificate_stops_the_pass(node: Node) -> None:
    await node.exchanges(1, START + dt.timedelta(minutes=10))
    async with node.pool.acquire() as conn:
        # An intruder with database rights drops the digest check and the triggers.
        await conn.execute("ALTER TABLE log_evidence DROP CONSTRAINT log_evidence_check")
        await conn.execute("ALTER TABLE log_evidence DISABLE TRIGGER USER")
        changed = await conn.execute(
            "UPDATE log_evidence SET value = value || '\\x00'::bytea "
            "WHERE digest = (SELECT certificate_digests[1] FROM message_log WHERE seq = 2)"
        )
        assert changed == "UPDATE 1"
    await _pass_stops(node, "record 2 names as SHA-256")


async def test_stored_columns_stop_at_the_first_record_waiting_for_a_timestamp(node: Node) -> None:
    await node.exchanges(1, START + dt.timedelta(minutes=10))
    await node.exchanges(1, START + HOUR + dt.timedelta(minutes=10), stamp=False)
    rows = PostgresArchiveRows(node.pool)
    waiting = await rows.first_waiting(0)
    assert waiting is not None
    assert waiting.seq == 3
    items = await rows.read_for_archive(after_seq=0, limit=100)
    assert [type(i).__name__ for i in items] == ["ArchiveRecord", "ArchiveRecord", "Waiting"]
    assert await rows.first_waiting(3) is not None
    # The closed first hour is archived; the second waits for its timestamp.
    node.clock.now = START + 3 * HOUR
    archiver = node.archiver(rows=rows)
    assert await archiver.archive_once() == ["archive-00000001-20261101T120000Z.zip"]
    assert await node.log.archived_through() == 2
    assert await archiver.archive_once() == []
    await node.timestamper.timestamp_pending()
    assert await archiver.archive_once() == ["archive-00000002-20261101T130000Z.zip"]


async def test_a_held_back_period_is_not_started_when_the_waiting_record_is_known(
    node: Node,
) -> None:
    await node.exchanges(2, START + dt.timedelta(minutes=10))
    await node.exchanges(1, START + dt.timedelta(minutes=20), stamp=False)
    node.clock.now = START + 3 * HOUR

    class Counting(Archiver):
        opened = 0

        def _open(self, *args: Any) -> Any:
            self.opened += 1
            return super()._open(*args)

    archiver = Counting(
        node.log, DirectoryStore(node.archive_dir), node.history, clock=node.clock,
        rows=PostgresArchiveRows(node.pool),
    )  # fmt: skip
    assert await archiver.archive_once() == []
    assert archiver.opened == 0  # no archive was begun only to be thrown away
    assert not list(node.archive_dir.iterdir())
    # Without knowing in advance, the archive is begun, then thrown away.
    parsed = Counting(node.log, DirectoryStore(node.archive_dir), node.history, clock=node.clock)
    assert await parsed.archive_once() == []
    assert parsed.opened == 1
    assert not list(node.archive_dir.iterdir())


async def test_a_changed_stored_record_stops_the_pass(node: Node) -> None:
    await node.exchanges(1, START + dt.timedelta(minutes=10))
    async with node.pool.acquire() as conn:
        # What an intruder with database rights could do: the append-only trigger is theirs
        # to drop.
        await conn.execute("ALTER TABLE message_log DISABLE TRIGGER USER")
        await conn.execute(
            "UPDATE message_log SET record = convert_to(replace(convert_from(record, 'UTF8'), "
            "'case-0', 'case-9'), 'UTF8') WHERE seq = 1"
        )
    await _pass_stops(node, "record 1 of the message log cannot be archived")


async def test_records_that_do_not_chain_are_not_archived(node: Node) -> None:
    await node.exchanges(2, START + dt.timedelta(minutes=10))
    records = await node.log.read_records()
    stamped = [ArchiveRecord.of(r) for r in records]
    builder = ArchiveBuilder(io.BytesIO(), created_at=START + 3 * HOUR)
    builder.add(stamped[0])
    with pytest.raises(ValueError, match="does not follow record 1"):
        builder.add(stamped[2])
    forged = dataclasses.replace(stamped[1], prev_hash=bytes(32))
    with pytest.raises(ValueError, match="does not chain to record 1"):
        builder.add(forged)
