"""Good exchanges across the real node network: REST and SOAP, attachments, headers, logs.

Every call goes from a client information system to the HJC node's client side (a
``jisr node serve`` process), signed over mutual TLS to the NDC node (another process), and on
to a provider service; the answer comes back the same way.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import uuid
from importlib import resources

import aiohttp
import pytest

from adapters.rest_client import XRoadRestClient
from adapters.soap_client import XRoadSoapClient
from gateway.log_record import verify_chain
from gateway.multipart import Part, build_multipart, parse_multipart
from gateway.soap import SoapMessage, parse_soap_response
from jisr.demo.exchanges import DECEASED_CITIZEN, GET_CITIZEN, LIVING_CITIZEN
from jisr.demo.members import INHERITANCE, POPULATION
from security_server.message_log import PostgresMessageLog
from tests.e2e.calls import (
    CITIZEN_SERVICE,
    call,
    rest,
    soap,
    soap_envelope,
)
from tests.e2e.extra_services import (
    ECHO_REST,
    ECHO_SOAP,
    EXTRA_NS,
    SLOW_REST,
    UNREACHABLE_REST,
)
from tests.e2e.network import E2eNetwork, RunningNodeInfo, node_database

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="package")]

ECHO = f"/r1/{POPULATION}/{ECHO_REST}"


def _sha512_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha512(data).digest()).decode("ascii")


async def _logged(node: RunningNodeInfo, message_id: str) -> list[tuple[str, bytes]]:
    """The (direction, signed part) of every record ``node`` logged for ``message_id``."""
    async with node_database(node) as pool:
        found = await PostgresMessageLog(pool, node.spec.server_id).search(message_id=message_id)
    return [(r.entry.direction, r.entry.signed_part) for r in found]


async def test_rest_get_reaches_the_sample_service_through_both_nodes(
    network: E2eNetwork,
) -> None:
    async with XRoadRestClient(network.consumer.client_url, INHERITANCE) as client:
        result = await client.call(
            "GET",
            GET_CITIZEN,
            f"/citizens/{DECEASED_CITIZEN}",
            user_id="IQ-judge-0042",
            message_id="e2e-rest-get-1",
        )
    assert result.status == 200, result.body
    assert result.json()["nationalId"] == DECEASED_CITIZEN
    assert result.x_road.id == "e2e-rest-get-1"
    assert result.x_road.client == str(INHERITANCE)
    assert result.x_road.service == str(GET_CITIZEN)
    assert result.x_road.request_hash is not None
    assert len(base64.b64decode(result.x_road.request_hash)) == 64


async def test_rest_get_carries_path_query_and_headers_both_ways(network: E2eNetwork) -> None:
    url = network.consumer.client_url + ECHO + "/cases/2026%2F117/parties?lang=ar&role=heir"
    reply = await call(
        url,
        headers={
            "X-Road-Client": str(INHERITANCE),
            "X-Road-Id": "e2e-rest-headers-1",
            "X-Road-UserId": "IQ-judge-0042",
            "X-Road-Issue": "inheritance-case-2026-117",
            "X-Case-Reference": "قسام-117",
            "Accept": "application/json",
        },
    )
    assert reply.status == 200, reply
    seen = reply.json()
    assert isinstance(seen, dict)
    assert seen["method"] == "GET"
    assert seen["path"] == "/echo/cases/2026%2F117/parties?lang=ar&role=heir"
    assert seen["query"] == "lang=ar&role=heir"
    forwarded = {k.lower(): v for k, v in seen["headers"]}
    assert forwarded["x-case-reference"] == "قسام-117"
    assert forwarded["accept"] == "application/json"
    assert not any(name.startswith("x-road-client") for name in forwarded)
    # The provider's own response header and the X-Road headers come back to the client.
    assert reply.headers["X-Echo-Service"] == "jisr-e2e"
    assert reply.headers["X-Road-Id"] == "e2e-rest-headers-1"
    assert reply.headers["X-Road-Client"] == str(INHERITANCE)
    assert reply.headers["X-Road-Service"] == f"{POPULATION}/{ECHO_REST}"
    assert reply.headers["X-Road-Request-Id"]
    # X-Road-Request-Hash is SHA-512 of the request the consumer node signed and logged.
    logged = dict(await _logged(network.consumer, "e2e-rest-headers-1"))
    assert reply.headers["X-Road-Request-Hash"] == _sha512_b64(logged["request_out"])


async def test_rest_post_body_reaches_the_service_byte_for_byte(network: E2eNetwork) -> None:
    body = json.dumps({"heirs": ["علي", "فاطمة"], "share": 0.5}, ensure_ascii=False).encode()
    reply = await call(
        network.consumer.client_url + ECHO + "/determinations?draft=true",
        "POST",
        headers={
            "X-Road-Client": str(INHERITANCE),
            "X-Road-Id": "e2e-rest-post-1",
            "Content-Type": "application/json; charset=utf-8",
        },
        data=body,
    )
    assert reply.status == 201, reply
    seen = reply.json()
    assert isinstance(seen, dict)
    assert seen["method"] == "POST"
    assert seen["query"] == "draft=true"
    assert base64.b64decode(seen["body_base64"]) == body
    assert network.extras.last("/echo/determinations").body == body
    assert reply.headers["X-Road-Request-Hash"]


async def test_hand_built_soap_request_gets_the_citizen_and_request_hash(
    network: E2eNetwork,
) -> None:
    request = soap_envelope(message_id="e2e-soap-1")
    reply = await soap(network.consumer, request)
    assert reply.status == 200, reply
    parsed = parse_soap_response(reply.body, reply.headers["Content-Type"], max_bytes=1 << 20)
    assert isinstance(parsed, SoapMessage)
    assert parsed.id == "e2e-soap-1"
    assert parsed.client == INHERITANCE
    assert parsed.service == GET_CITIZEN
    assert parsed.user_id == "IQ-judge-0042"
    assert parsed.issue == "inheritance-case-2026-117"
    assert parsed.request_hash is not None
    assert parsed.request_hash.value == _sha512_b64(request)
    assert parsed.request_hash.algorithm == "http://www.w3.org/2001/04/xmlenc#sha512"
    assert LIVING_CITIZEN.encode() in reply.body


async def test_zeep_client_calls_the_soap_service_through_its_node(network: E2eNetwork) -> None:
    wsdl = resources.files("adapters.service_descriptions").joinpath("ndc-population.wsdl")
    client = XRoadSoapClient(str(wsdl), network.consumer.client_url, INHERITANCE, GET_CITIZEN)
    result = await client.acall(
        message_id="e2e-zeep-1", nationalId=LIVING_CITIZEN, issue="inheritance-case-2026-117"
    )
    assert result.headers.id == "e2e-zeep-1"
    assert result.headers.request_hash is not None
    assert LIVING_CITIZEN in str(result.body)


async def test_soap_attachments_travel_byte_identical_both_ways(network: E2eNetwork) -> None:
    scan = bytes(range(256)) * 300 + b"\r\n--not-the-boundary\r\n\r\n"
    note = "وثيقة حصر الورثة — heirs' certificate\r\n".encode()
    request = soap_envelope(
        message_id="e2e-soap-attachments-1",
        service_code=ECHO_SOAP,
        namespace=EXTRA_NS,
        body=f'<p:{ECHO_SOAP}><p:scan href="cid:scan-1"/></p:{ECHO_SOAP}>',
    )
    body, content_type = build_multipart(
        Part((("Content-Type", "text/xml; charset=UTF-8"), ("Content-ID", "<envelope>")), request),
        [
            Part(
                (
                    ("Content-Type", "application/octet-stream"),
                    ("Content-ID", "<scan-1>"),
                    ("Content-Transfer-Encoding", "binary"),
                ),
                scan,
            ),
            Part((("Content-Type", "text/plain; charset=UTF-8"), ("Content-ID", "<note>")), note),
        ],
        start="envelope",
    )
    reply = await call(
        network.consumer.client_url + "/",
        "POST",
        headers={"Content-Type": content_type},
        data=body,
    )
    assert reply.status == 200, reply
    # what the provider service received is exactly what the client sent
    assert network.extras.last("/soap-echo").body == body
    answer = parse_multipart(reply.body, reply.headers["Content-Type"], max_bytes=1 << 22)
    assert [a.data for a in answer.attachments] == [scan, note]
    assert [a.content_id for a in answer.attachments] == ["scan-1", "note"]
    parsed = parse_soap_response(reply.body, reply.headers["Content-Type"], max_bytes=1 << 22)
    assert isinstance(parsed, SoapMessage)
    assert parsed.request_hash is not None
    # with attachments, requestHash covers the request's SOAP part as sent (docs/soap.md 2.2)
    assert parsed.request_hash.value == _sha512_b64(request)


async def test_both_nodes_log_the_exchange_in_a_verifiable_chain(network: E2eNetwork) -> None:
    message_id = f"e2e-logged-{uuid.uuid4()}"
    reply = await rest(
        network.consumer,
        f"{CITIZEN_SERVICE}/citizens/{LIVING_CITIZEN}",
        headers={"X-Road-Id": message_id, "X-Road-UserId": "IQ-judge-0042"},
    )
    assert reply.status == 200, reply
    consumer = await _logged(network.consumer, message_id)
    provider = await _logged(network.provider, message_id)
    assert [d for d, _ in consumer] == ["request_out", "response_in"]
    assert [d for d, _ in provider] == ["request_in", "response_out"]
    # both sides logged the same signed request and the same signed response
    assert consumer[0][1] == provider[0][1]
    assert consumer[1][1] == provider[1][1]
    assert reply.headers["X-Road-Request-Hash"] == _sha512_b64(consumer[0][1])
    for node in (network.consumer, network.provider):
        async with node_database(node) as pool:
            records = await PostgresMessageLog(pool, node.spec.server_id).read_records()
        summary = verify_chain(records)
        assert summary.count == len(records) >= 2
        assert {r.entry.message_id for r in records} >= {message_id}


async def test_soap_exchanges_are_logged_with_their_bodies(network: E2eNetwork) -> None:
    request = soap_envelope(message_id="e2e-soap-logged-1")
    reply = await soap(network.consumer, request)
    assert reply.status == 200, reply
    async with node_database(network.provider) as pool:
        found = await PostgresMessageLog(pool, network.provider.spec.server_id).search(
            message_id="e2e-soap-logged-1", client=INHERITANCE, service=GET_CITIZEN
        )
    assert [r.entry.direction for r in found] == ["request_in", "response_out"]
    assert found[0].entry.body == request
    assert found[0].entry.signed_part
    assert json.loads(found[0].entry.signed_part)["protocol"] == "SOAP"


async def test_rest_metadata_lists_the_rest_services_published_for_the_client(
    network: E2eNetwork,
) -> None:
    async with XRoadRestClient(network.consumer.client_url, INHERITANCE) as client:
        allowed = await client.allowed_methods(POPULATION)
    # REST allowedMethods lists REST and OpenAPI services; WSDL operations are SOAP's to list
    codes = {s.id.service_code for s in allowed}
    assert codes == {ECHO_REST, SLOW_REST, UNREACHABLE_REST}
    assert all(s.id.provider == POPULATION for s in allowed)


async def test_many_concurrent_calls_all_succeed(network: E2eNetwork) -> None:
    async with aiohttp.ClientSession() as session:

        async def one(i: int) -> int:
            async with session.get(
                network.consumer.client_url + ECHO + f"/concurrent/{i}",
                headers={"X-Road-Client": str(INHERITANCE), "X-Road-Id": f"e2e-many-{i}"},
            ) as response:
                await response.read()
                return response.status

        statuses = await asyncio.gather(*(one(i) for i in range(12)))
    assert statuses == [200] * 12
