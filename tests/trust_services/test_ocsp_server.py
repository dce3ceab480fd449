from __future__ import annotations

import base64
import datetime as dt
import urllib.parse
from collections.abc import AsyncIterator

import aiohttp
import pytest
from cryptography.x509 import ocsp

from certs.ocsp import MAX_REQUEST_BYTES, OcspResponder, build_request, verify_response
from certs.status import CertStatus
from tests.pki_factory import NOW, FixturePki, Issued
from trust_services.http_server import serve_app
from trust_services.ocsp_server import ocsp_app


@pytest.fixture(scope="module")
def pki() -> FixturePki:
    return FixturePki.create()


@pytest.fixture(scope="module")
def member(pki: FixturePki) -> Issued:
    return pki.signing("IQ/GOV/NDC")


def _responder(pki: FixturePki) -> OcspResponder:
    signer = pki.ocsp_responder()
    return OcspResponder(pki.root.cert, (signer.cert, signer.key), lambda s: CertStatus("good"))


@pytest.fixture
async def url(pki: FixturePki) -> AsyncIterator[str]:
    async with serve_app(ocsp_app(_responder(pki), clock=lambda: NOW), "127.0.0.1", 0) as bound:
        yield bound


def _status(der: bytes, member: Issued, pki: FixturePki) -> str:
    verdict = verify_response(der, member.cert, pki.root.cert, trusted_responders=None, now=NOW)
    return verdict.status.state


async def test_answers_post_with_ocsp_response(
    url: str, session: aiohttp.ClientSession, pki: FixturePki, member: Issued
) -> None:
    request = build_request(member.cert, pki.root.cert, nonce=True)
    async with session.post(
        url + "/", data=request, headers={"Content-Type": "application/ocsp-request"}
    ) as resp:
        assert resp.status == 200
        assert resp.content_type == "application/ocsp-response"
        assert _status(await resp.read(), member, pki) == "good"


async def test_answers_get_with_url_encoded_base64_request(
    url: str, session: aiohttp.ClientSession, pki: FixturePki, member: Issued
) -> None:
    request = build_request(member.cert, pki.root.cert, nonce=False)
    path = urllib.parse.quote(base64.b64encode(request).decode(), safe="")
    async with session.get(f"{url}/{path}") as resp:
        assert resp.status == 200
        assert resp.content_type == "application/ocsp-response"
        assert _status(await resp.read(), member, pki) == "good"


async def test_answers_garbage_with_malformed_request(
    url: str, session: aiohttp.ClientSession
) -> None:
    async with session.get(url + "/not-base64!!") as resp:
        der = await resp.read()
    assert (
        ocsp.load_der_ocsp_response(der).response_status
        == ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    )
    async with session.post(
        url + "/", data=b"\x30\x00", headers={"Content-Type": "application/ocsp-request"}
    ) as resp:
        der = await resp.read()
    assert (
        ocsp.load_der_ocsp_response(der).response_status
        == ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    )


async def test_refuses_wrong_content_type(url: str, session: aiohttp.ClientSession) -> None:
    async with session.post(url + "/", data=b"x", headers={"Content-Type": "text/plain"}) as resp:
        assert resp.status == 415


async def test_refuses_oversized_request(url: str, session: aiohttp.ClientSession) -> None:
    async with session.post(
        url + "/",
        data=b"\x00" * (MAX_REQUEST_BYTES + 1),
        headers={"Content-Type": "application/ocsp-request"},
    ) as resp:
        assert resp.status == 413


class _ExplodingResponder(OcspResponder):
    def respond(self, request_der: bytes, *, now: dt.datetime) -> bytes:
        raise RuntimeError("simulated defect")


async def test_keeps_serving_after_a_request_fails_unexpectedly(
    pki: FixturePki, member: Issued, session: aiohttp.ClientSession
) -> None:
    signer = pki.ocsp_responder()
    broken = _ExplodingResponder(
        pki.root.cert, (signer.cert, signer.key), lambda s: CertStatus("good")
    )
    request = build_request(member.cert, pki.root.cert, nonce=False)
    async with serve_app(ocsp_app(broken, clock=lambda: NOW)) as base:
        for _ in range(2):
            async with session.post(
                base + "/", data=request, headers={"Content-Type": "application/ocsp-request"}
            ) as resp:
                assert resp.status == 200
                der = await resp.read()
            assert (
                ocsp.load_der_ocsp_response(der).response_status
                == ocsp.OCSPResponseStatus.INTERNAL_ERROR
            )
