"""The node's message log in PostgreSQL: append-only, hash-chained, written in batches, fail
closed.

Rules (``docs/message-log.md`` is the operator's and auditor's description):

- :meth:`PostgresMessageLog.record` returns only after the record is committed. Concurrent
  calls are collected by one writer task and written with one ``COPY`` (one statement, one
  implicit transaction): either the whole batch is stored or none of it, and every caller of
  a failed batch gets ``LoggingFailed`` (``Server.ClientProxy`` or
  ``Server.ServerProxy``, by the entry's direction). An exchange never continues unlogged.
- Records form one chain per node (:mod:`gateway.log_record`). The writer keeps the chain head
  (sequence number and hash) in memory, read from the database at start. Worker processes of
  one node share the table: the sequence number is the primary key, so an append computed from
  a stale head fails as a whole; the writer then re-reads the head and computes the batch
  again (:data:`MAX_APPEND_ATTEMPTS` times at most). Records are committed in sequence order.
- A lost database connection (the server restarted, failed over, or killed the connection)
  makes the pool replace all its connections (:func:`storage.errors.expire_if_lost`), so the
  batches after the one that failed get new connections. A batch whose connection was lost
  *before* its ``COPY`` was sent (reading the chain head, acquiring the connection) is tried
  once more on a new connection: none of it can have been stored. A batch whose ``COPY`` was
  under way is never sent again — it may have been committed before the connection died — and
  its callers get ``LoggingFailed``; the chain head is re-read before the next batch.
- The table is append-only, enforced by a trigger: no record content is ever updated; only the
  timestamp reference is set, once; only archived records other than the newest may be
  deleted, which :meth:`PostgresMessageLog.purge_expired` does after the retention period.
- Timestamping runs beside the log (:mod:`security_server.timestamper`). ``check_accepting``
  refuses exchanges once the oldest record still waiting for a token is older than the
  acceptable period; with ``timestamp_immediately`` ``record`` also waits for the token.
- Certificates and OCSP responses are stored once, by digest
  (:mod:`security_server.log_evidence`): a batch naming one not known to be stored is preceded
  by one statement storing it, on the same connection, before the ``COPY``; the digests known
  to be stored are forgotten after any failed write. A lost connection during that statement
  counts as lost before the write (no record was sent).
- Bodies: ``log_bodies=False`` (the node's privacy switch) or a body larger than
  ``max_body_bytes`` keeps the body's digest only; the handler drops the body itself when a
  subsystem has body logging off. Verification works the same either way.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import Final

import asyncpg
import structlog

from certs.tsa import TimestampError
from config.errors import ConfigError, StorageError, ValidationError
from gateway.faults import CLIENT_PROXY, SERVER_PROXY, FaultError
from gateway.identifiers import ClientId, SecurityServerId, ServiceId
from gateway.log_record import (
    CONSUMER_DIRECTIONS,
    LogEntry,
    LogRecord,
    RecordTimestamp,
    canonical_bytes,
    chain_hash,
    check_entry,
    parse_record,
)
from gateway.transport import DEFAULT_MAX_BODY_BYTES
from security_server.log_evidence import (
    EVIDENCE_COLUMNS,
    EVIDENCE_MARGIN,
    PRUNE_EVIDENCE,
    STORE_EVIDENCE,
    Evidence,
    StoredEvidence,
    entry_digests,
    resolve,
)
from security_server.log_stamps import (
    OLDEST_WAITING,
    STAMP_COLUMNS,
    STAMP_JOIN,
    TIMESTAMPED_THROUGH,
    BatchTrees,
)
from security_server.runtime import Clock, utc_now
from security_server.timestamper import Timestamper, TimestampingState
from storage.errors import DATABASE_ERRORS, expire_if_lost

__all__ = [
    "DEFAULT_ACCEPTABLE_PERIOD",
    "DEFAULT_RETENTION",
    "MAX_APPEND_ATTEMPTS",
    "PostgresMessageLog",
]

#: How long records may wait for a timestamp before the node refuses exchanges (X-Road's).
DEFAULT_ACCEPTABLE_PERIOD: Final = dt.timedelta(seconds=14_400)
#: How long archived records stay in the database.
DEFAULT_RETENTION: Final = dt.timedelta(days=30)
#: Appends retried after another worker process moved the chain head.
MAX_APPEND_ATTEMPTS: Final = 10
#: Most records in one write; more wait for the next round trip.
DEFAULT_MAX_BATCH: Final = 1000
#: Most body bytes in one write (a single larger record is still written alone).
DEFAULT_MAX_BATCH_BYTES: Final = 64 * 1024 * 1024
#: Most records one search or read returns.
MAX_RESULTS: Final = 1000

_log = structlog.get_logger(__name__)

#: The columns a record is written to, in the order of the rows :func:`copy_row` makes.
COPY_COLUMNS: Final = (
    "seq", "logged_at", "direction", "message_id", "client", "service", "user_id", "issue",
    "protocol", "created_at", "record", "signed_part", "body", "signature", "proof",
    "certificate_digests", "ocsp_digest", "prev_hash", "record_hash",
)  # fmt: skip

_SELECT: Final = f"""
SELECT m.record, m.signed_part, m.body, m.signature, m.proof, {EVIDENCE_COLUMNS},
       m.prev_hash, m.record_hash, {STAMP_COLUMNS}
FROM message_log AS m {STAMP_JOIN}
"""  # noqa: S608 (constant SQL text)

_SELECT_UNARCHIVED: Final = (
    _SELECT  # noqa: S608 (constant SQL text; the limit is a bound parameter)
    + "WHERE m.seq > (SELECT coalesce(max(last_seq), 0) FROM log_archives) "
    "ORDER BY m.seq LIMIT $1"
)

_DB_ERRORS: Final = DATABASE_ERRORS


@dataclasses.dataclass(slots=True)
class _Pending:
    entry: LogEntry
    future: asyncio.Future[int]


def _prefix(entry: LogEntry) -> str:
    return CLIENT_PROXY if entry.direction in CONSUMER_DIRECTIONS else SERVER_PROXY


def _logging_failed(entry: LogEntry, reason: str) -> FaultError:
    return FaultError(
        f"{_prefix(entry)}.LoggingFailed",
        f"the message could not be written to the node's message log, so the exchange was "
        f"stopped: {reason}",
    )


class _AppendConflict(Exception):
    """Another worker process appended first: the head this batch was chained to is stale."""


class _LostBeforeWrite(StorageError):
    """The connection was lost before the batch's ``COPY`` was sent: none of it is stored, and
    it may be sent on a new connection."""


class PostgresMessageLog:
    """The message log of node ``node`` in the database behind ``pool``.

    The pool's database must have the ``security_server.log_migrations`` applied. Use as an
    async context manager, or call :meth:`start` and :meth:`close`. ``evidence_margin``: how
    many records past a batch a stored certificate or OCSP response is kept named
    (:data:`security_server.log_evidence.EVIDENCE_MARGIN`).
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        node: SecurityServerId,
        *,
        clock: Clock = utc_now,
        timestamper: Timestamper | None = None,
        timestamp_immediately: bool = False,
        acceptable_period: dt.timedelta = DEFAULT_ACCEPTABLE_PERIOD,
        retention: dt.timedelta = DEFAULT_RETENTION,
        log_bodies: bool = True,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
        write_timeout_s: float = 30.0,
        evidence_margin: int = EVIDENCE_MARGIN,
    ) -> None:
        if timestamp_immediately and timestamper is None:
            raise ValueError("timestamp_immediately needs a timestamper")
        if max_batch < 1 or max_batch_bytes < 1:
            raise ValueError("max_batch and max_batch_bytes must be positive")
        self._pool = pool
        self.node = node
        self._clock = clock
        self._timestamper = timestamper
        self._timestamp_immediately = timestamp_immediately
        self._acceptable_period = acceptable_period
        self._retention = retention
        self._log_bodies = log_bodies
        self._max_body_bytes = max_body_bytes
        self._max_batch = max_batch
        self._max_batch_bytes = max_batch_bytes
        self._write_timeout_s = write_timeout_s
        self._state = timestamper.state if timestamper is not None else TimestampingState()
        self._head: tuple[int, bytes] | None = None
        #: Hash trees of the last batches read (batches never change once stored).
        self._trees = BatchTrees()
        #: Digests of the certificates and OCSP responses known to be stored.
        self._evidence = StoredEvidence(margin=evidence_margin)
        self._pending: list[_Pending] = []
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        #: Database calls that append records (one per batch written, retries included).
        self.write_round_trips = 0
        #: Records this process has appended.
        self.records_written = 0
        #: Statements that stored certificates or OCSP responses before a batch named them.
        self.evidence_round_trips = 0

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Read the chain head and the timestamping backlog, then start the writer task."""
        self._head = await self._read_head()
        if self._timestamper is not None:
            await self._timestamper.refresh()
        else:
            token = self._state.refresh_started()
            oldest = await self._fetchval(OLDEST_WAITING)
            assert oldest is None or isinstance(oldest, dt.datetime)
            self._state.refreshed(token, oldest)
        self._closing = False
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_loop(), name="jisr-message-log")

    async def close(self) -> None:
        """Write what is queued, then stop; later :meth:`record` calls fail with LoggingFailed."""
        self._closing = True
        self._wake.set()
        writer, self._writer = self._writer, None
        if writer is not None:
            await writer

    async def __aenter__(self) -> PostgresMessageLog:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def queued(self) -> int:
        """Records waiting for the writer (not counting a batch being written)."""
        return len(self._pending)

    # --- the MessageLog protocol ----------------------------------------------------------------

    async def record(self, entry: LogEntry) -> None:
        """Durably store ``entry`` before the exchange continues (fail closed).

        Raises ``LoggingFailed`` when it cannot be stored, and with ``timestamp_immediately``
        ``TimestampingFailed`` when no TSA timestamped it (it stays logged and queued).
        """
        if self._writer is None or self._closing:
            raise _logging_failed(entry, "the message log is not running")
        problems = check_entry(entry)
        if problems:
            raise _logging_failed(entry, "the entry is inconsistent: " + "; ".join(problems))
        if entry.body is not None and (
            not self._log_bodies or len(entry.body) > self._max_body_bytes
        ):
            entry = entry.without_body()
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(entry, future))
        self._wake.set()
        await future
        if self._timestamp_immediately:
            assert self._timestamper is not None
            try:
                await self._timestamper.timestamp_through()
            except TimestampError as exc:
                raise FaultError(
                    f"{_prefix(entry)}.TimestampingFailed",
                    f"the message was logged but could not be timestamped, and this node "
                    f"timestamps immediately: {exc.message}",
                ) from exc
            except StorageError as exc:
                # The database's words stay in the node's log, as for a failed write.
                fault = FaultError(
                    f"{_prefix(entry)}.TimestampingFailed",
                    "the message was logged but could not be timestamped, and this node "
                    "timestamps immediately: the node's database failed while timestamping",
                )
                _log.error(
                    "message_log_timestamping_failed", error=exc.message, fault_detail=fault.detail
                )
                raise fault from exc

    def check_accepting(self, now: dt.datetime, *, prefix: str = CLIENT_PROXY) -> None:
        """Refuse new exchanges while a record has waited for a timestamp for too long."""
        oldest = self._state.oldest_untimestamped
        if oldest is not None and now - oldest > self._acceptable_period:
            waited = int((now - oldest).total_seconds())
            reason = f" (last error: {self._state.last_error})" if self._state.last_error else ""
            raise FaultError(
                f"{prefix}.TimestampingFailed",
                f"message log records have waited {waited} s for a timestamp, longer than the "
                f"acceptable {int(self._acceptable_period.total_seconds())} s; this node "
                f"refuses exchanges until an approved TSA answers again{reason}",
            )

    # --- writing --------------------------------------------------------------------------------

    def _take_batch(self) -> list[_Pending]:
        batch: list[_Pending] = []
        size = 0
        while self._pending and len(batch) < self._max_batch:
            item = self._pending[0]
            if item.future.done():  # the caller was cancelled before its record was taken
                self._pending.pop(0)
                continue
            body = len(item.entry.body or b"") + len(item.entry.signed_part)
            if batch and size + body > self._max_batch_bytes:
                break
            batch.append(self._pending.pop(0))
            size += body
        return batch

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = self._take_batch()
                if not batch:
                    continue
                try:
                    records = await self._append([p.entry for p in batch])
                except Exception as exc:  # fail closed: whatever went wrong, nobody continues
                    reason = exc.message if isinstance(exc, StorageError) else repr(exc)
                    # The database's words stay in the node's log; clients get the fault's
                    # detail id to find them.
                    faults = [
                        _logging_failed(p.entry, "the database did not store the record")
                        for p in batch
                    ]
                    _log.error(
                        "message_log_write_failed",
                        records=len(batch),
                        error=reason,
                        fault_details=[f.detail for f in faults],
                    )
                    for p, fault in zip(batch, faults, strict=True):
                        if not p.future.done():
                            p.future.set_exception(fault)
                    continue
                if self._timestamper is not None:
                    self._timestamper.notify_written(len(records), records[0].logged_at)
                else:
                    self._state.note_written(records[0].logged_at)
                for p, rec in zip(batch, records, strict=True):
                    if not p.future.done():
                        p.future.set_result(rec.seq)
            if self._closing:
                return

    async def _append(self, entries: Sequence[LogEntry]) -> list[LogRecord]:
        conflicts = 0
        sent_again = False
        while conflicts < MAX_APPEND_ATTEMPTS:
            try:
                if self._head is None:
                    self._head = await self._read_head()
                seq, prev = self._head
                logged_at = self._clock()
                records = []
                canonicals = []
                digests = []
                for entry in entries:
                    seq += 1
                    # LogRecord.append's work, keeping the canonical bytes: they are also stored.
                    canonical = canonical_bytes(self.node, seq, logged_at, entry)
                    record = LogRecord(
                        self.node, seq, logged_at, entry, prev, chain_hash(prev, canonical)
                    )
                    records.append(record)
                    canonicals.append(canonical)
                    digests.append(entry_digests(entry))
                    prev = record.record_hash
                await self._insert(records, canonicals, digests)
            except _AppendConflict:
                self._head = None
                conflicts += 1
                continue
            except _LostBeforeWrite:
                # Nothing of the batch was sent; once more on a new connection (the pool has
                # been told to make new ones), not twice: the database may be down.
                if sent_again:
                    raise
                sent_again = True
                continue
            except BaseException:
                # The batch may or may not have been committed (a lost connection); re-read.
                self._head = None
                raise
            self._head = (records[-1].seq, records[-1].record_hash)
            self.records_written += len(records)
            return records
        raise StorageError(
            f"{MAX_APPEND_ATTEMPTS} appends in a row found the chain head moved by another "
            "worker process; the log is under heavier concurrent load than it can order"
        )

    async def _insert(
        self,
        records: Sequence[LogRecord],
        canonicals: Sequence[bytes],
        digests: Sequence[Evidence],
    ) -> None:
        try:
            await self._insert_once(records, canonicals, digests)
        except _AppendConflict:
            raise  # nothing was wrong with the database: what it holds is still known
        except BaseException:
            # Whether a statement that failed had stored evidence, nobody can tell (nor what a
            # failed-over server still holds): nothing is assumed stored any more.
            self._evidence.forget()
            raise

    async def _insert_once(
        self,
        records: Sequence[LogRecord],
        canonicals: Sequence[bytes],
        digests: Sequence[Evidence],
    ) -> None:
        rows = [
            copy_row(r, canonical, d)
            for r, canonical, d in zip(records, canonicals, digests, strict=True)
        ]
        # The certificates and OCSP responses the batch names that are not known to be stored
        # (or whose last_seq does not reach the batch): stored first, in a statement of their
        # own, so that no record is ever committed naming a value that is not.
        new_digests, new_values, last_seqs = self._evidence.to_store(
            (r.seq, [*certs, ocsp], [*r.entry.certificates, r.entry.ocsp])
            for r, (certs, ocsp) in zip(records, digests, strict=True)
        )
        self.write_round_trips += 1
        try:
            conn = await self._pool.acquire(timeout=self._write_timeout_s)
        except _DB_ERRORS as exc:
            lost = await expire_if_lost(self._pool, exc)
            error = _LostBeforeWrite if lost else StorageError
            raise error(f"no database connection for the write: {exc}") from exc
        try:
            if new_digests:
                await self._store_evidence(conn, new_digests, new_values, last_seqs)
            # One COPY: one statement for the whole batch, atomic like the INSERT it replaces
            # and about a third cheaper for the database per record.
            await conn.copy_records_to_table(
                "message_log", records=rows, columns=COPY_COLUMNS, timeout=self._write_timeout_s
            )
        except asyncpg.UniqueViolationError as exc:
            raise _AppendConflict from exc
        except _DB_ERRORS as exc:
            # Committed or not, nobody can tell: the batch fails and is not sent again.
            await expire_if_lost(self._pool, exc)
            raise StorageError(f"the database refused or lost the write: {exc}") from exc
        finally:
            try:
                await self._pool.release(conn)
            except _DB_ERRORS as exc:
                # asyncpg has closed the connection; what the COPY did stands either way.
                await expire_if_lost(self._pool, exc)

    async def _store_evidence(
        self,
        conn: asyncpg.pool.PoolConnectionProxy[asyncpg.Record],
        digests: list[bytes],
        values: list[bytes],
        last_seqs: list[int],
    ) -> None:
        self.evidence_round_trips += 1
        try:
            await conn.execute(
                STORE_EVIDENCE, digests, values, last_seqs, timeout=self._write_timeout_s
            )
        except _DB_ERRORS as exc:
            # Storing a value again is harmless (the statement is idempotent) and no record
            # was sent: a lost connection lets the batch be tried once more on a new one.
            lost = await expire_if_lost(self._pool, exc)
            error = _LostBeforeWrite if lost else StorageError
            raise error(
                f"the database refused or lost the write of certificates or OCSP responses: {exc}"
            ) from exc
        self._evidence.stored(digests, last_seqs)

    async def _read_head(self) -> tuple[int, bytes]:
        try:
            row = await self._pool.fetchrow(
                "SELECT seq, record_hash FROM message_log ORDER BY seq DESC LIMIT 1"
            )
        except _DB_ERRORS as exc:
            lost = await expire_if_lost(self._pool, exc)
            error = _LostBeforeWrite if lost else StorageError
            raise error(f"cannot read the message log's chain head: {exc}") from exc
        if row is None:
            return 0, bytes(32)
        return int(row["seq"]), bytes(row["record_hash"])

    # --- reading --------------------------------------------------------------------------------

    async def _fetchval(self, query: str, *args: object) -> object:
        try:
            return await self._pool.fetchval(query, *args)
        except _DB_ERRORS as exc:
            await expire_if_lost(self._pool, exc)
            raise StorageError(f"cannot read the message log: {exc}") from exc

    async def _fetch(self, query: str, *args: object) -> list[LogRecord]:
        try:
            rows = await self._pool.fetch(query, *args)
        except _DB_ERRORS as exc:
            await expire_if_lost(self._pool, exc)
            raise StorageError(f"cannot read the message log: {exc}") from exc
        try:
            stamps = await self._trees.stamps(self._pool, rows)
            evidence = await resolve(self._pool, rows)
        except _DB_ERRORS as exc:
            await expire_if_lost(self._pool, exc)
            raise StorageError(f"cannot read the message log: {exc}") from exc
        return [
            _to_record(row, stamp, values)
            for row, stamp, values in zip(rows, stamps, evidence, strict=True)
        ]

    async def head(self) -> tuple[int, bytes]:
        """The newest record's sequence number and hash in the database (0 and 32 zero bytes
        for an empty log)."""
        return await self._read_head()

    async def read_records(
        self, *, after_seq: int = 0, limit: int = MAX_RESULTS
    ) -> list[LogRecord]:
        """Records after ``after_seq`` in sequence order, with their timestamps, for checking
        the chain with :func:`gateway.log_record.verify_chain`."""
        return await self._fetch(
            _SELECT + " WHERE m.seq > $1 ORDER BY m.seq LIMIT $2", after_seq, _limit(limit)
        )

    async def search(
        self,
        *,
        message_id: str | None = None,
        client: ClientId | str | None = None,
        service: ServiceId | str | None = None,
        user_id: str | None = None,
        issue: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        limit: int = 100,
        newest_first: bool = False,
    ) -> list[LogRecord]:
        """Records matching every criterion given (exact matches; ``since`` inclusive and
        ``until`` exclusive on the time the record was logged), with their timestamps."""
        conditions: list[str] = []
        args: list[object] = []
        for column, value in (
            ("message_id", message_id),
            ("client", None if client is None else str(client)),
            ("service", None if service is None else str(service)),
            ("user_id", user_id),
            ("issue", issue),
        ):
            if value is not None:
                args.append(value)
                conditions.append(f"m.{column} = ${len(args)}")
        for op, when in ((">=", since), ("<", until)):
            if when is not None:
                if when.tzinfo is None:
                    raise ValidationError("search times must be timezone-aware")
                args.append(when)
                conditions.append(f"m.logged_at {op} ${len(args)}")
        args.append(_limit(limit))
        where = (" WHERE " + " AND ".join(conditions)) if conditions else ""
        order = "DESC" if newest_first else "ASC"
        return await self._fetch(
            _SELECT + f"{where} ORDER BY m.seq {order} LIMIT ${len(args)}", *args
        )

    # --- archiving and retention ----------------------------------------------------------------

    async def archived_through(self) -> int:
        """The last record marked archived (0 when none is)."""
        value = await self._fetchval("SELECT coalesce(max(last_seq), 0) FROM log_archives")
        assert isinstance(value, int)
        return value

    async def fetch_for_archive(self, limit: int = MAX_RESULTS) -> list[LogRecord]:
        """The next records to archive: timestamped, not yet archived, in sequence order,
        each with its batch (token) and inclusion proof. Stops before the first record still
        waiting for a timestamp, so an archive never has a gap."""
        records = await self._fetch(_SELECT_UNARCHIVED, _limit(limit))
        for i, record in enumerate(records):
            if record.timestamp is None:
                return records[:i]
        return records

    async def mark_archived(
        self, up_to_seq: int, archive_name: str, *, now: dt.datetime | None = None
    ) -> None:
        """Record that the records after the last archive, through ``up_to_seq``, are safely in
        the archive ``archive_name``; they become eligible for deletion after the retention
        period."""
        if not archive_name or len(archive_name) > 1024:
            raise ValidationError("an archive name must be 1..1024 characters")
        when = now or self._clock()
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                # One archiver at a time: ranges must follow each other.
                await conn.execute("LOCK TABLE log_archives IN SHARE ROW EXCLUSIVE MODE")
                last = await conn.fetchval("SELECT coalesce(max(last_seq), 0) FROM log_archives")
                if up_to_seq <= last:
                    raise ValidationError(
                        f"records up to {last} are already archived; archive {archive_name!r} "
                        f"must end after record {last}"
                    )
                row = await conn.fetchrow(
                    "SELECT count(*) AS n, "  # noqa: S608 (constant SQL text)
                    f"count(*) FILTER (WHERE seq <= {TIMESTAMPED_THROUGH}) AS stamped "
                    "FROM message_log WHERE seq > $1 AND seq <= $2",
                    last,
                    up_to_seq,
                )
                assert row is not None
                expected = up_to_seq - last
                if row["n"] != expected:
                    raise ValidationError(
                        f"the log holds {row['n']} of the {expected} records {last + 1}.."
                        f"{up_to_seq}; archive only records that fetch_for_archive returned"
                    )
                if row["stamped"] != expected:
                    raise ValidationError(
                        f"{expected - row['stamped']} of records {last + 1}..{up_to_seq} are "
                        "not timestamped yet; archive only records that fetch_for_archive "
                        "returned"
                    )
                await conn.execute(
                    "INSERT INTO log_archives (name, first_seq, last_seq, archived_at) "
                    "VALUES ($1, $2, $3, $4)",
                    archive_name,
                    last + 1,
                    up_to_seq,
                    when,
                )
        except asyncpg.UniqueViolationError as exc:
            raise ValidationError(
                f"an archive named {archive_name!r} is already recorded; give each archive "
                "its own name"
            ) from exc
        except _DB_ERRORS as exc:
            await expire_if_lost(self._pool, exc)
            raise StorageError(f"cannot mark records as archived: {exc}") from exc
        _log.info("message_log_archived", archive=archive_name, up_to_seq=up_to_seq)

    async def purge_expired(self, now: dt.datetime | None = None) -> int:
        """Delete records archived more than the retention period before ``now``, and batches
        no record refers to any more; return how many records were deleted. The newest record
        is always kept: it continues the chain."""
        cutoff = (now or self._clock()) - self._retention
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                status = await conn.execute(
                    """DELETE FROM message_log
                       WHERE seq <= (SELECT coalesce(max(last_seq), 0) FROM log_archives
                                     WHERE archived_at <= $1)
                         AND seq < (SELECT max(seq) FROM message_log)""",
                    cutoff,
                )
                # Batches whose records are all gone: a range ending before the oldest record
                # left, or (stamped before migration 0004) one no record names any more.
                await conn.execute(
                    """DELETE FROM timestamp_batches AS b
                       WHERE CASE WHEN b.first_seq IS NOT NULL
                             THEN b.first_seq + b.size - 1 < (SELECT min(seq) FROM message_log)
                             ELSE NOT EXISTS (SELECT 1 FROM message_log AS m
                                              WHERE m.batch_id = b.id) END"""
                )
                # Certificates and OCSP responses no record left names (migration 0005).
                await conn.execute(PRUNE_EVIDENCE)
        except _DB_ERRORS as exc:
            await expire_if_lost(self._pool, exc)
            raise StorageError(f"cannot delete expired message log records: {exc}") from exc
        deleted = int(status.split()[-1])
        if deleted:
            _log.info("message_log_purged", records=deleted)
        return deleted


async def set_body_compression(pool: asyncpg.Pool, choice: str) -> str:
    """Store bodies logged from now on as ``choice`` says; return the method in effect.

    ``auto`` is lz4 where the server supports it, else pglz; ``none`` stores bodies
    uncompressed (``STORAGE EXTERNAL``). Only new records are affected (PostgreSQL keeps each
    value as it was stored), and the table is altered only when the setting changes. Raises
    ConfigError for ``lz4`` on a server built without it.
    """
    try:
        async with pool.acquire() as conn:
            check_server_version(
                int(await conn.fetchval("SELECT current_setting('server_version_num')"))
            )
            lz4 = bool(
                await conn.fetchval(
                    "SELECT 'lz4' = ANY(enumvals) FROM pg_settings "
                    "WHERE name = 'default_toast_compression'"
                )
            )
            if choice == "lz4" and not lz4:
                raise ConfigError(
                    "log_body_compression = 'lz4', but this PostgreSQL server is built without "
                    "lz4; use 'auto', 'pglz' or 'none', or a server with lz4"
                )
            method = "lz4" if choice == "lz4" or (choice == "auto" and lz4) else "pglz"
            storage = "e" if choice == "none" else "x"
            row = await conn.fetchrow(
                "SELECT attstorage::text AS attstorage, attcompression::text AS attcompression "
                "FROM pg_attribute "
                "WHERE attrelid = 'message_log'::regclass AND attname = 'body'"
            )
            assert row is not None
            # attcompression: '' (the server's default, pglz unless configured), 'p' or 'l'.
            current = {"p": "pglz", "l": "lz4"}.get(row["attcompression"], "default")
            if row["attstorage"] != storage:
                kind = "EXTERNAL" if storage == "e" else "EXTENDED"
                await conn.execute(f"ALTER TABLE message_log ALTER COLUMN body SET STORAGE {kind}")
            if storage == "x" and current != method:
                await conn.execute(
                    f"ALTER TABLE message_log ALTER COLUMN body SET COMPRESSION {method}"
                )
    except _DB_ERRORS as exc:
        await expire_if_lost(pool, exc)
        raise StorageError(f"cannot set how the message log stores bodies: {exc}") from exc
    return "none" if storage == "e" else method


#: The oldest PostgreSQL a node's log runs on (per-column compression came with 14).
MIN_SERVER_VERSION: Final = 140000


def check_server_version(version_num: int) -> None:
    """Refuse a PostgreSQL server older than :data:`MIN_SERVER_VERSION` (``server_version_num``)."""
    if version_num < MIN_SERVER_VERSION:
        major = version_num // 10000
        raise ConfigError(
            f"the node's PostgreSQL server is version {major}; a node needs PostgreSQL 14 or "
            "newer: upgrade the server, or leave the database URL empty to use the embedded one"
        )


def copy_row(
    record: LogRecord, canonical: bytes, digests: Evidence | None = None
) -> tuple[object, ...]:
    """``record`` as the row the writer copies into ``message_log`` (columns
    :data:`COPY_COLUMNS`); ``canonical`` is its canonical bytes, already made, and ``digests``
    its certificates' and OCSP response's digests when already computed. The certificates and
    the OCSP response themselves must be stored in ``log_evidence`` before the row."""
    entry = record.entry
    certificate_digests, ocsp_digest = digests or entry_digests(entry)
    return (
        record.seq,
        record.logged_at,
        entry.direction,
        entry.message_id,
        str(entry.client),
        str(entry.service),
        entry.user_id,
        entry.issue,
        entry.protocol,
        entry.created_at,
        canonical,
        entry.signed_part,
        entry.body,
        entry.signature,
        entry.proof,
        certificate_digests,
        ocsp_digest,
        record.prev_hash,
        record.record_hash,
    )


def _limit(limit: int) -> int:
    if not 1 <= limit <= MAX_RESULTS:
        raise ValidationError(f"limit must be 1..{MAX_RESULTS}, got {limit}")
    return limit


def _to_record(row: asyncpg.Record, stamp: RecordTimestamp | None, evidence: Evidence) -> LogRecord:
    body = row["body"]
    certificates, ocsp = evidence
    return parse_record(
        bytes(row["record"]),
        signed_part=bytes(row["signed_part"]),
        body=None if body is None else bytes(body),
        signature=bytes(row["signature"]),
        proof=bytes(row["proof"]),
        certificates=certificates,
        ocsp=ocsp,
        prev_hash=bytes(row["prev_hash"]),
        record_hash=bytes(row["record_hash"]),
        timestamp=stamp,
    )
