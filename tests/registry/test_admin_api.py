"""The admin API and node-facing routes over real HTTP on 127.0.0.1 (OS-assigned ports)."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from gateway.globalconf import verify_globalconf
from registry.admin_api import openapi_document
from registry.conf_keys import export_anchor
from registry.server import create_app, running_registry
from tests.registry.conftest import PASSPHRASE, Registry
from tests.registry.node_requests import NodeCa, body, der_b64, request_bytes

pytestmark = pytest.mark.postgres


class Api:
    def __init__(self, session: aiohttp.ClientSession, url: str, key: str | None) -> None:
        self.session, self.url, self.key = session, url, key

    async def call(
        self, method: str, path: str, json: Any = None, *, key: str | None = None
    ) -> tuple[int, Any]:
        token = self.key if key is None else key
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.session.request(
            method, self.url + path, json=json, headers=headers
        ) as resp:
            return resp.status, await resp.json()


@pytest.fixture
async def api(registry: Registry) -> AsyncIterator[Api]:
    async with (
        running_registry(
            registry.store,
            data_dir=registry.data_dir,
            passphrase=PASSPHRASE,
            host="127.0.0.1",
            port=0,
            interval_s=60,
        ) as (url, publisher),
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session,
    ):
        publisher.poll_s = 0.05
        yield Api(session, url, registry.api_key)


async def test_openapi_document_covers_every_route() -> None:
    app = create_app(None, data_dir=None, passphrase=b"")  # type: ignore[arg-type]
    documented = {
        (method.upper(), path)
        for path, operations in openapi_document()["paths"].items()
        for method in operations
    }
    served = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None
        and route.resource.canonical.startswith("/api/v1/")
        and route.method != "HEAD"
    }
    assert served == documented


async def test_refuses_missing_or_unknown_api_key(api: Api) -> None:
    status, data = await api.call("GET", "/api/v1/members", key="")
    assert (status, data["type"]) == (401, "AuthenticationRequired")
    status, data = await api.call("GET", "/api/v1/members", key="jisr_not-a-key")
    assert status == 401
    assert "unknown or revoked" in data["message"]
    status, _ = await api.call("GET", "/api/v1/openapi.json", key="")
    assert status == 200


async def test_auditor_reads_but_cannot_write(api: Api) -> None:
    status, created = await api.call(
        "POST", "/api/v1/api-keys", {"name": "auditor-1", "role": "auditor"}
    )
    assert status == 201
    auditor = created["key"]
    status, _ = await api.call("GET", "/api/v1/audit-log", key=auditor)
    assert status == 200
    status, data = await api.call(
        "POST", "/api/v1/members", {"id": "IQ/GOV/NDC", "name": "NDC"}, key=auditor
    )
    assert (status, data["type"]) == (403, "Forbidden")
    assert (await api.call("GET", "/api/v1/members"))[1] == []


async def test_member_crud_writes_audit_rows_with_api_key_name(api: Api) -> None:
    status, member = await api.call(
        "POST", "/api/v1/members", {"id": "IQ/GOV/NDC", "name": "National Data Centre"}
    )
    assert (status, member["id"]) == (201, "IQ/GOV/NDC")
    status, _ = await api.call("POST", "/api/v1/members/GOV/NDC/subsystems", {"code": "population"})
    assert status == 201
    status, member = await api.call("PATCH", "/api/v1/members/GOV/NDC", {"name": "NDC"})
    assert member == {"id": "IQ/GOV/NDC", "name": "NDC", "subsystems": ["population"]}
    status, _ = await api.call("DELETE", "/api/v1/members/GOV/NDC")
    assert status == 200
    assert (await api.call("GET", "/api/v1/members/GOV/NDC"))[0] == 404
    _, audit = await api.call("GET", "/api/v1/audit-log?after=0&limit=1000")
    actions = [(a["actor"], a["action"]) for a in audit if a["actor"].startswith("api:")]
    assert actions == [
        ("api:initial-operator", "member.add"),
        ("api:initial-operator", "subsystem.add"),
        ("api:initial-operator", "member.rename"),
        ("api:initial-operator", "member.delete"),
    ]


async def test_duplicate_member_is_409_and_changes_nothing(api: Api) -> None:
    await api.call("POST", "/api/v1/members", {"id": "IQ/GOV/NDC", "name": "NDC"})
    _, audit_before = await api.call("GET", "/api/v1/audit-log?limit=1000")
    status, data = await api.call("POST", "/api/v1/members", {"id": "IQ/GOV/NDC", "name": "Other"})
    assert status == 409
    assert data == {"type": "DuplicateError", "message": "member IQ/GOV/NDC already exists"}
    assert (await api.call("GET", "/api/v1/audit-log?limit=1000"))[1] == audit_before
    assert (await api.call("GET", "/api/v1/members"))[1][0]["name"] == "NDC"


async def test_illegal_identifier_is_400_naming_the_characters(api: Api) -> None:
    status, data = await api.call("POST", "/api/v1/members", {"id": "IQ/GOV/N DC", "name": "x"})
    assert (status, data["type"]) == (400, "IdentifierError")
    assert "' '" in data["message"]


async def test_trust_services_groups_and_servers(api: Api, registry: Registry) -> None:
    ca = NodeCa.create()
    status, _ = await api.call(
        "POST",
        "/api/v1/approved-cas",
        {
            "name": "Test CA",
            "certificate": ca.pki.root.pem.decode(),
            "ocsp": [
                {"url": "http://127.0.0.1:9/ocsp", "certificate": der_b64(ca.responder_cert.cert)}
            ],
        },
    )
    assert status == 201
    tsa = ca.pki.tsa()
    status, _ = await api.call(
        "POST",
        "/api/v1/approved-tsas",
        {"name": "Test TSA", "url": "http://127.0.0.1:9/tsa", "certificate": der_b64(tsa.cert)},
    )
    assert status == 201
    await api.call("POST", "/api/v1/members", {"id": "IQ/GOV/NDC", "name": "NDC"})
    await api.call("POST", "/api/v1/members/GOV/NDC/subsystems", {"code": "population"})
    auth = ca.pki.authentication("IQ/GOV/NDC/ss1")
    status, server = await api.call(
        "POST",
        "/api/v1/security-servers",
        {"id": "IQ/GOV/NDC/ss1", "address": "127.0.0.1:5500", "auth_certs": [der_b64(auth.cert)]},
    )
    assert status == 201
    path = "/api/v1/security-servers/GOV/NDC/ss1"
    status, server = await api.call("POST", path + "/clients", {"client": "IQ/GOV/NDC/population"})
    assert server["clients"] == ["IQ/GOV/NDC/population"]
    status, _ = await api.call("POST", "/api/v1/global-groups", {"code": "security-servers-owners"})
    status, _ = await api.call(
        "POST", "/api/v1/global-groups/security-servers-owners/members", {"client": "IQ/GOV/NDC"}
    )
    assert status == 201
    _, groups = await api.call("GET", "/api/v1/global-groups")
    assert groups[0]["members"] == ["IQ/GOV/NDC"]

    # Everything lands in the next configuration version, which a node can verify.
    conf = await _wait_for_conf(
        api, registry, lambda c: bool(c.group_members("security-servers-owners"))
    )
    assert conf.server_by_auth_cert(auth.cert) is not None
    assert [t.name for t in conf.approved_tsas] == ["Test TSA"]
    assert [str(s.id) for s in conf.servers_for_client(conf.members[0].subsystems[0])] == [
        "IQ/GOV/NDC/ss1"
    ]
    status, _ = await api.call("DELETE", path + "/clients?client=IQ/GOV/NDC/population")
    assert status == 200


async def _wait_for_conf(api: Api, registry: Registry, ready: Any) -> Any:
    anchor = await export_anchor(
        registry.store, [api.url + "/globalconf/current"], now=dt.datetime.now(dt.UTC)
    )
    for _ in range(200):
        async with api.session.get(api.url + "/globalconf/current") as resp:
            pointer = await resp.json()
        base = api.url + "/globalconf/"
        async with api.session.get(base + pointer["document"]) as resp:
            document = await resp.read()
            assert resp.headers["Cache-Control"].endswith("immutable")
        async with api.session.get(base + pointer["signature"]) as resp:
            signature = await resp.read()
        conf = verify_globalconf(
            document, signature, anchor=anchor, previous=None, now=dt.datetime.now(dt.UTC)
        )
        assert conf.version == pointer["version"]
        if ready(conf):
            return conf
        await asyncio.sleep(0.05)
    raise AssertionError("the configuration never showed the change")


async def test_key_rollover_through_the_api(api: Api, registry: Registry) -> None:
    status, created = await api.call("POST", "/api/v1/conf-keys")
    assert (status, created["state"]) == (201, "announced")
    new_key = created["key_id"]
    await _wait_for_conf(api, registry, lambda c: len(c.signing_keys) == 2)
    status, _ = await api.call("POST", f"/api/v1/conf-keys/{new_key}/activate")
    assert status == 200
    for _ in range(200):
        _, versions = await api.call("GET", "/api/v1/globalconf-versions?limit=1")
        if versions[0]["signing_key_id"] == new_key:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("no version was signed with the new key")
    _, keys = await api.call("GET", "/api/v1/conf-keys")
    assert {k["key_id"]: k["state"] for k in keys} == {
        registry.key_id: "retired",
        new_key: "active",
    }


async def test_activating_unpublished_key_is_409(api: Api, registry: Registry) -> None:
    # Stop the background publisher from publishing the key first: announce it directly.
    from registry.conf_keys import announce_new_key

    key_id = await announce_new_key(
        registry.store, registry.data_dir, PASSPHRASE, actor="t", now=dt.datetime.now(dt.UTC)
    )
    async with registry.pool.acquire() as conn:
        await conn.execute("UPDATE conf_signing_keys SET first_published_version = NULL")
    status, data = await api.call("POST", f"/api/v1/conf-keys/{key_id}/activate")
    assert status == 409
    assert "has not been published yet" in data["message"]


async def test_node_registers_over_http_and_operator_approves(api: Api, registry: Registry) -> None:
    ca = NodeCa.create()
    await registry.store.add_ca(
        "op",
        "Test CA",
        base64.b64decode(der_b64(ca.pki.root.cert)),
        ocsp=[("http://127.0.0.1:9/ocsp", base64.b64decode(der_b64(ca.responder_cert.cert)))],
    )
    await api.call("POST", "/api/v1/members", {"id": "IQ/GOV/NDC", "name": "NDC"})
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    # The fixture PKI issues certificates valid for a year from its own fixed time.
    owner, auth = ca.pki.signing("IQ/GOV/NDC"), ca.pki.authentication("IQ/GOV/NDC/ss1")
    raw = request_bytes(
        "register_server", "IQ/GOV/NDC/ss1", at=now, address="127.0.0.1:5500", auth=auth
    )
    data = body(raw, at=now, owner=owner, owner_ca=ca, auth=auth)
    async with api.session.post(api.url + "/management/requests", data=data) as resp:
        assert resp.status == 202, await resp.text()
        submitted = await resp.json()
    assert submitted["state"] == "submitted"
    async with api.session.post(api.url + "/management/requests", data=data) as resp:
        refused = await resp.json()
        assert resp.status == 400
    assert refused["type"] == "RequestRefused"
    assert "replayed" in refused["message"]

    _, pending = await api.call("GET", "/api/v1/management-requests?state=submitted")
    assert [p["id"] for p in pending] == [submitted["id"]]
    status, done = await api.call(
        "POST", f"/api/v1/management-requests/{submitted['id']}/approve", {"reason": "checked"}
    )
    assert (status, done["state"]) == (200, "executed")
    async with api.session.get(api.url + f"/management/requests/{submitted['id']}") as resp:
        assert (await resp.json())["state"] == "executed"
    conf = await _wait_for_conf(api, registry, lambda c: bool(c.security_servers))
    assert conf.server_by_auth_cert(auth.cert) is not None


async def test_every_error_is_json_with_type_and_message(api: Api) -> None:
    for method, path in [("GET", "/api/v1/nothing"), ("GET", "/globalconf/v/999/conf.json")]:
        status, data = await api.call(method, path)
        assert status == 404
        assert set(data) == {"type", "message"}
    status, data = await api.call("PATCH", "/api/v1/instance", {"conf_expiry_s": 1})
    assert (status, data["type"]) == (400, "ValidationError")
    assert re.search(r"at least \d+ s", data["message"])
