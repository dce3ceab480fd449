"""The registry's HTTP service: one aiohttp application, three kinds of route.

Rules:

- ``/globalconf/...`` (public, read by nodes and mirrors): ``current`` points at the latest
  version; ``v/{N}/conf.json`` and ``v/{N}/conf.json.p7s`` are immutable and cacheable until
  the version is pruned, after which they are 404 with a message saying so (a node then reads
  ``current`` again at its next poll).
- ``/management/requests`` (public, signed by nodes): verification decides, not the caller's
  network position; see :mod:`registry.management`.
- ``/api/v1/...`` (admin, API key): see :mod:`registry.admin_api`.
- :func:`run_registry` opens the database (embedded PostgreSQL unless a URL is configured),
  applies migrations, starts the publisher as a background task, serves until stopped, and
  then stops the task, the server and the database in that order.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import structlog
from aiohttp import web

from config.errors import JisrError
from config.settings import Settings
from registry.admin_api import (
    CONTEXT,
    RegistryContext,
    add_admin_routes,
    auth_middleware,
    errors_middleware,
)
from registry.conf_keys import passphrase_from_env
from registry.errors import NotFoundError
from registry.management import MAX_BODY_BYTES, ManagementService
from registry.publisher import Publisher, utc_now
from registry.store import RegistryStore
from storage.database import open_pool
from trust_services.http_server import serve_app
from webapi.admin import read_body

log = structlog.get_logger(__name__)

DATABASE_NAME = "jisr_registry"
MIGRATIONS = "registry.migrations"
_IMMUTABLE = "public, max-age=31536000, immutable"


def _version(request: web.Request) -> int:
    text = request.match_info["version"]
    if not text.isdigit() or len(text) > 9:
        raise NotFoundError(f"configuration version {text!r} does not exist")
    return int(text)


async def globalconf_current(request: web.Request) -> web.Response:
    latest = await request.app[CONTEXT].store.latest_version()
    if latest is None:
        raise NotFoundError(
            "no global configuration has been published yet; the registry publishes one "
            "shortly after it starts"
        )
    return web.json_response(
        {
            "version": latest.version,
            "document": f"v/{latest.version}/conf.json",
            "signature": f"v/{latest.version}/conf.json.p7s",
        },
        headers={"Cache-Control": "no-cache"},
    )


async def globalconf_document(request: web.Request) -> web.Response:
    version = await request.app[CONTEXT].store.get_version(_version(request))
    return web.Response(
        body=version.document,
        content_type="application/json",
        headers={"Cache-Control": _IMMUTABLE},
    )


async def globalconf_signature(request: web.Request) -> web.Response:
    version = await request.app[CONTEXT].store.get_version(_version(request))
    return web.Response(
        body=version.signature,
        content_type="application/pkcs7-signature",
        headers={"Cache-Control": _IMMUTABLE},
    )


async def submit_request(request: web.Request) -> web.Response:
    body = await read_body(request, MAX_BODY_BYTES)
    ctx = request.app[CONTEXT]
    result = await ctx.management.submit(body, now=ctx.clock(), remote=request.remote or "")
    return web.json_response(_public(result), status=202)


async def request_status(request: web.Request) -> web.Response:
    text = request.match_info["request_id"]
    if not text.isdigit():
        raise NotFoundError(f"management request {text!r} does not exist")
    return web.json_response(_public(await request.app[CONTEXT].store.get_request(int(text))))


def _public(row: dict[str, object]) -> dict[str, object]:
    """What a node may learn about its request: its state, not who decided."""
    return {k: row[k] for k in ("id", "type", "server", "client", "state", "reason")}


def create_app(
    store: RegistryStore,
    *,
    data_dir: Path,
    passphrase: bytes,
    clock: Callable[[], dt.datetime] = utc_now,
) -> web.Application:
    """The registry application over an open store (the publisher runs beside it)."""
    app = web.Application(
        middlewares=[errors_middleware, auth_middleware], client_max_size=2 * 1024 * 1024
    )
    app[CONTEXT] = RegistryContext(
        store=store,
        management=ManagementService(store),
        data_dir=data_dir,
        passphrase=passphrase,
        clock=clock,
    )
    app.router.add_get("/globalconf/current", globalconf_current)
    app.router.add_get("/globalconf/v/{version}/conf.json", globalconf_document)
    app.router.add_get("/globalconf/v/{version}/conf.json.p7s", globalconf_signature)
    app.router.add_post("/management/requests", submit_request)
    app.router.add_get("/management/requests/{request_id}", request_status)
    add_admin_routes(app)
    return app


@contextlib.asynccontextmanager
async def open_store(settings: Settings) -> AsyncIterator[tuple[RegistryStore, asyncpg.Pool]]:
    """The registry database, migrated; embedded PostgreSQL when no URL is configured."""
    async with open_pool(
        configured_url=settings.database.url,
        data_dir=settings.data_dir,
        database=DATABASE_NAME,
        migrations=MIGRATIONS,
        min_size=settings.database.min_pool,
        max_size=settings.database.max_pool,
    ) as pool:
        yield RegistryStore(pool), pool


@contextlib.asynccontextmanager
async def running_registry(
    store: RegistryStore,
    *,
    data_dir: Path,
    passphrase: bytes,
    host: str,
    port: int,
    interval_s: float,
    keep_versions: int = 10,
    keep_days: int = 7,
    clock: Callable[[], dt.datetime] = utc_now,
) -> AsyncIterator[tuple[str, Publisher]]:
    """Serve the registry and run its publisher while the block runs; yield the base URL."""
    await store.settings()  # refuse to start on an uninitialised database, with its message
    publisher = Publisher(
        store,
        data_dir=data_dir,
        passphrase=passphrase,
        interval_s=interval_s,
        keep_versions=keep_versions,
        keep_days=keep_days,
        clock=clock,
    )
    store.on_change = publisher.notify_change
    # Publish once before serving, so that /globalconf/current answers from the first request;
    # old versions are pruned by the publisher's task, not before serving.
    try:
        await publisher.publish_if_due(prune=False)
    except JisrError as exc:
        # Serve the last good version meanwhile; the task retries and logs on every tick.
        log.error("global configuration not published at start-up", error=str(exc))
    task = asyncio.create_task(publisher.run(), name="globalconf-publisher")
    try:
        app = create_app(store, data_dir=data_dir, passphrase=passphrase, clock=clock)
        async with serve_app(app, host, port) as url:
            log.info("registry serving", url=url)
            yield url, publisher
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        store.on_change = None


async def run_registry(
    settings: Settings,
    *,
    ready: Callable[[str], Awaitable[None] | None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """``jisr registry serve``: serve until ``stop`` is set (or the task is cancelled)."""
    reg = settings.registry
    passphrase = passphrase_from_env(reg.key_passphrase_env)
    async with (
        open_store(settings) as (store, _pool),
        running_registry(
            store,
            data_dir=settings.data_dir,
            passphrase=passphrase,
            host=reg.host,
            port=reg.port,
            interval_s=reg.conf_regenerate_interval_s,
            keep_versions=reg.conf_keep_versions,
            keep_days=reg.conf_keep_days,
        ) as (url, _publisher),
    ):
        if ready is not None:
            maybe = ready(url)
            if maybe is not None:
                await maybe
        await (stop or asyncio.Event()).wait()
