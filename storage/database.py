"""Opening the database: the configured server or the embedded default, then migrations."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import structlog

from config.errors import StorageError
from storage.embedded import EmbeddedPostgres, database_url
from storage.migrations import apply_migrations
from storage.sessions import PooledConnection, reset_if_changed

log = structlog.get_logger(__name__)


async def ensure_database(server_url: str, name: str) -> str:
    """Create database ``name`` on the server at ``server_url`` if missing; return its URL."""
    try:
        conn = await asyncpg.connect(server_url)
    except (OSError, asyncpg.PostgresError) as exc:
        raise StorageError(f"cannot connect to PostgreSQL at {_safe(server_url)}: {exc}") from exc
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            # Another process may create it between our check and our create.
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return database_url(server_url, name)


def _safe(url: str) -> str:
    """The URL without its password, for messages and logs."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        creds, host = netloc.rsplit("@", 1)
        netloc = f"{creds.split(':', 1)[0]}:***@{host}" if ":" in creds else netloc
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@contextlib.asynccontextmanager
async def open_pool(
    *,
    configured_url: str,
    data_dir: Path,
    database: str,
    migrations: str | None,
    min_size: int = 1,
    max_size: int = 10,
) -> AsyncIterator[asyncpg.Pool]:
    """Yield a pool on ``database``, starting the embedded server if no URL is configured.

    With ``configured_url`` set, ``database`` is created on that server if missing, unless the
    URL already names a database other than ``postgres`` (then that database is used as is).
    """
    embedded: EmbeddedPostgres | None = None
    try:
        if configured_url:
            from urllib.parse import urlsplit

            path = urlsplit(configured_url).path.lstrip("/")
            url = (
                configured_url
                if path and path != "postgres"
                else await ensure_database(configured_url, database)
            )
        else:
            embedded = EmbeddedPostgres(data_dir)
            server_url = embedded.start()
            log.info("embedded PostgreSQL started", pgdata=str(embedded.pgdata))
            url = await ensure_database(server_url, database)
        try:
            pool = await asyncpg.create_pool(
                url,
                min_size=min_size,
                max_size=max_size,
                connection_class=PooledConnection,
                reset=reset_if_changed,
            )
        except (OSError, asyncpg.PostgresError) as exc:
            raise StorageError(f"cannot open a pool on {_safe(url)}: {exc}") from exc
        try:
            if migrations:
                async with pool.acquire() as conn:
                    applied = await apply_migrations(conn, migrations)
                if applied:
                    log.info("migrations applied", package=migrations, names=applied)
            yield pool
        finally:
            await pool.close()
    finally:
        if embedded is not None:
            embedded.stop()
