"""Two nodes assembled from their data directories exchange a REST request end to end.

Everything is set up the way an operator does it (init, CA-issued certificates, register,
add-client, service, access right) and then a consumer's information system calls its own
node, which relays to the provider's node over mutual TLS.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from security_server.catalogue_store import CatalogueStore
from security_server.node import running_node
from tests.security_server.test_node_setup import PASSPHRASE, running_network
from tests.security_server.two_nodes import node_database, registered_node, wait_until_published
from trust_services.http_server import serve_app

pytestmark = pytest.mark.postgres

CONSUMER = "IQ/GOV/HJC/inheritance"
PROVIDER = "IQ/GOV/NDC/population"


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
        node_database(pg_server_url, tmp_path) as consumer_db,
        node_database(pg_server_url, tmp_path) as provider_db,
    ):
        consumer = await registered_node(network, session, "IQ/GOV/HJC/ss1", CONSUMER)
        provider = await registered_node(network, session, "IQ/GOV/NDC/ss1", PROVIDER)
        await wait_until_published(consumer, [CONSUMER, PROVIDER])

        await CatalogueStore(consumer_db.pool).add_client("setup", CONSUMER)
        provider_store = CatalogueStore(provider_db.pool)
        await provider_store.add_client("setup", PROVIDER)
        await provider_store.add_rest("setup", PROVIDER, "citizens", backend_url + "/api")
        await provider_store.grant(
            "setup", PROVIDER, "citizens", CONSUMER, method="GET", path="/citizens/*"
        )

        async with (
            running_node(consumer, PASSPHRASE, pool=consumer_db.pool) as a,
            running_node(provider, PASSPHRASE, pool=provider_db.pool),
        ):
            url = f"{a.endpoints['client_http']}/r1/{PROVIDER}/citizens"
            headers = {"X-Road-Client": CONSUMER}
            async with session.get(url + "/citizens/19900101", headers=headers) as resp:
                body = await resp.text()
                assert resp.status == 200, body
                assert await resp.json() == {"nationalId": "19900101", "alive": False}
                assert resp.headers.get("X-Road-Request-Hash")
            assert seen == ["/api/citizens/19900101"]
            async with consumer_db.pool.acquire() as conn:
                logged = await conn.fetchval("SELECT count(*) FROM message_log")
            assert logged == 2  # the request as sent and the response as received

            async with session.delete(url + "/citizens/19900101", headers=headers) as resp:
                assert resp.status >= 400
                assert "AccessDenied" in resp.headers.get("X-Road-Error", "")
            assert seen == ["/api/citizens/19900101"]
