"""Two real nodes in one process: REST and SOAP calls travel signed, over mutual TLS, and back."""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import yarl

from certs.signer import SoftwareSigner
from gateway.faults import CLIENT_PROXY, FaultError
from gateway.identifiers import ServiceId
from gateway.log_record import check_entry
from gateway.multipart import Part, build_multipart, parse_multipart
from gateway.soap import build_request, parse_soap_response
from gateway.transport import (
    RequestPart,
    VerifiedSignatureCache,
    body_digest,
    decode_message,
    encode_message,
    verify_message,
)
from security_server.transport_client import MessageSealer
from tests.clock import Clock
from tests.pki_factory import FixturePki
from tests.security_server.fakes import (
    CONSUMER,
    HJC,
    NOW,
    PROVIDER,
    FakeSigners,
    Network,
    assert_still_serving,
    der,
    two_nodes,
)

CITIZEN = "/r1/IQ/GOV/NDC/population/getCitizen"


@pytest.fixture
async def net(tmp_path: Path) -> AsyncIterator[Network]:
    async with two_nodes(tmp_path) as network:
        yield network


def soap_request(code: str = "getPerson", message_id: str = "soap-1") -> bytes:
    return build_request(
        CONSUMER,
        ServiceId.for_client(PROVIDER, code),
        id=message_id,
        user_id="IQ1234",
        body_element_xml=f'<p:{code} xmlns:p="http://ndc.gov.iq/population"><id>7</id></p:{code}>',
    )


async def test_rest_get_round_trip_carries_path_query_and_headers(net: Network) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{net.client_url}{CITIZEN}/citizens/42?lang=ar",
            headers={
                "X-Road-Client": str(CONSUMER),
                "X-Road-Id": "rest-1",
                "X-Road-UserId": "IQ1234",
                "X-Custom": "kept",
                "Accept": "application/json",
            },
        ) as response,
    ):
        body = await response.json()
        assert response.status == 200, body
        headers = response.headers
    assert body["path"] == "/rest/citizens/42?lang=ar"
    assert headers["X-Road-Client"] == str(CONSUMER)
    assert headers["X-Road-Service"] == str(ServiceId.for_client(PROVIDER, "getCitizen"))
    assert headers["X-Road-Id"] == "rest-1"
    assert headers["X-Road-Request-Id"]
    assert len(base64.b64decode(headers["X-Road-Request-Hash"])) == 64
    assert headers["X-Provider"] == "ndc"
    seen = net.seen[-1]
    seen_headers = {k.lower(): v for k, v in seen.headers}
    assert seen_headers["x-custom"] == "kept"
    assert "x-road-client" not in seen_headers


async def test_rest_post_round_trip_returns_provider_status_and_body(net: Network) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{net.client_url}{CITIZEN}/citizens",
            data=b'{"name":"\xd8\xb9\xd9\x84\xd9\x8a"}',
            headers={"X-Road-Client": str(CONSUMER), "Content-Type": "application/json"},
        ) as response,
    ):
        body = await response.json()
        assert response.status == 201, body
    assert body["method"] == "POST"
    assert json.loads(body["body"]) == {"name": "علي"}
    assert net.seen[-1].body == b'{"name":"\xd8\xb9\xd9\x84\xd9\x8a"}'


async def test_soap_round_trip_adds_request_hash(net: Network) -> None:
    request = soap_request()
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            net.client_url + "/",
            data=request,
            headers={"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '""'},
        ) as response,
    ):
        body = await response.read()
        assert response.status == 200, body
        content_type = response.headers["Content-Type"]
    assert net.seen[-1].body == request
    parsed = parse_soap_response(body, content_type, max_bytes=1_000_000)
    assert parsed.request_hash is not None  # type: ignore[union-attr]
    expected = base64.b64encode(hashlib.sha512(request).digest()).decode()
    assert parsed.request_hash.value == expected  # type: ignore[union-attr]


async def test_soap_with_attachment_arrives_and_returns_byte_identical(net: Network) -> None:
    attachment = Part(
        (("Content-Type", "application/octet-stream"), ("Content-ID", "<scan>")),
        bytes(range(256)) * 40 + b"\r\n--not-a-boundary\r\n",
    )
    soap = Part((("Content-Type", "text/xml; charset=UTF-8"),), soap_request(message_id="att-1"))
    body, content_type = build_multipart(soap, [attachment])
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            net.client_url + "/", data=body, headers={"Content-Type": content_type}
        ) as response,
    ):
        answer = await response.read()
        assert response.status == 200, answer
        answer_type = response.headers["Content-Type"]
    assert net.seen[-1].body == body
    returned = parse_multipart(answer, answer_type, max_bytes=10_000_000)
    assert returned.attachments[0].data == attachment.data
    assert b"requestHash" in returned.root.data


def _part(message_id: str) -> RequestPart:
    return RequestPart(
        protocol="REST",
        message_id=message_id,
        client=CONSUMER,
        service=ServiceId.for_client(PROVIDER, "getCitizen"),
        method="GET",
        path="/citizens/1",
        query=None,
        headers=(),
        body_sha256=body_digest(b""),
        created_at=NOW,
    )


async def test_messages_queued_together_share_one_batch_signature() -> None:
    pki = FixturePki.create(now=NOW)
    issued = pki.signing(str(HJC))
    signers = FakeSigners()
    signers.signers[HJC] = SoftwareSigner(issued.key, issued.cert)
    signers.ocsp[der(issued.cert)] = b"stapled"
    sealer = MessageSealer(signers, Clock(NOW))
    parts = [_part(f"batch-{i}") for i in range(5)]
    results = await asyncio.gather(*(sealer.seal(HJC, p, prefix=CLIENT_PROXY) for p in parts))
    assert len({seal.signature for seal in results}) == 1
    assert {seal.sealed.proof.tree_size for seal in results} == {5}
    assert results[0].certificates == (issued.cert,)
    cache = VerifiedSignatureCache()
    from_cache = []
    for part, seal in zip(parts, results, strict=True):
        content_type, data = encode_message(part, b"", seal.sealed.proof, seal.signature, seal.ocsp)
        message = decode_message(content_type, data)
        verified = verify_message(message, verified_cache=cache, now=NOW)
        assert verified.signed_part == part
        from_cache.append(verified.from_cache)
    assert from_cache == [False, True, True, True, True]
    # an idle sealer signs a lone message at once, in a tree of one
    seal = await sealer.seal(HJC, _part("alone"), prefix=CLIENT_PROXY)
    assert seal.sealed.proof.tree_size == 1


async def test_concurrent_calls_all_succeed(net: Network) -> None:
    async with aiohttp.ClientSession() as session:

        async def one(i: int) -> int:
            async with session.get(
                f"{net.client_url}{CITIZEN}/citizens/{i}",
                headers={"X-Road-Client": str(CONSUMER), "X-Road-Id": f"many-{i}"},
            ) as response:
                await response.read()
                return response.status

        statuses = await asyncio.gather(*(one(i) for i in range(20)))
    assert statuses == [200] * 20
    assert sorted(s.path_qs for s in net.seen) == sorted(f"/rest/citizens/{i}" for i in range(20))


async def test_compressed_bodies_travel_as_sent(net: Network) -> None:
    compressed = gzip.compress(b'{"name":"Ali"}')
    async with (
        aiohttp.ClientSession(auto_decompress=False) as session,
        session.post(
            f"{net.client_url}{CITIZEN}/citizens",
            data=compressed,
            headers={
                "X-Road-Client": str(CONSUMER),
                "Content-Type": "application/json",
                "Content-Encoding": "gzip",
            },
        ) as response,
    ):
        assert response.status == 201, await response.read()
    assert net.seen[-1].body == b'{"name":"Ali"}'  # the provider's server inflated it itself


async def test_soap_with_byte_order_mark_is_accepted_and_hashed_as_sent(net: Network) -> None:
    request = b"\xef\xbb\xbf" + soap_request(message_id="bom-1")
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            net.client_url + "/", data=request, headers={"Content-Type": "text/xml"}
        ) as response,
    ):
        body = await response.read()
        assert response.status == 200, body
    parsed = parse_soap_response(body, "text/xml", max_bytes=1_000_000)
    expected = base64.b64encode(hashlib.sha512(request).digest()).decode()
    assert parsed.request_hash is not None  # type: ignore[union-attr]
    assert parsed.request_hash.value == expected  # type: ignore[union-attr]
    assert net.seen[-1].body == request


async def test_both_nodes_log_every_signed_message_before_going_on(net: Network) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{net.client_url}{CITIZEN}/citizens/9",
            headers={"X-Road-Client": str(CONSUMER), "X-Road-Id": "logged-1"},
        ) as response,
    ):
        assert response.status == 200
    consumer = [(e.direction, e.message_id) for e in net.consumer_log.entries]
    provider = [(e.direction, e.message_id) for e in net.provider_log.entries]
    assert consumer == [("request_out", "logged-1"), ("response_in", "logged-1")]
    assert provider == [("request_in", "logged-1"), ("response_out", "logged-1")]
    for entry in net.consumer_log.entries + net.provider_log.entries:
        assert check_entry(entry) == []
    assert net.consumer_log.entries[0].signed_part == net.provider_log.entries[0].signed_part
    assert net.consumer_log.entries[1].signed_part == net.provider_log.entries[1].signed_part


async def test_refuses_to_exchange_when_the_message_log_fails(net: Network) -> None:
    net.consumer_log.failing = True
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{net.client_url}{CITIZEN}/citizens/9", headers={"X-Road-Client": str(CONSUMER)}
        ) as response,
    ):
        assert response.headers["X-Road-Error"] == "Server.ClientProxy.LoggingFailed"
    assert not net.seen
    net.consumer_log.failing = False
    net.provider_log.failing = True
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{net.client_url}{CITIZEN}/citizens/9", headers={"X-Road-Client": str(CONSUMER)}
        ) as response,
    ):
        assert response.headers["X-Road-Error"] == "Server.ServerProxy.LoggingFailed"
    assert not net.seen
    net.provider_log.failing = False
    await assert_still_serving(net)


async def test_path_and_query_reach_the_provider_exactly_as_sent(net: Network) -> None:
    target = "/citizens/a%2fb/%D8%B9%D9%84%D9%8A?name=%d8%b9&x=%41+b"
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            yarl.URL(f"{net.client_url}{CITIZEN}{target}", encoded=True),
            headers={"X-Road-Client": str(CONSUMER)},
        ) as response,
    ):
        assert response.status == 200, await response.read()
    assert net.seen[-1].path_qs == "/rest" + target


async def test_a_broken_signer_fails_its_batch_instead_of_hanging() -> None:
    class BrokenSigner(SoftwareSigner):
        def sign(self, data: bytes) -> bytes:
            raise RuntimeError("token removed")

    pki = FixturePki.create(now=NOW)
    issued = pki.signing(str(HJC))
    signers = FakeSigners()
    signers.signers[HJC] = BrokenSigner(issued.key, issued.cert)
    signers.ocsp[der(issued.cert)] = b"stapled"
    sealer = MessageSealer(signers, Clock(NOW))
    results = await asyncio.gather(
        *(sealer.seal(HJC, _part(f"broken-{i}"), prefix=CLIENT_PROXY) for i in range(3)),
        return_exceptions=True,
    )
    assert all(isinstance(r, FaultError) for r in results)
    assert {r.fault_code for r in results if isinstance(r, FaultError)} == {
        "Server.ClientProxy.CannotCreateSignature"
    }
