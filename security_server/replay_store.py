"""Replay protection shared by every process of a node, kept in PostgreSQL.

Rules:

- A node may run several processes (or hosts) with one identity behind a TCP load balancer;
  they share the node database. A request's (client, message id) pair is accepted by exactly
  one of them within the replay window (transport v1 §8): the pair is inserted into
  ``seen_message_ids`` with a unique key, and a conflict with a row that has not expired means
  the id was seen (``DuplicateMessageId``). The insert and the conflict check are one statement
  and one round trip; PostgreSQL's unique index decides between processes racing on one id.
- A row that has expired but is not yet purged counts as unseen: the same statement renews it.
- Expiry is the accepting process's clock plus the window (600 s); the clock-skew check that
  comes first (``gateway.transport.ReplayGuard``, 300 s) makes a replay fail one of the two.
- Expired rows are deleted periodically (every 60 s by default, in bounded batches) by every
  process; the deletes are idempotent, so several purging processes do not disturb each other.
- The database failing is never taken as "not seen": the request is refused with
  ``DatabaseError`` (fail closed), the cause in the node's log, not in the fault.
- The server proxy keeps the in-process :class:`gateway.transport.ReplayGuard` in front of
  this store: replays reaching the same process are refused without a database round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from typing import Final

import asyncpg
import structlog

from gateway.faults import SERVER_PROXY, FaultError
from gateway.identifiers import ClientId
from gateway.transport import DEFAULT_REPLAY_WINDOW
from security_server.runtime import Clock

log = structlog.get_logger("jisr.replay_store")

#: How often expired rows are deleted.
DEFAULT_PURGE_INTERVAL: Final = dt.timedelta(seconds=60)
#: Rows deleted per statement, so a large backlog never holds locks for long.
_PURGE_BATCH: Final = 10_000
#: How long a request waits for a database connection and its answer.
_DB_TIMEOUT_S: Final = 5.0

_REMEMBER: Final = """
INSERT INTO seen_message_ids AS seen (client_id, message_id, expires_at)
VALUES ($1, $2, $3)
ON CONFLICT (client_id, message_id) DO UPDATE SET expires_at = EXCLUDED.expires_at
    WHERE seen.expires_at <= $4
RETURNING 1
"""

_PURGE: Final = """
DELETE FROM seen_message_ids
WHERE ctid = ANY (ARRAY(
    SELECT ctid FROM seen_message_ids WHERE expires_at <= $1 LIMIT $2
))
"""


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
        try:
            async with self._pool.acquire(timeout=_DB_TIMEOUT_S) as conn:
                accepted = await conn.fetchval(
                    _REMEMBER,
                    str(client),
                    message_id,
                    now + self._window,
                    now,
                    timeout=_DB_TIMEOUT_S,
                )
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            fault = FaultError(
                f"{prefix}.DatabaseError",
                "the provider's node cannot check the message id against its replay store "
                "(its database is unavailable); try again later",
            )
            log.error(
                "replay store unavailable",
                error=f"{exc.__class__.__name__}: {exc}",
                detail=fault.detail,
            )
            raise fault from exc
        if accepted is None:
            raise FaultError(
                f"{prefix}.DuplicateMessageId",
                f"message id {message_id!r} from {client} was already received by this node; "
                "every request needs a new X-Road-Id",
            )

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
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                # The next pass retries; rows only pile up meanwhile, none is wrongly accepted.
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
