"""Replay protection shared by every process of a node, kept in PostgreSQL.

Rules:

- A node may run several processes (or hosts) with one identity behind a TCP load balancer;
  they share the node database. A request's (client, message id) pair is accepted by exactly
  one of them within the replay window (transport v1 §8): the pair is inserted into
  ``seen_message_ids`` with a unique key, and a conflict with a row that has not expired means
  the id was seen (``DuplicateMessageId``). The insert and the conflict check are one statement
  and one round trip; PostgreSQL's unique index decides between processes racing on one id.
- Concurrent checks of one process share that round trip: the pairs waiting when the previous
  statement returns are inserted by the next one together (one statement for many rows, as the
  message log batches its writes). A pair asked twice in one batch is refused the second time
  without the database. Nobody's answer depends on another's: each pair is accepted only when
  its own row was inserted or renewed.
- A row that has expired but is not yet purged counts as unseen: the same statement renews it.
- Expiry is the accepting process's clock plus the window (600 s); the clock-skew check that
  comes first (``gateway.transport.ReplayGuard``, 300 s) makes a replay fail one of the two.
- Expired rows are deleted periodically (every 60 s by default, in bounded batches) by every
  process; the deletes are idempotent, so several purging processes do not disturb each other.
- The database failing is never taken as "not seen": the request is refused with
  ``DatabaseError`` (fail closed), the cause in the node's log, not in the fault. Every
  database failure counts (:data:`storage.errors.DATABASE_ERRORS`, asyncpg's client-side
  errors after a lost connection included). A lost connection makes the pool replace its
  connections, so the next batch does not meet the pooled connections that died with it; the
  failed statement is not sent again (it may have been committed, and would then refuse its
  own requests as replays).
- With this store the server proxy keeps no seen pairs in memory (they would grow with the
  request rate); it still checks the clock skew (:class:`gateway.transport.ReplayGuard`) first.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
from collections.abc import AsyncIterator
from typing import Final

import asyncpg
import structlog

from gateway.faults import SERVER_PROXY, FaultError
from gateway.identifiers import ClientId
from gateway.transport import DEFAULT_REPLAY_WINDOW
from security_server.runtime import Clock
from storage.errors import DATABASE_ERRORS, expire_if_lost

log = structlog.get_logger("jisr.replay_store")

#: How often expired rows are deleted.
DEFAULT_PURGE_INTERVAL: Final = dt.timedelta(seconds=60)
#: Rows deleted per statement, so a large backlog never holds locks for long.
_PURGE_BATCH: Final = 10_000
#: How long a request waits for a database connection and its answer.
_DB_TIMEOUT_S: Final = 5.0

#: Inserts the pairs not seen, renews those whose row has expired, and returns both: a pair
#: missing from the result was seen within the window.
_REMEMBER_MANY: Final = """
INSERT INTO seen_message_ids AS seen (client_id, message_id, expires_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[])
ON CONFLICT (client_id, message_id) DO UPDATE SET expires_at = EXCLUDED.expires_at
    WHERE seen.expires_at <= $4
RETURNING client_id, message_id
"""
#: Most pairs in one statement; more wait for the next.
_MAX_BATCH: Final = 1000

_PURGE: Final = """
DELETE FROM seen_message_ids
WHERE ctid = ANY (ARRAY(
    SELECT ctid FROM seen_message_ids WHERE expires_at <= $1 LIMIT $2
))
"""


#: The answer to a pair already seen.
_SEEN: Final = "seen"


@dataclasses.dataclass(slots=True)
class _Waiting:
    """One pair waiting for its statement, and how its caller learns the answer: None when
    accepted, :data:`_SEEN` for a replay, the exception when the database failed."""

    key: tuple[str, str]
    now: dt.datetime
    accepted: asyncio.Future[BaseException | str | None]

    def answer(self, result: BaseException | str | None) -> None:
        if not self.accepted.done():
            self.accepted.set_result(result)


class PostgresReplayStore:
    """The seen (client, message id) pairs of one node, shared by its processes."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        window: dt.timedelta = DEFAULT_REPLAY_WINDOW,
        purge_interval: dt.timedelta = DEFAULT_PURGE_INTERVAL,
    ) -> None:
        if window <= dt.timedelta(0) or purge_interval <= dt.timedelta(0):
            raise ValueError("the replay window and the purge interval must be positive")
        self._pool = pool
        self._window = window
        self._purge_interval = purge_interval
        self._waiting: list[_Waiting] = []
        self._writer: asyncio.Task[None] | None = None
        #: Statements sent to check message ids (one per batch).
        self.round_trips = 0

    async def check_and_remember(
        self,
        client: ClientId,
        message_id: str,
        now: dt.datetime,
        *,
        prefix: str = SERVER_PROXY,
    ) -> None:
        """Accept (client, message id) once per window across all processes of the node.

        Raises ``{prefix}.DuplicateMessageId`` when another request (in any process) was
        accepted with them, ``{prefix}.DatabaseError`` when the store cannot be asked.
        """
        loop = asyncio.get_running_loop()
        waiting = _Waiting((str(client), message_id), now, loop.create_future())
        self._waiting.append(waiting)
        if self._writer is None:
            # Started now, runs from the next loop turn: whatever else arrives in this turn
            # joins its first statement.
            self._writer = loop.create_task(self._write(), name="replay-store-write")
        failure = await waiting.accepted
        if failure is None:
            return
        if isinstance(failure, BaseException):
            fault = FaultError(
                f"{prefix}.DatabaseError",
                "the provider's node cannot check the message id against its replay store "
                "(its database is unavailable); try again later",
            )
            log.error(
                "replay store unavailable",
                error=f"{failure.__class__.__name__}: {failure}",
                detail=fault.detail,
            )
            raise fault from failure
        raise FaultError(
            f"{prefix}.DuplicateMessageId",
            f"message id {message_id!r} from {client} was already received by this node; "
            "every request needs a new X-Road-Id",
        )

    async def _write(self) -> None:
        """Insert the waiting pairs, a batch per statement, until none waits."""
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[:_MAX_BATCH], self._waiting[_MAX_BATCH:]
                await self._write_batch([w for w in batch if not w.accepted.done()])
        except BaseException as exc:
            # Cancelled (the loop is stopping) or a bug: nobody may wait forever.
            for waiting in self._waiting:
                waiting.answer(exc)
            self._waiting = []
            raise
        finally:
            # No await between the loop's last check and here: a pair that arrives later
            # finds no writer and starts one.
            self._writer = None

    async def _write_batch(self, batch: list[_Waiting]) -> None:
        first: dict[tuple[str, str], _Waiting] = {}
        for waiting in batch:
            if waiting.key in first:
                waiting.answer(_SEEN)  # the same pair twice in one batch: a replay
            else:
                first[waiting.key] = waiting
        if not first:
            return
        keys = list(first)
        expires = [first[k].now + self._window for k in keys]
        # A row counts as expired only if it expired before every request of the batch was
        # made: never later than for a request checked alone.
        oldest = min(first[k].now for k in keys)
        self.round_trips += 1
        try:
            async with self._pool.acquire(timeout=_DB_TIMEOUT_S) as conn:
                rows = await conn.fetch(
                    _REMEMBER_MANY,
                    [k[0] for k in keys],
                    [k[1] for k in keys],
                    expires,
                    oldest,
                    timeout=_DB_TIMEOUT_S,
                )
        except DATABASE_ERRORS as exc:
            for waiting in first.values():
                waiting.answer(exc)
            await expire_if_lost(self._pool, exc)
            return
        except BaseException as exc:
            for waiting in first.values():
                waiting.answer(exc)
            raise
        inserted = {(row["client_id"], row["message_id"]) for row in rows}
        for key, waiting in first.items():
            waiting.answer(None if key in inserted else _SEEN)

    async def purge_expired(self, now: dt.datetime) -> int:
        """Delete the rows expired at ``now``; returns how many were deleted."""
        deleted = 0
        async with self._pool.acquire(timeout=_DB_TIMEOUT_S) as conn:
            while True:
                status = await conn.execute(_PURGE, now, _PURGE_BATCH)
                count = int(status.rsplit(" ", 1)[-1])
                deleted += count
                if count < _PURGE_BATCH:
                    return deleted

    async def run_purge(self, clock: Clock) -> None:
        """Purge forever, every purge interval; returns only when cancelled."""
        while True:
            try:
                deleted = await self.purge_expired(clock())
                if deleted:
                    log.debug("expired message ids purged", count=deleted)
            except DATABASE_ERRORS as exc:
                # The next pass retries; rows only pile up meanwhile, none is wrongly accepted.
                await expire_if_lost(self._pool, exc)
                log.warning("replay store purge failed", error=f"{exc.__class__.__name__}: {exc}")
            await asyncio.sleep(self._purge_interval.total_seconds())

    @contextlib.asynccontextmanager
    async def purging(self, clock: Clock) -> AsyncIterator[PostgresReplayStore]:
        """Run :meth:`run_purge` in the background while the block runs."""
        task = asyncio.create_task(self.run_purge(clock), name="replay-store-purge")
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


__all__ = ["DEFAULT_PURGE_INTERVAL", "PostgresReplayStore"]
