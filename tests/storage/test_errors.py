"""Telling a lost database connection from a failed statement."""

from __future__ import annotations

import asyncpg
import pytest
from asyncpg import exceptions as pg

from storage.errors import DATABASE_ERRORS, connection_lost


@pytest.mark.parametrize(
    "error",
    [
        pg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        pg.AdminShutdownError("terminating connection due to administrator command"),
        pg.CannotConnectNowError("the database system is starting up"),
        asyncpg.InterfaceError("connection is closed"),
        pg.InternalClientError("cannot switch to state 15; another operation is in progress"),
        ConnectionResetError("reset by peer"),
    ],
)
def test_a_dead_connection_is_lost(error: Exception) -> None:
    assert isinstance(error, DATABASE_ERRORS)
    assert connection_lost(error)


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.UniqueViolationError("duplicate key value"),
        pg.QueryCanceledError("canceling statement due to statement timeout"),
        TimeoutError(),
        ValueError("not a database error"),
    ],
)
def test_a_failed_statement_or_a_slow_database_is_not_a_lost_connection(error: Exception) -> None:
    assert not connection_lost(error)
