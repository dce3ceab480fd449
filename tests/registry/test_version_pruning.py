"""Pruning old global-configuration versions: what is kept, what is removed, and who sees it.

The publisher's clock is pinned, so "old" and "expired" are decided by the test, never by how
long the test takes.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web

from config.errors import ConfigError, ValidationError
from config.settings import RegistrySettings, load_settings
from gateway.globalconf import GlobalConfPointer, digest_of
from registry.conf_keys import export_anchor
from registry.publisher import Publisher, prune_old_versions
from registry.server import running_registry
from registry.store import PruneResult, RegistryStore
from security_server.conf_client import ConfClient
from tests.clock import Clock
from tests.registry.conftest import PASSPHRASE, Registry
from trust_services.http_server import serve_app

pytestmark = pytest.mark.postgres

T0 = dt.datetime(2026, 11, 22, 10, 0, tzinfo=dt.UTC)
JISR = [sys.executable, "-c", "from jisr.cli import main; main()"]


def _retain(publisher: Publisher, clock: Clock, *, keep_versions: int, keep_days: int) -> None:
    publisher.clock = clock
    publisher.keep_versions = keep_versions
    publisher.keep_days = keep_days


async def _publish(publisher: Publisher, count: int) -> list[int]:
    return [(await publisher.publish()).version for _ in range(count)]


async def _stored(registry: Registry) -> list[int]:
    return sorted(v["version"] for v in await registry.store.list_versions(limit=1000))


async def _assert_chain(registry: Registry, stored: list[int]) -> None:
    """Each version kept names the digest of the one before it: the chain is intact."""
    for version in stored[1:]:
        this, before = (
            await registry.store.get_version(version),
            await registry.store.get_version(version - 1),
        )
        assert this.previous_digest == digest_of(before.document)


async def _prune_audit(registry: Registry) -> list[dict[str, Any]]:
    return await registry.store.list_audit(action="globalconf.prune")


def _removed(audit_row: dict[str, Any]) -> int:
    removed = audit_row["details"]["removed"]
    assert isinstance(removed, int)
    return removed


# -- what is kept ------------------------------------------------------------------------------


async def test_keeps_the_newest_versions_and_audits_the_removal(registry: Registry) -> None:
    clock = Clock(T0)
    _retain(registry.publisher, clock, keep_versions=3, keep_days=1)
    assert await _publish(registry.publisher, 6) == [1, 2, 3, 4, 5, 6]
    clock.advance(days=2)

    result = await registry.publisher.prune()

    assert (result.removed, result.oldest_version, result.newest_version) == (3, 1, 3)
    assert result.kept == 3
    assert result.oldest_generated_at == result.newest_generated_at == T0
    assert await _stored(registry) == [4, 5, 6]
    (row,) = await _prune_audit(registry)
    assert row["actor"] == "publisher"
    assert row["details"] == {
        "keep_versions": 3,
        "keep_since": (T0 + dt.timedelta(days=1)).isoformat(),
        "removed": 3,
        "oldest_version": 1,
        "newest_version": 3,
        "oldest_generated_at": T0.isoformat(),
        "newest_generated_at": T0.isoformat(),
        "kept": 3,
        "chunk": 1,
        "total_removed": 3,
        "done": True,
    }


async def test_keeps_versions_generated_within_keep_days(registry: Registry) -> None:
    clock = Clock(T0)
    _retain(registry.publisher, clock, keep_versions=1, keep_days=7)
    await _publish(registry.publisher, 2)
    clock.advance(days=5)
    await _publish(registry.publisher, 2)
    clock.advance(days=3)  # versions 1 and 2 are 8 days old, 3 and 4 three days old

    result = await registry.publisher.prune()

    assert (result.removed, result.oldest_version, result.newest_version) == (2, 1, 2)
    assert await _stored(registry) == [3, 4]


async def test_never_prunes_the_current_version_or_an_unexpired_one(registry: Registry) -> None:
    clock = Clock(T0)
    _retain(registry.publisher, clock, keep_versions=1, keep_days=0)
    await _publish(registry.publisher, 3)
    clock.advance(seconds=599)  # conf_expiry_s is 600: all three are still valid

    assert (await registry.publisher.prune()).removed == 0
    assert await _stored(registry) == [1, 2, 3]

    clock.advance(days=30)  # all expired, the current one included
    assert (await registry.publisher.prune()).removed == 2
    assert (await registry.publisher.prune()).removed == 0
    assert await _stored(registry) == [3]
    latest = await registry.store.latest_version()
    assert latest is not None
    assert latest.version == 3


async def test_publishing_prunes_what_the_retention_lets_go(registry: Registry) -> None:
    clock = Clock(T0)
    _retain(registry.publisher, clock, keep_versions=2, keep_days=1)
    await _publish(registry.publisher, 4)
    assert await _stored(registry) == [1, 2, 3, 4]
    clock.advance(days=2)

    with structlog.testing.capture_logs() as logs:
        await registry.publisher.publish()

    assert await _stored(registry) == [4, 5]
    (pruned,) = [e for e in logs if e["event"] == "old global configuration versions pruned"]
    assert pruned["log_level"] == "info"
    assert (pruned["removed"], pruned["oldest_version"], pruned["newest_version"]) == (3, 1, 3)


async def test_a_pruning_failure_never_fails_publishing_and_is_retried(registry: Registry) -> None:
    clock = Clock(T0)
    _retain(registry.publisher, clock, keep_versions=0, keep_days=0)  # refused by the store
    await _publish(registry.publisher, 2)
    clock.advance(days=1)

    with structlog.testing.capture_logs() as logs:
        version = await registry.publisher.publish()

    assert version.version == 3
    assert await _stored(registry) == [1, 2, 3]
    (warning,) = [e for e in logs if e["log_level"] == "warning"]
    assert warning["event"].startswith("old global configuration versions not pruned")
    assert "keep_versions 0 must be at least 1" in warning["error"]

    registry.publisher.keep_versions = 1
    clock.advance(days=1)
    await registry.publisher.publish()
    assert await _stored(registry) == [4]


async def test_dry_run_reports_and_removes_nothing(registry: Registry) -> None:
    clock = Clock(T0)
    _retain(registry.publisher, clock, keep_versions=2, keep_days=0)
    await _publish(registry.publisher, 5)
    clock.advance(days=1)

    preview = await registry.publisher.prune(dry_run=True)

    assert preview.to_json() == {
        "dry_run": True,
        "removed": 3,
        "oldest_version": 1,
        "newest_version": 3,
        "oldest_generated_at": T0.isoformat(),
        "newest_generated_at": T0.isoformat(),
        "kept": 2,
    }
    assert await _stored(registry) == [1, 2, 3, 4, 5]
    assert await _prune_audit(registry) == []
    done = await registry.publisher.prune()
    assert (done.removed, done.oldest_version, done.newest_version, done.kept) == (3, 1, 3, 2)
    assert await _stored(registry) == [4, 5]


# -- chunks ------------------------------------------------------------------------------------


async def test_a_backlog_larger_than_a_chunk_is_pruned_in_several(registry: Registry) -> None:
    clock = Clock(T0)
    _retain(registry.publisher, clock, keep_versions=2, keep_days=1)
    registry.publisher.prune_chunk = 3
    await _publish(registry.publisher, 10)
    clock.advance(days=2)
    chunks: list[tuple[int, int | None, int | None]] = []

    async def seen(part: PruneResult) -> None:
        chunks.append((part.removed, part.oldest_version, part.newest_version))

    result = await registry.publisher.prune(after_chunk=seen)

    assert chunks == [(3, 1, 3), (3, 4, 6), (2, 7, 8)]  # oldest first
    assert (result.removed, result.oldest_version, result.newest_version) == (8, 1, 8)
    assert (result.kept, result.chunks) == (2, 3)
    assert await _stored(registry) == [9, 10]
    rows = sorted(await _prune_audit(registry), key=lambda r: r["details"]["chunk"])
    assert [
        (
            r["details"]["chunk"],
            _removed(r),
            r["details"]["oldest_version"],
            r["details"]["newest_version"],
            r["details"]["kept"],
            r["details"]["total_removed"],
            r["details"]["done"],
        )
        for r in rows
    ] == [(1, 3, 1, 3, 7, 3, False), (2, 3, 4, 6, 4, 6, False), (3, 2, 7, 8, 2, 8, True)]
    assert {r["actor"] for r in rows} == {"publisher"}
    assert (await registry.publisher.prune()).removed == 0
    assert len(await _prune_audit(registry)) == 3


async def test_a_chunk_that_ends_the_backlog_exactly_is_the_last(registry: Registry) -> None:
    clock = Clock(T0)
    _retain(registry.publisher, clock, keep_versions=1, keep_days=0)
    registry.publisher.prune_chunk = 2
    await _publish(registry.publisher, 5)
    clock.advance(days=1)

    result = await registry.publisher.prune()

    assert (result.removed, result.chunks) == (4, 2)
    rows = await _prune_audit(registry)
    assert sorted((r["details"]["chunk"], r["details"]["done"]) for r in rows) == [
        (1, False),
        (2, True),
    ]


async def test_publishing_between_chunks_loses_nothing_and_keeps_the_chain(
    registry: Registry,
) -> None:
    """Between two chunks the publishing lock is free: a publication goes through at once
    (were the lock held, it would wait for the whole prune and the test would time out)."""
    clock = Clock(T0)
    _retain(registry.publisher, clock, keep_versions=2, keep_days=0)
    registry.publisher.prune_chunk = 2
    await _publish(registry.publisher, 9)
    clock.advance(days=1)
    published: list[int] = []

    async def publish_between(part: PruneResult) -> None:
        version = await asyncio.wait_for(registry.publisher.publish(), timeout=60)
        published.append(version.version)

    with structlog.testing.capture_logs() as logs:
        result = await registry.publisher.prune(after_chunk=publish_between)

    # The run removes what was prunable when it started: versions 1 to 7.
    assert (result.removed, result.oldest_version, result.newest_version) == (7, 1, 7)
    assert result.chunks == 4
    assert published == [10, 11, 12, 13]
    assert await _stored(registry) == [8, 9, 10, 11, 12, 13]
    await _assert_chain(registry, [8, 9, 10, 11, 12, 13])
    # The publications did not start prunes of their own while this one ran.
    assert not [e for e in logs if e["event"] == "old global configuration versions pruned"]
    assert sum(_removed(r) for r in await _prune_audit(registry)) == 7
    # The next publication prunes what the run left (every version is expired and old).
    clock.advance(days=1)
    with structlog.testing.capture_logs() as logs:
        await registry.publisher.publish()
    assert await _stored(registry) == [13, 14]
    (pruned,) = [e for e in logs if e["event"] == "old global configuration versions pruned"]
    assert (pruned["removed"], pruned["oldest_version"], pruned["newest_version"]) == (5, 8, 12)
    assert pruned["chunks"] == 3


async def test_the_info_line_after_publishing_tells_the_total(registry: Registry) -> None:
    clock = Clock(T0)
    _retain(registry.publisher, clock, keep_versions=1, keep_days=0)
    registry.publisher.prune_chunk = 2
    await _publish(registry.publisher, 6)
    clock.advance(days=1)

    with structlog.testing.capture_logs() as logs:
        await registry.publisher.publish()

    (pruned,) = [e for e in logs if e["event"] == "old global configuration versions pruned"]
    assert pruned["log_level"] == "info"
    assert (pruned["removed"], pruned["oldest_version"], pruned["newest_version"]) == (6, 1, 6)
    assert (pruned["kept"], pruned["chunks"]) == (1, 3)
    assert await _stored(registry) == [7]


async def test_a_prune_from_another_process_in_chunks_beside_publications(
    registry: Registry,
) -> None:
    """The CLI's path (no publishing lock, table lock per chunk) with publications racing it."""
    clock = Clock(T0, step=dt.timedelta(hours=1))
    # The publisher's own prunes keep everything here: only the outside one removes.
    _retain(registry.publisher, clock, keep_versions=1000, keep_days=0)
    await _publish(registry.publisher, 12)
    outside = RegistryStore(registry.pool)
    pruning = asyncio.create_task(
        prune_old_versions(
            outside,
            actor="cli",
            keep_versions=2,
            keep_days=0,
            now=T0 + dt.timedelta(days=365),
            chunk_size=2,
        )
    )
    published = [(await registry.publisher.publish()).version for _ in range(4)]
    result = await pruning

    assert published == [13, 14, 15, 16]
    stored = await _stored(registry)
    assert stored == list(range(stored[0], 17))
    audited = await _prune_audit(registry)
    assert {r["actor"] for r in audited} == {"cli"}
    assert sum(_removed(r) for r in audited) == result.removed
    assert result.removed + len(stored) == 16
    assert result.removed >= 10  # at least what was prunable before any of the four
    assert result.chunks == len(audited) >= 5
    await _assert_chain(registry, stored)


async def test_refuses_a_bad_chunk_size(registry: Registry) -> None:
    with pytest.raises(ValidationError, match="chunk_size 0 must be a whole number, at least 1"):
        await registry.store.prune_versions(
            "op", keep_versions=1, keep_since=T0, now=T0, chunk_size=0
        )


# -- concurrency -------------------------------------------------------------------------------


async def test_concurrent_publishing_and_pruning_lose_and_break_nothing(registry: Registry) -> None:
    """Publications race prunes through the publisher's lock and, as another process would,
    straight on the database; every version is published once and removed at most once."""
    clock = Clock(T0, step=dt.timedelta(hours=1))  # every earlier version has expired
    _retain(registry.publisher, clock, keep_versions=2, keep_days=0)
    outside = RegistryStore(registry.pool)

    async def prune_outside() -> int:
        result = await prune_old_versions(
            outside, actor="cli", keep_versions=2, keep_days=0, now=T0 + dt.timedelta(days=365)
        )
        return result.removed

    async def prune_inside() -> int:
        return (await registry.publisher.prune()).removed

    async def publish() -> int:
        return (await registry.publisher.publish()).version

    # Started alternately, so that each prune is queued between two publications.
    publications, prunes = [], []
    for i in range(20):
        publications.append(asyncio.create_task(publish()))
        prunes.append(asyncio.create_task(prune_outside() if i % 2 else prune_inside()))
    published = sorted(await asyncio.gather(*publications))
    removed = sum(await asyncio.gather(*prunes))

    assert published == list(range(1, 21))
    stored = await _stored(registry)
    assert stored == list(range(stored[0], 21))
    assert len(stored) >= 2
    # Each removal is audited once, by whoever made it: none lost, none counted twice.
    audited = [_removed(e) for e in await _prune_audit(registry)]
    assert sum(audited) + len(stored) == 20
    assert removed <= sum(audited)
    await _assert_chain(registry, stored)


async def test_a_prune_waits_for_a_publication_in_another_process(registry: Registry) -> None:
    """A prune's table lock conflicts with the insert of a publication not yet committed
    (another registry process, or the CLI beside a running registry): the prune waits."""
    clock = Clock(T0)
    _retain(registry.publisher, clock, keep_versions=1, keep_days=0)
    await _publish(registry.publisher, 2)
    clock.advance(days=1)
    async with registry.pool.acquire() as publishing:
        transaction = publishing.transaction()
        await transaction.start()
        await publishing.execute(
            "INSERT INTO globalconf_versions SELECT version + 1, document, signature, digest, "
            "digest, signing_key_id, change_serial, $1, $1 FROM globalconf_versions "
            "WHERE version = 2",
            clock.now,
        )
        pruning = asyncio.create_task(registry.publisher.prune())
        waiting = False
        for _ in range(600):
            waiting = await publishing.fetchval(
                "SELECT count(*) > 0 FROM pg_locks "
                "WHERE relation = 'globalconf_versions'::regclass AND NOT granted"
            )
            if waiting or pruning.done():
                break
            await asyncio.sleep(0.05)
        assert waiting, "the prune did not wait for the publication's lock"
        assert not pruning.done()
        await transaction.commit()
    # It saw the committed version 3 as the newest, so it kept that one alone.
    assert (await pruning).removed == 2
    assert await _stored(registry) == [3]


# -- what a node sees --------------------------------------------------------------------------


@pytest.fixture
async def served(registry: Registry) -> AsyncIterator[tuple[str, Publisher, Clock]]:
    clock = Clock(T0)
    async with running_registry(
        registry.store,
        data_dir=registry.data_dir,
        passphrase=PASSPHRASE,
        host="127.0.0.1",
        port=0,
        interval_s=60,
        keep_versions=1,
        keep_days=0,
        clock=clock,
    ) as (url, publisher):
        yield url, publisher, clock


async def test_a_pruned_version_is_404_with_a_message(
    served: tuple[str, Publisher, Clock],
) -> None:
    url, publisher, clock = served
    await publisher.publish()
    clock.advance(days=1)
    await publisher.publish()  # prunes versions 1 and 2
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        for path in ("v/1/conf.json", "v/1/conf.json.p7s"):
            async with session.get(f"{url}/globalconf/{path}") as resp:
                assert resp.status == 404
                data = await resp.json()
            assert data["type"] == "NotFoundError"
            assert "configuration version 1 is no longer kept by the registry" in data["message"]
            assert "read globalconf/current" in data["message"]
        async with session.get(f"{url}/globalconf/v/99/conf.json") as resp:
            assert resp.status == 404
            assert "has not been published" in (await resp.json())["message"]
        async with session.get(f"{url}/globalconf/current") as resp:
            pointer = await resp.json()
        async with session.get(f"{url}/globalconf/{pointer['document']}") as resp:
            assert resp.status == 200


async def test_a_node_sent_to_a_pruned_version_reads_current_again(
    served: tuple[str, Publisher, Clock], registry: Registry, tmp_path: Path
) -> None:
    """A mirror's stale pointer names a pruned version: the node's poll fails with the 404,
    keeps what it holds, and its next poll follows the fresh pointer."""
    url, publisher, clock = served
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        async with session.get(f"{url}/globalconf/current") as resp:
            stale_pointer = await resp.read()
        clock.advance(days=1)
        await publisher.publish()  # the version the stale pointer names is pruned
        stale = True

        async def relay(request: web.Request) -> web.Response:
            if stale and request.path == "/globalconf/current":
                return web.Response(body=stale_pointer, content_type="application/json")
            async with session.get(url + request.path) as upstream:
                return web.Response(
                    status=upstream.status,
                    body=await upstream.read(),
                    content_type=upstream.content_type,
                )

        mirror = web.Application()
        mirror.router.add_get("/{tail:.*}", relay)
        async with serve_app(mirror) as mirror_url:
            source = f"{mirror_url}/globalconf/current"
            anchor = await export_anchor(registry.store, [source], now=clock.now)
            node = ConfClient(tmp_path / "globalconf", anchor, session=session, clock=clock)

            assert await node.poll_once() is False
            assert node.latest is None
            assert node.failures == 1
            assert node.last_error is not None
            assert "HTTP 404 for the configuration document" in node.last_error
            # The registry's explanation is part of the node's error, on one line.
            pruned = GlobalConfPointer.from_bytes(stale_pointer).version
            assert (
                f"/conf.json): configuration version {pruned} is no longer kept by the "
                "registry (old versions are pruned;"
            ) in node.last_error
            assert "read globalconf/current for the version in force" in node.last_error
            assert node.last_error.isprintable()

            stale = False
            assert await node.poll_once() is True
            latest = await registry.store.latest_version()
            assert latest is not None
            assert node.latest is not None
            assert node.latest.version == latest.version
            assert node.failures == 0


# -- settings and the command line -------------------------------------------------------------


def test_retention_settings_default_and_environment_override() -> None:
    settings = load_settings(env={})
    assert (settings.registry.conf_keep_versions, settings.registry.conf_keep_days) == (10, 7)
    env = {"JISR_REGISTRY_CONF_KEEP_VERSIONS": "25", "JISR_REGISTRY_CONF_KEEP_DAYS": "0"}
    settings = load_settings(env=env)
    assert (settings.registry.conf_keep_versions, settings.registry.conf_keep_days) == (25, 0)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"JISR_REGISTRY_CONF_KEEP_VERSIONS": "0"}, "conf_keep_versions 0 must be at least 1"),
        ({"JISR_REGISTRY_CONF_KEEP_VERSIONS": "-3"}, "conf_keep_versions -3 must be at least 1"),
        ({"JISR_REGISTRY_CONF_KEEP_DAYS": "-1"}, "conf_keep_days -1 must be 0"),
        ({"JISR_REGISTRY_CONF_KEEP_DAYS": "36501"}, "to 36500 days"),
        ({"JISR_REGISTRY_CONF_KEEP_DAYS": "a week"}, "JISR_REGISTRY_CONF_KEEP_DAYS: expected an"),
    ],
)
def test_refuses_bad_retention_settings(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(env=env)


def test_refuses_bad_retention_settings_in_code() -> None:
    with pytest.raises(ConfigError, match="conf_keep_versions 0 must be at least 1"):
        RegistrySettings(conf_keep_versions=0)


async def test_store_and_helper_refuse_bad_retention(registry: Registry) -> None:
    with pytest.raises(ValidationError, match="keep_versions 0 must be at least 1"):
        await registry.store.prune_versions("op", keep_versions=0, keep_since=T0, now=T0)
    with pytest.raises(ValidationError, match="keep_days -1 must be a whole number of days"):
        await prune_old_versions(registry.store, actor="op", keep_versions=1, keep_days=-1, now=T0)


async def _jisr(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, [*JISR, *args], env=env, capture_output=True, text=True, timeout=120
    )


async def test_cli_prune_dry_run_then_prune(
    registry: Registry, fresh_db_url: str, tmp_path: Path
) -> None:
    # Versions generated a year ago, all expired; the command prunes by the real clock.
    clock = Clock(now=dt.datetime.now(dt.UTC) - dt.timedelta(days=365))
    _retain(registry.publisher, clock, keep_versions=100, keep_days=3650)
    await _publish(registry.publisher, 5)
    env = dict(os.environ) | {
        "JISR_DATABASE_URL": fresh_db_url,
        "JISR_DATA_DIR": str(tmp_path / "cli-data"),
        "JISR_LOGGING_FORMAT": "json",
        "JISR_REGISTRY_CONF_KEEP_VERSIONS": "2",
    }

    dry = await _jisr(env, "registry", "conf-version", "prune", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    preview = json.loads(dry.stdout)
    assert preview["dry_run"] is True
    assert (preview["removed"], preview["oldest_version"], preview["newest_version"]) == (3, 1, 3)
    assert (preview["kept"], preview["keep_versions"], preview["keep_days"]) == (2, 2, 7)
    assert await _stored(registry) == [1, 2, 3, 4, 5]
    assert await _prune_audit(registry) == []

    done = await _jisr(env, "registry", "conf-version", "prune")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) | {"dry_run": True} == preview
    assert await _stored(registry) == [4, 5]
    (row,) = await _prune_audit(registry)
    assert (row["actor"], _removed(row)) == ("cli", 3)

    refused = await _jisr(
        env | {"JISR_REGISTRY_CONF_KEEP_VERSIONS": "0"}, "registry", "conf-version", "prune"
    )
    assert refused.returncode == 1
    assert "conf_keep_versions 0 must be at least 1" in refused.stderr
    assert await _stored(registry) == [4, 5]


async def _until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """Wait until ``condition`` holds; a bound against hanging, not a timing check."""

    async def poll() -> None:
        while not await condition():  # noqa: ASYNC110 (polls the database)
            await asyncio.sleep(0.05)

    try:
        await asyncio.wait_for(poll(), timeout=60)
    except TimeoutError:
        pytest.fail(f"never happened: {what}")


async def test_the_publisher_task_publishes_while_its_prune_is_under_way(
    registry: Registry,
) -> None:
    """The running publisher prunes in a task of its own: a prune waiting between two chunks
    does not hold back the next publication."""
    clock = Clock(T0)
    publisher = registry.publisher
    _retain(publisher, clock, keep_versions=1, keep_days=0)
    publisher.prune_chunk = 2
    for _ in range(6):
        await publisher.publish()
    clock.advance(days=30)  # versions 1-6 have expired; the next publication is due

    between_chunks, go_on = asyncio.Event(), asyncio.Event()
    plain_prune = publisher.prune

    async def held_between_chunks(**options: Any) -> PruneResult:
        async def after_chunk(_done: PruneResult) -> None:
            between_chunks.set()
            await go_on.wait()

        return await plain_prune(after_chunk=after_chunk, **options)

    publisher.prune = held_between_chunks  # type: ignore[method-assign]
    task = asyncio.create_task(publisher.run())
    try:
        await _until(lambda: _latest_is(registry, 7), "the publication at the start")
        await asyncio.wait_for(between_chunks.wait(), timeout=60)
        # The prune holds between chunks; a publication falls due and goes through.
        clock.advance(minutes=5)
        publisher.notify_change()
        await _until(lambda: _latest_is(registry, 8), "a publication during the prune")
        assert not go_on.is_set()
        go_on.set()
        # It removes what was prunable when it started (before version 7: versions 1-5).
        await _until(lambda: _stored_are(registry, [6, 7, 8]), "the prune's end")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _latest_is(registry: Registry, version: int) -> bool:
    latest = await registry.store.latest_version()
    return latest is not None and latest.version == version


async def _stored_are(registry: Registry, versions: list[int]) -> bool:
    return await _stored(registry) == versions
