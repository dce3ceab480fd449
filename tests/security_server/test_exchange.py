"""Two real nodes in one process: REST and SOAP calls travel signed, over mutual TLS, and back."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from gateway.identifiers import ServiceId
from gateway.multipart import Part, build_multipart, parse_multipart
from gateway.soap import build_request, parse_soap_response
from tests.security_server.fakes import CONSUMER, PROVIDER, Network, two_nodes

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
