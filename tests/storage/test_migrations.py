from __future__ import annotations

import asyncpg
import pytest

from config.errors import StorageError
from storage import migrations as mig
from storage.migrations import apply_migrations

PKG = "tests.storage.sample_migrations"
pytestmark = pytest.mark.postgres


async def test_applies_in_order_once_and_records_them(fresh_db_url: str) -> None:
    conn = await asyncpg.connect(fresh_db_url)
    try:
        assert await apply_migrations(conn, PKG) == [
            "0001_create_things.sql",
            "0002_add_colour.sql",
        ]
        assert await apply_migrations(conn, PKG) == []
        await conn.execute("INSERT INTO things (name, colour) VALUES ('a', 'red')")
        rows = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
        assert [r["version"] for r in rows] == [1, 2]
    finally:
        await conn.close()


async def test_applies_only_the_migrations_before_a_version_then_the_rest(
    fresh_db_url: str,
) -> None:
    conn = await asyncpg.connect(fresh_db_url)
    try:
        assert await apply_migrations(conn, PKG, before=2) == ["0001_create_things.sql"]
        with pytest.raises(asyncpg.UndefinedColumnError):
            await conn.execute("INSERT INTO things (name, colour) VALUES ('a', 'red')")
        assert await apply_migrations(conn, PKG) == ["0002_add_colour.sql"]
        rows = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
        assert [r["version"] for r in rows] == [1, 2]
    finally:
        await conn.close()


async def test_refuses_a_changed_migration(
    fresh_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = await asyncpg.connect(fresh_db_url)
    try:
        await apply_migrations(conn, PKG)
        original = mig.load_migrations

        def tampered(package: str) -> list[mig.Migration]:
            found = original(package)
            return [mig.Migration(m.version, m.name, m.sql + "\n-- edited") for m in found]

        monkeypatch.setattr(mig, "load_migrations", tampered)
        with pytest.raises(StorageError, match="changed after it was applied"):
            await apply_migrations(conn, PKG)
    finally:
        await conn.close()


async def test_failed_migration_leaves_nothing_behind(
    fresh_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = await asyncpg.connect(fresh_db_url)
    try:
        monkeypatch.setattr(
            mig,
            "load_migrations",
            lambda package: [mig.Migration(1, "0001_bad.sql", "CREATE TABLE x (id int); SELEC 1;")],
        )
        with pytest.raises(StorageError, match=r"0001_bad\.sql"):
            await apply_migrations(conn, PKG)
        assert await conn.fetchval("SELECT to_regclass('x')") is None
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == 0
    finally:
        await conn.close()
