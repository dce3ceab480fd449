"""The node catalogue in PostgreSQL: services from WSDL/OpenAPI/REST, rights, snapshot, refusals."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web

from config.errors import IdentifierError, ValidationError
from gateway.identifiers import ServiceId, SubsystemId
from security_server.catalogue_store import AlreadyExists, CatalogueStore, NotFound
from storage.database import open_pool
from trust_services.http_server import serve_app

pytestmark = pytest.mark.postgres

PROVIDER = "IQ/GOV/NDC/population"
CONSUMER = "IQ/GOV/HJC/inheritance"

WSDL = b"""<?xml version="1.0" encoding="UTF-8"?>
<wsdl:definitions xmlns:wsdl="http://schemas.xmlsoap.org/wsdl/"
    xmlns:soap="http://schemas.xmlsoap.org/wsdl/soap/"
    xmlns:xrd="http://x-road.eu/xsd/xroad.xsd"
    xmlns:tns="http://ndc.gov.iq/population" targetNamespace="http://ndc.gov.iq/population">
  <wsdl:portType name="PopulationPort">
    <wsdl:operation name="getCitizen"/>
    <wsdl:operation name="getFamily"/>
  </wsdl:portType>
  <wsdl:binding name="PopulationBinding" type="tns:PopulationPort">
    <soap:binding style="document" transport="http://schemas.xmlsoap.org/soap/http"/>
    <wsdl:operation name="getCitizen"><xrd:version>v1</xrd:version></wsdl:operation>
    <wsdl:operation name="getFamily"><xrd:version>v1</xrd:version></wsdl:operation>
  </wsdl:binding>
  <wsdl:service name="Population">
    <wsdl:port name="PopulationPort" binding="tns:PopulationBinding">
      <soap:address location="http://127.0.0.1:9001/population"/>
    </wsdl:port>
  </wsdl:service>
</wsdl:definitions>
"""

OPENAPI = json.dumps(
    {
        "openapi": "3.0.3",
        "info": {"title": "Death records", "version": "1"},
        "servers": [{"url": "http://127.0.0.1:9002/api"}],
        "paths": {
            "/deaths/{nationalId}": {"get": {"responses": {"200": {"description": "ok"}}}},
            "/deaths": {"post": {"responses": {"201": {"description": "ok"}}}},
        },
    }
).encode()


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
async def store(pool: asyncpg.Pool) -> CatalogueStore:
    s = CatalogueStore(pool)
    await s.load()
    await s.add_client("test", PROVIDER)
    await s.add_client("test", CONSUMER)
    return s


async def _counts(pool: asyncpg.Pool) -> dict[str, Any]:
    async with pool.acquire() as conn:
        return {
            table: await conn.fetchval(f"SELECT count(*) FROM {table}")  # noqa: S608 (fixed names)
            for table in (
                "local_clients",
                "service_descriptions",
                "services",
                "endpoints",
                "access_rights",
                "audit_log",
            )
        }


async def test_wsdl_operations_become_versioned_services(store: CatalogueStore) -> None:
    await store.add_wsdl("op", PROVIDER, document=WSDL)
    service = store.service(ServiceId.parse(f"{PROVIDER}/getCitizen/v1"))
    assert service is not None
    assert service.kind == "wsdl"
    assert service.address == "http://127.0.0.1:9001/population"
    assert service.description == WSDL
    assert store.service(ServiceId.parse(f"{PROVIDER}/getCitizen")) is not None
    assert store.service(ServiceId.parse(f"{PROVIDER}/getCitizen/v2")) is None
    codes = [s.service_id.service_code for s in store.services_of(SubsystemId.parse(PROVIDER))]
    assert codes == ["getCitizen", "getFamily"]


async def test_wsdl_is_downloaded_from_its_url(store: CatalogueStore) -> None:
    app = web.Application()

    async def wsdl(_: web.Request) -> web.Response:
        return web.Response(body=WSDL, content_type="text/xml")

    app.router.add_get("/population.wsdl", wsdl)
    async with serve_app(app) as url:
        description_id = await store.add_wsdl("op", PROVIDER, url=url + "/population.wsdl")
    listed = await store.list_descriptions(PROVIDER)
    assert [d["id"] for d in listed] == [description_id]
    assert listed[0]["url"] == url + "/population.wsdl"
    assert listed[0]["services"] == ["getCitizen", "getFamily"]


async def test_openapi_operations_become_endpoints(store: CatalogueStore) -> None:
    await store.add_openapi("op", PROVIDER, "deaths", document=OPENAPI)
    service = store.service(ServiceId.parse(f"{PROVIDER}/deaths"))
    assert service is not None
    assert service.kind == "openapi"
    assert service.address == "http://127.0.0.1:9002/api"
    assert service.endpoints == (("GET", "/deaths/*"), ("POST", "/deaths"))


async def test_rest_base_url_is_one_service(store: CatalogueStore) -> None:
    await store.add_rest("op", PROVIDER, "citizens", "http://127.0.0.1:9003/v1/")
    service = store.service(ServiceId.parse(f"{PROVIDER}/citizens"))
    assert service is not None
    assert (service.kind, service.address, service.endpoints) == (
        "rest",
        "http://127.0.0.1:9003/v1",
        (),
    )


async def test_service_settings_and_disable_with_notice(store: CatalogueStore) -> None:
    description_id = await store.add_rest("op", PROVIDER, "citizens", "http://127.0.0.1:9003")
    await store.update_service(
        "op", PROVIDER, "citizens", address="https://is.ndc.gov.iq", timeout_s=5, tls_verify=False
    )
    await store.set_enabled("op", description_id, False, "maintenance until 18:00")
    service = store.service(ServiceId.parse(f"{PROVIDER}/citizens"))
    assert service is not None
    assert (service.address, service.timeout_s, service.tls_verify) == (
        "https://is.ndc.gov.iq",
        5.0,
        False,
    )
    assert (service.enabled, service.disabled_notice) == (False, "maintenance until 18:00")
    await store.set_enabled("op", description_id, True)
    service = store.service(ServiceId.parse(f"{PROVIDER}/citizens"))
    assert service is not None
    assert (service.enabled, service.disabled_notice) == (True, "")


async def test_access_rights_for_service_endpoint_and_group(store: CatalogueStore) -> None:
    await store.add_openapi("op", PROVIDER, "deaths", document=OPENAPI)
    await store.add_rest("op", PROVIDER, "citizens", "http://127.0.0.1:9003")
    await store.grant("op", PROVIDER, "citizens", CONSUMER)
    await store.grant("op", PROVIDER, "deaths", CONSUMER, method="get", path="/deaths/*")
    await store.grant("op", PROVIDER, "deaths", "group:all-government")
    consumer = SubsystemId.parse(CONSUMER)
    rights = store.access_rights

    def no_groups(client: object, group: str) -> bool:
        return False

    def in_group(client: object, group: str) -> bool:
        return group == "all-government"

    citizens = ServiceId.parse(f"{PROVIDER}/citizens")
    deaths = ServiceId.parse(f"{PROVIDER}/deaths")
    assert rights.allows(consumer, citizens, is_in_group=no_groups)
    assert rights.allows(consumer, deaths, is_in_group=no_groups, method="GET", path="/deaths/1")
    assert not rights.allows(consumer, deaths, is_in_group=no_groups, method="POST", path="/deaths")
    assert rights.allows(consumer, deaths, is_in_group=in_group, method="POST", path="/deaths")
    listed = await store.list_rights(PROVIDER, "deaths")
    assert [(r["subject"], r["method"], r["path"]) for r in listed] == [
        (CONSUMER, "GET", "/deaths/*"),
        ("group:all-government", None, None),
    ]
    await store.revoke("op", PROVIDER, "deaths", CONSUMER, method="GET", path="/deaths/*")
    assert not store.access_rights.allows(
        consumer, deaths, is_in_group=no_groups, method="GET", path="/deaths/1"
    )


async def test_bad_input_is_refused_and_changes_nothing(
    store: CatalogueStore, pool: asyncpg.Pool
) -> None:
    await store.add_rest("op", PROVIDER, "citizens", "http://127.0.0.1:9003")
    await store.grant("op", PROVIDER, "citizens", CONSUMER)
    before = await _counts(pool)
    with pytest.raises(NotFound, match="not a client of this node"):
        await store.add_rest("op", "IQ/GOV/MOH/forensic", "x", "http://127.0.0.1:1")
    with pytest.raises(ValidationError, match="WSDL"):
        await store.add_wsdl("op", PROVIDER, document=b"<definitions/>")
    with pytest.raises(ValidationError, match="DOCTYPE"):
        await store.add_wsdl("op", PROVIDER, document=b'<!DOCTYPE x [<!ENTITY e "x">]><x/>')
    with pytest.raises(IdentifierError):
        await store.grant("op", PROVIDER, "citizens", "IQ/GOV/HJC/in heritance")
    with pytest.raises(IdentifierError):
        await store.add_client("op", "IQ/GOV")
    with pytest.raises(AlreadyExists, match="already exists"):
        await store.grant("op", PROVIDER, "citizens", CONSUMER)
    with pytest.raises(AlreadyExists, match="citizens"):
        await store.add_rest("op", PROVIDER, "citizens", "http://127.0.0.1:9004")
    with pytest.raises(NotFound, match="no service"):
        await store.grant("op", PROVIDER, "nothing", CONSUMER)
    with pytest.raises(ValidationError, match="method"):
        await store.grant("op", PROVIDER, "citizens", CONSUMER, method="BREW", path="/x")
    with pytest.raises(ValidationError, match="not an absolute"):
        await store.update_service("op", PROVIDER, "citizens", address="ftp://x")
    assert await _counts(pool) == before


async def test_snapshot_follows_changes_made_by_another_process(
    store: CatalogueStore, pool: asyncpg.Pool
) -> None:
    other = CatalogueStore(pool)
    await other.load()
    assert not await other.refresh_if_changed()
    await store.add_rest("op", PROVIDER, "citizens", "http://127.0.0.1:9003")
    assert other.service(ServiceId.parse(f"{PROVIDER}/citizens")) is None
    assert await other.refresh_if_changed()
    assert other.service(ServiceId.parse(f"{PROVIDER}/citizens")) is not None


async def test_api_keys_are_hashed_and_roles_checked(
    store: CatalogueStore, pool: asyncpg.Pool
) -> None:
    key = await store.create_api_key("op", "ops", "operator")
    assert await store.authenticate(key) == ("ops", "operator")
    assert await store.authenticate(key + "x") is None
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM api_keys WHERE key_hash = $1", key) == 0
    with pytest.raises(ValidationError, match="role"):
        await store.create_api_key("op", "x", "admin")
    await store.revoke_api_key("op", "ops")
    assert await store.authenticate(key) is None
    actions = [row["action"] for row in await store.audit()]
    assert actions[:2] == ["api_key.revoke", "api_key.create"]
