"""What a database failure looks like to Jisr, and what to do when a connection is lost.

Rules:

- :data:`DATABASE_ERRORS` is every exception asyncpg and the socket under it raise when the
  database fails: PostgreSQL's errors, the client's interface and internal protocol errors
  (asyncpg raises these, not a ``PostgresError``, when it meets a connection that died under
  it), ``OSError`` and timeouts. Code that talks to the database catches exactly these, where
  it calls asyncpg, and raises a :class:`config.errors.StorageError` or a fault from them; an
  asyncpg exception never travels further up.
- :func:`connection_lost` tells a dead or unusable connection from an error of the statement
  (a constraint, a syntax error, a statement timeout). A lost connection says nothing about
  the next statement, but the pool's *other* connections have often died with it (a server
  restart, a failover, an administrator's ``pg_terminate_backend``), and the pool only finds
  out when it hands one out. :func:`expire_if_lost` makes the pool replace all of them on
  their next use instead, so one failure is not followed by one failure per pooled connection.
- Whether a failed statement may be sent again is the caller's decision: only the caller knows
  whether the statement could have been committed before the connection died.
"""

from __future__ import annotations

from typing import Final

import asyncpg
from asyncpg import exceptions as pg

__all__ = ["DATABASE_ERRORS", "connection_lost", "expire_if_lost"]

#: Every exception a database call can fail with (``TimeoutError`` is an ``OSError``).
DATABASE_ERRORS: Final = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    pg.InternalClientError,
    OSError,
)

#: Errors that mean the connection, not the statement, failed.
_LOST: Final = (
    pg.PostgresConnectionError,  # SQLSTATE class 08, and "closed in the middle of operation"
    pg.AdminShutdownError,  # 57P01: pg_terminate_backend, a fast or smart shutdown
    pg.CrashShutdownError,  # 57P02
    pg.CannotConnectNowError,  # 57P03: the server is starting or stopping
    asyncpg.InterfaceError,  # "connection is closed", an operation left half done
    pg.InternalClientError,  # the client's protocol state broken by a connection cut mid-way
    OSError,  # the socket: reset, refused, unreachable
)


def connection_lost(exc: BaseException) -> bool:
    """True when ``exc`` says the connection is dead or unusable (a timeout is not: the
    database was slow, and its connections are as good as before)."""
    if isinstance(exc, TimeoutError):
        return False
    return isinstance(exc, _LOST)


async def expire_if_lost(pool: asyncpg.Pool, exc: BaseException) -> bool:
    """After ``exc``, make ``pool`` open new connections if the connection was lost; True if
    it was. Connections in use are closed when they are released, idle ones when next
    acquired; nothing under way is interrupted."""
    if not connection_lost(exc):
        return False
    await pool.expire_connections()
    return True
