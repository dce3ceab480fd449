"""Two nodes assembled from their data directories exchange a REST request end to end.

Everything is set up the way an operator does it (init, CA-issued certificates, register,
add-client, service, access right) and then a consumer's information system calls its own
node, which relays to the provider's node over mutual TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from gateway.identifiers import SubsystemId
from security_server.catalogue_store import CatalogueStore
from security_server.conf_client import ConfClient
from security_server.node import running_node
from security_server.node_dir import NodeDir
from security_server.node_keys import initialise_node
from security_server.registration import RegistrationError, client_request, register_server
from storage.database import open_pool
from storage.embedded import database_url
from tests.security_server.test_node_setup import PASSPHRASE, Network, running_network, utc_now
from trust_services.http_server import serve_app

pytestmark = pytest.mark.postgres

CONSUMER = "IQ/GOV/HJC/inheritance"
PROVIDER = "IQ/GOV/NDC/population"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def _database(pg_server_url: str, tmp: Path) -> AsyncIterator[asyncpg.Pool]:
    name = "n_" + uuid.uuid4().hex[:16]
    conn = await asyncpg.connect(pg_server_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    try:
        async with open_pool(
            configured_url=database_url(pg_server_url, name),
            data_dir=tmp,
            database=name,
            migrations="security_server.migrations",
            max_size=4,
        ) as pool:
            yield pool
    finally:
        conn = await asyncpg.connect(pg_server_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


async def _node(
    network: Network, session: aiohttp.ClientSession, server_id: str, client: str
) -> NodeDir:
    port = _free_port()
    directory = network.tmp / server_id.replace("/", "_")
    initialise_node(
        directory,
        server_id=server_id,
        anchor=network.anchor,
        passphrase=PASSPHRASE,
        now=utc_now(),
        public_address=f"127.0.0.1:{port}",
        ports={
            "client_http_port": 0,
            "client_https_port": 0,
            "server_port": port,
            "admin_port": 0,
        },
    )
    network.certify(directory)
    node = NodeDir(directory)
    await register_server(node, PASSPHRASE, session=session)
    for _ in range(200):
        try:
            await client_request(node, PASSPHRASE, SubsystemId.parse(client), session=session)
            break
        except RegistrationError as exc:  # the registry may not have executed it yet
            if "not registered" not in str(exc):
                raise
            await asyncio.sleep(0.05)
    return node


async def _wait_until_published(node: NodeDir, clients: list[str]) -> None:
    async with aiohttp.ClientSession() as s:
        conf_client = ConfClient(node.globalconf_dir, node.load_anchor(), session=s)
        for _ in range(200):
            await conf_client.poll_once()
            conf = conf_client.latest
            if conf is not None and all(
                conf.servers_for_client(SubsystemId.parse(c)) for c in clients
            ):
                return
            await asyncio.sleep(0.05)
    raise AssertionError(f"{clients} never appeared in the global configuration")


@pytest.mark.e2e
async def test_consumer_node_reaches_provider_service_through_provider_node(
    fresh_db_url: str, pg_server_url: str, tmp_path: Path
) -> None:
    backend = web.Application()
    seen: list[str] = []

    async def citizen(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.json_response({"nationalId": request.match_info["id"], "alive": False})

    backend.router.add_get("/api/citizens/{id}", citizen)

    async with (
        running_network(fresh_db_url, tmp_path) as network,
        aiohttp.ClientSession() as session,
        serve_app(backend) as backend_url,
        _database(pg_server_url, tmp_path) as consumer_pool,
        _database(pg_server_url, tmp_path) as provider_pool,
    ):
        consumer = await _node(network, session, "IQ/GOV/HJC/ss1", CONSUMER)
        provider = await _node(network, session, "IQ/GOV/NDC/ss1", PROVIDER)
        await _wait_until_published(consumer, [CONSUMER, PROVIDER])

        await CatalogueStore(consumer_pool).add_client("setup", CONSUMER)
        provider_store = CatalogueStore(provider_pool)
        await provider_store.add_client("setup", PROVIDER)
        await provider_store.add_rest("setup", PROVIDER, "citizens", backend_url + "/api")
        await provider_store.grant(
            "setup", PROVIDER, "citizens", CONSUMER, method="GET", path="/citizens/*"
        )

        async with (
            running_node(consumer, PASSPHRASE, pool=consumer_pool) as a,
            running_node(provider, PASSPHRASE, pool=provider_pool),
        ):
            url = f"{a.endpoints['client_http']}/r1/{PROVIDER}/citizens"
            headers = {"X-Road-Client": CONSUMER}
            async with session.get(url + "/citizens/19900101", headers=headers) as resp:
                body = await resp.text()
                assert resp.status == 200, body
                assert await resp.json() == {"nationalId": "19900101", "alive": False}
                assert resp.headers.get("X-Road-Request-Hash")
            assert seen == ["/api/citizens/19900101"]
            async with consumer_pool.acquire() as conn:
                logged = await conn.fetchval("SELECT count(*) FROM message_log")
            assert logged == 2  # the request as sent and the response as received

            async with session.delete(url + "/citizens/19900101", headers=headers) as resp:
                assert resp.status >= 400
                assert "AccessDenied" in resp.headers.get("X-Road-Error", "")
            assert seen == ["/api/citizens/19900101"]
