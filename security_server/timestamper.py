"""Batch timestamping of the message log with RFC 3161 tokens from approved TSAs.

Rules (``docs/message-log.md``, "Batch timestamping"):

- A pass takes every record not yet timestamped, in sequence order, at most
  :data:`DEFAULT_MAX_BATCH` at a time, builds an RFC 6962 hash tree over
  ``leaf_hash(record_hash)`` (:func:`gateway.log_record.batch_tree`) and asks for ONE token over
  the root. The approved TSAs of the global configuration are tried in the configuration's
  order; the first token that verifies against that TSA's certificate is stored in ONE row of
  ``timestamp_batches`` with the batch's first sequence number and its records' hashes; the
  records are not touched (their proofs are computed from the hashes when they are read,
  :mod:`security_server.log_stamps`). A pass repeats until the backlog is empty.
- Passes run in the background, every ``timestamping_interval_s`` of the global configuration
  (default 60 s) and as soon as the message log reports a backlog of ``max_batch`` records.
  They never hold up :meth:`PostgresMessageLog.record` unless the node timestamps immediately.
- When no TSA issues a token, the records stay queued and the pass is retried with a bounded
  backoff (``retry_min_s`` doubling up to ``retry_max_s``); a record is never dropped from the
  queue. :class:`TimestampingState` keeps the log time of the oldest record still waiting,
  which is what the message log's ``check_accepting`` compares with the acceptable period.
- Worker processes of one node share the database: a pass holds a PostgreSQL advisory lock, so
  passes of different processes take turns and never timestamp a record twice.
- Every database failure (:data:`storage.errors.DATABASE_ERRORS`, asyncpg's client-side
  errors after a lost connection included) is a :class:`~config.errors.StorageError`; a lost
  connection also makes the pool replace its connections. With ``timestamp_immediately`` the
  message log turns it into ``TimestampingFailed``, never an internal error of the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import Final

import aiohttp
import asyncpg
import structlog

from certs.tsa import TimestampError, verify_token
from config.errors import JisrError, StorageError
from gateway import log_record
from gateway.hash_tree import MAX_LEAVES, Tree
from security_server.log_stamps import OLDEST_WAITING, TIMESTAMPED_THROUGH
from security_server.runtime import Clock, ConfSource, utc_now
from storage.errors import DATABASE_ERRORS, expire_if_lost
from storage.sessions import session_changed
from trust_services.tsa_client import DEFAULT_TIMEOUT, request_token

__all__ = [
    "DEFAULT_INTERVAL_S",
    "DEFAULT_MAX_BATCH",
    "Timestamper",
    "TimestampingState",
]

#: The records waiting for a timestamp, oldest first (``docs/message-log.md``: the stamped
#: records are always the start of the log, up to ``message_log_timestamped_through()``).
_WAITING: Final = (
    f"SELECT seq, record_hash FROM message_log WHERE seq > {TIMESTAMPED_THROUGH} "  # noqa: S608
    "ORDER BY seq LIMIT $1"
)
_INSERT_BATCH: Final = f"""
INSERT INTO timestamp_batches (root, size, token, tsa_url, gen_time, first_seq, leaves)
SELECT $1::bytea, $2::integer, $3::bytea, $4::text, $5::timestamptz, $6::bigint, $7::bytea
WHERE {TIMESTAMPED_THROUGH} = $6::bigint - 1
"""

#: Used while no valid global configuration says otherwise.
DEFAULT_INTERVAL_S: Final = 60
#: Most records under one token; also the backlog that starts a pass before the interval ends.
DEFAULT_MAX_BATCH: Final = 10_000
#: Advisory lock key of a timestamping pass ("JLTS"); the migrations runner uses "JISR".
_PASS_LOCK_KEY: Final = 0x4A4C5453

_log = structlog.get_logger(__name__)

Pool = asyncpg.Pool


class TimestampingState:
    """The log time of the oldest record this process knows is still waiting for a token.

    Two sources are merged: what the last database refresh found (covers every worker
    process), and records this process wrote since that refresh started (so a refresh that
    raced with a write cannot hide the write).
    """

    def __init__(self) -> None:
        self._db_oldest: dt.datetime | None = None
        self._local_oldest: dt.datetime | None = None
        self._writes = 0
        self.last_error: str | None = None
        self.last_success: dt.datetime | None = None

    @property
    def oldest_untimestamped(self) -> dt.datetime | None:
        known = [t for t in (self._db_oldest, self._local_oldest) if t is not None]
        return min(known) if known else None

    def note_written(self, logged_at: dt.datetime) -> None:
        """Records logged at ``logged_at`` are committed and not yet timestamped."""
        self._writes += 1
        if self._local_oldest is None or logged_at < self._local_oldest:
            self._local_oldest = logged_at

    def refresh_started(self) -> int:
        """Call before reading the database; pass the result to :meth:`refreshed`."""
        return self._writes

    def refreshed(self, token: int, db_oldest: dt.datetime | None) -> None:
        """The database, read after :meth:`refresh_started` returned ``token``, holds
        untimestamped records back to ``db_oldest`` (None: none)."""
        self._db_oldest = db_oldest
        if self._writes == token:
            self._local_oldest = None


@dataclasses.dataclass(frozen=True, slots=True)
class _Stamped:
    token: bytes
    tsa_url: str
    gen_time: dt.datetime


class Timestamper:
    """Timestamps the message log in batches; one per node process.

    ``conf`` supplies the approved TSAs and the interval; ``session`` is the HTTP client used
    for the TSAs (the caller owns it). Call :meth:`start` to run passes in the background, or
    :meth:`timestamp_pending` to run one pass now.
    """

    def __init__(
        self,
        pool: Pool,
        conf: ConfSource,
        session: aiohttp.ClientSession,
        *,
        clock: Clock = utc_now,
        max_batch: int = DEFAULT_MAX_BATCH,
        retry_min_s: float = 5.0,
        retry_max_s: float = 60.0,
        request_timeout: dt.timedelta = DEFAULT_TIMEOUT,
        state: TimestampingState | None = None,
    ) -> None:
        if not 1 <= max_batch <= MAX_LEAVES:
            raise ValueError(f"max_batch must be 1..{MAX_LEAVES}")
        if not 0 < retry_min_s <= retry_max_s:
            raise ValueError("retry delays must satisfy 0 < retry_min_s <= retry_max_s")
        self._pool = pool
        self._conf = conf
        self._session = session
        self._clock = clock
        self._max_batch = max_batch
        self._retry_min_s = retry_min_s
        self._retry_max_s = retry_max_s
        self._request_timeout = request_timeout
        self.state = state or TimestampingState()
        self._pass_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._backlog = 0
        self._selects = 0
        self._covered = 0
        self._task: asyncio.Task[None] | None = None
        #: Tokens stored by this process (for metrics and tests).
        self.batches_stored = 0

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Read the backlog from the database and start background passes."""
        await self.refresh()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="jisr-timestamper")

    async def close(self) -> None:
        """Stop background passes (a pass under way is cancelled; its records stay queued)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def __aenter__(self) -> Timestamper:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- what the message log tells us ---------------------------------------------------------

    def notify_written(self, count: int, logged_at: dt.datetime) -> None:
        """``count`` records logged at ``logged_at`` were committed; a full batch starts a pass."""
        self.state.note_written(logged_at)
        self._backlog += count
        if self._backlog >= self._max_batch:
            self._wake.set()

    async def refresh(self) -> None:
        """Read the oldest untimestamped record's log time from the database."""
        token = self.state.refresh_started()
        try:
            oldest = await self._pool.fetchval(OLDEST_WAITING)
        except DATABASE_ERRORS as exc:
            await expire_if_lost(self._pool, exc)
            raise StorageError(
                f"cannot read the message log's timestamping backlog: {exc}"
            ) from exc
        self.state.refreshed(token, oldest)

    # --- passes ---------------------------------------------------------------------------------

    async def timestamp_pending(self) -> int:
        """Timestamp every record committed before this call; return how many were stamped.

        Raises :class:`~certs.tsa.TimestampError` when no approved TSA issued a token (the
        records stay queued) and :class:`~config.errors.StorageError` when the database fails.
        """
        return await self._pass(needed=None)

    async def timestamp_through(self) -> None:
        """Return once every record committed before this call is timestamped.

        Concurrent callers share passes: a pass that started after a caller's records were
        committed covers them. Raises like :meth:`timestamp_pending`.
        """
        needed = self._selects + 1
        while self._covered < needed:
            await self._pass(needed=needed)

    async def _pass(self, *, needed: int | None) -> int:
        async with self._pass_lock:
            if needed is not None and self._covered >= needed:
                return 0
            total = 0
            try:
                async with self._pool.acquire() as conn:
                    session_changed(conn)
                    await conn.execute("SELECT pg_advisory_lock($1)", _PASS_LOCK_KEY)
                    try:
                        while True:
                            self._selects += 1
                            select_no = self._selects
                            rows = await conn.fetch(_WAITING, self._max_batch)
                            if rows:
                                await self._stamp(conn, rows)
                                total += len(rows)
                            if len(rows) < self._max_batch:
                                self._covered = select_no
                                self._backlog = 0
                                break
                    finally:
                        await conn.execute("SELECT pg_advisory_unlock($1)", _PASS_LOCK_KEY)
            except DATABASE_ERRORS as exc:
                self.state.last_error = f"database: {exc}"
                await expire_if_lost(self._pool, exc)
                raise StorageError(f"cannot timestamp the message log: {exc}") from exc
            except TimestampError as exc:
                self.state.last_error = exc.message
                raise
            finally:
                with contextlib.suppress(StorageError):
                    await self.refresh()
            self.state.last_error = None
            self.state.last_success = self._clock()
            return total

    async def _stamp(
        self,
        conn: asyncpg.pool.PoolConnectionProxy[asyncpg.Record],
        rows: Sequence[asyncpg.Record],
    ) -> None:
        first_seq = int(rows[0]["seq"])
        last_seq = int(rows[-1]["seq"])
        if last_seq - first_seq + 1 != len(rows):
            # Sequence numbers have no gaps, and only timestamped records are ever deleted.
            raise StorageError(
                f"the records waiting for a timestamp from {first_seq} on are not consecutive "
                f"({len(rows)} records up to {last_seq}); the message log is damaged"
            )
        hashes = [bytes(r["record_hash"]) for r in rows]
        root = Tree([log_record.timestamp_leaf(h) for h in hashes]).root
        stamped = await self._token_for(root)
        # One row for the whole batch: the records themselves are never updated. The insert
        # only happens if the batch starts right after the last timestamped record.
        status = await conn.execute(
            _INSERT_BATCH,
            root,
            len(rows),
            stamped.token,
            stamped.tsa_url,
            stamped.gen_time,
            first_seq,
            b"".join(hashes),
        )
        if status != "INSERT 0 1":
            # Only possible if the advisory lock was bypassed; store nothing.
            raise StorageError(
                f"timestamping records {first_seq}..{last_seq} stored nothing; another writer "
                "timestamped the log during the pass"
            )
        self.batches_stored += 1
        _log.info(
            "message_log_timestamped",
            records=len(rows),
            first_seq=first_seq,
            last_seq=last_seq,
            tsa=stamped.tsa_url,
        )

    async def _token_for(self, root: bytes) -> _Stamped:
        now = self._clock()
        try:
            tsas = self._conf.current(now).tsas
        except JisrError as exc:
            raise TimestampError(
                f"cannot timestamp the message log without a valid global configuration: "
                f"{exc.message}"
            ) from exc
        if not tsas:
            raise TimestampError(
                "the global configuration lists no approved TSA; ask the registry operator to "
                "add one"
            )
        failures: list[str] = []
        for tsa in tsas:
            try:
                token = await request_token(
                    self._session, tsa.url, root, request_timeout=self._request_timeout
                )
                info = verify_token(
                    token.der, digest=root, tsa_certs=[tsa.certificate], at=self._clock()
                )
            except TimestampError as exc:
                failures.append(f"{tsa.name}: {exc.message}")
                continue
            return _Stamped(token.der, tsa.url, info.gen_time)
        raise TimestampError(
            "no approved TSA issued a token for the message log (records stay queued and are "
            "retried): " + "; ".join(failures)
        )

    # --- background -----------------------------------------------------------------------------

    def _interval_s(self) -> float:
        try:
            return float(self._conf.current(self._clock()).settings.timestamping_interval_s)
        except JisrError:
            return float(DEFAULT_INTERVAL_S)

    async def _run(self) -> None:
        failures = 0
        while True:
            if failures:
                # Backoff: a full backlog does not shorten it, or an outage would hammer the TSA.
                delay = min(self._retry_max_s, self._retry_min_s * 2 ** min(failures - 1, 30))
                await asyncio.sleep(delay)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._interval_s())
            self._wake.clear()
            try:
                await self.timestamp_pending()
            except (TimestampError, StorageError) as exc:
                failures += 1
                _log.warning("message_log_timestamping_failed", error=exc.message, tries=failures)
            except Exception:  # keep the loop alive whatever a pass hits
                failures += 1
                _log.exception("message_log_timestamping_crashed", tries=failures)
            else:
                failures = 0
