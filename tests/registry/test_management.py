"""Management requests: verified, stored, approved, executed; every bad one refused unchanged."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
from typing import Any

import pytest

from gateway.identifiers import MemberId, SecurityServerId
from registry.errors import ConflictError, RequestRefused
from registry.management import ManagementService, parse_request
from tests.pki_factory import Issued
from tests.registry.conftest import Registry
from tests.registry.node_requests import NodeCa, body, der_b64, request_bytes

pytestmark = pytest.mark.postgres

SERVER = "IQ/GOV/NDC/ss1"


@dataclasses.dataclass
class Node:
    ca: NodeCa
    owner: Issued
    auth: Issued
    at: dt.datetime

    def register_body(self, **kwargs: Any) -> bytes:
        raw = request_bytes(
            "register_server",
            SERVER,
            at=self.at,
            address="ss1.ndc.gov.iq:5500",
            auth=self.auth,
            nonce=kwargs.pop("nonce", None),
        )
        return body(raw, at=self.at, owner=self.owner, owner_ca=self.ca, auth=self.auth, **kwargs)


@pytest.fixture
async def node(registry: Registry) -> Node:
    ca = NodeCa.create()
    await registry.store.add_ca(
        "op",
        "Jisr Test CA",
        base64.b64decode(der_b64(ca.pki.root.cert)),
        ocsp=[("http://127.0.0.1:8888/ocsp", base64.b64decode(der_b64(ca.responder_cert.cert)))],
    )
    await registry.store.add_member("op", MemberId.parse("IQ/GOV/NDC"), "National Data Centre")
    return Node(ca, ca.pki.signing("IQ/GOV/NDC"), ca.pki.authentication(SERVER), ca.pki.now)


async def _snapshot(registry: Registry) -> dict[str, Any]:
    """Everything a refused request must leave as it was (audit rows of refusals aside)."""
    async with registry.pool.acquire() as conn:
        return {
            "requests": await conn.fetchval("SELECT count(*) FROM management_requests"),
            "servers": await conn.fetchval("SELECT count(*) FROM security_servers"),
            "certs": await conn.fetchval("SELECT count(*) FROM auth_certs"),
            "serial": await conn.fetchval("SELECT change_serial FROM instance"),
            "audit": await conn.fetchval(
                "SELECT count(*) FROM audit_log WHERE action <> 'request.refused'"
            ),
        }


async def _refused(registry: Registry, node: Node, data: bytes, match: str) -> None:
    before = await _snapshot(registry)
    with pytest.raises(RequestRefused, match=match):
        await ManagementService(registry.store).submit(data, now=node.at)
    assert await _snapshot(registry) == before
    refusals = await registry.store.list_audit(action="request.refused")
    assert refusals
    assert refusals[-1]["details"]["problem"]


async def test_register_server_waits_for_operator_then_executes(
    registry: Registry, node: Node
) -> None:
    service = ManagementService(registry.store)
    submitted = await service.submit(node.register_body(), now=node.at)
    assert submitted["state"] == "submitted"
    assert await registry.store.list_servers() == []

    done = await service.decide("operator-1", submitted["id"], "approve")
    assert done["state"] == "executed"
    assert done["decided_by"] == "operator-1"
    server = (await registry.store.list_servers())[0]
    assert server["id"] == SERVER
    assert server["address"] == "ss1.ndc.gov.iq:5500"
    assert server["auth_certs"] == [der_b64(node.auth.cert)]
    with pytest.raises(ConflictError, match="already executed"):
        await service.decide("operator-1", submitted["id"], "decline")


async def test_register_server_with_auto_approve_executes_at_once(
    registry: Registry, node: Node
) -> None:
    await registry.store.update_settings("op", {"auto_approve": True})
    result = await ManagementService(registry.store).submit(node.register_body(), now=node.at)
    assert result["state"] == "executed"
    assert result["decided_by"] == "auto-approve"
    assert [s["id"] for s in await registry.store.list_servers()] == [SERVER]


async def test_declined_request_changes_nothing_but_its_state(
    registry: Registry, node: Node
) -> None:
    service = ManagementService(registry.store)
    submitted = await service.submit(node.register_body(), now=node.at)
    declined = await service.decide("operator-1", submitted["id"], "decline", "unknown node")
    assert (declined["state"], declined["reason"]) == ("declined", "unknown node")
    assert await registry.store.list_servers() == []


async def test_client_registration_and_deletion_signed_by_owner(
    registry: Registry, node: Node
) -> None:
    await registry.store.update_settings("op", {"auto_approve": True})
    service = ManagementService(registry.store)
    await service.submit(node.register_body(), now=node.at)
    raw = request_bytes("register_client", SERVER, at=node.at, client="IQ/GOV/NDC/population")
    result = await service.submit(
        body(raw, at=node.at, owner=node.owner, owner_ca=node.ca), now=node.at
    )
    assert result["state"] == "executed"
    assert (await registry.store.list_servers())[0]["clients"] == ["IQ/GOV/NDC/population"]
    assert (await registry.store.list_members())[0]["subsystems"] == ["population"]
    raw = request_bytes("delete_client", SERVER, at=node.at, client="IQ/GOV/NDC/population")
    await service.submit(body(raw, at=node.at, owner=node.owner, owner_ca=node.ca), now=node.at)
    assert (await registry.store.list_servers())[0]["clients"] == []


async def test_refuses_bad_signature(registry: Registry, node: Node) -> None:
    good = request_bytes(
        "register_server", SERVER, at=node.at, address="ss1.ndc.gov.iq:5500", auth=node.auth
    )
    signed = body(good, at=node.at, owner=node.owner, owner_ca=node.ca, auth=node.auth)
    import json

    obj = json.loads(signed)
    tampered = request_bytes(
        "register_server", SERVER, at=node.at, address="evil.example:5500", auth=node.auth
    )
    obj["request"] = base64.b64encode(tampered).decode()
    await _refused(registry, node, json.dumps(obj).encode(), "signature does not verify")


async def test_refuses_auth_signature_by_another_key(registry: Registry, node: Node) -> None:
    other = node.ca.pki.authentication(SERVER)
    raw = request_bytes(
        "register_server", SERVER, at=node.at, address="ss1.ndc.gov.iq:5500", auth=node.auth
    )
    data = body(raw, at=node.at, owner=node.owner, owner_ca=node.ca, auth=other)
    await _refused(registry, node, data, "proof of possession")


async def test_refuses_certificate_from_unapproved_ca(registry: Registry, node: Node) -> None:
    rogue = NodeCa.create(cn="Rogue CA")
    owner = rogue.pki.signing("IQ/GOV/NDC")
    raw = request_bytes(
        "register_server", SERVER, at=node.at, address="ss1.ndc.gov.iq:5500", auth=node.auth
    )
    data = body(raw, at=node.at, owner=owner, owner_ca=rogue, auth=node.auth, auth_ca=node.ca)
    await _refused(registry, node, data, "not issued by an approved certification authority")


async def test_refuses_revoked_certificate(registry: Registry, node: Node) -> None:
    node.ca.revoke(node.owner.cert, node.at - dt.timedelta(hours=1))
    await _refused(registry, node, node.register_body(), "is revoked according to OCSP")


async def test_refuses_stale_ocsp_response(registry: Registry, node: Node) -> None:
    stale = node.at - dt.timedelta(seconds=3601)
    await _refused(registry, node, node.register_body(ocsp_at=stale), "stale")


async def test_refuses_replayed_nonce(registry: Registry, node: Node) -> None:
    service = ManagementService(registry.store)
    data = node.register_body(nonce="nonce-0123456789abcdef")
    await service.submit(data, now=node.at)
    await _refused(registry, node, data, "replayed request refused")


async def test_refuses_unknown_member_and_malformed_json(registry: Registry, node: Node) -> None:
    raw = request_bytes("delete_server", "IQ/GOV/MOH/ss1", at=node.at)
    data = body(raw, at=node.at, owner=node.owner, owner_ca=node.ca)
    await _refused(registry, node, data, "member IQ/GOV/MOH is not registered")
    await _refused(registry, node, b'{"request": ', "not valid UTF-8 JSON")


async def test_refuses_owner_signature_by_another_member(registry: Registry, node: Node) -> None:
    await registry.store.add_member("op", MemberId.parse("IQ/GOV/MOH"), "Ministry of Health")
    other = node.ca.pki.signing("IQ/GOV/MOH")
    raw = request_bytes(
        "register_server", SERVER, at=node.at, address="ss1.ndc.gov.iq:5500", auth=node.auth
    )
    data = body(raw, at=node.at, owner=other, owner_ca=node.ca, auth=node.auth)
    await _refused(registry, node, data, "not by a signing certificate of IQ/GOV/NDC")


async def test_refuses_duplicate_server_and_old_request(registry: Registry, node: Node) -> None:
    await registry.store.update_settings("op", {"auto_approve": True})
    await ManagementService(registry.store).submit(node.register_body(), now=node.at)
    await _refused(registry, node, node.register_body(), "already registered")
    node.at = node.at - dt.timedelta(minutes=10)
    with pytest.raises(RequestRefused, match="from the registry's clock"):
        await ManagementService(registry.store).submit(
            node.register_body(), now=node.at + dt.timedelta(minutes=10)
        )


async def test_refuses_authentication_certificate_as_owner_signature(
    registry: Registry, node: Node
) -> None:
    raw = request_bytes("delete_server", SERVER, at=node.at)
    data = body(raw, at=node.at, owner=node.auth, owner_ca=node.ca)
    await registry.store.add_server("op", SecurityServerId.parse(SERVER), "ss1:5500", [])
    await _refused(registry, node, data, "not a member signing certificate")


async def test_refuses_expired_signing_certificate(registry: Registry, node: Node) -> None:
    old = node.ca.pki.issue(
        "old signing",
        serial_number="IQ/GOV/NDC",
        content_commitment=True,
        not_before=node.at - dt.timedelta(days=400),
    )
    raw = request_bytes(
        "register_server", SERVER, at=node.at, address="ss1.ndc.gov.iq:5500", auth=node.auth
    )
    data = body(raw, at=node.at, owner=old, owner_ca=node.ca, auth=node.auth)
    await _refused(registry, node, data, "expired")


def test_refuses_a_request_with_a_non_json_constant() -> None:
    """NaN parses in Python but is not JSON, and canonical JSON has no form for it."""
    raw = (
        b'{"created_at":"2026-03-01T00:00:00Z","nonce":NaN,'
        b'"server":"IQ/GOV/NDC/ss1","type":"delete_server"}'
    )
    with pytest.raises(RequestRefused, match="NaN is not valid JSON"):
        parse_request(raw)
