"""The baseline proxies relay every scenario over mutual TLS, and refuse strangers."""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path

import aiohttp
import pytest

from bench.baseline import back_server_context, front_client_context, make_tls_pair, running_proxy
from bench.scenarios import SCENARIOS, service_spec
from bench.service import service_app
from trust_services.http_server import serve_app

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


async def test_relays_every_scenario_through_both_proxies(tmp_path: Path) -> None:
    pair = make_tls_pair(tmp_path, now=dt.datetime.now(dt.UTC))
    async with (
        serve_app(service_app(), shutdown_timeout=0.5) as service_url,
        running_proxy(service_url, server_ssl=back_server_context(pair)) as back_url,
        running_proxy(back_url, client_ssl=front_client_context(pair)) as front_url,
        aiohttp.ClientSession() as session,
    ):
        assert back_url.startswith("https://")
        for scenario in SCENARIOS:
            spec = service_spec(scenario, front_url)
            body = spec.body
            if spec.unique_placeholder is not None:
                body = body.replace(spec.unique_placeholder, b"one")
            async with session.request(
                spec.method, spec.url, data=body or None, headers=spec.headers
            ) as response:
                answer = await response.read()
                assert spec.check(response.status, answer) is None, scenario


async def test_back_proxy_refuses_a_client_without_the_front_certificate(tmp_path: Path) -> None:
    pair = make_tls_pair(tmp_path, now=dt.datetime.now(dt.UTC))
    stranger = ssl.create_default_context()
    stranger.check_hostname = False
    stranger.verify_mode = ssl.CERT_NONE
    async with (
        serve_app(service_app(), shutdown_timeout=0.5) as service_url,
        running_proxy(service_url, server_ssl=back_server_context(pair)) as back_url,
        aiohttp.ClientSession() as session,
    ):
        with pytest.raises(aiohttp.ClientError):
            async with session.get(back_url + "/small", ssl=stranger) as response:
                await response.read()


def test_private_keys_are_readable_by_the_owner_only(tmp_path: Path) -> None:
    pair = make_tls_pair(tmp_path, now=NOW)
    for key in (pair.front_key, pair.back_key):
        assert key.stat().st_mode & 0o077 == 0
