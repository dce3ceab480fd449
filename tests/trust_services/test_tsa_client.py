from __future__ import annotations

import hashlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from certs.tsa import (
    MAX_RESPONSE_BYTES,
    MessageImprint,
    TimestampAuthority,
    TimestampError,
    TimestampRejected,
    build_request,
    verify_token,
)
from tests.pki_factory import NOW, FixturePki, Issued
from trust_services.http_server import serve_app
from trust_services.tsa_client import request_timestamp, request_token
from trust_services.tsa_server import SerialNumbers, tsa_app

POLICY = "2.25.1234"
DATA = b"batch of message log records"
DIGEST = hashlib.sha256(DATA).digest()


@pytest.fixture(scope="module")
def tsa_issued() -> Issued:
    return FixturePki.create().tsa()


@pytest.fixture(scope="module")
def authority(tsa_issued: Issued) -> TimestampAuthority:
    return TimestampAuthority(tsa_issued.cert, tsa_issued.key, policy_oid=POLICY)


@pytest.fixture
async def url(authority: TimestampAuthority, tmp_path: Path) -> AsyncIterator[str]:
    app = tsa_app(authority, SerialNumbers(tmp_path / "serial"), clock=lambda: NOW)
    async with serve_app(app) as bound:
        yield bound + "/"


async def _serve_fixed(body: bytes, content_type: str, status: int = 200) -> web.Application:
    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=status, body=body, content_type=content_type)

    app = web.Application()
    app.router.add_post("/", answer)
    return app


async def test_returns_a_token_for_the_digest(
    url: str, session: aiohttp.ClientSession, tsa_issued: Issued
) -> None:
    token = await request_timestamp(session, url, DIGEST)
    info = verify_token(token, data=DATA, tsa_certs=[tsa_issued.cert], at=NOW)
    assert info.message_imprint == MessageImprint("sha256", DIGEST)
    assert info.nonce is not None  # a fresh nonce is sent by default


async def test_returns_token_fields_for_storing(url: str, session: aiohttp.ClientSession) -> None:
    digest = hashlib.sha512(DATA).digest()
    token = await request_token(session, url, digest, hash="sha512", nonce=9)
    assert token.gen_time == NOW
    assert token.nonce == 9
    assert token.message_imprint.hash == "sha512"


async def test_reports_a_rejection_with_its_reason(
    url: str, session: aiohttp.ClientSession
) -> None:
    with pytest.raises(TimestampRejected) as caught:
        await request_timestamp(session, url, DIGEST, policy_oid="2.25.99")
    assert caught.value.fail_info == {"unaccepted_policy"}
    assert url in str(caught.value)
    assert caught.value.fault_code == "TimestampingFailed"


async def test_reports_http_errors(url: str, session: aiohttp.ClientSession) -> None:
    with pytest.raises(TimestampError, match="HTTP 404"):
        await request_timestamp(session, url + "missing", DIGEST)


async def test_reports_an_unreachable_tsa(session: aiohttp.ClientSession) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(TimestampError, match="cannot reach the TSA"):
        await request_timestamp(session, f"http://127.0.0.1:{port}/", DIGEST)


async def test_reports_a_reply_of_the_wrong_type(session: aiohttp.ClientSession) -> None:
    app = await _serve_fixed(b"<html></html>", "text/html")
    async with serve_app(app) as bound:
        with pytest.raises(TimestampError, match="text/html"):
            await request_timestamp(session, bound + "/", DIGEST)


async def test_refuses_an_oversized_reply(session: aiohttp.ClientSession) -> None:
    app = await _serve_fixed(b"\x30" * (MAX_RESPONSE_BYTES + 1), "application/timestamp-reply")
    async with serve_app(app) as bound:
        with pytest.raises(TimestampError, match="exceeds"):
            await request_timestamp(session, bound + "/", DIGEST)


async def test_refuses_a_replayed_reply(
    authority: TimestampAuthority, session: aiohttp.ClientSession
) -> None:
    old = authority.respond(
        build_request(MessageImprint("sha256", DIGEST), nonce=1), now=NOW, serial=1
    )
    app = await _serve_fixed(old, "application/timestamp-reply")
    async with serve_app(app) as bound:
        with pytest.raises(TimestampError, match="nonce"):
            await request_timestamp(session, bound + "/", DIGEST)
