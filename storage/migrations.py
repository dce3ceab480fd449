"""Ordered SQL migrations, applied at start-up and recorded in the database.

A migration set is a package directory of files named ``NNNN_description.sql``. They are
applied in numeric order, each in its own transaction, and recorded in ``schema_migrations``
with their SHA-256; a file that changed after it was applied is refused (migrations are
append-only). A PostgreSQL advisory lock keeps two processes from migrating at once.

This is hand-written rather than borrowed because the common runners (alembic, yoyo) need
SQLAlchemy or a DB-API driver, while Jisr speaks only asyncpg; the whole runner is the
function below.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable

import asyncpg

from config.errors import StorageError
from storage.sessions import session_changed

_NAME_RE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_LOCK_KEY = 0x4A495352  # "JISR"


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(package: str) -> list[Migration]:
    """Read the migrations shipped in ``package`` (e.g. ``registry.migrations``)."""
    root: Traversable = resources.files(package)
    found: list[Migration] = []
    for entry in root.iterdir():
        m = _NAME_RE.match(entry.name)
        if m:
            found.append(Migration(int(m.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    found.sort(key=lambda mig: mig.version)
    versions = [mig.version for mig in found]
    if len(set(versions)) != len(versions):
        raise StorageError(f"two migrations in {package} share a version number: {versions}")
    return found


async def apply_migrations(
    conn: asyncpg.Connection[asyncpg.Record] | asyncpg.pool.PoolConnectionProxy[asyncpg.Record],
    package: str,
    *,
    before: int | None = None,
) -> list[str]:
    """Apply the pending migrations of ``package``; return the names applied.

    ``before``: apply only the migrations numbered below it (a schema as an older release left
    it, for upgrade tests)."""
    migrations = [m for m in load_migrations(package) if before is None or m.version < before]
    applied_now: list[str] = []
    session_changed(conn)
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   package text NOT NULL,
                   version integer NOT NULL,
                   name text NOT NULL,
                   checksum text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now(),
                   PRIMARY KEY (package, version))"""
        )
        rows = await conn.fetch(
            "SELECT version, name, checksum FROM schema_migrations WHERE package = $1", package
        )
        done = {r["version"]: r for r in rows}
        for mig in migrations:
            if mig.version in done:
                if done[mig.version]["checksum"] != mig.checksum:
                    raise StorageError(
                        f"migration {mig.name} of {package} changed after it was applied; "
                        "migrations are append-only: add a new one instead"
                    )
                continue
            async with conn.transaction():
                try:
                    await conn.execute(mig.sql)
                except asyncpg.PostgresError as exc:
                    raise StorageError(f"migration {mig.name} of {package} failed: {exc}") from exc
                await conn.execute(
                    "INSERT INTO schema_migrations (package, version, name, checksum) "
                    "VALUES ($1, $2, $3, $4)",
                    package,
                    mig.version,
                    mig.name,
                    mig.checksum,
                )
            applied_now.append(mig.name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    return applied_now
