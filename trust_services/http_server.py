"""Run an aiohttp application on a host and port for exactly as long as a block runs.

Rules: binding to port 0 lets the operating system choose a free port, and the URL that was
actually bound is what the caller gets back, so tests and the demo never guess ports. The
server is always cleaned up, also when the block raises or is cancelled. A server run as a
command serves until an event is set (:func:`serve_until`; the command sets it on a signal).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from config.errors import ConfigError

#: How long open connections may finish their requests when the server stops.
SHUTDOWN_TIMEOUT_SECONDS = 5.0


@contextlib.asynccontextmanager
async def serve_app(
    app: web.Application,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    shutdown_timeout: float = SHUTDOWN_TIMEOUT_SECONDS,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[str]:
    """Serve ``app`` on ``host``:``port`` and yield its base URL, e.g. ``http://127.0.0.1:41234``.

    The URL carries the port that was really bound, which differs from ``port`` when it is 0.
    With ``ssl_context`` the server speaks TLS and the URL starts with ``https://``; the caller
    builds the context (TLS 1.2 or newer).
    """
    runner = web.AppRunner(
        app, handle_signals=False, access_log=None, shutdown_timeout=shutdown_timeout
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
        try:
            await site.start()
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose a free port "
                "or another address"
            ) from exc
        yield _bound_url(runner, host, https=ssl_context is not None)
    finally:
        await runner.cleanup()


async def serve_until(
    app: web.Application,
    host: str,
    port: int,
    *,
    stop: asyncio.Event,
    ready: Callable[[str], None],
) -> None:
    """Serve ``app`` until ``stop`` is set; ``ready`` receives the bound URL, ending in ``/``."""
    async with serve_app(app, host, port) as url:
        ready(url + "/")
        await stop.wait()


def _bound_url(runner: web.AppRunner, host: str, *, https: bool) -> str:
    addresses = runner.addresses
    if not addresses:  # pragma: no cover - a started TCPSite has bound at least one socket
        raise ConfigError(f"the server on {host} did not bind a socket")
    bound_port = addresses[0][1]
    shown_host = f"[{host}]" if ":" in host else host
    scheme = "https" if https else "http"
    return f"{scheme}://{shown_host}:{bound_port}"
