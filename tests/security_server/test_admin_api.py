"""The node admin API over real HTTP: roles, catalogue changes, refusals, OpenAPI coverage."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from security_server.admin_api import API_PREFIX, ROUTES, AdminContext, admin_app
from security_server.catalogue_store import CatalogueStore
from storage.database import open_pool
from trust_services.http_server import serve_app

pytestmark = pytest.mark.postgres

PROVIDER = "IQ/GOV/NDC/population"
CONSUMER = "IQ/GOV/HJC/inheritance"
OPENAPI = json.dumps(
    {
        "openapi": "3.0.3",
        "info": {"title": "Citizens", "version": "1"},
        "servers": [{"url": "http://127.0.0.1:9002/api"}],
        "paths": {"/citizens/{id}": {"get": {"responses": {"200": {"description": "ok"}}}}},
    }
)


class Api:
    def __init__(self, session: aiohttp.ClientSession, base: str, key: str | None) -> None:
        self.session, self.base, self.key = session, base, key

    async def call(
        self, method: str, path: str, body: object = None, **params: str
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        async with self.session.request(
            method, self.base + API_PREFIX + path, json=body, params=params, headers=headers
        ) as resp:
            text = await resp.text()
            return resp.status, json.loads(text) if text else None


@pytest.fixture
async def pool(fresh_db_url: str, data_dir: Path) -> AsyncIterator[asyncpg.Pool]:
    async with open_pool(
        configured_url=fresh_db_url,
        data_dir=data_dir,
        database="node",
        migrations="security_server.migrations",
        max_size=4,
    ) as p:
        yield p


@pytest.fixture
async def apis(pool: asyncpg.Pool) -> AsyncIterator[dict[str, Api]]:
    store = CatalogueStore(pool)
    await store.load()
    operator = await store.create_api_key("setup", "ops", "operator")
    auditor = await store.create_api_key("setup", "audit", "auditor")
    context = AdminContext(store, lambda: {"server_id": "IQ/GOV/NDC/ss1"})
    async with aiohttp.ClientSession() as session, serve_app(admin_app(context)) as base:
        yield {
            "operator": Api(session, base, operator),
            "auditor": Api(session, base, auditor),
            "anonymous": Api(session, base, None),
            "wrong": Api(session, base, "jisr_not-a-key"),
        }


async def test_every_route_is_in_the_openapi_document(apis: dict[str, Api]) -> None:
    status, document = await apis["anonymous"].call("GET", "/openapi.json")
    assert status == 200
    assert document["openapi"].startswith("3.")
    documented = {
        (method.upper(), path) for path, item in document["paths"].items() for method in item
    }
    assert documented == {(method, path) for method, path, _ in ROUTES}


async def test_keys_and_roles(apis: dict[str, Api]) -> None:
    assert (await apis["anonymous"].call("GET", "/clients"))[0] == 401
    assert (await apis["wrong"].call("GET", "/clients"))[0] == 401
    assert (await apis["auditor"].call("GET", "/clients"))[0] == 200
    status, error = await apis["auditor"].call("POST", "/clients", {"client_id": PROVIDER})
    assert status == 403
    assert "operator" in error["message"]
    assert (await apis["operator"].call("POST", "/clients", {"client_id": PROVIDER}))[0] == 201
    assert (await apis["auditor"].call("GET", "/status"))[1] == {"server_id": "IQ/GOV/NDC/ss1"}


async def test_operator_publishes_a_service_and_grants_access(apis: dict[str, Api]) -> None:
    op = apis["operator"]
    assert (await op.call("POST", "/clients", {"client_id": PROVIDER}))[0] == 201
    status, created = await op.call(
        "POST",
        "/service-descriptions",
        {"provider": PROVIDER, "kind": "openapi", "service_code": "citizens", "document": OPENAPI},
    )
    assert status == 201
    status, services = await op.call("GET", "/services", provider=PROVIDER)
    assert [s["endpoints"] for s in services] == [[{"method": "GET", "path": "/citizens/*"}]]
    status, service = await op.call(
        "PATCH", "/services", {"provider": PROVIDER, "service_code": "citizens", "timeout_s": 7}
    )
    assert (status, service["timeout_s"]) == (200, 7.0)
    status, _ = await op.call(
        "POST",
        "/services/disable",
        {"provider": PROVIDER, "service_code": "citizens", "notice": "upgrade"},
    )
    assert status == 204
    descriptions = (await op.call("GET", "/service-descriptions"))[1]
    assert descriptions[0]["enabled"] is False
    assert descriptions[0]["disabled_notice"] == "upgrade"
    assert (await op.call("POST", f"/service-descriptions/{created['id']}/enable"))[0] == 204

    grant = {
        "provider": PROVIDER,
        "service_code": "citizens",
        "subject": CONSUMER,
        "method": "GET",
        "path": "/citizens/*",
    }
    status, right = await op.call("POST", "/access-rights", grant)
    assert status == 201
    status, error = await op.call("POST", "/access-rights", grant)
    assert (status, error["type"]) == (409, "AlreadyExists")
    rights = (await apis["auditor"].call("GET", "/access-rights", provider=PROVIDER))[1]
    assert [(r["subject"], r["path"]) for r in rights] == [(CONSUMER, "/citizens/*")]
    assert (await op.call("DELETE", f"/access-rights/{right['id']}"))[0] == 204
    audit = (await apis["auditor"].call("GET", "/audit-log", limit="3"))[1]
    assert [a["actor"] for a in audit] == ["api:ops"] * 3
    assert audit[0]["action"] == "access_right.revoke"


async def test_bad_input_gets_clear_messages(apis: dict[str, Api]) -> None:
    op = apis["operator"]
    status, error = await op.call(
        "POST",
        "/service-descriptions",
        {"provider": PROVIDER, "kind": "rest", "service_code": "x", "url": "http://h"},
    )
    assert (status, error["type"]) == (404, "NotFound")
    assert "not a client of this node" in error["message"]
    status, error = await op.call("POST", "/clients", {"client_id": "IQ/GOV"})
    assert (status, error["type"]) == (400, "IdentifierError")
    await op.call("POST", "/clients", {"client_id": PROVIDER})
    status, error = await op.call(
        "POST",
        "/service-descriptions",
        {"provider": PROVIDER, "kind": "wsdl", "document": "<not-wsdl/>"},
    )
    assert (status, error["type"]) == (400, "ValidationError")
    assert "WSDL" in error["message"]
    status, error = await op.call("POST", "/clients", [1, 2])
    assert status == 400
    assert (await op.call("GET", "/service-descriptions"))[1] == []
