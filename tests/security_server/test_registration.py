"""Management requests as the node builds them, read back by the registry's own parser."""

from __future__ import annotations

import base64
import datetime as dt
import json

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.serialization import Encoding

from certs.cms import verify_detached
from certs.signer import SoftwareSigner
from gateway.anchor import make_anchor
from gateway.identifiers import SecurityServerId, SubsystemId
from registry.management import parse_request
from security_server.registration import (
    RegistrationError,
    management_request,
    registry_base_url,
    request_body,
    submit,
)
from tests.pki_factory import FixturePki
from trust_services.http_server import serve_app

NOW = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)
SERVER = SecurityServerId.parse("IQ/GOV/HJC/ss1")


def test_register_server_request_is_what_the_registry_parses() -> None:
    pki = FixturePki.create()
    auth = pki.authentication(str(SERVER))
    raw = management_request(
        "register_server",
        SERVER,
        now=NOW,
        address="ss1.hjc.gov.iq:5500",
        auth_cert_der=auth.cert.public_bytes(Encoding.DER),
    )
    parsed = parse_request(raw)
    assert (parsed.type, parsed.server, parsed.address) == (
        "register_server",
        SERVER,
        "ss1.hjc.gov.iq:5500",
    )
    assert parsed.auth_cert == auth.cert
    assert parsed.created_at == NOW
    assert management_request("register_server", SERVER, now=NOW) != management_request(
        "register_server", SERVER, now=NOW
    )  # a fresh nonce every time


def test_client_request_and_body_carry_verifiable_signatures() -> None:
    pki = FixturePki.create()
    owner = pki.signing("IQ/GOV/HJC")
    client = SubsystemId.parse("IQ/GOV/HJC/inheritance")
    raw = management_request("register_client", SERVER, now=NOW, client=client)
    assert parse_request(raw).client == client
    body = json.loads(
        request_body(
            raw, now=NOW, owner=SoftwareSigner(owner.key, owner.cert), owner_ocsp=b"ocsp-der"
        )
    )
    assert set(body) == {"request", "signatures", "ocsp"}
    assert base64.b64decode(body["request"]) == raw
    assert set(body["signatures"]) == {"owner"}
    signature = base64.b64decode(body["signatures"]["owner"])
    assert verify_detached(signature, raw).signer == owner.cert
    assert base64.b64decode(body["ocsp"]["owner"]) == b"ocsp-der"


def test_registry_url_comes_from_the_anchor() -> None:
    cert = FixturePki.create().root.cert
    anchor = make_anchor(
        "IQ", ["https://cs.gov.iq/jisr/globalconf/current"], [cert], generated_at=NOW
    )
    assert registry_base_url(anchor) == "https://cs.gov.iq/jisr"
    odd = make_anchor("IQ", ["https://cs.gov.iq/conf"], [cert], generated_at=NOW)
    with pytest.raises(RegistrationError, match="globalconf"):
        registry_base_url(odd)


async def test_registry_refusal_and_unreachable_registry_are_reported() -> None:
    app = web.Application()

    async def refuse(_: web.Request) -> web.Response:
        return web.json_response(
            {"type": "RequestRefused", "message": "member IQ/GOV/HJC is not registered"},
            status=400,
        )

    app.router.add_post("/management/requests", refuse)
    async with aiohttp.ClientSession() as session:
        async with serve_app(app) as url:
            with pytest.raises(RegistrationError, match="IQ/GOV/HJC is not registered"):
                await submit(session, url, b"{}")
        with pytest.raises(RegistrationError, match="cannot reach"):
            await submit(session, url, b"{}")
