"""Pooled connections that skip asyncpg's full session reset unless a session was changed.

Rules:

- Every pool :func:`storage.database.open_pool` makes uses :class:`PooledConnection` and
  :func:`reset_if_changed`: on release an open transaction is rolled back (asyncpg does that
  first), and the full reset statement runs only for a connection marked with
  :func:`session_changed`.
- Code that leaves state in a session (a session-level advisory lock is the only such state
  Jisr uses) calls :func:`session_changed` on the connection before it does so.
"""

from __future__ import annotations

from typing import cast

import asyncpg


class PooledConnection(asyncpg.Connection):
    """A pooled connection whose session is reset in full only when it was changed.

    asyncpg resets every connection it takes back into a pool with one more statement
    (``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL``): a round trip and some
    server work on every use, the node's busiest paths included. Jisr's code leaves nothing
    behind in a session but advisory locks, and marks a connection that took one with
    :func:`session_changed`; only such a connection gets the full reset on release. An open
    transaction is rolled back on release either way (asyncpg does that before the reset).
    """

    full_reset_due: bool = False

    def mark_session_changed(self) -> None:
        self.full_reset_due = True


def session_changed(
    conn: asyncpg.Connection[asyncpg.Record] | asyncpg.pool.PoolConnectionProxy[asyncpg.Record],
) -> None:
    """Have ``conn``'s pool reset its session in full when it is released (call this before
    taking a session-level advisory lock, or changing any other session state)."""
    # A pool's proxy hands attribute lookups on to its connection; a connection of another
    # class (a pool made elsewhere) gets asyncpg's full reset anyway.
    mark = getattr(conn, "mark_session_changed", None)
    if mark is not None:
        mark()


async def reset_if_changed(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    """The pool's ``reset``: the full reset statement only for a connection marked changed."""
    # Not isinstance: asyncpg's connection metaclass answers True for every connection.
    if getattr(conn, "full_reset_due", False):
        cast(PooledConnection, conn).full_reset_due = False
        await conn.execute(conn.get_reset_query())
