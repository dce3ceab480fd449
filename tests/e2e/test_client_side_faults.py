"""Bad calls to a running node's client side: X-Road's fault code, a message naming the problem,
and the node keeps serving.

The calls are what a broken or hostile information system sends to the HJC node (a
``jisr node serve`` process); faults found by the provider's node (NDC, another process) travel
back through the consumer node unchanged.
"""

from __future__ import annotations

import hashlib

import pytest
from multidict import CIMultiDict

from jisr.demo.exchanges import LIVING_CITIZEN
from jisr.demo.members import INHERITANCE, PENSIONS
from tests.e2e.calls import (
    BILLION_LAUGHS,
    CITIZEN_SERVICE,
    ECHO_SERVICE,
    EXTERNAL_ENTITY,
    assert_still_serving,
    call,
    echo_envelope,
    rest,
    soap,
    soap_envelope,
)
from tests.e2e.extra_services import (
    ECHO_SOAP,
    EXTRA_NS,
    GARBAGE_SOAP,
    SLOW_REST,
    UNREACHABLE_REST,
)
from tests.e2e.network import MAX_BODY_BYTES, E2eNetwork

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="package")]

CITIZEN = f"{CITIZEN_SERVICE}/citizens/{LIVING_CITIZEN}"


def _replace(data: bytes, old: bytes, new: bytes) -> bytes:
    assert old in data, old
    return data.replace(old, new, 1)


def _without(data: bytes, start: bytes, end: bytes) -> bytes:
    first = data.index(start)
    last = data.index(end, first) + len(end)
    return data[:first] + data[last:]


# ---- SOAP messages the information system got wrong -------------------------------------------


@pytest.mark.parametrize(
    ("body", "code", "named"),
    [
        pytest.param(
            echo_envelope()[:400], "Client.InvalidSoap", "not well-formed XML", id="malformed-xml"
        ),
        pytest.param(
            BILLION_LAUGHS, "Client.InvalidXml", "document type declaration", id="xml-bomb"
        ),
        pytest.param(
            EXTERNAL_ENTITY,
            "Client.InvalidXml",
            "document type declaration",
            id="external-entity",
        ),
        pytest.param(
            _without(echo_envelope(), b"<xrd:client", b"</xrd:client>"),
            "Client.MissingHeaderField",
            "lacks xrd:client",
            id="missing-client-header",
        ),
        pytest.param(
            _without(echo_envelope(), b"<SOAP-ENV:Header>", b"</SOAP-ENV:Header>"),
            "Client.MissingHeader",
            "has no Header",
            id="missing-header",
        ),
        pytest.param(
            _replace(echo_envelope(), b"<xrd:id>", b"<xrd:id>twice</xrd:id>\n    <xrd:id>"),
            "Client.DuplicateHeaderField",
            "contains id more than once",
            id="duplicated-header",
        ),
        pytest.param(
            echo_envelope(protocol_version="3.1"),
            "Client.InvalidProtocolVersion",
            "'3.1'",
            id="wrong-protocol-version",
        ),
        pytest.param(
            echo_envelope(client_subsystem="in heritance!"),
            "Client.InvalidClientIdentifier",
            "in heritance!",
            id="illegal-identifier-characters",
        ),
    ],
)
async def test_refuses_a_bad_soap_message(
    network: E2eNetwork, body: bytes, code: str, named: str
) -> None:
    before = len(network.extras.received)
    reply = await soap(network.consumer, body)
    assert reply.status == 500, reply
    assert reply.fault_code == code, reply
    assert named in reply.fault_message
    assert len(network.extras.received) == before
    await assert_still_serving(network)


async def test_refuses_soap_in_a_content_type_that_is_not_soap(network: E2eNetwork) -> None:
    reply = await soap(network.consumer, soap_envelope(), content_type="application/json")
    assert reply.fault_code == "Client.InvalidContentType", reply
    assert "application/json" in reply.fault_message
    await assert_still_serving(network)


# ---- REST calls the information system got wrong ----------------------------------------------


async def test_refuses_rest_call_without_or_with_a_duplicated_client_header(
    network: E2eNetwork,
) -> None:
    url = network.consumer.client_url + CITIZEN
    missing = await call(url)
    assert (missing.status, missing.error) == (400, "Client.MissingHeaderField"), missing
    assert "X-Road-Client header is missing" in missing.fault_message
    twice = CIMultiDict([("X-Road-Client", str(INHERITANCE)), ("X-Road-Client", str(PENSIONS))])
    duplicated = await call(url, headers=twice)
    assert (duplicated.status, duplicated.error) == (400, "Client.DuplicateHeaderField")
    assert "X-Road-Client appears 2 times" in duplicated.fault_message
    await assert_still_serving(network)


async def test_refuses_a_rest_protocol_version_it_does_not_speak(network: E2eNetwork) -> None:
    reply = await rest(network.consumer, CITIZEN.replace("/r1/", "/r2/", 1))
    assert (reply.status, reply.error) == (400, "Client.InvalidProtocolVersion"), reply
    assert reply.json() == {
        "type": "Client.InvalidProtocolVersion",
        "message": reply.fault_message,
        "detail": reply.json()["detail"],  # type: ignore[index]
    }
    assert "'r2'" in reply.fault_message
    await assert_still_serving(network)


async def test_refuses_rest_identifiers_with_illegal_characters(
    network: E2eNetwork,
) -> None:
    reply = await rest(network.consumer, CITIZEN, headers={"X-Road-Client": "IQ/GOV/HJC/in*her"})
    assert (reply.status, reply.error) == (400, "Client.InvalidClientIdentifier"), reply
    assert "'in*her'" in reply.fault_message
    reply = await rest(network.consumer, "/r1/IQ/GOV/NDC/popu*lation/getCitizen/citizens/1")
    assert (reply.status, reply.error) == (400, "Client.BadRequest"), reply
    assert "subsystem code 'popu*lation'" in reply.fault_message
    await assert_still_serving(network)


async def test_a_client_repeating_a_message_id_is_refused_by_the_provider_node(
    network: E2eNetwork,
) -> None:
    """The X-Road-Id is the transport's replay key: the second call with it is a replay."""
    headers = {"X-Road-Id": "e2e-repeated-id"}
    first = await rest(network.consumer, CITIZEN, headers=headers)
    assert first.status == 200, first
    again = await rest(network.consumer, CITIZEN, headers=headers)
    assert (again.status, again.error) == (500, "Server.ServerProxy.DuplicateMessageId"), again
    assert "message id 'e2e-repeated-id'" in again.fault_message
    assert "was already received" in again.fault_message
    await assert_still_serving(network)


# ---- unknown clients and services ---------------------------------------------------------------


async def test_refuses_a_client_that_is_not_registered_on_this_node(network: E2eNetwork) -> None:
    # NDC's population register is a real client, but of the NDC node, not of the HJC node
    reply = await rest(
        network.consumer, CITIZEN, headers={"X-Road-Client": "IQ/GOV/NDC/population"}
    )
    assert (reply.status, reply.error) == (500, "Server.ClientProxy.UnknownMember"), reply
    assert "client IQ/GOV/NDC/population is not registered on this node" in reply.fault_message
    body = soap_envelope(client_member="NPA", client_subsystem="nobody")
    reply = await soap(network.consumer, body)
    assert reply.fault_code == "Server.ClientProxy.UnknownMember", reply
    assert "client IQ/GOV/NPA/nobody is not registered on this node" in reply.fault_message
    await assert_still_serving(network)


async def test_refuses_a_provider_no_node_serves(network: E2eNetwork) -> None:
    reply = await rest(network.consumer, "/r1/IQ/GOV/NDC/archive/getCitizen/citizens/1")
    assert reply.error == "Server.ClientProxy.UnknownMember", reply
    assert "no node in the global configuration serves provider IQ/GOV/NDC/archive" in (
        reply.fault_message
    )
    await assert_still_serving(network)


async def test_unknown_service_is_reported_by_the_provider_node(network: E2eNetwork) -> None:
    reply = await rest(network.consumer, "/r1/IQ/GOV/NDC/population/getPassport/x")
    assert (reply.status, reply.error) == (500, "Server.ServerProxy.UnknownService"), reply
    assert "IQ/GOV/NDC/population/getPassport" in reply.fault_message
    reply = await soap(
        network.consumer,
        soap_envelope(service_code="getPassport", body="<p:getPassport/>"),
    )
    assert reply.fault_code == "Server.ServerProxy.UnknownService", reply
    assert "getPassport" in reply.fault_message
    await assert_still_serving(network)


async def test_client_without_an_access_right_is_refused_by_the_provider_node(
    network: E2eNetwork,
) -> None:
    reply = await rest(network.consumer, CITIZEN, headers={"X-Road-Client": str(PENSIONS)})
    assert (reply.status, reply.error) == (500, "Server.ServerProxy.AccessDenied"), reply
    assert f"client {PENSIONS} has no access right" in reply.fault_message
    await assert_still_serving(network)


async def test_refuses_a_security_server_that_does_not_serve_the_provider(
    network: E2eNetwork,
) -> None:
    for named in ("IQ/GOV/MOHESR/ss1", "IQ/GOV/NDC/ss7"):
        reply = await rest(network.consumer, CITIZEN, headers={"X-Road-Security-Server": named})
        assert (reply.status, reply.error) == (400, "Client.InvalidSecurityServer"), reply
        assert f"node {named} does not serve provider IQ/GOV/NDC/population" in (
            reply.fault_message
        )
    reply = await rest(
        network.consumer, CITIZEN, headers={"X-Road-Security-Server": "IQ/GOV/NDC/ss1"}
    )
    assert reply.status == 200, reply
    await assert_still_serving(network)


# ---- sizes ------------------------------------------------------------------------------------


async def test_refuses_a_body_over_the_size_limit(network: E2eNetwork) -> None:
    before = len(network.extras.received)
    reply = await rest(
        network.consumer,
        f"{ECHO_SERVICE}/documents",
        "POST",
        headers={"Content-Type": "application/octet-stream"},
        data=b"x" * (MAX_BODY_BYTES + 1),
    )
    assert (reply.status, reply.error) == (413, "Client.RequestTooLarge"), reply
    assert f"over this node's limit of {MAX_BODY_BYTES} bytes" in reply.fault_message
    padding = "<!--" + "x" * MAX_BODY_BYTES + "-->"
    reply = await soap(
        network.consumer,
        soap_envelope(
            service_code=ECHO_SOAP, namespace=EXTRA_NS, body=padding + f"<p:{ECHO_SOAP}/>"
        ),
    )
    assert (reply.status, reply.fault_code) == (500, "Client.RequestTooLarge"), reply
    assert f"over this node's limit of {MAX_BODY_BYTES} bytes" in reply.fault_message
    assert len(network.extras.received) == before
    await assert_still_serving(network)


async def test_a_body_of_exactly_the_limit_travels_and_an_oversized_answer_is_refused(
    network: E2eNetwork,
) -> None:
    body = bytes(range(256)) * (MAX_BODY_BYTES // 256)
    assert len(body) == MAX_BODY_BYTES
    headers = {"Content-Type": "application/octet-stream"}
    # ?quiet: the echo answers with the body's digest only
    reply = await rest(
        network.consumer, f"{ECHO_SERVICE}/scans?quiet", "POST", headers=headers, data=body
    )
    assert reply.status == 201, reply
    assert reply.json()["body_sha256"] == hashlib.sha256(body).hexdigest()  # type: ignore[index]
    assert network.extras.last("/echo/scans").body == body
    # echoed in base64, the answer is a third larger than the provider node accepts
    reply = await rest(
        network.consumer, f"{ECHO_SERVICE}/scans", "POST", headers=headers, data=body
    )
    assert (reply.status, reply.error) == (
        500,
        "Server.ServerProxy.ServiceFailed.InvalidResponse",
    ), reply
    assert "the service's answer is larger than this node's limit" in reply.fault_message
    await assert_still_serving(network)


# ---- the provider's information system fails ----------------------------------------------------


async def test_provider_service_that_times_out_is_service_failed(network: E2eNetwork) -> None:
    reply = await rest(network.consumer, f"/r1/IQ/GOV/NDC/population/{SLOW_REST}/wait")
    assert (reply.status, reply.error) == (500, "Server.ServerProxy.ServiceFailed.IOError"), reply
    assert "did not answer within 1 s" in reply.fault_message
    await assert_still_serving(network)


async def test_provider_service_answering_garbage_is_invalid_soap(network: E2eNetwork) -> None:
    body = soap_envelope(service_code=GARBAGE_SOAP, namespace=EXTRA_NS, body=f"<p:{GARBAGE_SOAP}/>")
    reply = await soap(network.consumer, body)
    assert reply.fault_code == "Server.ServerProxy.InvalidSoap", reply
    assert "not well-formed XML" in reply.fault_message
    assert network.extras.last("/garbage").body == body
    await assert_still_serving(network)


async def test_provider_service_that_is_down_is_a_network_error(network: E2eNetwork) -> None:
    reply = await rest(network.consumer, f"/r1/IQ/GOV/NDC/population/{UNREACHABLE_REST}")
    assert reply.error == "Server.ServerProxy.ServiceFailed.NetworkError", reply
    assert "cannot connect to the service" in reply.fault_message
    await assert_still_serving(network)


# ---- the provider's node is not who the registry says ------------------------------------------


async def test_refuses_a_provider_node_showing_an_unregistered_tls_certificate(
    network: E2eNetwork,
) -> None:
    service = f"/r1/{network.impostor.subsystem}/getSample/1"
    reply = await rest(network.consumer, service)
    assert reply.error == "Server.ClientProxy.SslAuthenticationFailed", reply
    assert f"{network.impostor.server_id}: TLS authentication failed" in reply.fault_message
    lab = network.impostor.subsystem
    body = soap_envelope(
        provider_member=lab.member_code,
        provider_subsystem=lab.subsystem_code or "",
        service_code="getSample",
        body="<p:getSample/>",
    )
    reply = await soap(network.consumer, body)
    assert reply.fault_code == "Server.ClientProxy.SslAuthenticationFailed", reply
    assert network.impostor.received == []
    await assert_still_serving(network)
