from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web

from config.errors import ConfigError
from trust_services.http_server import serve_app


async def _hello(request: web.Request) -> web.Response:
    return web.Response(text="hello")


def _app() -> web.Application:
    app = web.Application()
    app.router.add_get("/", _hello)
    return app


async def test_serves_on_an_os_assigned_port_and_stops() -> None:
    async with serve_app(_app(), "127.0.0.1", 0) as url:
        assert not url.endswith(":0")
        async with aiohttp.ClientSession() as session, session.get(url + "/") as resp:
            assert await resp.text() == "hello"
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(url + "/")


async def test_reports_a_port_already_in_use_as_config_error() -> None:
    async with serve_app(_app(), "127.0.0.1", 0) as url:
        port = int(url.rsplit(":", 1)[1])
        with pytest.raises(ConfigError, match="cannot listen"):
            async with serve_app(_app(), "127.0.0.1", port):
                pass
