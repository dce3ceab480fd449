"""Fixtures for the registry: a migrated database, an initialised registry, a publisher."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from config.settings import RegistrySettings
from registry.conf_keys import initialise_registry
from registry.publisher import Publisher
from registry.store import RegistryStore
from storage.database import open_pool

PASSPHRASE = b"registry-test-passphrase"


@dataclasses.dataclass
class Registry:
    store: RegistryStore
    publisher: Publisher
    data_dir: Path
    key_id: str
    api_key: str
    pool: asyncpg.Pool


@pytest.fixture
async def pool(fresh_db_url: str, data_dir: Path) -> AsyncIterator[asyncpg.Pool]:
    async with open_pool(
        configured_url=fresh_db_url,
        data_dir=data_dir,
        database="registry",
        migrations="registry.migrations",
        max_size=8,
    ) as p:
        yield p


@pytest.fixture
async def registry(pool: asyncpg.Pool, data_dir: Path) -> Registry:
    """An initialised registry for instance IQ with class GOV and no members yet."""
    store = RegistryStore(pool)
    key_id, api_key = await initialise_registry(
        store,
        data_dir,
        PASSPHRASE,
        instance="IQ",
        settings=RegistrySettings(),
        now=dt.datetime.now(dt.UTC),
    )
    await store.add_member_class("test", "GOV", "Government")
    publisher = Publisher(store, data_dir=data_dir, passphrase=PASSPHRASE, poll_s=0.05)
    store.on_change = publisher.notify_change
    return Registry(store, publisher, data_dir, key_id, api_key, pool)
