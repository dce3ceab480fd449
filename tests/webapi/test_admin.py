"""The admin APIs' shared rules: API keys and roles, JSON bodies, JSON errors."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web
from cryptography.hazmat.primitives import serialization

from config.errors import JisrError, ValidationError
from tests.pki_factory import FixturePki
from trust_services.http_server import serve_app
from webapi.admin import (
    CALLER,
    Caller,
    actor_of,
    api_key_middleware,
    certificate_field,
    json_errors_middleware,
    read_json_object,
)

KEYS = {"op-secret": Caller("alice", "operator"), "aud-secret": Caller("bob", "auditor")}
LIMIT = 200_000


async def _authenticate(request: web.Request, token: str) -> Caller | None:
    return KEYS.get(token)


async def _whoami(request: web.Request) -> web.Response:
    return web.json_response({"caller": request[CALLER].name, "actor": actor_of(request)})


async def _echo(request: web.Request) -> web.Response:
    return web.json_response(await read_json_object(request, LIMIT))


async def _refuse(request: web.Request) -> web.Response:
    raise JisrError("the thing cannot be done; do the other thing")


async def _break(request: web.Request) -> web.Response:
    raise RuntimeError("secret internals")


@pytest.fixture
async def url() -> AsyncIterator[str]:
    app = web.Application(
        middlewares=[
            json_errors_middleware("test"),
            api_key_middleware(
                _authenticate,
                protected=lambda path: path.startswith("/api/"),
                how_to_get_a_key="make one with `test key create`",
            ),
        ]
    )
    app.router.add_get("/api/whoami", _whoami)
    app.router.add_post("/api/echo", _echo)
    app.router.add_get("/api/refuse", _refuse)
    app.router.add_get("/api/break", _break)
    app.router.add_get("/open", _open)
    async with serve_app(app) as base:
        yield base


async def _open(request: web.Request) -> web.Response:
    return web.json_response({"open": CALLER not in request})


async def _call(
    url: str, method: str, path: str, *, key: str | None = None, body: Any = None, data: Any = None
) -> tuple[int, Any, aiohttp.ClientResponse]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url + path, headers=headers, json=body, data=data) as resp,
    ):
        return resp.status, await resp.json(), resp


async def test_a_protected_route_needs_a_known_key(url: str) -> None:
    status, data, _ = await _call(url, "GET", "/api/whoami")
    assert (status, data["type"]) == (401, "AuthenticationRequired")
    assert "test key create" in data["message"]
    status, data, _ = await _call(url, "GET", "/api/whoami", key="guess")
    assert (status, data["type"]) == (401, "AuthenticationRequired")
    assert "guess" not in data["message"]
    status, data, _ = await _call(url, "GET", "/api/whoami", key="op-secret")
    assert (status, data) == (200, {"caller": "alice", "actor": "api:alice"})
    status, data, _ = await _call(url, "GET", "/open")
    assert (status, data) == (200, {"open": True})


async def test_an_auditor_may_read_but_not_change(url: str) -> None:
    status, data, _ = await _call(url, "GET", "/api/whoami", key="aud-secret")
    assert (status, data["caller"]) == (200, "bob")
    status, data, _ = await _call(url, "POST", "/api/echo", key="aud-secret", body={"a": 1})
    assert (status, data["type"]) == (403, "Forbidden")
    assert "'bob' has role auditor" in data["message"]
    status, data, _ = await _call(url, "POST", "/api/echo", key="op-secret", body={"a": 1})
    assert (status, data) == (200, {"a": 1})


async def test_errors_are_json_with_their_status_and_no_internals(url: str) -> None:
    status, data, _ = await _call(url, "GET", "/api/refuse", key="op-secret")
    assert (status, data) == (
        500,
        {"type": "JisrError", "message": "the thing cannot be done; do the other thing"},
    )
    with structlog.testing.capture_logs() as logs:
        status, data, _ = await _call(url, "GET", "/api/break", key="op-secret")
    assert (status, data) == (
        500,
        {"type": "InternalError", "message": "internal error; see the test's log"},
    )
    assert [e["api"] for e in logs if e["event"] == "admin API request failed"] == ["test"]
    status, data, _ = await _call(url, "GET", "/nowhere")
    assert (status, data["type"]) == (404, "HttpError")
    assert data["message"] == "Not Found: GET /nowhere"
    status, data, resp = await _call(url, "DELETE", "/api/whoami", key="op-secret")
    assert (status, data["type"]) == (405, "HttpError")
    assert "GET" in resp.headers["Allow"]


async def test_bodies_are_one_json_object_within_the_limit(url: str) -> None:
    status, data, _ = await _call(url, "POST", "/api/echo", key="op-secret", body=[1, 2])
    assert (status, data["message"]) == (400, "the request body must be a JSON object")
    status, data, _ = await _call(url, "POST", "/api/echo", key="op-secret", data=b"{nope")
    assert (status, data["type"]) == (400, "ValidationError")
    big = {"text": "x" * LIMIT}
    status, data, _ = await _call(url, "POST", "/api/echo", key="op-secret", body=big)
    assert (status, data["message"]) == (400, f"the request body is larger than {LIMIT} bytes")


async def test_a_body_arriving_in_pieces_is_read_whole(url: str) -> None:
    """A large document sent chunked (no Content-Length) reaches the handler complete."""
    document = {"wsdl": "w" * (LIMIT - 100)}
    encoded = web.json_response(document).body
    assert isinstance(encoded, bytes)

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(encoded), 1000):
            yield encoded[start : start + 1000]

    status, data, _ = await _call(url, "POST", "/api/echo", key="op-secret", data=pieces())
    assert (status, data) == (200, document)


def test_a_certificate_field_is_pem_or_base64_der() -> None:
    cert = FixturePki.create().root.cert
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    der = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
    assert certificate_field(pem, "certificate") == cert
    assert certificate_field(der, "certificate") == cert
    for wrong in ("", 42, "not base64!", base64.b64encode(b"not DER").decode()):
        with pytest.raises(ValidationError, match="certificate"):
            certificate_field(wrong, "certificate")
